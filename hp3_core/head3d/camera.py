"""Orthographic projection from a head model's frame into an image's pixel frame.

SMIRK (like DECA) predicts a weak-perspective camera ``(s, tx, ty)`` for a square crop:
``u = s * (x + tx)``, ``v = -s * (y + ty)`` in normalised crop coordinates [-1, 1] (y flipped
because the model frame has y up and images y down). Crop pixels are ``(u + 1) / 2 * crop_size``
and the crop's affine matrix maps them back to the full image. Depth follows the same scale,
``-s * z``, so nearer points get smaller values, as the renderer expects.
"""
from __future__ import annotations

import torch


def project_to_image(vertices: torch.Tensor, camera: torch.Tensor, image_to_crop: torch.Tensor,
                     crop_size: int) -> torch.Tensor:
    """Screen vertices in the full image.

    Args:
        vertices: [B, V, 3] posed vertices in the model frame.
        camera: [B, 3] ``(s, tx, ty)``.
        image_to_crop: [B, 3, 3] affine matrix (last row 0, 0, 1) from image to crop pixels.
        crop_size: side of the square crop in pixels.

    Returns:
        [B, V, 3]: x, y in image pixels (y down), z in image pixel units, smaller = nearer.
    """
    s, t = camera[:, None, :1], camera[:, None, 1:]
    uv = s * (vertices[..., :2] + t)
    uv = torch.stack([uv[..., 0], -uv[..., 1]], dim=-1)
    crop_px = (uv + 1.0) * (crop_size / 2.0)
    crop_to_image = torch.linalg.inv(image_to_crop.to(vertices.dtype))
    lin, off = crop_to_image[:, None, :2, :2], crop_to_image[:, None, :2, 2]
    xy = (lin @ crop_px.unsqueeze(-1)).squeeze(-1) + off
    # Isotropic scale of the crop->image map, so depth is in the same pixel units as x and y.
    scale = torch.sqrt(torch.abs(torch.linalg.det(crop_to_image[:, :2, :2])))[:, None]
    z = -s[..., 0] * vertices[..., 2] * (crop_size / 2.0) * scale
    return torch.cat([xy, z.unsqueeze(-1)], dim=-1)
