"""HP3 weight files: one ``.safetensors`` holding the encoder heads, controller and connector.

Layout of a file::

    8 bytes          little-endian u64: N, the length of the JSON header
    N bytes          JSON header: {tensor key: {dtype, shape, data_offsets}, "__metadata__": {...}}
    the rest         raw tensor data, exactly as long as the largest data_offsets end

``__metadata__`` (all values are strings, as safetensors requires):

* ``hp3.format_version``: integer, :data:`FORMAT_VERSION` of the writer;
* ``hp3.family``: ``sd15`` or ``sdxl``;
* ``hp3.config``: :class:`~hp3_core.config.HP3Config` as JSON;
* anything else the writer adds (training step, dataset), kept as is.

Before any tensor is read the header is checked by hand, so that a wrong file gets a message
that says what it is (a pickle checkpoint, a truncated download, an SD checkpoint, a LoRA...)
and what to do, instead of a deserialisation error. Pickle is never used.
"""
from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import FAMILY_NAMES, HP3Config
from .errors import HP3Error, WeightFileError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FORMAT = "hp3.format_version"
META_FAMILY = "hp3.family"
META_CONFIG = "hp3.config"

# safetensors dtype names -> bytes per element.
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000

FIX_REDOWNLOAD = "download or copy the file again (it is damaged or incomplete)"
FIX_NOT_HP3 = ("put HP3 weights (made by `python -m hp3_core init` or `train`) in models/hp3; "
               "move this file to the folder of its own kind")
FIX_MISMATCH = ("use an HP3 file written by this pack for this config; the file was edited or made "
                "by another tool (re-export it with `python -m hp3_core train --export`)")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the header describes it: safetensors dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass
class HP3Weights:
    """An HP3 weight file in memory.

    Attributes:
        path: where it was read from (for messages).
        config: the model's config (from the file's metadata).
        state_dict: tensors by key, on the CPU unless asked otherwise.
        metadata: the file's whole ``__metadata__``.
    """

    path: str
    config: HP3Config
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.config.family

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    def summary(self) -> str:
        """A short, human-readable description (shown by ``info`` and the Model Info node)."""
        c = self.config
        lines = [
            f"file: {Path(self.path).name}",
            f"base family: {c.family_name} ({c.family})",
            f"format version: {self.metadata.get(META_FORMAT, '?')}",
            f"tensors: {len(self.state_dict)}, parameters: {self.num_parameters():,}",
            f"head tokens: {c.encoder.num_tokens} x {c.encoder.width}, decoder layers: {c.encoder.num_layers}",
            f"CLIP vision width: {c.encoder.clip_width}, identity width: {c.encoder.id_dim}",
            f"controller blocks: {list(c.controller.block_out_channels)}",
            f"trained with 3D backend: {c.render_backend} ({c.render_style})",
        ]
        extra = {k: v for k, v in self.metadata.items() if not k.startswith("hp3.")}
        lines += [f"{k}: {v}" for k, v in sorted(extra.items())]
        return "\n".join(lines)


def save_hp3_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], config: HP3Config,
                     extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state_dict`` and ``config`` as an HP3 ``.safetensors`` file; returns the path.

    Tensors are made contiguous and moved to the CPU. The file is written next to its final
    name and renamed, so an interrupted save never leaves a truncated file under that name.
    """
    path = Path(path)
    metadata = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    metadata.update({META_FORMAT: str(FORMAT_VERSION), META_FAMILY: config.family,
                     META_CONFIG: config.to_json()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    log.info("saved HP3 weights (%s, %d tensors) to %s", config.family, len(tensors), path)
    return path


def read_hp3_header(path: str | Path) -> tuple[HP3Config, dict[str, str], dict[str, TensorSpec]]:
    """Check an HP3 file's structure and metadata without reading its tensors.

    Returns:
        (config, metadata, tensor specs by key).

    Raises:
        WeightFileError: the file is missing, not safetensors, truncated, not an HP3 file, from a
            newer format, or its config is unreadable. The message names the file and the fix.
    """
    path = Path(path)
    header, metadata = _read_safetensors_header(path)
    specs = {k: TensorSpec(v["dtype"], tuple(v["shape"])) for k, v in header.items()}
    if META_FORMAT not in metadata:
        raise WeightFileError(path, f"not an HP3 weight file (no '{META_FORMAT}' metadata); "
                              f"{_what_it_looks_like(specs)}", FIX_NOT_HP3)
    try:
        version = int(metadata[META_FORMAT])
    except ValueError:
        raise WeightFileError(path, f"unreadable format version '{metadata[META_FORMAT]}'",
                              FIX_REDOWNLOAD) from None
    if version > FORMAT_VERSION:
        raise WeightFileError(path, f"written by a newer HP3 pack (format {version}; this pack reads "
                              f"up to {FORMAT_VERSION})", "update the HP3 node pack")
    try:
        config = HP3Config.from_json(metadata.get(META_CONFIG, ""))
    except HP3Error as err:
        raise WeightFileError(path, f"its config cannot be read ({err})", FIX_MISMATCH) from None
    if metadata.get(META_FAMILY, config.family) != config.family:
        raise WeightFileError(path, f"metadata family '{metadata[META_FAMILY]}' contradicts its config "
                              f"family '{config.family}'", FIX_MISMATCH)
    return config, metadata, specs


def load_hp3_weights(path: str | Path, expected: Mapping[str, tuple[int, ...]] | None = None,
                     device: str | torch.device = "cpu") -> HP3Weights:
    """Read and check an HP3 weight file.

    Args:
        path: the ``.safetensors`` file.
        expected: shapes by key of the model the file is for (e.g. from
            :func:`shapes_of` on a freshly built model); when given, missing and unexpected keys
            and shape mismatches are rejected before any tensor is read.
        device: where the tensors go.
    """
    config, metadata, specs = read_hp3_header(path)
    if expected is not None:
        check_shapes(path, {k: s.shape for k, s in specs.items()}, expected)
    try:
        state_dict = load_file(str(path), device=str(device))
    except Exception as err:  # the header was fine, so this is damage inside the data
        raise WeightFileError(path, f"its tensors cannot be read ({err})", FIX_REDOWNLOAD) from None
    return HP3Weights(path=str(path), config=config, state_dict=state_dict, metadata=metadata)


def shapes_of(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes by key of a module's state dict (the ``expected`` of :func:`load_hp3_weights`)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: tuple(v.shape) for k, v in state.items()}


def check_shapes(path: str | Path, found: Mapping[str, tuple[int, ...]],
                 expected: Mapping[str, tuple[int, ...]]) -> None:
    """Reject missing keys, unexpected keys and shape mismatches, naming the first offenders."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {_some(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {_some(unexpected)}")
        raise WeightFileError(path, "; ".join(parts), FIX_MISMATCH)
    wrong = [(k, tuple(found[k]), tuple(expected[k])) for k in expected
             if tuple(found[k]) != tuple(expected[k])]
    if wrong:
        k, got, want = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise WeightFileError(path, f"shape mismatch for '{k}': expected {list(want)}, found "
                              f"{list(got)}{more}", FIX_MISMATCH)


