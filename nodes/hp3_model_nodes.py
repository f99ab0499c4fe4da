"""Nodes for HP3 weight files: load one from models/hp3, and describe one."""
from __future__ import annotations

import os

import folder_paths

from ..hp3_core.hp3_model import HP3Model
from ..hp3_core.weights import HP3Weights, load_hp3_weights
from . import model_folders

WHERE_TO_GET = "the HP3 pack's README, section Models (no HP3 weights were ever published)"


class LoadedHP3Model:
    """The HP3_MODEL socket value: a loaded :class:`HP3Model` with its file's path and metadata.

    Copies (``copy.deepcopy``) share the model: the weights exist once however many nodes,
    clones and patches hold it.
    """

    def __init__(self, model: HP3Model, path: str, metadata: dict[str, str] | None = None) -> None:
        self.model = model
        self.path = str(path)
        self.metadata = dict(metadata or {})

    def __deepcopy__(self, memo):
        return self

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def state_dict(self) -> dict:
        """The model's tensors by weight-file key (views of the loaded weights)."""
        return self.model.state_dict()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.state_dict().values())

    def summary(self) -> str:
        return HP3Weights(path=self.path, config=self.config, state_dict=self.state_dict,
                          metadata=self.metadata).summary()


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

    def load(self, hp3_name: str) -> tuple[LoadedHP3Model]:
        path = model_folders.full_path("hp3", hp3_name, "HP3 weights", WHERE_TO_GET)
        weights = load_hp3_weights(path)
        model = HP3Model.from_weights(weights)  # keys and shapes checked, then a strict load
        return (LoadedHP3Model(model, weights.path, weights.metadata),)


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

    def describe(self, hp3_model: LoadedHP3Model | HP3Weights):
        text = hp3_model.summary()
        return {"ui": {"text": [text]}, "result": (text,)}
