"""A tiny CLIP vision model (transformers), and the same weights as a ComfyUI CLIP_VISION."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                 image_size=224, patch_size=32, projection_dim=32)


def tiny_clip_model(seed: int = 0, with_projection: bool = True, **overrides):
    """A randomly initialised transformers CLIP vision model (50 tokens x hidden_size)."""
    import transformers
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(**(TINY_CLIP | overrides))
    cls = transformers.CLIPVisionModelWithProjection if with_projection else transformers.CLIPVisionModel
    return cls(config).eval()


def write_tiny_clip_folder(folder: Path, seed: int = 0, **overrides) -> Path:
    tiny_clip_model(seed, **overrides).save_pretrained(folder)
    return folder


def comfy_clip_vision(model, tmp: Path):
    """The same weights as a ComfyUI ``CLIP_VISION`` (comfy.clip_vision.ClipVisionModel), as the
    core loader would build it from a file; needs the in-process host imported."""
    import comfy.clip_vision
    config = {k: getattr(model.config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "image_size", "patch_size",
                                                     "projection_dim", "hidden_act", "layer_norm_eps",
                                                     "num_channels")}
    # The 2025 host's comfy.clip_model reads model_type (the 2024 one ignores it).
    config["model_type"] = "clip_vision_model"
    path = tmp / "tiny_clip_vision.json"
    path.write_text(json.dumps(config))
    clip = comfy.clip_vision.ClipVisionModel(str(path))
    missing, unexpected = clip.load_sd(model.state_dict())
    if missing or unexpected:
        raise RuntimeError(f"tiny CLIP into ComfyUI: missing {missing}, unexpected {unexpected}")
    return clip
