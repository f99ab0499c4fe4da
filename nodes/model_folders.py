"""The pack's model folders in ComfyUI's ``folder_paths``.

The folders (:data:`hp3_core.model_folders.MODEL_FOLDERS`) and the file search are the core's;
ComfyUI only supplies the folder lists. Registered at import, keeping every path a user set in
``extra_model_paths.yaml`` (the host reads that file before it imports custom nodes, creating
entries with no extension filter for names it does not know). The default folder under
``ComfyUI/models`` goes first, like the core folders.
"""
from __future__ import annotations

import os

import folder_paths

from ..hp3_core.model_folders import MODEL_FOLDERS, require_file


def register() -> None:
    """Add the pack's folders (idempotent; never drops a path or extension already there)."""
    for name, folder in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, folder.sub)
        exts = set(folder.extensions)
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
    return str(require_file([filename], folders(name), what, where_to_get))
