"""HP3 on a ComfyUI MODEL: the host adapter of the head controller and the adaptive connector.

The method's math lives in :mod:`hp3_core` (controller, connector). This module only plugs it into
ComfyUI's ModelPatcher, on a **clone** of the MODEL (other clones are untouched):

* a UNet function wrapper (:class:`HP3UNetWrapper`) runs the head controller once per model
  call, on the conditional rows only, and makes the conditions current
  (:func:`hp3_core.connector.active`) while the UNet runs;
* an output-block patch (:class:`HP3OutputPatch`) adds ``ZeroConv(c)`` to the decoder features
  before each skip concatenation (:func:`hp3_core.connector.inject`);
* object patches replace each decoder ResBlock's first GroupNorm by
  :class:`~hp3_core.connector.ModulatedGroupNorm` (wrapping the original module, not a copy).

The unconditional branch of CFG gets no head conditions: its rows run the base UNet exactly,
as the core Apply ControlNet does when it is applied to the positive conditioning only.

Patch objects share the HP3 weights: ``copy.deepcopy`` (what ``ModelPatcher.clone`` does to
``model_options`` on 2024/2025 hosts) returns the same object, ``.to(device)`` moves the shared
HP3 model, ``.to(dtype)`` keeps the weights' own dtype (the core casts at its boundaries), and
``.models()`` is empty (the HP3 model is not a ModelPatcher the host should load).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..hp3_core import connector as hp3_connector
from ..hp3_core.connector import ModulatedGroupNorm
from ..hp3_core.errors import HP3Error
from ..hp3_core.hint import center_resize, conditions_for_rows, hint_frames
from ..hp3_core.weights import check_family
from .model_family import model_family

log = logging.getLogger(__name__)

IN_MEMORY = "<in-memory HP3 model>"


def _is_hp3_model(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("encoder", "controller", "connector", "conditions", "head_tokens"))


def unwrap_hp3_model(obj: Any) -> tuple[Any, str, dict]:
    """(HP3Model, weights path, metadata) of an HP3_MODEL socket value (loaded wrapper or model)."""
    if obj is None:
        raise HP3Error("no HP3 model is connected: connect 'Load HP3 Model' to the hp3_model input")
    if _is_hp3_model(obj):
        return obj, IN_MEMORY, {}
    inner = getattr(obj, "model", None)
    if inner is not None and _is_hp3_model(inner):
        return inner, str(getattr(obj, "path", IN_MEMORY)), dict(getattr(obj, "metadata", {}) or {})
    raise HP3Error(f"the hp3_model input is a {type(obj).__name__}, not an HP3 model: "
                   f"connect 'Load HP3 Model' to it")


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _to_device(model: torch.nn.Module, device: torch.device) -> None:
    """Move the shared HP3 model to ``device`` (weights stay shared between clones)."""
    if _device_of(model) != torch.device(device):
        model.to(device)


@dataclass(frozen=True, eq=False)
class HP3Conditions:
    """What the head controller node gives (socket type ``HP3_CONDITIONS``).

    Attributes:
        model: the HP3Model (shared, never copied).
        tokens: [N, D] head tokens of the person (computed once, with the model's token decoder).
        renders: [F, H, W, 3] the shaded 3D renders in 0..1, one per driving frame.
        strength: multiplies every change the connector makes (0 = the base UNet).
        start_percent, end_percent: the part of the sampling where HP3 applies.
        backend, full_head: the 3D backend of the renders (mediapipe is face only).
        weights_path: the HP3 weights' file (for messages).
    """

    model: Any
    tokens: torch.Tensor
    renders: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    backend: str = "?"
    full_head: bool = True
    weights_path: str = IN_MEMORY

    def __deepcopy__(self, memo):
        return self  # immutable; shares the HP3 weights

    @property
    def family(self) -> str:
        return self.model.config.family


def _renders(head3d: Any) -> torch.Tensor:
    maps = getattr(head3d, "maps", None)
    if not maps:
        raise HP3Error("the head3d input holds no rendered frames: connect 'HP3 3D Head Retarget' "
                       "with at least one driving image")
    frames = [torch.as_tensor(m.shaded).float().cpu() for m in maps]
    h, w = frames[0].shape[1:3]
    out = []
    for f in frames:
        if f.ndim != 4 or f.shape[-1] != 3:
            raise HP3Error(f"a shaded render must be [1, H, W, 3], got {list(f.shape)}")
        if tuple(f.shape[1:3]) != (h, w):  # driving frames of other sizes: to the first's size
            f = center_resize(f.movedim(-1, 1), w, h).movedim(1, -1)
        out.append(f)
    return torch.cat(out).contiguous()


def make_conditions(hp3_model: Any, head: Any, head3d: Any, strength: float = 1.0,
                    start_percent: float = 0.0, end_percent: float = 1.0) -> HP3Conditions:
    """The HP3 conditions of one person (``head``) and its retargeted 3D renders (``head3d``)."""
    model, path, _ = unwrap_hp3_model(hp3_model)
    if head is None:
        raise HP3Error("no head is connected: connect 'HP3 Head Encode' to the head input")
    if head3d is None:
        raise HP3Error("no 3D head is connected: connect 'HP3 3D Head Retarget' to the head3d input")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise HP3Error(f"HP3 start_percent ({start_percent}) must not exceed end_percent ({end_percent}); "
                       f"both are between 0 and 1")
    with torch.no_grad():
        device = _device_of(model.encoder)
        features = head.to(device) if hasattr(head, "to") else head
        tokens = model.head_tokens(features).detach()
    if not torch.isfinite(tokens).all():
        raise HP3Error(f"the head tokens of HP3 weights '{path}' are not finite (NaN/inf): the weights or "
                       f"the head features are damaged; re-encode the head or re-download the weights")
    renders = _renders(head3d)
    if not torch.isfinite(renders).all():
        raise HP3Error("the 3D head renders contain NaN/inf values; re-run HP3 3D Head Retarget")
    backend = str(getattr(head3d, "backend", "?"))
    trained = getattr(model.config, "render_backend", None)
    if trained is not None and backend != trained:
        log.warning("HP3: the 3D renders come from the '%s' backend but the HP3 weights '%s' were trained "
                    "with '%s' renders; results may be weaker (use the %s reconstructor)",
                    backend, path, trained, trained)
    return HP3Conditions(model=model, tokens=tokens, renders=renders, strength=float(strength),
                         start_percent=float(start_percent), end_percent=float(end_percent),
                         backend=backend, full_head=bool(getattr(head3d, "full_head", True)),
                         weights_path=path)


class _SharedPatch:
    """Weight-sharing behaviour ComfyUI expects of patch objects."""

    def __deepcopy__(self, memo):
        return self

    def models(self) -> list:
        return []


class HP3OutputPatch(_SharedPatch):
    """``set_model_output_block_patch``: ``h + rows * ZeroConv(c)`` before each skip concatenation."""

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        block = transformer_options.get("block")
        if block is not None and block[0] == "output":
            h = hp3_connector.inject(int(block[1]), h)
        return h, hsp

    def to(self, *args, **kwargs) -> HP3OutputPatch:
        return self


class HP3UNetWrapper(_SharedPatch):
    """The UNet function wrapper: runs the head controller on the conditional rows, then the UNet.

    Args:
        conditions: the :class:`HP3Conditions`.
        model_sampling: the MODEL's model sampling (sigma <-> timestep, input scaling).
        inner: a wrapper the MODEL already had; it is called inside this one (chained).
    """

    def __init__(self, conditions: HP3Conditions, model_sampling: Any, inner: Any = None) -> None:
        self.conditions = conditions
        self.model_sampling = model_sampling
        self.inner = inner
        self.sigma_start = float(model_sampling.percent_to_sigma(conditions.start_percent))
        self.sigma_end = float(model_sampling.percent_to_sigma(conditions.end_percent))
        self._hints: dict[tuple, torch.Tensor] = {}  # resized renders by latent size and device

    # -- host protocol -----------------------------------------------------------------------
    def to(self, device_or_dtype=None, *args, **kwargs) -> HP3UNetWrapper:
        if device_or_dtype is not None and not isinstance(device_or_dtype, torch.dtype):
            _to_device(self.conditions.model, torch.device(device_or_dtype))
        inner = self.inner
        if inner is not None and hasattr(inner, "to"):
            moved = inner.to(device_or_dtype, *args, **kwargs)
            if moved is not inner:  # never mutate an installed patch: a new wrapper, same weights
                return HP3UNetWrapper(self.conditions, self.model_sampling, moved)
        return self

    def models(self) -> list:
        inner = self.inner
        return list(inner.models()) if inner is not None and hasattr(inner, "models") else []

    # -- the model call ----------------------------------------------------------------------
    def __call__(self, apply_model, args: dict):
        state = self.state_for(args["input"], args["timestep"], args["c"], args["cond_or_uncond"])
        with hp3_connector.active(state):
            if self.inner is not None:
                return self.inner(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])

    def hp3_rows(self, batch: int, cond_or_uncond: list) -> list[int]:
        """Rows that get HP3: those of the conditional chunks (``cond_or_uncond`` entry 0)."""
        chunks = max(1, len(cond_or_uncond))
        per = batch // chunks
        return [k * per + j for k, flag in enumerate(cond_or_uncond) if flag == 0 for j in range(per)]

    def active_window(self, sigma: torch.Tensor) -> bool:
        s = float(sigma.flatten()[0])
        return self.sigma_end <= s <= self.sigma_start

    def state_for(self, x: torch.Tensor, sigma: torch.Tensor, c: dict, cond_or_uncond: list):
        """The :class:`ActiveConditions` of one model call, or None (base UNet) when HP3 is off."""
        cond = self.conditions
        if cond.strength == 0 or not self.active_window(sigma):
            return None
        batch = x.shape[0]
        rows = self.hp3_rows(batch, cond_or_uncond)
        if not rows:
            return None
        model = cond.model
        _to_device(model, x.device)
        idx = torch.tensor(rows, device=x.device, dtype=torch.long)
        per = batch // max(1, len(cond_or_uncond))
        ms = self.model_sampling
        sig = sigma.to(x.device)[idx]
        sample = ms.calculate_input(sig, x[idx])
        timesteps = ms.timestep(sig).float()
        tokens = cond.tokens.to(x.device)
        tokens = tokens.unsqueeze(0).expand(len(rows), *tokens.shape)
        hint = self.hint(x.shape[-2], x.shape[-1], per, x.device)
        hint = hint.repeat(len(rows) // per, 1, 1, 1) if per else hint
        y = c.get("y")
        if y is not None:
            y = y.to(x.device)[idx]
        with torch.no_grad():
            conds = model.conditions(sample, timesteps, tokens, hint, y)
        return conditions_for_rows(conds, idx, batch, cond.strength, model.connector,
                                   f"the HP3 weights '{cond.weights_path}' (sigma {float(sig[0]):.4g})")

    def hint(self, h: int, w: int, per_chunk: int, device: torch.device) -> torch.Tensor:
        """[per_chunk, 3, 8h, 8w] renders: center-cropped, resized, frames mapped to the rows."""
        key = (h, w, per_chunk, str(device))
        cached = self._hints.get(key)
        if cached is None:  # the same every step: resize once per latent size
            renders = self.conditions.renders.to(device).movedim(-1, 1)
            cached = self._hints[key] = hint_frames(renders, h, w, per_chunk)
        return cached


def apply_hp3(model_patcher: Any, conditions: HP3Conditions | None) -> Any:
    """A clone of ``model_patcher`` with HP3 installed (the original is left unchanged)."""
    if model_patcher is None:
        raise HP3Error("no MODEL is connected: connect a checkpoint loader's MODEL to HP3")
    if conditions is None:
        raise HP3Error("no HP3 conditions are connected: connect 'HP3 Head Controller'")
    model = conditions.model
    check_family(conditions.weights_path, model.config.family, model_family(model_patcher))
    unet = model_patcher.model.diffusion_model
    blocks = list(getattr(unet, "output_blocks", []))
    expected = model.config.controller.decoder_channels()
    if len(blocks) != len(expected):
        raise HP3Error(f"HP3 weights '{conditions.weights_path}' expect a UNet with {len(expected)} decoder "
                       f"blocks but this MODEL has {len(blocks)}; use a base model of the family "
                       f"the weights were trained for ({model.config.family_name})")

    m = model_patcher.clone()
    inner = m.model_options.get("model_function_wrapper")
    if isinstance(inner, HP3UNetWrapper):  # HP3 applied again: the new conditions replace the old
        inner = inner.inner
    patches = m.model_options["transformer_options"].get("patches", {})
    if "output_block_patch" in patches:
        patches["output_block_patch"] = [p for p in patches["output_block_patch"]
                                         if not isinstance(p, HP3OutputPatch)]
    model_sampling = m.object_patches.get("model_sampling", m.model.model_sampling)
    m.set_model_unet_function_wrapper(HP3UNetWrapper(conditions, model_sampling, inner))
    m.set_model_output_block_patch(HP3OutputPatch())

    for i, (block, (dec, skip)) in enumerate(zip(blocks, expected)):
        key = f"diffusion_model.output_blocks.{i}.0.in_layers.0"
        try:
            norm = block[0].in_layers[0]
        except (AttributeError, IndexError, TypeError):
            raise HP3Error(f"decoder block {i} of this MODEL is not a ResBlock; HP3 supports SD1.5/SDXL "
                           f"UNets") from None
        while isinstance(norm, ModulatedGroupNorm):  # the model is loaded with another HP3 clone
            norm = norm.original
        channels = getattr(norm, "num_channels", dec + skip)
        if channels != dec + skip:
            raise HP3Error(f"HP3 weights '{conditions.weights_path}' do not fit this MODEL: decoder block {i} "
                           f"normalises {channels} channels, the weights expect {dec + skip}; use the "
                           f"base model family they were trained for ({model.config.family_name})")
        m.add_object_patch(key, ModulatedGroupNorm(norm, i))
    return m
