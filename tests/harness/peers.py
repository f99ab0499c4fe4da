"""The peer node packs of the interop tests: IPAdapter_plus and InstantID as published.

Their tarballs live in ``../shared/hosts/peers/`` beside the repo (``HP3_PEERS_DIR`` may name
another folder); see the README there. They are test fixtures, never part of the pack: a test
unpacks one into a temporary ``custom_nodes`` folder of the host under test and nothing of their
code is kept in this repository.

* ``ComfyUI_IPAdapter_plus`` (cubiq, 2025-02-26, GPL-3.0) imports ``node_helpers`` at the top: it
  loads on the 2025 host only (the 2024 host has no ``node_helpers``: "IMPORT FAILED").
* ``ComfyUI_InstantID`` (cubiq, 2024-09-30, Apache-2.0) loads on both hosts (it calls
  ``ModelPatcher.get_model_object`` when applied, which the 2024 host lacks: it runs on 2025 only).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tarfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PEERS_ENV = "HP3_PEERS_DIR"
PEER_TARBALLS = {
    "ComfyUI_IPAdapter_plus": "ComfyUI_IPAdapter_plus-9d076a3d.tar.gz",
    "ComfyUI_InstantID": "ComfyUI_InstantID-1ef34ef5.tar.gz",
}
# The hosts each pack can be imported on (see the module docstring).
PEER_HOSTS = {"ComfyUI_IPAdapter_plus": ("comfy2025",), "ComfyUI_InstantID": ("comfy2024", "comfy2025")}


def peers_dir() -> Path:
    env = os.environ.get(PEERS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "hosts" / "peers"


def peer_tarball(name: str) -> Path | None:
    """The tarball of peer pack ``name``, or None when it is not there."""
    path = peers_dir() / PEER_TARBALLS[name]
    return path if path.is_file() else None


def unpack_peer(name: str, custom_nodes: Path) -> Path:
    """Unpack peer pack ``name`` into ``custom_nodes/<name>`` (once); returns that folder."""
    dest = Path(custom_nodes) / name
    if (dest / "__init__.py").is_file():
        return dest
    tarball = peer_tarball(name)
    if tarball is None:
        raise FileNotFoundError(f"peer pack {PEER_TARBALLS[name]} not found in {peers_dir()} "
                                f"(set {PEERS_ENV} to its folder)")
    staging = dest.parent / (name + ".unpack")
    with tarfile.open(tarball) as tar:
        tar.extractall(staging, filter="data")
    (staging / name).rename(dest)
    shutil.rmtree(staging, ignore_errors=True)
    return dest


def import_peer(folder: Path) -> ModuleType:
    """Import an unpacked peer pack as a package of its own (the host's nodes.py and comfy must
    be importable, i.e. an in-process host loaded) without registering its nodes in the host."""
    name = f"hp3_peer_{folder.name}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
