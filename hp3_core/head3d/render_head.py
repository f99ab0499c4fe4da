"""Render heads into their images' pixel frames: the condition maps for HP3 and ControlNets."""
from __future__ import annotations

from typing import Protocol

import torch

from ..render import RenderedMaps, render_maps
from .camera import project_to_image
from .params import HeadParams


class HeadModel(Protocol):
    """Turns head parameters into a posed mesh in the model frame (see :mod:`hp3_core.head3d`)."""

    name: str
    full_head: bool

    @property
    def faces(self) -> torch.Tensor: ...          # [F, 3] int64

    def face_subset(self) -> torch.Tensor: ...    # [F] bool: triangles of the face region

    def vertices(self, params: HeadParams) -> torch.Tensor: ...  # [B, V, 3]


def screen_vertices(params: HeadParams, model: HeadModel) -> torch.Tensor:
    """[B, V, 3] vertices in each item's image pixels (z: smaller = nearer)."""
    return project_to_image(model.vertices(params), params.camera, params.image_to_crop, params.crop_size)


def render_heads(params: HeadParams, model: HeadModel, region: str = "head") -> list[RenderedMaps]:
    """Shaded, normal, depth and mask maps of each head at its image's full resolution.

    Args:
        region: ``head`` (every triangle) or ``face`` (the face region only). A face-only model
            (mediapipe) renders its face either way.

    Returns:
        One :class:`RenderedMaps` (batch of 1) per item; items may differ in size.
    """
    if region not in ("head", "face"):
        raise ValueError(f"region must be 'head' or 'face', got {region!r}")
    verts = screen_vertices(params, model)
    subset = model.face_subset() if region == "face" else None
    out = []
    for i, (h, w) in enumerate(params.image_size):
        out.append(render_maps(verts[i:i + 1], model.faces, int(h), int(w), face_subset=subset))
    return out
