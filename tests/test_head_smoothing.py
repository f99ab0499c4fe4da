"""Temporal smoothing of head parameters: flicker goes down, a still head stays put."""
from __future__ import annotations

import math

import pytest
import torch

from hp3_core.head3d.params import HeadParams
from hp3_core.head3d.rotation import yaw_pitch_roll
from hp3_core.head3d.smoothing import HeadSmoother, smooth_heads


def frames(yaws_deg: list[float], jaw_open: list[float]) -> HeadParams:
    b = len(yaws_deg)
    pose = torch.tensor([[0.0, math.radians(y), 0.0] for y in yaws_deg])
    expression = torch.zeros(b, 55)
    expression[:, 26] = torch.tensor(jaw_open)
    return HeadParams(backend="ict", shape=torch.zeros(b, 100), expression=expression,
                      eyelids=torch.zeros(b, 2), jaw=torch.zeros(b, 3), pose=pose,
                      camera=torch.tensor([[1.0, 0.0, 0.0]]).repeat(b, 1),
                      image_to_crop=torch.eye(3).repeat(b, 1, 1), crop_size=224, image_size=[(64, 64)] * b)


def test_jitter_is_reduced_and_a_constant_head_is_unchanged():
    torch.manual_seed(0)
    noisy_yaw = (10 + 3 * torch.randn(40)).tolist()
    noisy_jaw = (0.5 + 0.1 * torch.randn(40)).clamp(0, 1).tolist()
    raw = frames(noisy_yaw, noisy_jaw)
    smooth = smooth_heads(raw, 0.7)
    yaw_raw = yaw_pitch_roll(raw.pose)[:, 0]
    yaw_smooth = yaw_pitch_roll(smooth.pose)[:, 0]
    assert yaw_smooth[10:].diff().abs().mean() < 0.5 * yaw_raw[10:].diff().abs().mean()
    assert smooth.expression[10:, 26].diff().abs().mean() < 0.5 * raw.expression[10:, 26].diff().abs().mean()
    assert torch.equal(smooth.shape, raw.shape), "identity is never smoothed"
    still = frames([20.0] * 5, [0.3] * 5)
    out = smooth_heads(still, 0.9)
    assert torch.allclose(out.pose, still.pose, atol=1e-5) and torch.allclose(out.expression, still.expression)
    assert torch.equal(smooth_heads(raw, 0.0).pose, raw.pose)


def test_rotations_average_across_the_wrap():
    out = smooth_heads(frames([179.0, -179.0], [0.0, 0.0]), 0.5)
    assert abs(abs(float(yaw_pitch_roll(out.pose)[1, 0])) - 180.0) < 2.0


def test_strength_is_checked():
    with pytest.raises(ValueError, match="smoothing"):
        HeadSmoother(1.0)
