"""HP3 weight files: one ``.safetensors`` holding the token decoder, controller and connector.

Layout of a file::

    8 bytes          little-endian u64: N, the length of the JSON header
    N bytes          JSON header: {tensor key: {dtype, shape, data_offsets}, "__metadata__": {...}}
    the rest         raw tensor data, exactly as long as the largest data_offsets end

``__metadata__`` (all values are strings, as safetensors requires):

* ``hp3.format_version``: integer, :data:`FORMAT_VERSION` of the writer. It also versions the
  tensor keys: version 1 named the token decoder ``encoder.*``, version 2 ``token_decoder.*``
  (:data:`KEY_RENAMES`). Files of every version are read into the current key layout, so the
  loaded state dict and the messages use today's names;
* ``hp3.family``: ``sd15`` or ``sdxl``;
* ``hp3.config``: :class:`~hp3_core.config.HP3Config` as JSON;
* anything else the writer adds (training step, dataset), kept as is.

Before any tensor is read the header is checked by hand, so that a wrong file gets a message
that says what it is (a pickle checkpoint, a truncated download, an SD checkpoint, a LoRA...)
and what to do, instead of a deserialisation error. Pickle is never used.

Everything that needs no allocation is checked before anything is built or read, so a small
file cannot make the loader build a large model: the header's types (``__metadata__`` a map of
strings, dtypes known, shapes lists of non-negative integers, offsets that tile the data exactly
as long as the file), the config's JSON (size, depth, every field's type and range,
:data:`CONFIG_RANGES`) and its agreement with the header (the model the config describes is
built on PyTorch's ``meta`` device, which allocates no memory, and its tensor shapes must be the
header's). After reading, tensors holding NaN or infinity are refused by name.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import FAMILY_NAMES, HP3Config
from .errors import HP3Error, WeightFileError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
# Key prefixes renamed since each format version: (old prefix, current prefix). Applied in order
# to every key of a file written with that version or older.
KEY_RENAMES: dict[int, tuple[tuple[str, str], ...]] = {1: (("encoder.", "token_decoder."),)}
META_FORMAT = "hp3.format_version"
META_FAMILY = "hp3.family"
META_CONFIG = "hp3.config"

# safetensors dtype names -> bytes per element.
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000
# Nesting of a safetensors header ({key: {"shape": [...]}}) and of HP3's config JSON.
_MAX_HEADER_DEPTH = 3
_MAX_CONFIG_DEPTH = 4
_MAX_CONFIG_CHARS = 100_000
_MAX_DIMS = 8

# Allowed range of every numeric config field ("section.field"; lists: each entry, and the
# list's length 1.._MAX_LIST). Far beyond SD1.5/SDXL (widths 320..2048, 2 layers per block, 10
# transformer layers, 4 blocks), yet the largest such model is built on the meta device in
# about a second.
CONFIG_RANGES: dict[str, tuple[int, int]] = {
    "encoder.width": (1, 8192), "encoder.num_tokens": (1, 1024), "encoder.num_layers": (1, 64),
    "encoder.num_heads": (1, 256), "encoder.id_dim": (1, 8192), "encoder.clip_width": (1, 8192),
    "controller.cross_attention_dim": (1, 8192), "controller.block_out_channels": (1, 8192),
    "controller.layers_per_block": (1, 4), "controller.transformer_layers_per_block": (0, 16),
    "controller.attention_head_dim": (1, 256), "controller.in_channels": (1, 64),
    "controller.norm_num_groups": (1, 1024), "controller.addition_time_embed_dim": (1, 8192),
    "controller.projection_class_embeddings_input_dim": (1, 65536),
    "controller.conditioning_channels": (1, 64),
    "controller.conditioning_embedding_out_channels": (1, 8192),
    "connector.hidden_channels": (1, 8192),
}
_CONFIG_LISTS = {"controller.block_out_channels", "controller.transformer_layers_per_block",
                 "controller.attention_head_dim", "controller.conditioning_embedding_out_channels"}
_CONFIG_OPTIONAL = {"controller.addition_time_embed_dim",
                    "controller.projection_class_embeddings_input_dim"}
_MAX_LIST = 6

FIX_REDOWNLOAD = "download or copy the file again (it is damaged or incomplete)"
FIX_NOT_HP3 = ("put HP3 weights (made by `python -m hp3_core init` or `train`) in models/hp3; "
               "move this file to the folder of its own kind")
FIX_MISMATCH = ("use an HP3 file written by this pack for this config; the file was edited or made "
                "by another tool (re-export it with `python -m hp3_core train --export`)")
FIX_NONFINITE = ("the weights are broken (training diverged, or the file was damaged): use an "
                 "earlier checkpoint (checkpoints/checkpoint-N/hp3.safetensors) or export it again")


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
            f"CLIP vision width: {c.encoder.clip_width}, identity: {c.encoder.identity} "
            f"({c.encoder.id_dim}-d)",
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
        (config, metadata, tensor specs by key in today's layout, see :func:`current_key`).

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
    config = _config_from_text(path, metadata.get(META_CONFIG, ""))
    if metadata.get(META_FAMILY, config.family) != config.family:
        raise WeightFileError(path, f"metadata family '{metadata[META_FAMILY]}' contradicts its config "
                              f"family '{config.family}'", FIX_MISMATCH)
    return config, metadata, {current_key(k, version): s for k, s in specs.items()}


def current_key(key: str, version: int) -> str:
    """``key`` of a file written with format ``version``, in today's key layout."""
    for since, renames in sorted(KEY_RENAMES.items()):
        if version <= since:
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
    return key


