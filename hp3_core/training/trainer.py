"""The HP3 training loop (HuggingFace accelerate: one GPU, several, several nodes).

Launch with ``python -m hp3_core train --config FILE`` (one process) or
``accelerate launch -m hp3_core train --config FILE`` (accelerate's launcher; see
``hp3_core/training/examples/``).

Per optimizer step (``gradient_accumulation_steps`` micro-batches): the target image is encoded
by the frozen VAE, noised at a uniform random timestep, its caption encoded by the frozen text
encoder(s) (the empty caption with probability ``text_dropout``), the source's head crop by
frozen CLIP vision; the token decoder, controller and connector (the only trained parts) predict
with the frozen UNet; the loss is :mod:`.losses`' ``L_diff + lambda * L_id``.

Determinism: every random draw of a sample (noise, timestep, VAE latent sample, dropouts) comes
from a generator seeded by ``(seed, step, micro-step, process, row)`` (or ``(seed, sample
index)`` with ``fixed_noise``), the data order from ``(seed, epoch)``; so a run resumed from a
checkpoint continues exactly as the uninterrupted one (accelerate restores weights, optimizer,
scheduler and EMA).

Checkpoints: ``<output_dir>/checkpoints/checkpoint-<step>/`` = ``accelerator.save_state`` +
``train_state.json`` (the config, the step) + ``hp3.safetensors`` (the nodes' file). The final
file is ``<output_dir>/<export_name>``.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusers_patch import install, remove
from ..errors import HP3Error
from .config import ConfigError, TrainConfig
from .losses import diffusion_loss, diffusion_target, identity_loss, predicted_x0

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_STATE = "train_state.json"
CHECKPOINT_WEIGHTS = "hp3.safetensors"
VALIDATION = "validation"


@dataclass
class TrainResult:
    """What a run did: the last step, the per-step mean losses (this run only), the exported file."""

    step: int
    losses: list[float] = field(default_factory=list)
    export: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / TRAIN_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint folder to resume from (``resume: latest`` with none yet: a fresh start)."""
    if not config.resume:
        return None
    if config.resume == "latest":
        found = checkpoint_dirs(config.output_dir)
        if not found:
            log.info("resume: latest, but %s has no checkpoint yet; starting fresh", config.output_dir)
            return None
        return found[-1]
    path = Path(config.resume)
    if not path.is_absolute() and not path.exists():
        path = Path(config.output_dir) / CHECKPOINTS / config.resume
    if not (path / TRAIN_STATE).is_file():
        raise ConfigError(f"training config '{config.source}': field 'resume' names '{config.resume}', "
                          f"which is not a checkpoint folder (no {TRAIN_STATE}); use 'latest' or a "
                          f"{CHECKPOINTS}/{CHECKPOINT_PREFIX}<step> folder")
    return path


def read_train_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / TRAIN_STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise HP3Error(f"checkpoint '{checkpoint}' has an unreadable {TRAIN_STATE} ({err}); "
                       "resume from another checkpoint") from None


def check_resumable(config: TrainConfig, state: dict[str, Any], checkpoint: Path) -> None:
    """Refuse a resume whose config changes what is trained (naming the fields)."""
    diff = config.resume_differences(state.get("config", {}))
    if diff:
        stored = state.get("config", {})
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {getattr(config, k, None)!r}" for k in diff)
        raise ConfigError(f"cannot resume from '{checkpoint}': the config differs in field(s) that change "
                          f"the training ({detail}); restore them, or start a new run in another output_dir")


