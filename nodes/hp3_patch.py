"""HP3 on a ComfyUI MODEL: the host adapter of the head controller and the adaptive connector.

The method's math lives in :mod:`hp3_core` (controller, connector). This module only plugs it into
ComfyUI's ModelPatcher, on a **clone** of the MODEL (other clones are untouched):

* a UNet function wrapper (:class:`HP3UNetWrapper`) prepares each model call with
  :func:`hp3_core.head_control.prepare_call` (the head controller on the conditional rows only,
  the function the diffusers pipeline uses too) and makes the connector state current
  (:func:`hp3_core.connector.active`) while the UNet runs;
* an output-block patch (:class:`HP3OutputPatch`) adds ``ZeroConv(c)`` to the decoder features
  before each skip concatenation (:func:`hp3_core.connector.inject`);
* object patches replace each decoder ResBlock's first GroupNorm by
  :class:`~hp3_core.connector.ModulatedGroupNorm` (wrapping the original module, not a copy).

The unconditional branch of CFG gets no head conditions: its rows run the base UNet exactly,
as the core Apply ControlNet does when it is applied to the positive conditioning only.

One HP3 per MODEL, composed with other packs (see NODES.md, "HP3 beside other packs"):

* the install is recorded in ``transformer_options[HP3_KEY]`` (an :class:`HP3Install`), which the
  host hands to every model call. A later Apply HP3 replaces an earlier one (logged); at strength 0
  it leaves the MODEL, and so an earlier HP3, as it is;
* HP3's wrapper calls the wrapper it finds (installed before by another pack). An HP3 wrapper that
  is still called through another pack's wrapper after a later Apply HP3 replaced it passes the
  call through: only the MODEL's current HP3 runs its controller;
* a wrapper installed after HP3 that does not call the previous one switches HP3 off; the
  output-block patch notices at sample time (HP3's wrapper did not run) and logs a warning.

Patch objects share the HP3 weights: ``copy.deepcopy`` (what ``ModelPatcher.clone`` does to
``model_options`` on 2024/2025 hosts) returns the same object. The HP3 model is under the host's
memory management like a ControlNet (:mod:`.hp3_memory`): the wrapper holds a ``ModelPatcher`` of
it, in the UNet's compute dtype (fp16/bf16 copy, or the float32 model itself), reports it from
``.models()`` (the 2025 host loads, counts and offloads it with the UNet) and loads it itself on
the 2024 host. ``.to(device)`` / ``.to(dtype)`` leave it to the host (the core casts inputs at its
boundaries).
"""
from __future__ import annotations

import contextvars
import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..hp3_core import connector as hp3_connector
from ..hp3_core.apply_checks import check_decoder_fits, check_head_finite, device_of
from ..hp3_core.connector import ConnectorState, ModulatedGroupNorm
from ..hp3_core.errors import HP3Error
from ..hp3_core.head_control import HeadControl, SamplingWindow, make_head_control, prepare_call
from ..hp3_core.weights import check_family
from . import sockets
from .hp3_memory import compute_dtype, ensure_loaded, host_loads_patch_models, hp3_patcher
from .model_family import model_family

log = logging.getLogger(__name__)

HP3_KEY = "hp3"  # transformer_options key: the MODEL's HP3Install (the host passes it to every call)


def _to_device(model: torch.nn.Module, device: torch.device) -> None:
    """Move the shared HP3 model to ``device`` (weights stay shared between clones)."""
    if device_of(model) != torch.device(device):
        model.to(device)


def head_control_from_inputs(hp3_model: Any, head: Any, head3d: Any, strength: float = 1.0,
                             start_percent: float = 0.0, end_percent: float = 1.0) -> HeadControl:
    """The :class:`HeadControl` of the head controller node's inputs (each checked by type)."""
    model, path, _ = sockets.hp3_model(hp3_model)
    features = sockets.head(head)
    retargeted = sockets.head3d(head3d)
    window = SamplingWindow(start_percent, end_percent)
    check_head_finite(features)
    with torch.no_grad():
        tokens = model.head_tokens(features.to(device_of(model.token_decoder))).detach()
    return make_head_control(model, tokens, [m.shaded for m in retargeted.maps], strength, window,
                             backend=retargeted.backend, full_head=retargeted.full_head, weights_path=path)