def check_family(path: str | Path, weights_family: str, model_family: str) -> None:
    """Reject HP3 weights applied to a MODEL of another base family."""
    if weights_family == model_family:
        return
    have = FAMILY_NAMES.get(weights_family, weights_family)
    got = FAMILY_NAMES.get(model_family, model_family)
    raise WeightFileError(
        path, f"trained for {have} but the MODEL it is applied to is {got}",
        f"load an {have} checkpoint for these weights, or pick HP3 weights made for {got}")


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(f"'{k}'" for k in keys[:n]) + (" ..." if len(keys) > n else "")


def _read_safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse and sanity-check the safetensors header: (tensor entries, metadata)."""
    if not path.is_file():
        raise WeightFileError(path, "no such file", "check the file name and folder")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(path, f"the file is only {size} bytes, too short for safetensors",
                                  FIX_REDOWNLOAD)
        (n,) = struct.unpack("<Q", head)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            raise WeightFileError(path, "this is a PyTorch pickle checkpoint (.ckpt/.pt/.bin), not "
                                  "safetensors; HP3 never loads pickles (they can run code)",
                                  "use the .safetensors version of the weights")
        if n == 0 or n > _MAX_HEADER:
            raise WeightFileError(path, "not a safetensors file (its first 8 bytes are not a header "
                                  "length)", "use a .safetensors file")
        raw = f.read(n)
    if len(raw) < n:
        if raw.lstrip()[:1] == b"{":
            raise WeightFileError(path, f"the file is truncated: its header alone needs {n + 8} bytes "
                                  f"but the file has {size}", FIX_REDOWNLOAD)
        raise WeightFileError(path, "not a safetensors file (no header)", "use a .safetensors file")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError):
        raise WeightFileError(path, "not a safetensors file (its header is not JSON)",
                              "use a .safetensors file") from None
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for key, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = _DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise WeightFileError(path, f"malformed safetensors entry for '{key}'", FIX_REDOWNLOAD) from None
        if stop - start != math.prod(shape) * itemsize:
            raise WeightFileError(path, f"entry '{key}' claims {stop - start} bytes for shape {shape} "
                                  f"of {dtype}", FIX_REDOWNLOAD)
        end = max(end, stop)
    if 8 + n + end > size:
        raise WeightFileError(path, f"the file is truncated: {size} bytes but its header describes "
                              f"{8 + n + end}", FIX_REDOWNLOAD)
    if 8 + n + end < size:
        raise WeightFileError(path, f"the file has {size - 8 - n - end} bytes after its last tensor",
                              FIX_REDOWNLOAD)
    return header, {str(k): str(v) for k, v in metadata.items()}


def _what_it_looks_like(specs: Mapping[str, TensorSpec]) -> str:
    """Guess the kind of a non-HP3 safetensors file from its keys (to say where it belongs)."""
    keys = list(specs)
    if not keys:
        return "it holds no tensors"

    def any_key(*needles: str) -> bool:
        return any(n in k for k in keys for n in needles)

    if any_key("lora_", ".lora.", "lora_up", "lora_A"):
        kind = "it looks like a LoRA (models/loras)"
    elif any_key("input_hint_block", "controlnet_cond_embedding", "control_model."):
        kind = "it looks like a ControlNet (models/controlnet)"
    elif any_key("image_proj", "ip_adapter"):
        kind = "it looks like an IP-Adapter/InstantID model (models/ipadapter or models/instantid)"
    elif any_key("model.diffusion_model.", "first_stage_model."):
        kind = "it looks like a Stable Diffusion checkpoint (models/checkpoints)"
    elif any_key("vision_model.", "visual."):
        kind = "it looks like a CLIP vision model (models/clip_vision)"
    elif any_key("encoder.down.", "decoder.up."):
        kind = "it looks like a VAE (models/vae)"
    else:
        kind = f"first key '{keys[0]}'"
    return f"{len(keys)} tensors, {kind}"
