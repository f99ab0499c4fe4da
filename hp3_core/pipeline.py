"""HP3 on a diffusers text-to-image pipeline (SD1.5 ``StableDiffusionPipeline``, SDXL
``StableDiffusionXLPipeline``), with the same HP3 weight file as the ComfyUI nodes.

Design: the pipeline object is used as it is (``pipe.unet`` is not replaced). For the duration of
one :meth:`HP3Pipeline.__call__`, HP3's decoder hooks are installed on ``pipe.unet``
(:func:`hp3_core.diffusers_patch.install`) and two more hooks wrap every UNet call:

* a forward pre-hook hands the call to :func:`hp3_core.head_control.prepare_call` (the function the
  ComfyUI nodes use too) with the **conditional rows only** (diffusers batches classifier-free
  guidance as ``[uncond, cond]``; with guidance off every row is conditional), the UNet's own
  input (already ``scale_model_input``-ed), its timestep and, for SDXL, ``y`` from
  ``added_cond_kwargs``; the connector state it returns is made active
  (:func:`hp3_core.connector.active`), with strength 0 on the other rows, so those are exactly the
  base UNet's;
* a forward hook (``always_call``) ends the activation, also when the UNet raises.

``start``/``end`` mean what ComfyUI's ``start_percent``/``end_percent`` mean
(:class:`~hp3_core.head_control.SamplingWindow`): percents of the noise schedule, compared with
the scheduler's timestep of each UNet call; outside the window the UNet is exactly the base one.
Everything is removed when the call returns.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .apply_checks import device_of
from .connector import enter_active, leave_active
from .diffusers_patch import installed, sdxl_added_cond
from .errors import HP3Error
from .head_control import NUM_TRAIN_TIMESTEPS, HeadControl, SamplingWindow, make_head_control, prepare_call
from .weights import check_family, load_hp3_weights


def pipeline_family(pipe) -> str:
    """``sdxl`` for a UNet with SDXL's added (text, time) conditioning, else ``sd15``."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise HP3Error(f"{type(pipe).__name__} has no UNet; HP3 needs a Stable Diffusion 1.5 or SDXL pipeline")
    return "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd15"


def _as_renders(render: torch.Tensor) -> torch.Tensor:
    """[F, H, W, 3] renders from [H, W, 3] or [F, H, W, 3] (make_head_control stacks them as float)."""
    if not torch.is_tensor(render):
        raise HP3Error(f"render must be a torch tensor [H, W, 3] or [B, H, W, 3] in 0..1, got {type(render).__name__}")
    if render.dim() == 3:
        render = render.unsqueeze(0)
    if render.dim() != 4 or render.shape[-1] != 3:
        raise HP3Error(f"render must be [H, W, 3] or [B, H, W, 3] (RGB, 0..1), got shape {list(render.shape)}")
    return render.detach()


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
        with installed(pipe.unet, hp3_model.config, self.weights_path):  # the layouts match (raises if not)
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
        return head_tokens.detach()

    def __call__(self, prompt=None, head_tokens=None, render: torch.Tensor | None = None, strength: float = 1.0,
                 start: float = 0.0, end: float = 1.0, **pipe_kwargs) -> Any:
        """Run the pipeline with HP3; returns the pipeline's own output.

        Args:
            head_tokens: [N, D] tensor or HeadFeatures (tokens from ``hp3_model``'s decoder).
            render: the shaded render [H, W, 3] or [B, H, W, 3], float 0..1 (one frame per
                image; fewer frames repeat).
            strength: HP3's strength on the conditional rows (0: the base pipeline exactly).
            start, end: where in the sampling HP3 acts, as percents of the noise schedule
                (ComfyUI's start_percent/end_percent, :class:`~hp3_core.head_control.SamplingWindow`).
            pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale``,
                ``generator``, ``height``, ``width``, ``output_type``, ...).
        """
        if head_tokens is None or render is None:
            raise HP3Error("HP3Pipeline needs head_tokens (or HeadFeatures) and a render")
        window = SamplingWindow(float(start), float(end))
        unet = self.pipe.unet
        self.hp3.to(unet.device)
        control = make_head_control(self.hp3, self.tokens_of(head_tokens), _as_renders(render), strength, window,
                                    backend=str(getattr(self.hp3.config, "render_backend", "?")),
                                    weights_path=self.weights_path)
        with installed(unet, self.hp3.config, self.weights_path), self._hooks(unet, control):
            return self.pipe(prompt=prompt, **pipe_kwargs)

    @contextlib.contextmanager
    def _hooks(self, unet, control: HeadControl) -> Iterator[None]:
        active: list = []  # the token of the connector state made active before the UNet call
        train_steps = int(getattr(self.pipe.scheduler.config, "num_train_timesteps", NUM_TRAIN_TIMESTEPS))
        pre = unet.register_forward_pre_hook(lambda m, a, k: self._before(m, a, k, control, active, train_steps),
                                             with_kwargs=True)
        post = unet.register_forward_hook(lambda m, a, o: _leave(active), always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()
            _leave(active)

    def _before(self, unet, args, kwargs, control: HeadControl, active: list, train_steps: int) -> None:
        _leave(active)
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = torch.as_tensor(timestep, device=sample.device).float().flatten()
        # Strength and window first: outside them the UNet runs bare and nothing is prepared.
        if control.strength == 0 or not control.window.contains(float(t[-1]) * NUM_TRAIN_TIMESTEPS / train_steps):
            return
        batch = sample.shape[0]
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False)) and batch % 2 == 0
        first = batch // 2 if cfg else 0
        cond = slice(first, batch)  # diffusers batches CFG as [uncond, cond]: views, not copies
        t = t.expand(batch) if t.numel() == 1 else t
        y = None
        if self.family == "sdxl":
            added = kwargs.get("added_cond_kwargs") or {}
            if "text_embeds" not in added or "time_ids" not in added:
                raise HP3Error("the SDXL UNet call has no added_cond_kwargs text_embeds/time_ids; "
                               "use a StableDiffusionXLPipeline")
            y = sdxl_added_cond(unet, added["text_embeds"][cond], added["time_ids"][cond])
        rows = torch.arange(first, batch, device=sample.device)
        active.append(enter_active(prepare_call(control, self.hp3, sample[cond], t[cond], rows, batch,
                                                per_chunk=batch - first, y=y)))


def _leave(active: list) -> None:
    while active:
        leave_active(active.pop())


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