def file_version(metadata: Mapping[str, str]) -> int:
    """The format version of a file whose header :func:`read_hp3_header` accepted."""
    return int(metadata[META_FORMAT])


def load_hp3_weights(path: str | Path, expected: Mapping[str, tuple[int, ...]] | None = None,
                     device: str | torch.device = "cpu") -> HP3Weights:
    """Read and check an HP3 weight file.

    The header, the config and their agreement (:func:`config_shapes`) are checked before any
    tensor is read or any model is built; then the tensors are read and NaN/infinite values are
    refused, naming the tensor.

    Args:
        path: the ``.safetensors`` file.
        expected: shapes by key of the model the file is for (e.g. from
            :func:`shapes_of` on a freshly built model); when given, missing and unexpected keys
            and shape mismatches are rejected before any tensor is read.
        device: where the tensors go.

    Raises:
        WeightFileError: one line naming the file, what is wrong and the fix.
    """
    config, metadata, specs = read_hp3_header(path)
    found = {k: s.shape for k, s in specs.items()}
    check_shapes(path, found, config_shapes(path, config))
    if expected is not None:
        check_shapes(path, found, expected)
    try:
        state_dict = load_file(str(path), device=str(device))
    except Exception as err:  # the header was fine, so this is damage inside the data
        raise WeightFileError(path, f"its tensors cannot be read ({err})", FIX_REDOWNLOAD) from None
    version = file_version(metadata)
    state_dict = {current_key(k, version): v for k, v in state_dict.items()}
    check_finite(path, state_dict)
    return HP3Weights(path=str(path), config=config, state_dict=state_dict, metadata=metadata)


