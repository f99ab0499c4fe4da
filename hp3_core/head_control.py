"""What drives HP3 over one sampling run, and the preparation of each UNet call, for both hosts.

A :class:`HeadControl` holds the person's head tokens, the shaded renders of the driving frames,
the strength and the :class:`SamplingWindow`. The ComfyUI wrapper (``nodes/hp3_patch.py``) and the
diffusers :class:`~hp3_core.pipeline.HP3Pipeline` test the strength and the window first (outside
them the base UNet runs exactly and nothing is computed), then call :func:`prepare_call` with what
their host hands them (the UNet's input, its timesteps, the rows of the conditional branch); it
returns the :class:`~hp3_core.connector.ConnectorState` the installed decoder hooks apply. The hosts
differ only in how they find those inputs.
The data path is written out in docs/data_path.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .apply_checks import (check_connector_finite, check_finite_number, dtype_of, stack_renders,
                           warn_if_other_backend)
from .connector import AdaptiveConnector, ConnectorState
from .errors import HP3Error
from .hint import hint_frames

IN_MEMORY = "<in-memory HP3 model>"
NUM_TRAIN_TIMESTEPS = 1000  # SD1.5 and SDXL are trained on timesteps 0..999


@dataclass(frozen=True)
class SamplingWindow:
    """The part of the sampling where HP3 acts: ComfyUI's ``start_percent`` / ``end_percent``.

    Percent ``p`` is the model timestep ``(1 - p) * (T - 1)`` (T = 1000 training timesteps): 0 is
    the noisiest end, 1 the clean end. HP3 acts at a UNet call whose timestep ``t`` satisfies
    ``(1 - end) * (T - 1) <= t <= (1 - start) * (T - 1)``. ComfyUI's ``percent_to_sigma`` maps
    ``p`` to the sigma of that same timestep and sigma rises with ``t``, so this is exactly how
    ComfyUI's ControlNet reads the two numbers. The diffusers pipeline tests the scheduler's
    timesteps with :meth:`contains`; the ComfyUI wrapper compares each call's sigma with
    ``percent_to_sigma(end) <= sigma <= percent_to_sigma(start)``, computed once per Apply (the
    same rule; a test checks both hosts act on the same steps of one schedule).
    """

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        check_finite_number("start_percent", self.start)
        check_finite_number("end_percent", self.end)
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise HP3Error(f"HP3 start_percent ({self.start}) must not exceed end_percent ({self.end}); "
                           f"both are between 0 and 1")

    def timestep_bounds(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, float]:
        """(lowest, highest) model timestep where HP3 acts."""
        last = num_train_timesteps - 1
        return (1.0 - self.end) * last, (1.0 - self.start) * last

    def contains(self, timestep: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> bool:
        """Whether HP3 acts at a UNet call at ``timestep`` (0..T-1, may be fractional)."""
        low, high = self.timestep_bounds(num_train_timesteps)
        return low <= float(timestep) <= high


@dataclass(frozen=True, eq=False)
class HeadControl:
    """Everything HP3 needs for a sampling run (the ComfyUI socket type ``HP3_CONDITIONS``).

    Attributes:
        model: the :class:`~hp3_core.hp3_model.HP3Model` (shared, never copied).
        tokens: [N, D] head tokens of the person (from the model's token decoder).
        renders: [F, H, W, 3] float CPU, the shaded 3D renders in 0..1, one per driving frame.
        strength: multiplies every change the connector makes (0 = the base UNet).
        window: where in the sampling HP3 acts.
        backend, full_head: the 3D backend of the renders (mediapipe is face only).
        weights_path: the HP3 weights' file (for messages).
    """

    model: Any
    tokens: torch.Tensor
    renders: torch.Tensor
    strength: float = 1.0
    window: SamplingWindow = SamplingWindow()
    backend: str = "?"
    full_head: bool = True
    weights_path: str = IN_MEMORY
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # hints and tokens per call shape

    def __deepcopy__(self, memo):
        return self  # immutable; shares the HP3 weights (ModelPatcher.clone deep-copies options)

    @property
    def family(self) -> str:
        return self.model.config.family

    def hint(self, latent_h: int, latent_w: int, rows: int, per_chunk: int, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        """[rows, 3, 8h, 8w] renders for the conditional rows, frames mapped within each chunk.

        ``per_chunk`` rows form one conditional chunk (ComfyUI may batch several); within a chunk
        row j gets frame ``j % F``. Made once per call shape: the same every step.
        """
        key = ("hint", latent_h, latent_w, rows, per_chunk, str(device), dtype)
        cached = self._cache.get(key)
        if cached is None:
            renders = self.renders.to(device).movedim(-1, 1)
            cached = hint_frames(renders, latent_h, latent_w, per_chunk).to(dtype)
            cached = self._cache[key] = cached.repeat(rows // per_chunk, 1, 1, 1) if rows != per_chunk else cached
        return cached

    def row_tokens(self, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[rows, N, D] the head tokens for each conditional row (a view of one cast copy)."""
        key = ("tokens", str(device), dtype)
        tokens = self._cache.get(key)
        if tokens is None:
            tokens = self._cache[key] = self.tokens.to(device, dtype)
        return tokens.unsqueeze(0).expand(rows, *tokens.shape)


def make_head_control(model: Any, tokens: torch.Tensor, shaded: list[torch.Tensor] | torch.Tensor,
                      strength: float = 1.0, window: SamplingWindow = SamplingWindow(), backend: str = "?",
                      full_head: bool = True, weights_path: str = IN_MEMORY) -> HeadControl:
    """A checked :class:`HeadControl`.

    Args:
        model: the HP3Model.
        tokens: [N, D] head tokens (:meth:`HP3Model.head_tokens`).
        shaded: [F, H, W, 3] renders in 0..1, or a list of [1, H, W, 3] frames (other sizes are
            centre-cropped and resized to the first frame's).

    Raises:
        HP3Error: a non-finite strength, tokens or connector weights; tokens of another width.
    """
    check_finite_number("strength", strength)
    if strength < 0:
        raise HP3Error(f"HP3 input 'strength' must be 0 or more (0 = no change), got {strength}")
    check_connector_finite(model, weights_path)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise HP3Error(f"head tokens must be a [N, D] tensor, got {shape}")
    width = model.config.encoder.width
    if tokens.shape[-1] != width:
        raise HP3Error(f"head tokens are {tokens.shape[-1]} wide but the HP3 weights '{weights_path}' take "
                       f"{width}; encode the head with the same HP3 file")
    if not torch.isfinite(tokens).all():
        raise HP3Error(f"the head tokens of HP3 weights '{weights_path}' are not finite (NaN/inf): the weights or "
                       f"the head features are damaged; re-encode the head or re-download the weights")
    frames = list(shaded.split(1)) if isinstance(shaded, torch.Tensor) else list(shaded)
    renders = stack_renders(frames)
    warn_if_other_backend(getattr(model.config, "render_backend", None), backend, weights_path)
    return HeadControl(model=model, tokens=tokens.detach(), renders=renders, strength=float(strength),
                       window=window, backend=backend, full_head=bool(full_head), weights_path=weights_path)


def prepare_call(control: HeadControl, model: Any, sample: torch.Tensor, timesteps: torch.Tensor,
                 rows: torch.Tensor, batch: int, per_chunk: int, y: torch.Tensor | None = None,
                 where: str = "") -> ConnectorState:
    """The connector state of one UNet call where HP3 acts.

    The host calls it only inside the window and at a strength above 0 (those tests come first, so
    a call outside the window costs nothing), with at least one conditional row.

    Args:
        control: the run's :class:`HeadControl`.
        model: the HP3Model to run (``control.model``, or the host's copy of it in the UNet's
            dtype); the inputs are cast to its dtype.
        sample: [n, 4, h, w] the UNet input of the conditional rows, scaled for the model
            (ComfyUI's ``calculate_input``, diffusers' ``scale_model_input``).
        timesteps: [n] the UNet's timesteps for those rows (0..999).
        rows: [n] long, the conditional rows' indices in the UNet batch.
        batch: B, the UNet batch size.
        per_chunk: rows per conditional chunk (frames map to rows within a chunk).
        y: [n, adm] SDXL's added conditioning of those rows, or None.
        where: appended to the message when the features are not finite (e.g. the sigma).
    """
    dtype = dtype_of(model)
    h, w = sample.shape[-2:]
    n = len(rows)
    tokens = control.row_tokens(n, sample.device, dtype)
    hint = control.hint(h, w, n, per_chunk, sample.device, dtype)
    with torch.no_grad():
        features = model.control_features(sample.to(dtype), timesteps.float(), tokens, hint,
                                          None if y is None else y.to(dtype))
    what = f"the HP3 weights '{control.weights_path}'" + (f" ({where})" if where else "")
    return connector_state_for_rows(features, rows, batch, control.strength, model.connector, what)


def connector_state_for_rows(features: list[torch.Tensor], rows: torch.Tensor, batch: int, strength: float,
                             connector: AdaptiveConnector, what: str) -> ConnectorState:
    """The connector's state for a batch whose ``rows`` (long indices) got ``features``.

    Other rows get zero features and strength 0, so they run the base UNet exactly. Non-finite
    features raise (one host sync per model call); ``what`` names the weights in the message.
    """
    finite = torch.stack([torch.isfinite(c).all() for c in features])
    if not bool(finite.all()):
        block = int((~finite).nonzero()[0])
        raise HP3Error(f"the HP3 head conditions are not finite (NaN/inf) at decoder block {block}; {what} "
                       f"or the inputs are damaged, or the model runs in a precision too low for them")
    strengths = torch.zeros(batch, device=features[0].device, dtype=torch.float32)
    strengths[rows] = float(strength)
    if len(rows) < batch:
        full = []
        for c in features:
            z = torch.zeros((batch, *c.shape[1:]), device=c.device, dtype=c.dtype)
            z[rows] = c
            full.append(z)
        features = full
    return ConnectorState(features=list(features), rows=strengths, connector=connector)
