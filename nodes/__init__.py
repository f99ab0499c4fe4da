"""ComfyUI adapters of the HP3 pack: sockets, widgets, model folders, progress, previews.

No method code lives here; every node converts ComfyUI types and calls :mod:`hp3_core`.
Node type names (the keys below) are stored in users' workflows: never rename one.
"""
from . import model_folders
from .head3d_nodes import HP3HeadRetarget, HP3ReconstructorLoader
from .head_crop_nodes import HP3HeadCrop
from .head_encoder_nodes import HP3FaceAnalysisLoader, HP3HeadEncode
from .hp3_model_nodes import HP3ModelInfo, HP3ModelLoader
from .hp3_nodes import HP3Apply, HP3ApplyConnector, HP3HeadController

model_folders.register()

NODE_CLASS_MAPPINGS = {
    "HP3ModelLoader": HP3ModelLoader,
    "HP3ModelInfo": HP3ModelInfo,
    "HP3ReconstructorLoader": HP3ReconstructorLoader,
    "HP3HeadRetarget": HP3HeadRetarget,
    "HP3FaceAnalysisLoader": HP3FaceAnalysisLoader,
    "HP3HeadEncode": HP3HeadEncode,
    "HP3HeadController": HP3HeadController,
    "HP3ApplyConnector": HP3ApplyConnector,
    "HP3Apply": HP3Apply,
    "HP3HeadCrop": HP3HeadCrop,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "HP3ModelLoader": "Load HP3 Model",
    "HP3ModelInfo": "HP3 Model Info",
    "HP3ReconstructorLoader": "Load HP3 3D Reconstructor",
    "HP3HeadRetarget": "HP3 3D Head Retarget",
    "HP3FaceAnalysisLoader": "Load HP3 Face Analysis",
    "HP3HeadEncode": "HP3 Head Encode",
    "HP3HeadController": "HP3 Head Controller",
    "HP3ApplyConnector": "HP3 Adaptive Connector",
    "HP3Apply": "Apply HP3 (all-in-one)",
    "HP3HeadCrop": "HP3 Head Crop",
}
