"""The pack's model folders in ComfyUI's ``folder_paths``.

Registered at import, keeping every path a user set in ``extra_model_paths.yaml`` (the host reads
that file before it imports custom nodes, creating entries with no extension filter for names it
does not know). The default folder under ``ComfyUI/models`` goes first, like the core folders.
"""
from __future__ import annotations

import os

import folder_paths

from ..hp3_core.errors import MissingModelFileError

# name -> (default sub-folder of models/, file extensions listed for it, what users put there)
MODEL_FOLDERS: dict[str, tuple[str, set[str], str]] = {
    "hp3": ("hp3", {".safetensors"}, "HP3 weights (.safetensors)"),
    "insightface": ("insightface", {".onnx"}, "insightface packs: models/<pack>/*.onnx"),
    "smirk": ("smirk", {".pt", ".pth", ".safetensors"}, "SMIRK encoder (SMIRK_em1.pt)"),
    "flame": ("flame", {".pkl", ".npz"}, "FLAME 2020 head model (generic_model.pkl)"),
}


def register() -> None:
    """Add the pack's folders (idempotent; never drops a path or extension already there)."""
    for name, (sub, exts, _) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))
            continue
        paths, known = entry[0], entry[1]
        if default not in paths:
            paths.insert(0, default)
        # An empty extension set means "every file" on all hosts; keep that, else add ours.
        if known:
            folder_paths.folder_names_and_paths[name] = (paths, set(known) | exts)
    # The host caches listings by folder name; ours may have been listed before we changed it.
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        for name in MODEL_FOLDERS:
            cache.pop(name, None)


def folders(name: str) -> list[str]:
    """Every folder searched for ``name`` (defaults and extra_model_paths.yaml), in order."""
    return list(folder_paths.get_folder_paths(name))


def full_path(name: str, filename: str, what: str, where_to_get: str = "") -> str:
    """The file's full path, or a :class:`MissingModelFileError` listing the folders searched."""
    path = folder_paths.get_full_path(name, filename)
    if path is None or not os.path.isfile(path):
        raise MissingModelFileError(what, [filename], folders(name), where_to_get)
    return path
