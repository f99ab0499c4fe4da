"""Differentiable ArcFace for the identity loss.

* :class:`TorchArcFace`: the user's insightface recognizer ONNX (``glintr100.onnx``,
  ``w600k_r50.onnx``) converted to a torch module with ``onnx2torch``, frozen. Its input
  normalisation is face_analysis's (:func:`~hp3_core.head_encoder.face_analysis.arcface_normalisation`:
  RGB ``(x - 127.5) / 127.5`` on 0..255 pixels, or 0/1 for MXNet exports that normalise inside),
  so on the same aligned crop it gives onnxruntime's embedding.
* ``face_analysis.alignment_matrix`` + :func:`align_faces`: insightface's 5-point ``norm_crop`` (a
  similarity transform onto the ArcFace template, then ``cv2.warpAffine`` bilinear with a black
  border) as ``affine_grid``/``grid_sample``, so gradients reach the image. The transform is
  estimated once per sample from the target's cached keypoints (a constant, no gradient), by
  insightface's own ``estimate_norm``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HP3Error
from ..head_encoder.face_analysis import ALIGNED_SIZE, arcface_normalisation, find_pack
from ..optional import require

FEATURE = "The identity loss of HP3 training"


def resolve_recognizer(path: str | Path, pack: str = "auto") -> Path:
    """The recognizer ONNX: ``path`` itself, or the pack's recognizer inside an insightface folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        return find_pack(path, pack)[1]["recognizer"]
    raise HP3Error(f"ArcFace recognizer '{path}' does not exist; give the recognizer ONNX (e.g. "
                   f"antelopev2/glintr100.onnx) or the insightface folder that holds the pack")


class TorchArcFace(nn.Module):
    """ArcFace on aligned faces: [B, 3, S, S] RGB in -1..1 (S = the model's input, 112) ->
    [B, 512] L2-normalised embeddings, differentiable w.r.t. the input. Frozen (no parameters
    require grad)."""

    def __init__(self, net: nn.Module, mean: float, std: float, input_size: int = ALIGNED_SIZE,
                 name: str = "ArcFace") -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.mean, self.std = float(mean), float(std)
        self.input_size = int(input_size)
        self.name = name

    @classmethod
    def from_onnx(cls, path: str | Path) -> TorchArcFace:
        """Convert an insightface recognizer ONNX with onnx2torch (CPU, float32)."""
        path = Path(path)
        onnx2torch = require("onnx2torch", FEATURE)
        onnx = require("onnx", FEATURE)
        try:
            model = onnx.load(str(path))
            net = onnx2torch.convert(model)
        except Exception as err:  # noqa: BLE001 - onnx/onnx2torch raise many types
            raise HP3Error(f"ArcFace recognizer '{path}' cannot be converted to torch "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           f"use the insightface pack's own recognizer file") from None
        dims = model.graph.input[0].type.tensor_type.shape.dim
        size = dims[2].dim_value if len(dims) == 4 and dims[2].dim_value > 0 else ALIGNED_SIZE
        mean, std = arcface_normalisation(path)
        return cls(net, mean, std, size, name=path.name)

    def train(self, mode: bool = True) -> TorchArcFace:
        return super().train(False)  # frozen: BatchNorm statistics must never update

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``faces``: [B, 3, S, S] RGB in -1..1 (the VAE's range) -> [B, 512] unit vectors."""
        pixels = (faces + 1.0) * 127.5  # the 0..255 scale insightface feeds
        x = (pixels - self.mean) / self.std
        dtype = next(self.net.parameters(), faces).dtype
        emb = self.net(x.to(dtype)).float()
        return F.normalize(emb, dim=-1)


def grid_theta(matrix: np.ndarray, image_hw: tuple[int, int], size: int = ALIGNED_SIZE) -> torch.Tensor:
    """[2, 3] ``affine_grid`` theta (align_corners=False) sampling the ``size`` x ``size`` crop of
    an image of ``image_hw`` that ``cv2.warpAffine(image, matrix, (size, size))`` makes.

    warpAffine reads source pixel ``M^-1 (u, v, 1)`` for output pixel (u, v); affine_grid works in
    normalised coordinates where pixel x of a W-wide image is ``(2x + 1) / W - 1``. So
    ``theta = N_in @ M^-1 @ N_out^-1``.
    """
    h, w = image_hw
    m = np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)

    def to_norm(width: float, height: float) -> np.ndarray:
        return np.array([[2.0 / width, 0.0, 1.0 / width - 1.0],
                         [0.0, 2.0 / height, 1.0 / height - 1.0],
                         [0.0, 0.0, 1.0]])

    theta = to_norm(w, h) @ inv @ np.linalg.inv(to_norm(size, size))
    return torch.from_numpy(theta[:2]).float()


def align_faces(images: torch.Tensor, theta: torch.Tensor, size: int = ALIGNED_SIZE) -> torch.Tensor:
    """Differentiable 5-point alignment: images [B, 3, H, W] + theta [B, 2, 3] (from
    :func:`grid_theta`) -> [B, 3, size, size], bilinear, zeros outside (warpAffine's black border)."""
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
