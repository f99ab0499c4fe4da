"""The controller's hint: the shaded render resized to 8x the latent, as ComfyUI resizes
ControlNet hints. Both hosts use it through :mod:`hp3_core.head_control`."""
from __future__ import annotations

import torch
from torch.nn import functional as F


HINT_SCALE = 8  # the hint is at pixel resolution: 8x the latent


def center_resize(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width]: centre-crop to the aspect, then bilinear resize
    (as ComfyUI's ``common_upscale(..., "bilinear", "center")`` does for ControlNet hints)."""
    old_h, old_w = images.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    cropped = images.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    return F.interpolate(cropped, size=(height, width), mode="bilinear")


def hint_frames(renders: torch.Tensor, latent_h: int, latent_w: int, rows: int) -> torch.Tensor:
    """[rows, 3, 8h, 8w] hints from renders [F, 3, H, W]: F == rows maps one frame per row,
    F == 1 broadcasts, otherwise the frames repeat."""
    images = center_resize(renders, latent_w * HINT_SCALE, latent_h * HINT_SCALE)
    return images[torch.arange(rows, device=images.device) % images.shape[0]]
