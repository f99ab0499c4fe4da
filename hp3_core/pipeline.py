"""HP3 on a diffusers text-to-image pipeline (SD1.5 ``StableDiffusionPipeline``, SDXL
``StableDiffusionXLPipeline``), with the same HP3 weight file as the ComfyUI nodes.

Design: the pipeline object is used as it is (``pipe.unet`` is not replaced). For the duration of
one :meth:`HP3Pipeline.__call__`, HP3's decoder hooks are installed on ``pipe.unet``
(:func:`hp3_core.diffusers_patch.install`) and two more hooks wrap every UNet call:

* a forward pre-hook computes the controller's conditions for the **conditional rows only**
  (diffusers batches classifier-free guidance as ``[uncond, cond]``; with guidance off every row
  is conditional), from the UNet's own input (already ``scale_model_input``-ed), its discrete
  timestep, the head tokens, the shaded render (centre-cropped to the latent's aspect and resized
  bilinearly to 8x the latent, as in ComfyUI) and, for SDXL, ``y`` from ``added_cond_kwargs``;
  it then makes them active (:func:`hp3_core.connector.active`) with ``rows`` = strength on the
  conditional rows and 0 on the others, so those are exactly the base UNet's;
* a forward hook (``always_call``) ends the activation, also when the UNet raises.

Start/end are fractions of the UNet calls of the run (``len(scheduler.timesteps)``, i.e. the
denoising steps): outside ``[start, end)`` the controller is skipped and the UNet is exactly the
base one. Everything is removed when the call returns.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .apply_checks import device_of
from .connector import ActiveConditions, enter_active, leave_active
from .diffusers_patch import installed, sdxl_added_cond
from .errors import HP3Error
from .hint import conditions_for_rows, hint_frames
from .weights import check_family, load_hp3_weights



def pipeline_family(pipe) -> str:
    """``sdxl`` for a UNet with SDXL's added (text, time) conditioning, else ``sd15``."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise HP3Error(f"{type(pipe).__name__} has no UNet; HP3 needs a Stable Diffusion 1.5 or SDXL pipeline")
    return "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd15"


