"""Render heads into their images' pixel frames: the condition maps for HP3 and ControlNets.

Back-face culling: a head model may name the triangles whose back side is (almost) never seen
(``cullable``: outward-wound skin of the face, scalp and ears, and the eyeballs). Where such a
triangle faces away from the camera a front-facing triangle of the same surface covers it, so
skipping it (the rasterizer's ``cullable``) saves rasterizing about a third of a full head. Open
surfaces whose inside shows (the neck and its cut, the mouth socket, the teeth) are never culled.
The maps stay the same except at a few pixels of extreme poses (looking up into the neck's cut at
the inside of the skull, or a grazing back face winning a silhouette pixel by rounding): tests
bound them to 12 pixels a pose and 0.02% of the covered pixels over 30 poses. ``cull=False`` renders every triangle.
"""
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


def render_heads(params: HeadParams, model: HeadModel, region: str = "head", cull: bool = True) -> list[RenderedMaps]:
    """Shaded, normal, depth and mask maps of each head at its image's full resolution.

    Args:
        region: ``head`` (every triangle) or ``face`` (the face region only). A face-only model
            (mediapipe) renders its face either way.
        cull: skip back-facing ``cullable`` triangles when the model names them (faster; a few
            pixels of extreme poses differ, see above).

    Returns:
        One :class:`RenderedMaps` (batch of 1) per item; items may differ in size.
    """
    if region not in ("head", "face"):
        raise ValueError(f"region must be 'head' or 'face', got {region!r}")
    verts = screen_vertices(params, model)
    subset = model.face_subset() if region == "face" else None
    cullable = getattr(model, "cullable", None) if cull else None
    return [render_maps(verts[i:i + 1], model.faces, int(h), int(w), face_subset=subset, cullable=cullable)
            for i, (h, w) in enumerate(params.image_size)]
