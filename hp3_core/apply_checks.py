"""What applying HP3 checks and prepares from its inputs, whichever host applies it.

The ComfyUI nodes (``nodes/hp3_patch.py``) and the diffusers pipeline take the same things: a
strength and a window, the person's head features, HP3 weights and the shaded renders of the
driving frames. The method's rules for them live here, so a host only names its inputs: numbers
and weights must be finite (a NaN reaches every sampling step, and through ``0 * NaN`` even the
unconditional rows), frames of other sizes are brought to the first frame's, and renders from
another 3D backend than the weights learnt are worth a warning.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from .errors import HP3Error
from .hint import center_resize

log = logging.getLogger(__name__)


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's (first) parameters."""
    return next(module.parameters()).device


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's (first) parameters (the HP3 model computes in one dtype)."""
    return next(module.parameters()).dtype


def check_decoder_fits(block_channels: Sequence[int | None], config: Any, weights_path: str) -> None:
    """The UNet's decoder must be the one the HP3 weights' connector was built for.

    One check for both hosts: ComfyUI reads each decoder block's first GroupNorm, diffusers each
    up block's first resnet.

    Args:
        block_channels: per decoder block (UNet order), the channels its first GroupNorm
            normalises (decoder features + skip); None where the host cannot tell.
        config: the HP3 weights' :class:`~hp3_core.config.HP3Config`.
        weights_path: names the weights in the message.
    """
    expected = config.controller.decoder_channels()
    fix = f"use a base model of the family the weights were trained for ({config.family_name})"
    if len(block_channels) != len(expected):
        raise HP3Error(f"HP3 weights '{weights_path}' expect a UNet with {len(expected)} decoder blocks but "
                       f"this one has {len(block_channels)}; {fix}")
    for i, (found, (dec, skip)) in enumerate(zip(block_channels, expected)):
        if found is not None and found != dec + skip:
            raise HP3Error(f"HP3 weights '{weights_path}' do not fit this UNet: decoder block {i} normalises "
                           f"{found} channels, the weights expect {dec + skip}; {fix}")


def check_finite_number(name: str, value: Any) -> None:
    """Refuse NaN/inf (or a non-number) in a numeric input, naming the input."""
    try:
        ok = math.isfinite(float(value))
    except (TypeError, ValueError):
        raise HP3Error(f"HP3 input '{name}' must be a number, got {value!r}") from None
    if not ok:
        raise HP3Error(f"HP3 input '{name}' is {value} (not finite); set a number in its widget's range")


def check_head_finite(head: Any) -> None:
    """The head's feature tensors must be finite (a NaN here would reach every sampling step)."""
    for name in ("id_embeds", "clip_hidden", "tokens"):
        t = getattr(head, name, None)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise HP3Error(f"the head input's {name} contains NaN/inf values; re-run HP3 Head Encode "
                           f"(or re-create the saved head file)")


def check_connector_finite(model: Any, path: str) -> None:
    """NaN/inf connector weights would make even the unconditional rows NaN (0 * NaN = NaN).

    The connector is small (one check per apply); the controller's output is checked every step.
    """
    params = list(model.connector.named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for _, p in params])
    if bool(finite.all()):  # one host sync, not one per tensor
        return
    name = params[int((~finite).nonzero()[0])][0]
    raise HP3Error(f"the HP3 weights '{path}' hold NaN/inf values in connector.{name}; "
                   f"the file is damaged: re-download or re-export it")


def stack_renders(shaded: Sequence[torch.Tensor]) -> torch.Tensor:
    """One [F, H, W, 3] float CPU batch of shaded renders ([1, H, W, 3] each, 0..1).

    Driving frames of other sizes are centre-cropped and resized to the first frame's size (as
    the hint is later brought to the latent's), so a batch of mixed photos still drives one run.
    """
    frames = [torch.as_tensor(f).float().cpu() for f in shaded]
    if not frames:
        raise HP3Error("there are no shaded renders: retarget the head to at least one driving image")
    h, w = frames[0].shape[1:3]
    out = []
    for f in frames:
        if f.ndim != 4 or f.shape[-1] != 3:
            raise HP3Error(f"a shaded render must be [1, H, W, 3], got {list(f.shape)}")
        if tuple(f.shape[1:3]) != (h, w):
            f = center_resize(f.movedim(-1, 1), w, h).movedim(1, -1)
        out.append(f)
    renders = torch.cat(out).contiguous()
    if not torch.isfinite(renders).all():
        raise HP3Error("the 3D head renders contain NaN/inf values; re-run HP3 3D Head Retarget")
    return renders


def warn_if_other_backend(trained: str | None, backend: str, weights_path: str) -> bool:
    """Warn (and return True) when the renders come from another 3D backend than the weights learnt."""
    if trained is None or backend == trained:
        return False
    log.warning("HP3: the 3D renders come from the '%s' backend but the HP3 weights '%s' were trained "
                "with '%s' renders; results may be weaker (use the %s reconstructor)",
                backend, weights_path, trained, trained)
    return True