@dataclass(frozen=True, eq=False)
class HP3Install:
    """One Apply HP3 on a MODEL copy, recorded in ``transformer_options[HP3_KEY]``.

    Compared by identity: the wrapper and the output patch of one Apply hold the same object, so
    at sample time each can tell whether it is the MODEL's current HP3.
    """

    weights_path: str
    strength: float

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options: keep the identity

    def describe(self) -> str:
        return f"weights '{self.weights_path}', strength {self.strength:g}"


# The install whose wrapper is running the current model call (set by HP3UNetWrapper).
_running: contextvars.ContextVar[HP3Install | None] = contextvars.ContextVar("hp3_wrapper_running",
                                                                             default=None)
_reported_displaced: weakref.WeakSet[HP3Install] = weakref.WeakSet()


@contextmanager
def _wrapper_running(install: HP3Install) -> Iterator[None]:
    token = _running.set(install)
    try:
        yield
    finally:
        _running.reset(token)


def _install_of_call(args: dict) -> HP3Install | None:
    """The HP3 install of the MODEL being sampled, from the model call's transformer_options."""
    c = args.get("c")
    options = c.get("transformer_options") if isinstance(c, dict) else None
    install = options.get(HP3_KEY) if isinstance(options, dict) else None
    return install if isinstance(install, HP3Install) else None


def _report_displaced(install: HP3Install) -> None:
    """Warn once per install that HP3's wrapper did not run (HP3 is off for this sampling)."""
    if install in _reported_displaced:
        return
    _reported_displaced.add(install)
    log.warning("HP3 is switched OFF for this sampling (%s): a node applied to the MODEL after Apply HP3 "
                "replaced the UNet function wrapper (model_function_wrapper) without calling HP3's. "
                "Apply HP3 after that node instead: HP3 calls the wrapper it finds, so both then run.",
                install.describe())


class _SharedPatch:
    """Weight-sharing behaviour ComfyUI expects of patch objects."""

    def __deepcopy__(self, memo):
        return self

    def models(self) -> list:
        return []


class HP3OutputPatch(_SharedPatch):
    """``set_model_output_block_patch``: ``h + rows * ZeroConv(c)`` before each skip concatenation.

    It also notices when HP3's wrapper did not run for this model call (another pack's wrapper,
    installed later, does not chain): HP3 is then off, and that is logged once per install.
    """

    def __init__(self, install: HP3Install | None = None) -> None:
        self.install = install

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        if self.install is not None and _running.get() is not self.install:
            _report_displaced(self.install)
        block = transformer_options.get("block")
        if block is not None and block[0] == "output":
            h = hp3_connector.inject(int(block[1]), h)
        return h, hsp

    def to(self, *args, **kwargs) -> HP3OutputPatch:
        return self