def check_finite(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse floating-point tensors holding NaN or infinity, naming the first one."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            continue
        # isfinite has no kernel for some 8-bit floats; half precision holds all their values.
        probe = tensor if tensor.element_size() > 1 else tensor.to(torch.float16)
        if not bool(torch.isfinite(probe).all()):
            raise WeightFileError(path, f"tensor '{key}' holds NaN or infinite values", FIX_NONFINITE)


def config_shapes(path: str | Path, config: HP3Config) -> dict[str, tuple[int, ...]]:
    """Shapes by key of the HP3 model ``config`` describes, without allocating it.

    The model is built on PyTorch's ``meta`` device (shapes only, no memory); the config's ranges
    were checked before (:data:`CONFIG_RANGES`), so this takes at most a few seconds.

    Raises:
        WeightFileError: the config does not describe a model this pack can build.
    """
    try:
        return dict(_meta_shapes(config.to_json()))
    except HP3Error as err:
        raise WeightFileError(path, f"its config cannot be read ({err})", FIX_MISMATCH) from None
    except Exception as err:  # noqa: BLE001 - diffusers rejects odd architectures with several types
        raise WeightFileError(path, "its config does not describe a model this pack can build "
                              f"({type(err).__name__}: {err})", FIX_MISMATCH) from None


@functools.lru_cache(maxsize=8)
def _meta_shapes(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from .hp3_model import HP3Model  # hp3_model imports this module
    with torch.device("meta"):
        model = HP3Model(HP3Config.from_json(config_json))
    return tuple(shapes_of(model).items())


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
        # A header length can start with these bytes too; JSON then follows them.
        pickle_like = head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and 2 <= head[1] <= 5)
        if pickle_like and f.read(1) not in (b"{", b"[", b" ", b"\n", b"\r", b"\t"):
            raise WeightFileError(path, "this is a PyTorch pickle checkpoint (.ckpt/.pt/.bin), not "
                                  "safetensors; HP3 never loads pickles (they can run code)",
                                  "use the .safetensors version of the weights")
        if n == 0 or n > _MAX_HEADER:
            raise WeightFileError(path, "not a safetensors file (its first 8 bytes are not a header "
                                  "length)", "use a .safetensors file")
        # Never ask for more than the file holds: read(n) would first allocate all n bytes.
        f.seek(8)
        raw = f.read(min(n, size - 8))
    if len(raw) < n:
        if raw.lstrip()[:1] == b"{":
            raise WeightFileError(path, f"the file is truncated: its header alone needs {n + 8} bytes "
                                  f"but the file has {size}", FIX_REDOWNLOAD)
        raise WeightFileError(path, "not a safetensors file (no header)", "use a .safetensors file")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WeightFileError(path, "not a safetensors file (its header is not JSON)",
                              "use a .safetensors file") from None
    if _json_depth(header, _MAX_HEADER_DEPTH) > _MAX_HEADER_DEPTH:
        raise WeightFileError(path, f"its safetensors header nests deeper than {_MAX_HEADER_DEPTH} "
                              "levels", FIX_REDOWNLOAD)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError(path, "its safetensors __metadata__ is not a map of strings to strings",
                              FIX_REDOWNLOAD)
    spans = sorted((_entry_span(path, key, entry) + (key,) for key, entry in header.items()))
    end = 0
    for start, stop, key in spans:  # safetensors requires the data to be tiled exactly
        if start != end:
            raise WeightFileError(path, f"entry '{key}' starts at byte {start} of the data, expected "
                                  f"{end} (entries overlap or leave gaps)", FIX_REDOWNLOAD)
        end = stop
    if 8 + n + end > size:
        raise WeightFileError(path, f"the file is truncated: {size} bytes but its header describes "
                              f"{8 + n + end}", FIX_REDOWNLOAD)
    if 8 + n + end < size:
        raise WeightFileError(path, f"the file has {size - 8 - n - end} bytes after its last tensor",
                              FIX_REDOWNLOAD)
    return header, metadata


def _is_count(value: Any) -> bool:
    """A JSON non-negative integer (``true`` is not one, nor is ``2.0``)."""
    return type(value) is int and value >= 0


def _entry_span(path: Path, key: str, entry: Any) -> tuple[int, int]:
    """(start, stop) data offsets of a header entry whose dtype, shape and offsets are checked."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise WeightFileError(path, f"malformed safetensors entry for '{key}' (it needs exactly "
                              "dtype, shape and data_offsets)", FIX_REDOWNLOAD)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        raise WeightFileError(path, f"entry '{key}' has an unknown dtype {str(dtype)[:20]!r}",
                              FIX_REDOWNLOAD)
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(map(_is_count, shape)):
        raise WeightFileError(path, f"entry '{key}' has a shape that is not a list of at most "
                              f"{_MAX_DIMS} non-negative integers", FIX_REDOWNLOAD)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)) \
            or offsets[0] > offsets[1]:
        raise WeightFileError(path, f"entry '{key}' has data_offsets that are not [start, end] "
                              "byte positions", FIX_REDOWNLOAD)
    start, stop = offsets
    if stop - start != math.prod(shape) * _DTYPE_SIZES[dtype]:
        raise WeightFileError(path, f"entry '{key}' claims {stop - start} bytes for shape {shape} "
                              f"of {dtype}", FIX_REDOWNLOAD)
    return start, stop


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), not looking deeper than ``limit + 1``."""
    if limit < 0 or not isinstance(value, (dict, list)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_json_depth(v, limit - 1) for v in items), default=0)


