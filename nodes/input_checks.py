"""Checks of node inputs before any work: each failure is an HP3Error that names the input and the
fix, so ComfyUI's error box never shows a bare Python message ("stack expects a non-empty
TensorList", "integer modulo by zero"). API prompts can carry values the widgets' min/max never
allow, and other packs' nodes can feed odd tensors, so widget ranges are not enough."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..hp3_core.errors import HP3Error


def image_batch(name: str, images: Any) -> torch.Tensor:
    """An IMAGE [B, H, W, C] with B, H, W >= 1 and C in 1..4."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise HP3Error(f"{name}: expected an IMAGE batch [B, H, W, 3], got {shape}; connect a Load Image "
                       f"(or video) node")
    if images.shape[0] == 0 or images.shape[1] < 1 or images.shape[2] < 1:
        raise HP3Error(f"{name}: the IMAGE batch is empty ({list(images.shape)}); connect at least one image")
    if images.is_floating_point() and images.dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                           torch.float64):
        raise HP3Error(f"{name}: unsupported IMAGE type {images.dtype}; use a float IMAGE in 0..1")
    return images


def whole(name: str, value: Any, low: int, high: int | None = None, meaning: str = "") -> int:
    """An integer input within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"from {low} to {high}"
        raise HP3Error(f"{name} must be a whole number {bound}{f' ({meaning})' if meaning else ''}, got {value!r}")
    return value


def number(name: str, value: Any, low: float, high: float, meaning: str = "") -> float:
    """A finite float input within [low, high]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and low <= v <= high):
        raise HP3Error(f"{name} must be a number from {low:g} to {high:g}{f' ({meaning})' if meaning else ''}, "
                       f"got {value!r}")
    return v


def choice(name: str, value: Any, options: list[str] | tuple[str, ...]) -> str:
    """One of ``options``."""
    if value not in options:
        raise HP3Error(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}")
    return value


def connected(name: str, value: Any, attributes: tuple[str, ...], source: str) -> Any:
    """A host socket value that has ``attributes`` (i.e. came from ``source``).

    Only for ComfyUI's own types (``CLIP_VISION``), whose class differs between host versions;
    HP3's sockets are checked by type (:mod:`.sockets`).
    """
    if value is None or not all(hasattr(value, a) for a in attributes):
        raise HP3Error(f"{name}: connect '{source}' to this input (got {type(value).__name__})")
    return value
