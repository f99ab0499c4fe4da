"""Where the pack looks for model files: one table of folders and one resolver for both hosts.

Each host only says which folders to search: the command line from ``--models-dir`` (each folder
itself, then its ``<kind>`` sub-folder: :func:`cli_folders`), ComfyUI from ``folder_paths``
(``nodes/model_folders.py`` registers :data:`MODEL_FOLDERS` there and passes its folder lists
in). Finding a file, and the error that lists every folder searched, is here.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingModelFileError


@dataclass(frozen=True)
class ModelFolder:
    """One kind of model file the pack reads.

    Attributes:
        sub: the default sub-folder of ``ComfyUI/models``.
        extensions: file suffixes ComfyUI lists for it.
        holds: what users put there (shown in messages).
    """

    sub: str
    extensions: frozenset[str]
    holds: str


MODEL_FOLDERS: dict[str, ModelFolder] = {
    "hp3": ModelFolder("hp3", frozenset({".safetensors"}), "HP3 weights (.safetensors)"),
    "insightface": ModelFolder("insightface", frozenset({".onnx"}), "insightface packs: models/<pack>/*.onnx"),
    "smirk": ModelFolder("smirk", frozenset({".pt", ".pth", ".safetensors"}), "SMIRK encoder (SMIRK_em1.pt)"),
    "flame": ModelFolder("flame", frozenset({".pkl", ".npz"}), "FLAME 2020 head model (generic_model.pkl)"),
}


def cli_folders(dirs: Sequence[str | Path], kind: str) -> list[Path]:
    """The folders a command searches for ``kind`` files: each ``--models-dir`` and its ``kind`` sub-folder."""
    return [q for d in dirs for q in (Path(d), Path(d) / kind)]


def find_file(names: Sequence[str], folders: Sequence[str | Path]) -> Path | None:
    """The first ``folder/name`` that is a file (folders in order, then names), or None.

    A name is kept inside its folder as ComfyUI's ``get_full_path`` keeps it (``../`` cannot
    climb out), since node inputs can carry any string.
    """
    for folder in folders:
        for name in names:
            inside = os.path.relpath(os.path.join("/", name), "/")
            path = Path(folder) / inside
            if path.is_file():
                return path
    return None


def require_file(names: Sequence[str], folders: Sequence[str | Path], what: str, where_to_get: str = "") -> Path:
    """Like :func:`find_file`, but a missing file raises :class:`MissingModelFileError` listing the folders."""
    path = find_file(names, folders)
    if path is None:
        raise MissingModelFileError(what, names, folders, where_to_get)
    return path