def _as_renders(render: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(render):
        raise HP3Error(f"render must be a torch tensor [H, W, 3] or [B, H, W, 3] in 0..1, got {type(render).__name__}")
    if render.dim() == 3:
        render = render.unsqueeze(0)
    if render.dim() != 4 or render.shape[-1] != 3:
        raise HP3Error(f"render must be [H, W, 3] or [B, H, W, 3] (RGB, 0..1), got shape {list(render.shape)}")
    return render.float().movedim(-1, 1)  # [B, 3, H, W]


class HP3Pipeline:
    """A diffusers SD1.5/SDXL pipeline with HP3 head preservation.

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (any pipeline that
            calls ``pipe.unet`` once per step with ``[uncond, cond]`` CFG batching).
        hp3_model: an :class:`~hp3_core.hp3_model.HP3Model` (e.g. ``HP3Model.from_weights``).
        family: the HP3 weights' family (default ``hp3_model.config.family``); checked against
            the pipeline's.
        weights_path: names the weight file in errors.

    Raises:
        WeightFileError: the weights are for another family than the pipeline.
        HP3Error: the UNet's decoder does not match the weights' connector.
    """

    def __init__(self, pipe, hp3_model, family: str | None = None, weights_path: str | Path = "<in memory>") -> None:
        self.pipe = pipe
        self.hp3 = hp3_model
        self.family = family or hp3_model.config.family
        self.weights_path = str(weights_path)
        check_family(self.weights_path, self.family, pipeline_family(pipe))
        with installed(pipe.unet, hp3_model.config.controller):  # the layouts match (raises if not)
            pass

    @classmethod
    def from_files(cls, base, hp3_path: str | Path, device: str | torch.device | None = None,
                   torch_dtype: torch.dtype | None = None) -> HP3Pipeline:
        """``base``: a pipeline object or a local diffusers pipeline folder (``model_index.json``).

        A single-file checkpoint (``.safetensors``/``.ckpt``) is refused: diffusers needs the
        components' configs to build a pipeline from it, which offline it does not have.
        """
        from .hp3_model import HP3Model
        if isinstance(base, (str, Path)):
            pipe = load_pipeline(base, torch_dtype=torch_dtype)
        else:
            pipe = base
        if device is not None:
            pipe = pipe.to(device)
        weights = load_hp3_weights(hp3_path)
        model = HP3Model.from_weights(weights)
        return cls(pipe, model, weights.family, weights_path=hp3_path)

    def tokens_of(self, head_tokens) -> torch.Tensor:
        """[N, D] tokens from a tensor or a :class:`~hp3_core.head_encoder.features.HeadFeatures`."""
        if not torch.is_tensor(head_tokens):
            if not hasattr(head_tokens, "id_embeds"):
                raise HP3Error(f"head_tokens must be a [N, D] tensor or HeadFeatures, got {type(head_tokens).__name__}")
            with torch.no_grad():
                head_tokens = self.hp3.head_tokens(head_tokens.to(device_of(self.hp3)))
        if head_tokens.dim() != 2:
            raise HP3Error(f"head_tokens must be [N, D], got shape {list(head_tokens.shape)}")
        enc = self.hp3.config.encoder
        if head_tokens.shape[-1] != enc.width:
            raise HP3Error(f"head tokens are {head_tokens.shape[-1]} wide but these HP3 weights take {enc.width}; "
                           "encode the head with the same HP3 file")
        return head_tokens.detach()

    def __call__(self, prompt=None, head_tokens=None, render: torch.Tensor | None = None, strength: float = 1.0,
                 start: float = 0.0, end: float = 1.0, **pipe_kwargs) -> Any:
        """Run the pipeline with HP3; returns the pipeline's own output.

        Args:
            head_tokens: [N, D] tensor or HeadFeatures (tokens from ``hp3_model``'s decoder).
            render: the shaded render [H, W, 3] or [B, H, W, 3], float 0..1 (one frame per
                image; fewer frames repeat).
            strength: HP3's strength on the conditional rows (0: the base pipeline exactly).
            start, end: the fraction of the denoising steps where HP3 acts.
            pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale``,
                ``generator``, ``height``, ``width``, ``output_type``, ...).
        """
        if head_tokens is None or render is None:
            raise HP3Error("HP3Pipeline needs head_tokens (or HeadFeatures) and a render")
        if not 0.0 <= start <= end <= 1.0:
            raise HP3Error(f"start/end must satisfy 0 <= start <= end <= 1, got {start}/{end}")
        unet = self.pipe.unet
        device = unet.device
        self.hp3.to(device)
        state = _RunState(tokens=self.tokens_of(head_tokens).to(device), renders=_as_renders(render).to(device),
                          strength=float(strength), start=float(start), end=float(end))
        with installed(unet, self.hp3.config.controller), self._hooks(unet, state):
            return self.pipe(prompt=prompt, **pipe_kwargs)

    @contextlib.contextmanager
    def _hooks(self, unet, state: _RunState) -> Iterator[None]:
        pre = unet.register_forward_pre_hook(lambda m, a, k: self._before(m, a, k, state), with_kwargs=True)
        post = unet.register_forward_hook(lambda m, a, o: self._after(state), always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()
            self._after(state)

    def _after(self, state: _RunState) -> None:
        if state.token is not None:
            leave_active(state.token)
            state.token = None

    def _before(self, unet, args, kwargs, state: _RunState) -> None:
        step = state.calls
        state.calls += 1
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        total = max(1, len(timesteps)) if timesteps is not None else 1
        self._after(state)
        active = self.conditions_for(unet, args, kwargs, state, step / total)
        if active is not None:
            state.token = enter_active(active)

    def conditions_for(self, unet, args, kwargs, state: _RunState, fraction: float) -> ActiveConditions | None:
        """The :class:`ActiveConditions` of one UNet call, or None (the base UNet) when HP3 is off."""
        in_window = state.start <= fraction < state.end or (state.end >= 1 and fraction >= state.start)
        if state.strength == 0 or not in_window:
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        batch = sample.shape[0]
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and batch % 2 == 0
        first = batch // 2 if cfg else 0  # diffusers: [uncond, cond]
        rows = torch.arange(first, batch, device=sample.device)
        n = len(rows)
        t = torch.as_tensor(timestep, device=sample.device).float().flatten()
        t = t.expand(batch) if t.numel() == 1 else t
        dtype = _dtype_of(self.hp3)
        h, w = sample.shape[-2:]
        hint = hint_frames(state.renders, h, w, n)
        tokens = state.tokens.unsqueeze(0).expand(n, *state.tokens.shape)
        y = None
        if self.family == "sdxl":
            added = kwargs.get("added_cond_kwargs") or {}
            if "text_embeds" not in added or "time_ids" not in added:
                raise HP3Error("the SDXL UNet call has no added_cond_kwargs text_embeds/time_ids; "
                               "use a StableDiffusionXLPipeline")
            y = sdxl_added_cond(unet, added["text_embeds"][rows], added["time_ids"][rows]).to(dtype)
        with torch.no_grad():
            conds = self.hp3.conditions(sample[rows].to(dtype), t[rows], tokens.to(dtype), hint.to(dtype), y)
        return conditions_for_rows(conds, rows, batch, state.strength, self.hp3.connector,
                                   f"the HP3 weights '{self.weights_path}'")


class _RunState:
    def __init__(self, tokens: torch.Tensor, renders: torch.Tensor, strength: float, start: float, end: float):
        self.tokens, self.renders = tokens, renders
        self.strength, self.start, self.end = strength, start, end
        self.calls = 0
        self.token = None


def _dtype_of(module) -> torch.dtype:
    return next(module.parameters()).dtype


def load_pipeline(folder: str | Path, torch_dtype: torch.dtype | None = None):
    """A diffusers pipeline from a local folder (offline; ``model_index.json`` names the class)."""
    folder = Path(folder)
    if folder.is_file():
        raise HP3Error(f"--base '{folder}' is a single file; give a local diffusers pipeline folder "
                       "(with model_index.json): building a pipeline from a single checkpoint needs the "
                       "component configs, which are not available offline")
    if not (folder / "model_index.json").is_file():
        raise HP3Error(f"--base '{folder}' is not a diffusers pipeline folder (no model_index.json)")
    from diffusers import DiffusionPipeline
    try:
        return DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=torch_dtype)
    except (OSError, ValueError) as err:
        raise HP3Error(f"cannot load the diffusers pipeline '{folder}': {str(err).splitlines()[0]}") from err