class HP3UNetWrapper(_SharedPatch):
    """The UNet function wrapper: runs the head controller on the conditional rows, then the UNet.

    Args:
        control: the :class:`~hp3_core.head_control.HeadControl`.
        model_sampling: the MODEL's model sampling (sigma <-> timestep, input scaling).
        inner: a wrapper the MODEL already had; it is called inside this one (chained).
        install: the :class:`HP3Install` this wrapper belongs to (None: always acts).
        patcher: the host ModelPatcher of the HP3 model in the UNet's compute dtype
            (:func:`.hp3_memory.hp3_patcher`).
    """

    def __init__(self, control: HeadControl, model_sampling: Any, inner: Any, install: HP3Install | None,
                 patcher: Any) -> None:
        self.control = control
        self.model_sampling = model_sampling
        self.inner = inner
        self.install = install
        self.patcher = patcher
        # The window as sigmas, once per Apply: ComfyUI's ControlNet rule (SamplingWindow's meaning).
        self.sigma_low = float(model_sampling.percent_to_sigma(control.window.end))
        self.sigma_high = float(model_sampling.percent_to_sigma(control.window.start))
        self.loads_itself = not host_loads_patch_models()  # 2024 host: it does not read .models()

    # -- host protocol -----------------------------------------------------------------------
    def to(self, device_or_dtype=None, *args, **kwargs) -> HP3UNetWrapper:
        # The HP3 model's device is the host's business (its patcher); only the chained wrapper moves.
        inner = self.inner
        if inner is not None and hasattr(inner, "to"):
            moved = inner.to(device_or_dtype, *args, **kwargs)
            if moved is not inner:  # never mutate an installed patch: a new wrapper, same weights
                return HP3UNetWrapper(self.control, self.model_sampling, moved, self.install, self.patcher)
        return self

    def models(self) -> list:
        """The HP3 model's ModelPatcher (the host loads and counts it) and what the chained wrapper reports."""
        inner = self.inner
        return [self.patcher] + (list(inner.models()) if inner is not None and hasattr(inner, "models") else [])

    def running_model(self, device: torch.device) -> Any:
        """The HP3 model to run this call with, on ``device`` (loaded through the host when it can)."""
        if self.loads_itself:
            ensure_loaded(self.patcher)
        model = self.patcher.model
        # Called outside the host's sampling (or the host left it elsewhere): move by hand.
        _to_device(model, device)
        return model

    # -- the model call ----------------------------------------------------------------------
    def __call__(self, apply_model, args: dict):
        current = _install_of_call(args)
        if self.install is not None and current is not None and current is not self.install:
            # A later Apply HP3 replaced this one, but another pack's wrapper still calls it:
            # pass through, so only the MODEL's current HP3 runs (and its connector state stays active).
            return self._call_inner(apply_model, args)
        state = self.connector_state(args["input"], args["timestep"], args["c"], args["cond_or_uncond"])
        with hp3_connector.active(state), _wrapper_running(self.install):
            return self._call_inner(apply_model, args)

    def _call_inner(self, apply_model, args: dict):
        if self.inner is not None:
            return self.inner(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def hp3_rows(self, batch: int, cond_or_uncond: list) -> list[int]:
        """Rows that get HP3: those of the conditional chunks (``cond_or_uncond`` entry 0)."""
        chunks = max(1, len(cond_or_uncond))
        per = batch // chunks
        return [k * per + j for k, flag in enumerate(cond_or_uncond) if flag == 0 for j in range(per)]

    def connector_state(self, x: torch.Tensor, sigma: torch.Tensor, c: dict,
                        cond_or_uncond: list) -> ConnectorState | None:
        """The connector state of one model call (:func:`~hp3_core.head_control.prepare_call`), or
        None (base UNet) when HP3 is off."""
        control = self.control
        s = float(sigma.flatten()[0])
        if control.strength == 0 or not self.sigma_low <= s <= self.sigma_high:
            return None
        batch = x.shape[0]
        rows = self.hp3_rows(batch, cond_or_uncond)
        if not rows:
            return None
        idx = torch.tensor(rows, device=x.device, dtype=torch.long)
        ms = self.model_sampling
        sig = sigma.to(x.device)[idx]
        y = c.get("y")
        if y is not None:
            y = y.to(x.device)[idx]
        model = self.running_model(x.device)
        try:
            return prepare_call(control, model, ms.calculate_input(sig, x[idx]), ms.timestep(sig), idx, batch,
                                batch // max(1, len(cond_or_uncond)), y, where=f"sigma {s:.4g}")
        except HP3Error:
            _check_sampling_inputs(x[idx], y, s)  # only on failure: no sync per step
            raise


def _check_sampling_inputs(latent: torch.Tensor, y: torch.Tensor | None, sigma: float) -> None:
    """Name the sampling input that made the head conditions non-finite, if it is one of them."""
    if not torch.isfinite(latent).all():
        raise HP3Error(f"the latent entering the UNet at sigma {sigma:.4g} contains NaN/inf values: the "
                       f"latent_image input of the sampler (or a node before it) is damaged, not HP3")
    if y is not None and not torch.isfinite(y).all():
        raise HP3Error(f"the model's pooled/size conditioning (y) at sigma {sigma:.4g} contains NaN/inf "
                       f"values: check the positive conditioning connected to the sampler")


def installed_hp3(model_patcher: Any) -> HP3Install | None:
    """The HP3 install already on a MODEL (None when it has none)."""
    options = getattr(model_patcher, "model_options", {}).get("transformer_options", {})
    install = options.get(HP3_KEY)
    if isinstance(install, HP3Install):
        return install
    for patch in options.get("patches", {}).get("output_block_patch", []):
        # the record was dropped (another pack rebuilt transformer_options): HP3's patch remains
        if isinstance(patch, HP3OutputPatch) and patch.install is not None:
            return patch.install
    return None


def _without_hp3(m: Any) -> Any:
    """Remove HP3's own patches from the clone ``m``; return the wrapper HP3 should chain.

    An earlier HP3 wrapper on top is unwrapped (what it chained is kept). One buried under another
    pack's wrapper cannot be taken out; it passes through at sample time (see HP3UNetWrapper).
    """
    inner = m.model_options.get("model_function_wrapper")
    if isinstance(inner, HP3UNetWrapper):
        inner = inner.inner
    # New dicts and lists: never mutate what the original MODEL may still share with this clone.
    options = dict(m.model_options.get("transformer_options", {}))
    patches = dict(options.get("patches", {}))
    if "output_block_patch" in patches:
        patches["output_block_patch"] = [p for p in patches["output_block_patch"]
                                         if not isinstance(p, HP3OutputPatch)]
    options["patches"] = patches
    options.pop(HP3_KEY, None)
    m.model_options["transformer_options"] = options
    return inner


def apply_hp3(model_patcher: Any, conditions: HeadControl | None) -> Any:
    """A clone of ``model_patcher`` with HP3 installed (the original is left unchanged).

    One HP3 per MODEL: an HP3 already installed is replaced (logged). At strength 0 the clone is
    returned as it is, so an earlier HP3 stays (a strength-0 Apply only removes its own effect).
    """
    if model_patcher is None:
        raise HP3Error("model: nothing is connected: connect a checkpoint loader's MODEL to HP3")
    control = sockets.head_control(conditions)
    model = control.model
    check_family(control.weights_path, model.config.family, model_family(model_patcher))
    unet = model_patcher.model.diffusion_model
    norms = [_first_norm(i, block) for i, block in enumerate(getattr(unet, "output_blocks", []))]
    check_decoder_fits([getattr(n, "num_channels", None) for n in norms], model.config, control.weights_path)

    earlier = installed_hp3(model_patcher)
    m = model_patcher.clone()
    if control.strength == 0:
        if earlier is not None:
            log.info("HP3: this Apply HP3 has strength 0, so it adds nothing and leaves the HP3 applied "
                     "earlier to this MODEL (%s) in place", earlier.describe())
        return m
    install = HP3Install(control.weights_path, control.strength)
    if earlier is not None:
        log.warning("HP3: this MODEL already has HP3 applied (%s); the later Apply HP3 (%s) replaces it. "
                    "One HP3 per MODEL: to compare settings, apply each to its own copy of the MODEL.",
                    earlier.describe(), install.describe())
    inner = _without_hp3(m)
    model_sampling = m.object_patches.get("model_sampling", m.model.model_sampling)
    patcher = hp3_patcher(model, compute_dtype(m), m.load_device, m.offload_device)
    m.set_model_unet_function_wrapper(HP3UNetWrapper(control, model_sampling, inner, install, patcher))
    m.set_model_output_block_patch(HP3OutputPatch(install))
    m.model_options["transformer_options"][HP3_KEY] = install

    for i, norm in enumerate(norms):
        m.add_object_patch(f"diffusion_model.output_blocks.{i}.0.in_layers.0", ModulatedGroupNorm(norm, i))
    return m


def _first_norm(index: int, block: Any) -> torch.nn.Module:
    """The first GroupNorm of decoder block ``index`` (the original when another HP3 clone wrapped it)."""
    try:
        norm = block[0].in_layers[0]
    except (AttributeError, IndexError, TypeError):
        raise HP3Error(f"decoder block {index} of this MODEL is not a ResBlock; HP3 supports SD1.5/SDXL "
                       f"UNets") from None
    while isinstance(norm, ModulatedGroupNorm):  # the model is loaded with another HP3 clone
        norm = norm.original
    return norm
