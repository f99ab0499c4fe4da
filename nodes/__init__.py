"""ComfyUI adapters of the HP3 pack: sockets, widgets, model folders, progress, previews.

No method code lives here; every node converts ComfyUI types and calls :mod:`hp3_core`.
Node type names (the keys below) are stored in users' workflows: never rename one.
"""
from . import model_folders
from .hp3_model_nodes import HP3ModelInfo, HP3ModelLoader

model_folders.register()

NODE_CLASS_MAPPINGS = {
    "HP3ModelLoader": HP3ModelLoader,
    "HP3ModelInfo": HP3ModelInfo,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "HP3ModelLoader": "Load HP3 Model",
    "HP3ModelInfo": "HP3 Model Info",
}
