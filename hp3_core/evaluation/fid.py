"""Image quality: Fréchet Inception Distance (FID, Heusel et al. 2017) against a reference folder.

Model: torchmetrics' ``FrechetInceptionDistance`` (torchmetrics 1.9) on torch-fidelity's
InceptionV3 (2048-d pool features), with its weights from a **local** file,
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's conversion of the TF FID graph;
https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/). It is never downloaded: the
file is passed as ``feature_extractor_weights_path`` and first opened with
``torch.load(weights_only=True)`` (tensors only), so a file that would need arbitrary unpickling
is refused before torch-fidelity loads it. Images are fed as uint8 [1, 3, H, W] one at a time
(any sizes: Inception resizes to 299x299, torchmetrics' default antialiased bilinear).

Formula: with ``mu_g, S_g`` and ``mu_r, S_r`` the mean and (n-1)-normalised covariance of the
features of the generated and reference sets, ``FID = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))``.
A set-level number (not per sample); it needs at least 2 images on each side and, to be
meaningful, thousands (with a few dozen images it is dominated by estimator bias: compare only
runs with the same image counts).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import HP3Error, MissingModelFileError
from ..image_io import IMAGE_SUFFIXES, load_image
from ..optional import require

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WHERE = ("torch-fidelity's release v0.2.0 (github.com/toshas/torch-fidelity/releases): "
         f"{WEIGHTS_FILE}; pass it with --fid-weights")


def inception_feature(weights: str | Path | None) -> torch.nn.Module:
    """torchmetrics' InceptionV3 (2048 features) with local weights; raises when the file is missing."""
    path = Path(weights) if weights else None
    if path is None or not path.is_file():
        raise MissingModelFileError("FID Inception weights", [WEIGHTS_FILE],
                                    [path.parent if path else "(no --fid-weights given)"], WHERE)
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors: refuse the file
        raise HP3Error(f"FID weights '{path}' are not a plain tensor file ({type(err).__name__}); "
                       f"use torch-fidelity's {WEIGHTS_FILE}") from err
    require("torch_fidelity", "FID")
    from torchmetrics.image.fid import NoTrainInceptionV3
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(path))


def image_files(folder: str | Path) -> list[Path]:
    """The images of a folder (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HP3Error(f"FID reference folder '{folder}' does not exist; give a folder of real images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def compute_fid(generated: Sequence[str | Path | np.ndarray], reference: Sequence[str | Path | np.ndarray],
                feature: torch.nn.Module, device: str = "cpu") -> float:
    """FID between two image sets (paths or RGB uint8 [H, W, 3] arrays) with ``feature``.

    ``feature`` maps uint8 [B, 3, H, W] to [B, F] (torch-fidelity's InceptionV3 from
    :func:`inception_feature`, or any module; torchmetrics accepts it as ``feature``).
    """
    if len(generated) < 2 or len(reference) < 2:
        raise HP3Error(f"FID needs at least 2 generated and 2 reference images, got {len(generated)} "
                       f"and {len(reference)}")
    require("torchmetrics", "FID")
    from torchmetrics.image.fid import FrechetInceptionDistance
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True).to(device)
    for images, real in ((reference, True), (generated, False)):
        for item in images:
            arr = load_image(item) if isinstance(item, (str, Path)) else np.asarray(item)
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].to(device)
            metric.update(x, real=real)
    return float(metric.compute())