def _config_from_text(path: Path, text: str) -> HP3Config:
    """The config from its metadata JSON, with size, depth, types and ranges checked first."""
    def refuse(problem: str) -> WeightFileError:
        return WeightFileError(path, f"its config cannot be read ({problem})", FIX_MISMATCH)

    if len(text) > _MAX_CONFIG_CHARS:
        raise refuse(f"{len(text)} characters of JSON, more than any HP3 config")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise refuse(f"not valid JSON: {str(err)[:80]}") from None
    if not isinstance(data, dict):
        raise refuse("it is not a JSON object")
    if _json_depth(data, _MAX_CONFIG_DEPTH) > _MAX_CONFIG_DEPTH:
        raise refuse(f"it nests deeper than {_MAX_CONFIG_DEPTH} levels")
    problem = _config_range_problem(data)
    if problem:
        raise refuse(problem)
    try:
        return HP3Config.from_dict(data)
    except HP3Error as err:
        raise refuse(str(err)) from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as err:
        raise refuse(f"{type(err).__name__}: {err}") from None


def _config_range_problem(data: Mapping[str, Any]) -> str | None:
    """What is out of :data:`CONFIG_RANGES` in a config's JSON (``None`` when all is well)."""
    for name, (lo, hi) in CONFIG_RANGES.items():
        section, key = name.split(".")
        part = data.get(section, {})
        if not isinstance(part, dict):
            return f"'{section}' is a {type(part).__name__}, not an object"
        if key not in part or (part[key] is None and name in _CONFIG_OPTIONAL):
            continue
        value = part[key]
        if name in _CONFIG_LISTS:
            if not isinstance(value, list) or not 1 <= len(value) <= _MAX_LIST:
                return f"{name} must be a list of 1 to {_MAX_LIST} integers"
            values = value
        else:
            values = [value]
        if not all(type(v) is int and lo <= v <= hi for v in values):
            what = "integers" if name in _CONFIG_LISTS else "an integer"
            return f"{name} is {str(value)[:40]}; it must be {what} from {lo} to {hi}"
    types = data.get("controller", {}).get("down_block_types", ["DownBlock2D"])
    if not isinstance(types, list) or not 1 <= len(types) <= _MAX_LIST \
            or not all(isinstance(t, str) and len(t) < 64 for t in types):
        return f"controller.down_block_types must be a list of 1 to {_MAX_LIST} block names"
    weight = data.get("id_loss_weight", 1.0)
    if type(weight) not in (int, float) or not math.isfinite(weight):
        return "id_loss_weight must be a finite number"
    notes = data.get("notes", {})
    if not isinstance(notes, dict) or not all(isinstance(v, str) for v in notes.values()):
        return "notes must be a map of strings"
    return None


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
