"""The HP3 model under ComfyUI's memory management, as the host's own ControlNet is.

The HP3 model (token decoder + head controller + connector; the controller is a copy of the UNet's
encoder, so hundreds of MB at SD1.5 size and about a GB at SDXL size) is wrapped in a
``comfy.model_patcher.ModelPatcher`` (``comfy/controlnet.py`` does the same for its control model):

* the 2025 host collects ``.models()`` of a MODEL's patches and wrapper
  (``ModelPatcher.model_patches_models``) and loads them with the UNet before sampling, counts their
  VRAM, and offloads them like any model; HP3's wrapper reports its patcher there;
* the 2024 host has no such hook: the wrapper loads the patcher at its first call of a sampling
  run (:func:`ensure_loaded`), keeping every model already loaded on that device loaded.

The patcher holds a copy in the UNet's compute dtype when the UNet runs in fp16/bf16 (the weights
of the loaded file stay float32; the copy is made once per dtype and shared by every Apply).
"""
from __future__ import annotations

import copy
import logging
import weakref
from typing import Any

import torch

log = logging.getLogger(__name__)

# (id of the float32 HP3 model, dtype) -> its patcher. Weak values: a patcher lives as long as an
# installed HP3 wrapper (or the host's list of loaded models) holds it. Each patcher keeps its
# source model alive (``hp3_source``), so the id of a live entry cannot be reused.
_PATCHERS: weakref.WeakValueDictionary[tuple[int, torch.dtype], Any] = weakref.WeakValueDictionary()
HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(unet_patcher: Any) -> torch.dtype:
    """The dtype the UNet computes in: its manual-cast dtype (fp8 storage) or its weights' dtype.

    Only fp16 and bf16 give a half-precision HP3 copy; anything else (fp32, fp8 without a cast
    dtype) runs HP3 in float32.
    """
    model = getattr(unet_patcher, "model", None)
    dtype = getattr(model, "manual_cast_dtype", None)
    if dtype is None and hasattr(unet_patcher, "model_dtype"):
        dtype = unet_patcher.model_dtype()
    return dtype if dtype in HALF_DTYPES else torch.float32


def hp3_patcher(hp3_model: torch.nn.Module, dtype: torch.dtype, load_device: torch.device,
                offload_device: torch.device) -> Any:
    """The ModelPatcher of ``hp3_model`` in ``dtype`` (the model itself for float32, else a cast copy)."""
    import comfy.model_patcher
    key = (id(hp3_model), dtype)
    patcher = _PATCHERS.get(key)
    if patcher is not None:
        return patcher
    if dtype == torch.float32:
        model = hp3_model
    else:
        model = _cast_copy(hp3_model, dtype, offload_device)
        log.info("HP3: the UNet computes in %s; HP3 runs in a %s copy of its weights", dtype, dtype)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    patcher.hp3_source = hp3_model
    _PATCHERS[key] = patcher
    return patcher


# What a host's ModelPatcher writes onto the modules it manages: a copy must start without them,
# or its own patcher would take the copy for loaded (or patched) already.
_HOST_BOOKKEEPING = ("model_loaded_weight_memory", "lowvram_patch_counter", "model_lowvram",
                     "current_weight_patches_uuid", "device", "model_offload_buffer_memory",
                     "comfy_patched_weights", "comfy_cast_weights", "prev_comfy_cast_weights",
                     "weight_function", "bias_function")


def _cast_copy(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A copy of ``model`` in ``dtype`` on ``device``, free of host bookkeeping attributes."""
    with torch.no_grad():
        clone = copy.deepcopy(model).to(device=device, dtype=dtype)
    for module in clone.modules():
        for attr in _HOST_BOOKKEEPING:
            module.__dict__.pop(attr, None)
    return clone


def host_loads_patch_models() -> bool:
    """Whether the host loads the models that patches report (``.models()``): 2025 yes, 2024 no."""
    import comfy.model_patcher
    return hasattr(comfy.model_patcher.ModelPatcher, "model_patches_models")


def is_loaded(patcher: Any) -> bool:
    """Whether ``patcher`` is in the host's list of loaded models."""
    import comfy.model_management as mm
    return any(loaded.model is patcher for loaded in mm.current_loaded_models)


def ensure_loaded(patcher: Any) -> None:
    """Load ``patcher`` through the host's model management if it is not loaded yet.

    Every model already loaded on its device is passed along, so the host keeps them (the 2024
    ``load_models_gpu`` only protects the models it is given): loading HP3 in the middle of a
    sampling run must never unload the UNet that is running.
    """
    if is_loaded(patcher):
        return
    import comfy.model_management as mm
    keep = [loaded.model for loaded in mm.current_loaded_models
            if loaded.model is not None and getattr(loaded.model, "load_device", None) == patcher.load_device]
    mm.load_models_gpu([patcher] + keep)
