"""Preview images shown on a node (saved to ComfyUI's temp folder, like the core Preview Image)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from PIL import Image

import folder_paths


def preview_ui(images: torch.Tensor, prefix: str = "hp3_preview", max_images: int = 8) -> list[dict]:
    """Save up to ``max_images`` of an IMAGE batch [B, H, W, C] to temp; returns the UI entries."""
    out_dir = folder_paths.get_temp_directory()
    os.makedirs(out_dir, exist_ok=True)
    tag = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
    entries = []
    for i in range(min(max_images, images.shape[0])):
        arr = (images[i].detach().cpu().float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        name = f"{prefix}_{tag}_{i:03d}.png"
        Image.fromarray(arr).save(os.path.join(out_dir, name), compress_level=1)
        entries.append({"filename": name, "subfolder": "", "type": "temp"})
    return entries
