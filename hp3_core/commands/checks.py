"""Up-front checks of command-line values: each failure is one :class:`HP3Error` line that names
the option and the fix, raised before any model is loaded or any work is done.

Numbers: argparse only parses them (``--every 0``, ``--fps nan`` and ``--crop-scale -1`` all
parse), so ranges are checked here. Paths: inputs must exist and be of the right kind; outputs
must be creatable and writable and their disk must have room (a probe file is written and
removed, which also catches read-only mounts where ``os.access`` says yes, e.g. as root).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import HP3Error
from ..image_io import write_reason

# An output folder whose disk has less free space than this is refused up front.
MIN_FREE_BYTES = 16 * 1024 * 1024


def whole(option: str, value: int | None, minimum: int = 0, maximum: int | None = None,
          meaning: str = "") -> int | None:
    """``value`` (None passes) within [minimum, maximum], or an error naming ``option``."""
    if value is None:
        return None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise HP3Error(f"{option} must be a whole number {bound}{f' ({meaning})' if meaning else ''}, got {value}")
    return value


def number(option: str, value: float | None, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, meaning: str = "") -> float | None:
    """A finite ``value`` (None passes) within the given bounds, or an error naming ``option``."""
    if value is None:
        return None
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        bound = " and ".join(parts) or "finite"
        raise HP3Error(f"{option} must be a finite number {bound}{f' ({meaning})' if meaning else ''}, "
                       f"got {value}")
    return value


def input_path(option: str, path: str | Path) -> Path:
    """An existing file or folder."""
    p = Path(path)
    if not p.exists():
        raise HP3Error(f"{option} '{p}' does not exist; check the path")
    return p


def input_file(option: str, path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """An existing, readable file (of one of ``suffixes`` when given)."""
    p = input_path(option, path)
    if p.is_dir():
        raise HP3Error(f"{option} '{p}' is a folder; give a file")
    if not p.is_file():
        raise HP3Error(f"{option} '{p}' is not a regular file; give a file")
    if not os.access(p, os.R_OK):
        raise HP3Error(f"{option} '{p}' cannot be read (permission denied); fix its permissions")
    if suffixes and p.suffix.lower() not in suffixes:
        raise HP3Error(f"{option} '{p}' should be a {' or '.join(suffixes)} file")
    return p


def input_folder(option: str, path: str | Path) -> Path:
    """An existing folder."""
    p = input_path(option, path)
    if not p.is_dir():
        raise HP3Error(f"{option} '{p}' is a file; give a folder")
    return p


def search_folder(option: str, path: str | Path) -> Path:
    """A folder searched for model files: it may be missing (the missing-file error lists every
    folder searched), but an existing file there is a mistake."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise HP3Error(f"{option} '{p}' is a file; give the folder that holds the model files")
    return p


def search_folders(option: str, paths: Sequence[str | Path] | None) -> None:
    """Each folder of a repeatable option checked with :func:`search_folder` (None: not given)."""
    for path in paths or []:
        search_folder(option, path)


def output_folder(option: str, path: str | Path, min_free: int = MIN_FREE_BYTES) -> Path:
    """``path`` as a folder that exists (made if needed), is writable and has room."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise HP3Error(f"{option} '{p}' is a file, not a folder; give a folder (it is made if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise HP3Error(f"{option} '{p}': a part of the path is a file, not a folder; choose another path") from None
    except OSError as err:
        raise HP3Error(f"{option} '{p}' cannot be made: {write_reason(err)}") from None
    _probe(option, p, min_free)
    return p


def output_file(option: str, path: str | Path, suffixes: tuple[str, ...] = (),
                min_free: int = MIN_FREE_BYTES) -> Path:
    """``path`` as a file that can be written: its folder is made, writable and has room."""
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise HP3Error(f"{option} must be a {' or '.join(suffixes)} file, got '{p}'")
    if p.is_dir():
        raise HP3Error(f"{option} '{p}' is a folder; give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise HP3Error(f"{option} '{p}' exists and cannot be overwritten (permission denied); choose another file")
    output_folder(f"the folder of {option}", p.parent if str(p.parent) else Path("."), min_free)
    return p


def _probe(option: str, folder: Path, min_free: int) -> None:
    """Write and remove a small file in ``folder``: the one sure test of writability."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hp3-write-test-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise HP3Error(f"{option} '{folder}' is not writable: {write_reason(err)}") from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise HP3Error(f"{option} '{folder}': its disk has only {free / 2**20:.1f} MB free; free some space "
                       f"or write to another disk")



def device(option: str, value: str) -> str:
    """A torch device string that exists here (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise HP3Error(f"{option} '{value}' is not a device; use cpu or cuda (cuda:N for another GPU)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HP3Error(f"{option} {value}: no CUDA device is available; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HP3Error(f"{option} {value}: there are {torch.cuda.device_count()} CUDA device(s); "
                           f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HP3Error(f"{option} mps: no Apple GPU is available; use {option} cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise HP3Error(f"{option} '{value}': use cpu or cuda")
    return value
