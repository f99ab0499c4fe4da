"""HP3 Head Crop: the square head crop HP3's encoder uses, for any image prompt (IP-Adapter, ...)."""
from __future__ import annotations

import json

import numpy as np
import torch

from ..hp3_core.head_encoder.head_crop import HEAD_LIFT, HEAD_SCALE
from ..hp3_core.head_encoder.head_crop_images import NO_FACE, head_crops
from ..hp3_core.image_io import comfy_to_numpy
from .progress import frame_callback


class HP3HeadCrop:
    DESCRIPTION = ("Crops each image to the whole head, hair included: the square HP3's encoder sees (2.2x the "
                   "face box, lifted toward the crown, padded at the borders with CLIP's neutral grey, never "
                   "shifted). Feed it to IP-Adapter Plus or any image prompt so the head, not only the face, "
                   "is the reference. Uses the built-in MediaPipe face detector (no model files).")
    CATEGORY = "HP3/utils"
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("head", "coverage", "boxes")
    OUTPUT_TOOLTIPS = (
        "The head crops, size x size, one per input image.",
        "1 where the crop shows the photo, 0 on the padding (e.g. an attention mask for IP-Adapter).",
        "JSON list of each crop's square in source pixels: x0, y0, side, and whether a face was found.",
    )
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Portrait(s); a batch gives one crop per image."}),
            "size": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8,
                             "tooltip": "Side of the output crops in pixels (224 is what CLIP vision sees)."}),
            "scale": ("FLOAT", {"default": HEAD_SCALE, "min": 1.0, "max": 5.0, "step": 0.05,
                                "tooltip": "Crop side over the face box (2.2 = HP3's head crop; 1.2 = face only)."}),
            "lift": ("FLOAT", {"default": HEAD_LIFT, "min": -0.5, "max": 1.0, "step": 0.05,
                               "tooltip": "How far the crop's centre sits above the face centre, in face heights."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 16,
                                   "tooltip": "Which face when there are several (0 = the largest)."}),
            "no_face": (list(NO_FACE), {"default": "error",
                                        "tooltip": "Image without a face: stop with an error naming it, or use "
                                                   "a centred square."}),
        }}

    def crop(self, image: torch.Tensor, size: int, scale: float, lift: float, face_index: int, no_face: str):
        images = comfy_to_numpy(image)
        crops = head_crops(images, size=size, scale=scale, lift=lift, face_index=face_index, no_face=no_face,
                           on_item=frame_callback(len(images)))
        head = torch.from_numpy(np.stack(crops.crops).astype(np.float32) / 255.0)
        coverage = torch.from_numpy(np.stack(crops.coverage))
        boxes = json.dumps([{"x0": b[0], "y0": b[1], "side": b[2], "face_found": f}
                            for b, f in zip(crops.boxes, crops.found)])
        return (head, coverage, boxes)