def _generator(*keys: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class Trainer:
    """One training run of :class:`TrainConfig` (build with the config, call :meth:`run`)."""

    def __init__(self, config: TrainConfig, accelerator=None) -> None:
        self.config = config
        self._accelerator = accelerator

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed
        from diffusers import DDPMScheduler

        from ..dataset.manifest import HP3Dataset
        from ..pipeline import load_pipeline, pipeline_family
        from . import models
        from .pairs import PairDataset

        cfg = self.config
        out = Path(cfg.output_dir)
        # Without a GPU, accelerate only forms a multi-process (gloo) group when told it runs on the
        # CPU; with cpu=False, torchrun's processes would each train alone.
        on_cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
        self.accelerator = acc = self._accelerator or Accelerator(
            cpu=on_cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=cfg.report_to, project_config=ProjectConfiguration(project_dir=str(out),
                                                                        logging_dir=str(out / "logs")))
        self.device = acc.device
        log.info("accelerate: %d process(es), this one %d on %s, mixed precision %s", acc.num_processes,
                 acc.process_index, acc.device, acc.mixed_precision)
        self.resume_from = resolve_resume(cfg)
        self.start_step = 0
        if self.resume_from is not None:
            state = read_train_state(self.resume_from)
            check_resumable(cfg, state, self.resume_from)
            self.start_step = int(state["step"])
            if int(state.get("num_processes", acc.num_processes)) != acc.num_processes:
                log.warning("resuming a %s-process run on %d processes: the data order differs from the "
                            "original run", state.get("num_processes"), acc.num_processes)
        set_seed(cfg.seed)

        self.dataset = HP3Dataset.load(cfg.dataset)
        self.pairs = PairDataset(self.dataset, cfg.resolution, cfg.seed, cfg.head_crop_scale)
        if self.pairs.resolution % 8:
            raise ConfigError(f"training config '{cfg.source}': field 'resolution' must be a multiple of 8; "
                              f"the dataset's images are {self.pairs.resolution} px")
        log.info("dataset %s: %d images, %d pairable groups, %d px", self.dataset.root, len(self.dataset),
                 len(self.pairs.groups), self.pairs.resolution)

        weight_dtype = models.WEIGHT_DTYPES[acc.mixed_precision]
        self.weight_dtype = weight_dtype
        # Load in float32 so the new controller copies exact weights; cast the frozen parts after.
        self.pipe = pipe = load_pipeline(cfg.base)
        pipe.set_progress_bar_config(disable=True)
        self.family = pipeline_family(pipe)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = cfg.prediction_type or self.scheduler.config.prediction_type
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = [m for m in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if m is not None]
        self.clip = models.load_clip_vision(cfg.clip_vision, self.device, weight_dtype)
        if self.dataset.identity != cfg.identity:
            raise ConfigError(f"training config '{cfg.source}': field 'identity' is {cfg.identity!r} but the "
                              f"dataset {self.dataset.root} was built with {self.dataset.identity!r} embeddings; "
                              f"set identity: {self.dataset.identity} (or rebuild the dataset with --identity "
                              f"{cfg.identity})")
        self.arcface = None  # the identity loss's recogniser (ArcFace or dlib), when the loss is on
        if cfg.id_loss_weight > 0:
            self.arcface = models.load_identity_recognizer(cfg.identity, cfg.arcface, cfg.arcface_pack,
                                                           self.device, weight_dtype)
        self.hp3 = models.build_hp3_model(self.unet, self.family, self.clip.width, self.dataset.settings,
                                          cfg.init_weights, cfg.id_loss_weight, cfg.identity)
        models.freeze(self.unet, self.vae, *self.text_encoders)
        # The SD VAEs overflow in fp16 (diffusers' force_upcast); they stay float32 then.
        vae_dtype = torch.float32 if (weight_dtype == torch.float16 and self.vae.config.force_upcast) else weight_dtype
        for m, dtype in ((self.vae, vae_dtype), (self.unet, weight_dtype), *((t, weight_dtype) for t in self.text_encoders)):
            m.to(self.device)
            if m.dtype != dtype:  # (diffusers warns on every dtype cast, even a no-op one)
                m.to(dtype=dtype)
        self.hp3.to(self.device)
        self.handle = install(self.unet, self.hp3.config)
        if cfg.gradient_checkpointing:
            from .step import enable_gradient_checkpointing
            enable_gradient_checkpointing(self.unet, self.hp3)
            self.vae.enable_gradient_checkpointing()

        from diffusers.optimization import get_scheduler
        from torch.utils.data import DataLoader

        from .pairs import EpochShuffle
        from .step import HP3TrainModule
        self.module = HP3TrainModule(self.hp3, self.unet)
        optimizer = torch.optim.AdamW(self.hp3.parameters(), lr=cfg.learning_rate,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                                      weight_decay=cfg.weight_decay)
        # accelerate steps a prepared scheduler once per process per optimizer step.
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                     num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=cfg.max_steps * acc.num_processes)
        loader = DataLoader(self.pairs, batch_size=cfg.batch_size, sampler=EpochShuffle(len(self.pairs), cfg.seed),
                            num_workers=cfg.num_workers, drop_last=len(self.pairs) >= cfg.batch_size)
        self.ema = None
        if cfg.use_ema:
            from diffusers.training_utils import EMAModel
            self.ema = EMAModel(self.hp3.parameters(), decay=cfg.ema_decay)
            self.ema.to(self.device)
        self.module, self.optimizer, self.loader, self.lr_scheduler = acc.prepare(
            self.module, optimizer, loader, lr_scheduler)
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        if self.resume_from is not None:
            acc.load_state(str(self.resume_from))
            log.info("resumed from %s at step %d", self.resume_from, self.start_step)
        if cfg.report_to and acc.is_main_process:
            acc.init_trackers(cfg.tracker_project, config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                           for k, v in cfg.to_dict().items()})

    # ------------------------------------------------------------------ one micro-batch
    @torch.no_grad()
    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        pipe = self.pipe
        if self.family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(captions, device=self.device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            size = self.pairs.resolution
            # (original h, w, crop top, left, target h, w): the whole square image, uncropped.
            time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(captions), device=self.device,
                                    dtype=embeds.dtype)
            return embeds, {"text_embeds": pooled, "time_ids": time_ids}
        embeds, _ = pipe.encode_prompt(captions, self.device, 1, False)
        return embeds, None

    def _draws(self, batch: dict[str, Any], step: int, micro: int) -> list[torch.Generator]:
        cfg = self.config
        idx = batch["index"].tolist()
        if cfg.fixed_noise:
            return [_generator(cfg.seed, 1, i) for i in idx]
        rank = self.accelerator.process_index
        return [_generator(cfg.seed, 0, step, micro, rank, b) for b in range(len(idx))]

    def compute_loss(self, batch: dict[str, Any], step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch (see the module docstring) and its parts for logging."""
        cfg, device = self.config, self.device
        gens = self._draws(batch, step, micro)
        n_train = self.scheduler.config.num_train_timesteps
        b = len(gens)
        pixels = batch["pixel_values"].to(device, self.vae.dtype)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
            shape = dist.mean.shape[1:]
            eps_vae = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps_vae)
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = ((latents - shift) * self.vae.config.scaling_factor).float()
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        timesteps = torch.stack([torch.randint(0, n_train, (), generator=g) for g in gens]).to(device)
        drop_text = [float(torch.rand((), generator=g)) < cfg.text_dropout for g in gens]
        keep_head = torch.tensor([float(torch.rand((), generator=g)) >= cfg.head_dropout for g in gens],
                                 device=device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        captions = ["" if d else c for d, c in zip(drop_text, batch["caption"])]
        text, added = self._encode_text(captions)
        with torch.no_grad():
            clip_hidden = self.clip.encode(batch["source_crop"])                      # [B, T, C] float32
        keep = keep_head.float()
        id_embeds = batch["source_arcface"].to(device).float() * keep[:, None]
        clip_hidden = clip_hidden * keep[:, None, None]
        hint = batch["render"].to(device)
        pred = self.module(noisy, timesteps, text, id_embeds, clip_hidden, hint, added)
        target = diffusion_target(self.scheduler, latents, noise, timesteps, self.prediction_type)
        l_diff = diffusion_loss(pred, target)
        loss = l_diff
        logs = {"loss_diff": float(l_diff.detach())}
        if self.arcface is not None:
            rows = ((timesteps < cfg.id_loss_max_timestep) & keep_head).nonzero().flatten()
            l_id = torch.zeros((), device=device)
            if len(rows):
                x0 = predicted_x0(self.scheduler, noisy[rows], pred[rows], timesteps[rows], self.prediction_type)
                scale = self.vae.config.scaling_factor
                shift = getattr(self.vae.config, "shift_factor", None) or 0.0
                images = self.vae.decode((x0 / scale + shift).to(self.vae.dtype)).sample
                l_id, cos = identity_loss(self.arcface, images, batch["align_theta"].to(device)[rows],
                                          batch["source_arcface"].to(device)[rows], b)
                logs["id_cos"] = float(cos.mean())
            loss = loss + cfg.id_loss_weight * l_id
            logs["loss_id"] = float(l_id.detach())
            logs["id_rows"] = float(len(rows))
        logs["loss"] = float(loss.detach())
        return loss, logs

    # ------------------------------------------------------------------ checkpoints, export, validation
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.module).hp3

    def export(self, path: Path, step: int) -> Path:
        from .export import export_weights
        return export_weights(path, self.unwrapped(), step, self.config.dataset, self.config.base, ema=self.ema,
                              extra={"id_loss_weight": str(self.config.id_loss_weight)})

    def save_checkpoint(self, step: int) -> Path:
        acc, cfg = self.accelerator, self.config
        path = Path(cfg.output_dir) / CHECKPOINTS / f"{CHECKPOINT_PREFIX}{step}"
        acc.save_state(str(path))  # every process: each saves its own RNG state
        if acc.is_main_process:
            state = {"step": step, "config": cfg.to_dict(), "num_processes": acc.num_processes,
                     "hp3_config": self.unwrapped().config.to_dict()}
            (path / TRAIN_STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
            self.export(path / CHECKPOINT_WEIGHTS, step)
            if cfg.checkpoints_total_limit:
                for old in checkpoint_dirs(cfg.output_dir)[:-cfg.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
                    log.info("removed old checkpoint %s", old)
            log.info("checkpoint %s", path)
        acc.wait_for_everyone()
        return path

    def validate(self, step: int) -> Path | None:
        acc, cfg = self.accelerator, self.config
        path = None
        if acc.is_main_process:
            from .validation import save_grid, validation_grid
            hp3 = self.unwrapped()
            params = list(hp3.parameters())
            if self.ema is not None:
                self.ema.store(params)
                self.ema.copy_to(params)
            remove(self.handle)  # HP3Pipeline installs its own hooks
            try:
                grid = validation_grid(self.pipe, hp3, self.clip, self.pairs,
                                       self.pairs.fixed_pairs(cfg.validation_pairs), cfg.validation_steps,
                                       cfg.validation_guidance, cfg.seed)
                path = save_grid(Path(cfg.output_dir) / VALIDATION / f"step_{step:07d}.png", grid)
            finally:
                self.handle = install(self.unet, hp3.config)
                if self.ema is not None:
                    self.ema.restore(params)
        acc.wait_for_everyone()
        return path

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Train up to ``max_steps``; checkpoint, validate and export on the way and at the end."""
        from tqdm.auto import tqdm
        self.setup()
        acc, cfg = self.accelerator, self.config
        result = TrainResult(step=self.start_step)
        try:
            self._loop(result, tqdm)
            if acc.is_main_process:
                result.export = self.export(Path(cfg.output_dir) / cfg.export_name, result.step)
            acc.wait_for_everyone()
        finally:
            remove(self.handle)
            if cfg.report_to:
                acc.end_training()
        return result

    def _loop(self, result: TrainResult, tqdm) -> None:
        acc, cfg = self.accelerator, self.config
        accum = cfg.gradient_accumulation_steps
        # Optimizer steps per epoch: accelerate also steps at the end of the data (a short last window).
        per_epoch = max(1, math.ceil(len(self.loader) / accum))
        step = self.start_step
        if step >= cfg.max_steps:
            log.info("already at step %d of max_steps %d; exporting only", step, cfg.max_steps)
            return
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not acc.is_local_main_process)
        epoch, skip = step // per_epoch, (step % per_epoch) * accum
        window: list[dict[str, float]] = []
        while step < cfg.max_steps:
            self.loader.set_epoch(epoch)  # the sampler's order
            self.pairs.set_epoch(epoch)  # the sources (accelerate skips the dataset's when sharding)
            batches = acc.skip_first_batches(self.loader, skip) if skip else self.loader
            skip = 0
            micro = 0
            for batch in batches:
                with acc.accumulate(self.module):
                    loss, logs = self.compute_loss(batch, step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window.append(logs)
                micro += 1
                if not acc.sync_gradients:
                    continue
                micro = 0
                step += 1
                if self.ema is not None:
                    self.ema.step(self.unwrapped().parameters())
                mean = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[0]}
                window = []
                if acc.num_processes > 1:  # the loss over every process (the other terms: this one's)
                    total = torch.tensor([mean["loss"]], device=acc.device)
                    mean["loss"] = float(acc.reduce(total, reduction="mean")[0])
                result.losses.append(mean["loss"])
                result.step = step
                bar.update(1)
                bar.set_postfix(loss=f"{mean['loss']:.4f}")
                mean["lr"] = float(self.lr_scheduler.get_last_lr()[0])
                if cfg.report_to:
                    acc.log(mean, step=step)
                if acc.is_main_process and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    log.info("step %d/%d: %s", step, cfg.max_steps,
                             ", ".join(f"{k} {v:.4g}" for k, v in mean.items()))
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    result.checkpoints.append(self.save_checkpoint(step))
                if cfg.validation_every and step % cfg.validation_every == 0:
                    self.validate(step)
                if step >= cfg.max_steps:
                    break
            epoch += 1
        result.checkpoints.append(self.save_checkpoint(step))
        bar.close()


def train(config: TrainConfig, accelerator=None) -> TrainResult:
    """Run :class:`Trainer` on ``config`` (see the module docstring).

    accelerate keeps one state per process: runs in the same Python process must share
    ``mixed_precision`` (or pass their own ``accelerator``); use a new process for another one.
    """
    return Trainer(config, accelerator).run()


