"""Temporal smoothing of head parameters over video frames, so consecutive maps do not flicker.

Landmark fits jitter by a pixel or two from frame to frame; rendered at full resolution, that is
a visibly shaking head. A causal exponential moving average (each frame sees only earlier ones,
so frames can be smoothed as they stream) on the pose (through rotation matrices, so angles near
+-180 degrees average correctly), the expression-side parameters and the camera, with
``strength`` in [0, 1): 0 leaves the frames as they are, 0.5 halves a frame's own weight.

Only frames of one shot should be smoothed together (a cut would be blended across).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .params import HeadParams
from .rotation import axis_angle_to_matrix, matrix_to_axis_angle

SMOOTHED = ("expression", "eyelids", "jaw", "camera")


class HeadSmoother:
    """Feed frames in order with :meth:`__call__`; each call returns the smoothed frame."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {strength}")
        self.strength = strength
        self._state: dict[str, torch.Tensor] | None = None

    def __call__(self, head: HeadParams) -> HeadParams:
        """One frame (batch of 1) -> the same frame with smoothed pose, expression and camera."""
        if self.strength == 0.0:
            return head
        current = {k: getattr(head, k).float() for k in SMOOTHED}
        current["rotation"] = axis_angle_to_matrix(head.pose.float())
        if self._state is None:
            self._state = current
        else:
            a = self.strength
            self._state = {k: a * self._state[k] + (1 - a) * v for k, v in current.items()}
        rotation = project_to_rotation(self._state["rotation"])
        self._state["rotation"] = rotation
        return replace(head, pose=matrix_to_axis_angle(rotation).to(head.pose.dtype),
                       **{k: self._state[k].to(getattr(head, k).dtype) for k in SMOOTHED})


def smooth_heads(heads: HeadParams, strength: float) -> HeadParams:
    """All frames of ``heads`` (in order) smoothed with :class:`HeadSmoother`."""
    smoother = HeadSmoother(strength)
    return HeadParams.cat([smoother(heads[i]) for i in range(len(heads))])


def project_to_rotation(m: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] nearest rotation matrices (SVD) of averaged rotations."""
    u, _, vt = torch.linalg.svd(m)
    d = torch.sign(torch.linalg.det(u @ vt))
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return u @ fix @ vt
