"""HP3 for ComfyUI: head-preserving portrait personalization via 3D-controlled diffusion."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# The frontend extension that shows HP3's text reports on the nodes (web/hp3_text.js).
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
