"""HP3's training loss: ``L = L_diff + lambda * L_id`` (docs/method.md section 6).

* ``L_diff``: the usual MSE between the UNet's output and its target, per the scheduler's
  ``prediction_type`` (epsilon: the noise; v_prediction: ``alpha_t * noise - sigma_t * x0``;
  sample: x0), in float32.
* ``L_id = 1 - cos(ArcFace(source), ArcFace(aligned face of the decoded predicted x0))``, only on
  rows whose timestep is below ``id_loss_max_timestep`` (and whose head condition was not
  dropped): at high noise the predicted x0 is a blur ArcFace cannot read. Averaged over the
  **whole batch** (other rows count 0), so its scale does not jump with how many rows qualify.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import HP3Error
from .arcface_torch import TorchArcFace, align_faces
from .dlib_torch import TorchDlibRecognizer


def _schedule(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), each [B, 1, 1, 1] float32 on ``like``'s device."""
    ab = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[timesteps.long()]
    return ab.sqrt().view(-1, 1, 1, 1), (1.0 - ab).sqrt().view(-1, 1, 1, 1)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """What the UNet should output for ``noisy = add_noise(latents, noise, t)``, [B, 4, h, w]."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a, s = _schedule(scheduler, timesteps, latents)
        return a * noise.float() - s * latents.float()
    if prediction_type == "sample":
        return latents
    raise HP3Error(f"unknown prediction_type '{prediction_type}'; use epsilon, v_prediction or sample")


def predicted_x0(scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """The clean latent the UNet's output implies, float32 [B, 4, h, w] (differentiable)."""
    a, s = _schedule(scheduler, timesteps, noisy)
    x, p = noisy.float(), prediction.float()
    if prediction_type == "epsilon":
        return (x - s * p) / a
    if prediction_type == "v_prediction":
        return a * x - s * p
    if prediction_type == "sample":
        return p
    raise HP3Error(f"unknown prediction_type '{prediction_type}'; use epsilon, v_prediction or sample")


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (scalar)."""
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def identity_loss(arcface: TorchArcFace | TorchDlibRecognizer, images: torch.Tensor, theta: torch.Tensor,
                  source: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(1 - cos) / batch`` over the given rows, and the per-row cosines (detached).

    Args:
        arcface: the frozen differentiable recogniser of the dataset's identity backend (ArcFace,
            or dlib's ResNet; its ``input_size`` is the aligned crop's side).
        images: [R, 3, H, W] decoded predicted x0 of the qualifying rows, -1..1.
        theta: [R, 2, 3] alignment (see :func:`~hp3_core.training.arcface_torch.grid_theta`).
        source: [R, E] the sources' cached identity embeddings (ArcFace 512, dlib 128).
        batch: B, the whole batch's size (the denominator).
    """
    faces = align_faces(images, theta, arcface.input_size)
    emb = arcface(faces.clamp(-1.0, 1.0))
    cos = F.cosine_similarity(emb, F.normalize(source.float(), dim=-1), dim=-1)
    return (1.0 - cos).sum() / max(1, batch), cos.detach()
