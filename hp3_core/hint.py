"""The controller's inputs for a batch of rows: the render resized to the latent, and the
per-row conditions handed to the connector. Shared by the ComfyUI patch and the diffusers
pipeline so both hosts compute exactly the same thing."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .connector import ActiveConditions, AdaptiveConnector
from .errors import HP3Error

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


def conditions_for_rows(conds: list[torch.Tensor], rows: torch.Tensor, batch: int, strength: float,
                        connector: AdaptiveConnector, what: str) -> ActiveConditions:
    """The connector's state for a batch whose ``rows`` (long indices) got ``conds``.

    Other rows get zero conditions and strength 0, so they run the base UNet exactly. Non-finite
    conditions raise (one host sync per model call); ``what`` names the weights in the message.
    """
    finite = torch.stack([torch.isfinite(c).all() for c in conds])
    if not bool(finite.all()):
        block = int((~finite).nonzero()[0])
        raise HP3Error(f"the HP3 head conditions are not finite (NaN/inf) at decoder block {block}; {what} "
                       f"or the inputs are damaged, or the model runs in a precision too low for them")
    strengths = torch.zeros(batch, device=conds[0].device, dtype=torch.float32)
    strengths[rows] = float(strength)
    if len(rows) < batch:
        full = []
        for c in conds:
            z = torch.zeros((batch, *c.shape[1:]), device=c.device, dtype=c.dtype)
            z[rows] = c
            full.append(z)
        conds = full
    return ActiveConditions(conditions=list(conds), rows=strengths, connector=connector)
