"""Rotations: axis-angle <-> matrix, and yaw/pitch/roll for reports. Batched torch, radians."""
from __future__ import annotations

import math

import torch


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """[B, 3] axis-angle (radians) -> [B, 3, 3] rotation matrices (Rodrigues)."""
    angle = aa.norm(dim=-1, keepdim=True)
    axis = aa / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] rotation matrices -> [B, 3] axis-angle, through unit quaternions (stable near 0 and pi)."""
    q = matrix_to_quaternion(m)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0: angle in [0, pi]
    vec = q[:, 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[:, :1])
    return vec / sin_half.clamp_min(1e-12) * angle


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] -> [B, 4] (w, x, y, z), Shepperd's method."""
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m00 - m11 - m22, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m00 + m11 - m22, m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m00 - m11 + m22], -1),
    ], 1)  # [B, 4, 4]: row i is 4*q*q_i for the i-th largest-diagonal choice
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1)
    q = candidates[torch.arange(m.shape[0]), best]
    return torch.nn.functional.normalize(q, dim=-1)


def yaw_pitch_roll(aa: torch.Tensor) -> torch.Tensor:
    """[B, 3] axis-angle -> [B, 3] degrees: yaw (about y, positive = head turned to its left,
    i.e. toward image right), pitch (about x, positive = looking up), roll (about z)."""
    m = axis_angle_to_matrix(aa)
    # R = Ry(yaw) @ Rx(pitch) @ Rz(roll)
    pitch = torch.asin((-m[:, 1, 2]).clamp(-1, 1))
    yaw = torch.atan2(m[:, 0, 2], m[:, 2, 2])
    roll = torch.atan2(m[:, 1, 0], m[:, 1, 1])
    return torch.stack([yaw, pitch, roll], -1) * (180.0 / math.pi)
