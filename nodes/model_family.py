"""Which base family (``sd15``, ``sdxl``, ...) a ComfyUI MODEL belongs to."""
from __future__ import annotations

# ComfyUI's model-config class names (comfy.supported_models) -> our family names.
_FAMILIES = {"SD15": "sd15", "SD20": "sd2", "SD21UnclipL": "sd2", "SD21UnclipH": "sd2",
             "SDXL": "sdxl", "SDXLRefiner": "sdxl_refiner", "SSD1B": "ssd1b",
             "Segmind_Vega": "segmind_vega", "SVD_img2vid": "svd", "Stable_Zero123": "zero123",
             "SD_X4Upscaler": "sd_x4_upscaler", "Stable_Cascade_C": "cascade",
             "Stable_Cascade_B": "cascade", "SD3": "sd3", "Flux": "flux", "AuraFlow": "auraflow"}


def model_family(model) -> str:
    """Family of a ComfyUI ``MODEL`` (a ModelPatcher): ``sd15``, ``sdxl``, or another name.

    Read from the model's ComfyUI config class, which the host picks from the checkpoint's
    weights; an unknown class gives its own lower-case name, never a guess.
    """
    base = getattr(model, "model", model)
    config = getattr(base, "model_config", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    return _FAMILIES.get(name, name.lower())
