"""CLIP vision: the frozen backbone of the head encoder's local-appearance branch.

HP3 reads the **penultimate** hidden states of a CLIP vision transformer on the head crop (all
tokens: class token + patches, e.g. 257 x 1024 for ViT-L/14 at 224 px), like IP-Adapter Plus and
ComfyUI's ``penultimate_hidden_states``. The last layer is skipped because it is trained to feed
the pooled, text-aligned embedding and discards spatial detail.

* :func:`clip_preprocess` is ComfyUI's ``clip_preprocess`` (so features computed here equal those
  from a ComfyUI ``CLIP_VISION`` object on the same image);
* :class:`ClipVisionEncoder` wraps a transformers ``CLIPVisionModel`` or
  ``CLIPVisionModelWithProjection`` (an object, or loaded by :meth:`ClipVisionEncoder.from_local`
  from local files only; nothing is ever downloaded).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import CLIP_VISION_WIDTHS
from ..errors import HP3Error, MissingModelFileError
from ..optional import require

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architectures of the CLIP vision models people pair with IP-Adapter-style methods, by width,
# for single .safetensors files that carry no config (ComfyUI's clip_vision folder):
# (attention heads, activation). OpenAI's ViT-B/L use quick_gelu, LAION's ViT-H and bigG gelu.
_KNOWN_ARCH = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, crop: bool = True) -> torch.Tensor:
    """ComfyUI's CLIP preprocessing: [B, H, W, 3] float 0..1 -> normalised [B, 3, size, size].

    Unless the image is already ``size`` x ``size``: resize so the *shortest* side is ``size``
    (other side ``round(scale * side)``; bicubic with antialiasing), then cut the centre
    ``size`` x ``size`` (offsets ``(side - size) // 2``). With ``crop=False`` the image is resized
    to ``size`` x ``size`` (aspect not kept). Then values are clipped to 0..1 and rounded to
    multiples of 1/255 (as if saved as 8-bit) and normalised with CLIP's mean and std. Computed in
    the input's dtype and device.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"clip_preprocess expects images [B, H, W, 3], got {list(images.shape)}")
    x = images.movedim(-1, 1)
    if not x.is_floating_point():
        x = x.float()
    h, w = x.shape[2], x.shape[3]
    if (h, w) != (size, size):
        if crop:
            scale = size / min(h, w)
            new = (round(scale * h), round(scale * w))
        else:
            new = (size, size)
        x = torch.nn.functional.interpolate(x, size=new, mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0.0, 255.0).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def clip_arch_name(width: int) -> str:
    """``"ViT-H/14"`` for 1280 etc., or ``"unknown architecture"``."""
    return CLIP_VISION_WIDTHS.get(int(width), "unknown architecture")


class ClipVisionEncoder:
    """Penultimate hidden states of a transformers CLIP vision model.

    Device and dtype: the wrapped model stays where it is (move it with :meth:`to`). :meth:`encode`
    takes images on any device, preprocesses them in float32 on the model's device, casts the
    pixels to the model's dtype (fp16/bf16 models run in their dtype), and returns **float32** on
    the model's device, so the trainable decoder and stored features never see half precision.
    """

    def __init__(self, model: Any, name: str = "CLIP vision") -> None:
        vision = getattr(model, "vision_model", model)
        config = getattr(vision, "config", None) or getattr(model, "config", None)
        if config is None or not hasattr(config, "hidden_size"):
            raise HP3Error(f"{name}: expected a transformers CLIPVisionModel or "
                           f"CLIPVisionModelWithProjection, got {type(model).__name__}")
        self.model = model.eval()
        self.name = name
        self.config = config

    # -- properties -------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Hidden width C of the features (1024 ViT-L/14, 1280 ViT-H/14, 1664 ViT-bigG/14)."""
        return int(self.config.hidden_size)

    @property
    def arch_name(self) -> str:
        return clip_arch_name(self.width)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def num_tokens(self) -> int:
        """T: class token + patches (257 for a /14 model at 224 px)."""
        return (self.image_size // int(self.config.patch_size)) ** 2 + 1

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ClipVisionEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    # -- encoding ---------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[B, H, W, 3] (float 0..1, or uint8) -> [B, 3, S, S] float32 on the model's device."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.ndim == 3:
            images = images[None]
        x = images.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return clip_preprocess(x, size=self.image_size)

    @torch.no_grad()
    def encode(self, images: torch.Tensor | np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """Penultimate hidden states ``hidden_states[-2]``: [B, T, width] float32.

        Args:
            images: [B, H, W, 3] float in 0..1 (ComfyUI IMAGE layout; uint8 is accepted too).
            batch_size: images per forward pass (memory bound).
        """
        outs = []
        for start in range(0, images.shape[0], max(1, batch_size)):
            pixels = self.preprocess(images[start:start + batch_size]).to(self.dtype)
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            outs.append(out.hidden_states[-2].float())
        if not outs:
            raise ValueError("ClipVisionEncoder.encode got no images")
        return torch.cat(outs)

    __call__ = encode

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_local(cls, path: str | Path, config: Any = None, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ClipVisionEncoder:
        """Load a CLIP vision model from local files (never downloads).

        Args:
            path: either a folder with ``config.json`` and weights (``model.safetensors``, as
                written by ``save_pretrained``; a full ``CLIPModel`` folder works too: its text
                tower is ignored), or a single ``.safetensors`` file holding a transformers-layout
                CLIP vision state dict (``vision_model.*`` keys, optional ``visual_projection``;
                the files of ComfyUI's ``models/clip_vision``).
            config: for a single file: a ``CLIPVisionConfig``, a dict, or a JSON file path. When
                None, a ``<file stem>.json`` beside the file is used if present, otherwise the
                architecture is inferred from the tensor shapes (widths 768/1024/1280/1664).
            device: where to put the model (default CPU).
            dtype: the model's dtype (default: as stored in the file).

        Raises:
            MissingModelFileError: ``path`` does not exist or the folder lacks its files.
            HP3Error: the files are not a CLIP vision model in transformers layout.
        """
        path = Path(path)
        if path.is_dir():
            model = _load_folder(path, dtype)
        elif path.is_file() and path.suffix == ".safetensors":
            model = _load_single_file(path, config, dtype)
        elif path.is_file():
            raise HP3Error(f"CLIP vision model '{path}': expected a folder (config.json + weights) or "
                           f"a .safetensors file; pickled checkpoints are not loaded for safety")
        else:
            raise MissingModelFileError("CLIP vision model", [path.name], [path.parent])
        if device is not None:
            model.to(device)
        return cls(model, name=f"CLIP vision '{path.name}'")


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report and progress bars, restoring their settings after."""
    from transformers.utils import logging as tlog
    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _load_folder(path: Path, dtype: torch.dtype | None):
    transformers = require("transformers", "The CLIP vision encoder")
    if not (path / "config.json").is_file():
        raise MissingModelFileError(f"CLIP vision config in '{path}'", ["config.json"], [path])
    weights = [p.name for p in path.glob("*.safetensors")]
    if not weights:
        raise MissingModelFileError(f"CLIP vision weights in '{path}'",
                                    ["model.safetensors", "model-*-of-*.safetensors"], [path],
                                    "the model's repository (save_pretrained layout); pickled "
                                    "pytorch_model.bin files are not loaded")
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True,
                              "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_transformers():
            model, info = transformers.CLIPVisionModel.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise HP3Error(f"CLIP vision model '{path}' could not be loaded: {str(err).splitlines()[0]}") from err
    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(info.get("mismatched_keys", ()))
    if missing or mismatched:
        bad = (missing or [str(m) for m in mismatched])
        raise HP3Error(f"CLIP vision model '{path}': its weights do not fit its config.json "
                       f"({len(missing)} missing, {len(mismatched)} mismatched tensors, e.g. {bad[0]}); "
                       f"use an unmodified CLIP vision checkpoint")
    return model.eval()


def _load_single_file(path: Path, config: Any, dtype: torch.dtype | None):
    transformers = require("transformers", "The CLIP vision encoder")
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise HP3Error(f"CLIP vision file '{path}' is not a readable .safetensors file: {err}") from err
    vision = {}
    for key, value in sd.items():
        if key.startswith("vision_model."):
            vision[key[len("vision_model."):]] = value
        elif key.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):
            vision[key] = value
    if "embeddings.class_embedding" not in vision:
        hint = (" (an open_clip 'visual.*' checkpoint: convert it to the transformers layout, e.g. "
                "use the file ComfyUI's clip_vision folder has)" if any(k.startswith("visual.") for k in sd)
                else "")
        raise HP3Error(f"CLIP vision file '{path}' has no 'vision_model.embeddings.class_embedding': "
                       f"not a transformers CLIP vision state dict{hint}")
    cfg = _single_file_config(path, config, vision, sd)
    with torch.device("meta"):
        model = transformers.CLIPVisionModel(cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(vision))
    if missing:
        raise HP3Error(f"CLIP vision file '{path}' lacks {len(missing)} tensors of a "
                       f"{cfg.num_hidden_layers}-layer {cfg.hidden_size}-wide CLIP vision model "
                       f"(e.g. '{missing[0]}'); the file is truncated or not CLIP vision")
    try:
        model.load_state_dict({k: vision[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as err:
        raise HP3Error(f"CLIP vision file '{path}' does not match its config: "
                       f"{str(err).splitlines()[-1].strip()}") from err
    emb = model.embeddings
    emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))  # non-persistent buffer
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise HP3Error(f"CLIP vision file '{path}': tensors {leftovers[:3]} were not filled")
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _single_file_config(path: Path, config: Any, vision: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]):
    transformers = require("transformers", "The CLIP vision encoder")
    Config = transformers.CLIPVisionConfig
    if config is None:
        side = path.with_suffix(".json")
        config = side if side.is_file() else None
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, Path)):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HP3Error(f"CLIP vision config '{config}' is not readable JSON: {err}") from err
    if isinstance(config, dict):
        data = dict(config.get("vision_config", config))
        data.pop("architectures", None)
        return Config(**{k: v for k, v in data.items() if k not in ("model_type", "transformers_version")})
    # Infer from the shapes.
    width = int(vision["embeddings.class_embedding"].shape[0])
    if width not in _KNOWN_ARCH:
        raise HP3Error(f"CLIP vision file '{path}' is {width}-wide, an architecture whose head count "
                       f"is not known here; put its config.json beside it as '{path.stem}.json'")
    heads, act = _KNOWN_ARCH[width]
    patch = vision["embeddings.patch_embedding.weight"]
    positions = int(vision["embeddings.position_embedding.weight"].shape[0])
    grid = int(round((positions - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    proj = sd.get("visual_projection.weight")
    return Config(hidden_size=width, intermediate_size=int(vision["encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  num_hidden_layers=layers, num_attention_heads=heads, num_channels=int(patch.shape[1]),
                  patch_size=int(patch.shape[-1]), image_size=grid * int(patch.shape[-1]), hidden_act=act,
                  layer_norm_eps=1e-5, projection_dim=int(proj.shape[0]) if proj is not None else 512)
