"""One person's head features from R reference photos: face analysis, head crop, CLIP vision.

This is what runs once per graph execution (never per sampling step): the identity embedding
(ArcFace on the 5-point aligned face), the head crop (face + hair, square, padded at borders) and
the CLIP vision penultimate hidden states of that crop. The HP3 model's token decoder turns them
into head tokens (:class:`~hp3_core.head_encoder.token_decoder.HeadTokenDecoder`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .face_analysis import FaceAnalyzer
from .features import HeadFeatures
from .head_crop import HEAD_CROP_SIZE, HEAD_SCALE, apply, head_crop

# crops [R, S, S, 3] float 0..1 -> penultimate hidden states [R, T, C]
ClipEncodeFn = Callable[[torch.Tensor], torch.Tensor]


def encode_heads(images: Sequence[np.ndarray], analyzer: FaceAnalyzer, clip_encode: ClipEncodeFn,
                 names: Sequence[str] | None = None, face_index: int = 0, crop_scale: float = HEAD_SCALE,
                 crop_size: int = HEAD_CROP_SIZE, on_image: Callable[[int], None] | None = None) -> HeadFeatures:
    """Features of the person in ``images`` (RGB uint8 [H, W, 3], one face each used).

    Args:
        names: how errors and reports name each image (default ``source image k``).
        face_index: which face in each image (0 = largest).
        crop_scale: head crop side over the face box side (2.2 keeps hair and head shape).
        on_image: called after each image's face analysis (progress, interruption).

    Raises:
        InputImageError: an image has no face (the message names it).
    """
    names = list(names) if names is not None else [f"source image {i}" for i in range(len(images))]
    embeds, crops, keypoints, info = [], [], [], []
    for i, image in enumerate(images):
        face = analyzer.analyze(image, face_index=face_index, name=names[i])
        crop = head_crop(image, face.box, scale=crop_scale, size=crop_size)
        embeds.append(torch.from_numpy(face.embedding))
        crops.append(torch.from_numpy(crop.image).float() / 255.0)
        keypoints.append(apply(crop.image_to_crop, face.keypoints).astype(np.float32))
        info.append({"detector": face.detector, "recognizer": face.recognizer, "identity": face.identity,
                     "det_score": face.det_score,
                     "box": [round(float(v), 1) for v in face.box], "face_index": face.face_index,
                     "faces_found": face.faces_found})
        if on_image is not None:
            on_image(i)
    crop_batch = torch.stack(crops)
    hidden = clip_encode(crop_batch).float().cpu()
    return HeadFeatures(id_embeds=torch.stack(embeds), clip_hidden=hidden, crops=crop_batch,
                        keypoints=keypoints, clip_width=int(hidden.shape[-1]), source_names=names,
                        face_info=info)


def preview(features: HeadFeatures) -> torch.Tensor:
    """[R, S, S, 3] float 0..1: the head crops with the 5 keypoints drawn (for nodes and logs)."""
    from .head_crop import draw_keypoints
    out = [torch.from_numpy(np.asarray(draw_keypoints(features.crops[r].numpy(), features.keypoints[r], radius=3),
                                       dtype=np.float32)) for r in range(features.num_refs)]
    return torch.stack(out)
