"""Nodes for HP3 weight files: load one from models/hp3, and describe one."""
from __future__ import annotations

import os

import folder_paths

from ..hp3_core.weights import HP3Weights, load_hp3_weights
from . import model_folders

WHERE_TO_GET = "the HP3 pack's README, section Models (no HP3 weights were ever published)"


class HP3ModelLoader:
    """Load HP3 weights (encoder heads, head controller, adaptive connector) from models/hp3."""

    DESCRIPTION = ("Loads an HP3 weight file from ComfyUI/models/hp3 (or the 'hp3' paths of "
                   "extra_model_paths.yaml). The file says which base family (SD1.5/SDXL) and 3D "
                   "backend it was trained for; pairing it with another is reported clearly.")
    CATEGORY = "HP3/loaders"
    RETURN_TYPES = ("HP3_MODEL",)
    RETURN_NAMES = ("hp3_model",)
    OUTPUT_TOOLTIPS = ("The HP3 model: head encoder heads, head controller and adaptive connector.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"hp3_name": (folder_paths.get_filename_list("hp3"), {
            "tooltip": "HP3 weights (.safetensors) in models/hp3."})}}

    @classmethod
    def IS_CHANGED(cls, hp3_name):
        # Re-load when the file on disk changes under the same name (e.g. a new training export).
        path = folder_paths.get_full_path("hp3", hp3_name)
        if path is None or not os.path.isfile(path):
            return hp3_name
        stat = os.stat(path)
        return f"{hp3_name}:{stat.st_size}:{stat.st_mtime_ns}"

    def load(self, hp3_name: str) -> tuple[HP3Weights]:
        path = model_folders.full_path("hp3", hp3_name, "HP3 weights", WHERE_TO_GET)
        return (load_hp3_weights(path),)


class HP3ModelInfo:
    """Show what an HP3 weight file holds: base family, sizes, the 3D backend it was trained with."""

    DESCRIPTION = ("Shows an HP3 model's base family, head-token and controller sizes, the CLIP "
                   "vision width and 3D backend it expects, and its training metadata.")
    CATEGORY = "HP3/utils"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    OUTPUT_TOOLTIPS = ("The same description as text.",)
    FUNCTION = "describe"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"hp3_model": ("HP3_MODEL", {"tooltip": "From Load HP3 Model."})}}

    def describe(self, hp3_model: HP3Weights):
        text = hp3_model.summary()
        return {"ui": {"text": [text]}, "result": (text,)}
