"""The ICT full head as a :class:`~hp3_core.head3d.render_head.HeadModel`: parameters -> posed mesh.

``vertices = mean + identity_modes . shape + expression_shapes . expression``, in the FaceKit's
centimetres (see :mod:`.asset`), then posed.

The neck. The FaceKit's head is a bust: rotating it rigidly turns the neck against the body (a
head turned 40 degrees screws the neck round with it). Each vertex therefore follows a fraction
of the head's rotation about a pivot between the ears (the head-neck joint): the asset's
``neck_weight`` w (1 on the head, 0 at the base of the neck) blends the rotation from
``BODY_FOLLOWS`` of the head's axis-angle to all of it, ``R_v = exp((f + (1 - f) w) * omega)``,
and ``x' = R_v (x - c) + R c``. Vertices with w = 1 get exactly ``R x``; the neck bends smoothly
toward a body that faces where the head half-faces (the body is not observed: this is a prior).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..params import HeadParams
from ..rotation import axis_angle_to_matrix
from .asset import FACE_REGIONS, REGIONS, ICTHeadAsset, load_asset

# Fraction of the head's rotation the body (the base of the neck) follows.
BODY_FOLLOWS = 0.3
# Regions whose back faces are never seen (rendering may skip them, see render_head).
CULLABLE_REGIONS = ("face", "scalp", "ears", "sclera", "iris")


class ICTHeadModel:
    """Meshes of the ICT full head (skull, ears, neck, eyes and mouth interior)."""

    name = "ict"
    full_head = True

    def __init__(self, asset: ICTHeadAsset | None = None) -> None:
        self.asset = asset if asset is not None else load_asset()
        a = self.asset
        self.mean = torch.from_numpy(a.vertices).float()                              # [V, 3]
        v = a.vertices.shape[0]
        # Bases as [K, V*3] float32 matrices: one matmul per batch for all modes.
        self.identity_basis = torch.from_numpy(a.identity.astype(np.float32).reshape(a.num_identity, v * 3))
        self.expression_basis = torch.from_numpy(a.expression.astype(np.float32).reshape(a.num_expression, v * 3))
        self._faces = torch.from_numpy(a.triangles).long()
        # Closed, outward-wound skin and eyeballs: their back faces are always hidden (see
        # render_head). The neck's cut, the mouth socket and the teeth show their inside.
        self.cullable = self.region_subset(CULLABLE_REGIONS)
        weight = torch.from_numpy(a.neck_weight).float()
        self.neck_vertices = torch.nonzero(weight < 1.0).squeeze(1)                    # [N]
        self.neck_fraction = BODY_FOLLOWS + (1.0 - BODY_FOLLOWS) * weight[self.neck_vertices]
        ears = torch.from_numpy(a.region_mask(("ears",)))
        pivot = self.mean[ears].mean(0) if bool(ears.any()) else self.mean.mean(0)
        self.pivot = torch.tensor([0.0, float(pivot[1]), float(pivot[2])])            # on the mid-plane

    @property
    def faces(self) -> torch.Tensor:
        """[F, 3] int64 triangles."""
        return self._faces

    @property
    def num_identity(self) -> int:
        return self.asset.num_identity

    @property
    def num_expression(self) -> int:
        return self.asset.num_expression

    def face_subset(self) -> torch.Tensor:
        """[F] bool: the face and what shows through its openings (eyes, mouth, teeth)."""
        return self.region_subset(FACE_REGIONS)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a handful of region tuples per model
    def region_subset(self, regions: tuple[str, ...]) -> torch.Tensor:
        """[F] bool: triangles of the named regions (see :data:`~.asset.REGIONS`)."""
        tri_region = torch.from_numpy(self.asset.triangle_region().astype(np.int64))
        return torch.isin(tri_region, torch.tensor([REGIONS.index(r) for r in regions]))

    def canonical(self, params: HeadParams) -> torch.Tensor:
        """[B, V, 3] unposed vertices (centimetres) of identity ``shape`` and ``expression``."""
        return canonical_vertices(self.mean, self.identity_basis, self.expression_basis,
                                  params.shape, params.expression)

    def vertices(self, params: HeadParams) -> torch.Tensor:
        """[B, V, 3] posed vertices in the model frame (centimetres); the neck bends (see module)."""
        x = self.canonical(params)
        rot = axis_angle_to_matrix(params.pose.to(x.dtype))                          # [B, 3, 3]
        posed = x @ rot.transpose(1, 2)
        if len(self.neck_vertices):
            b = x.shape[0]
            c = self.pivot.to(x)
            part = x[:, self.neck_vertices] - c                                          # [B, N, 3]
            frac = self.neck_fraction.to(x)                                              # [N]
            local = axis_angle_to_matrix((params.pose.to(x)[:, None, :] * frac[None, :, None]).reshape(-1, 3))
            bent = (local.view(b, -1, 3, 3) @ part.unsqueeze(-1)).squeeze(-1) + (rot @ c)[:, None, :]
            posed[:, self.neck_vertices] = bent
        return posed

    def landmark_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """[B, 478, 3] the surface points matching MediaPipe's landmarks, from [B, V, 3] vertices."""
        tri = self._faces[torch.from_numpy(self.asset.mediapipe_triangle)]               # [478, 3]
        bary = torch.from_numpy(self.asset.mediapipe_barycentric).to(vertices)           # [478, 3]
        return (vertices[:, tri] * bary[None, :, :, None]).sum(2)


def canonical_vertices(mean: torch.Tensor, identity_basis: torch.Tensor, expression_basis: torch.Tensor,
                       shape: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
    """[B, V, 3] = mean [V, 3] + shape [B, I] @ identity [I, V*3] + expression [B, E] @ expr [E, V*3]."""
    b, v = shape.shape[0], mean.shape[0]
    offsets = shape.to(identity_basis) @ identity_basis + expression.to(expression_basis) @ expression_basis
    return mean.to(offsets)[None] + offsets.view(b, v, 3)
