"""Test-only ComfyUI nodes (category ``HP3 tests``): never shipped in the pack.

The server tests (tests/test_hp3_server.py) load this folder as a second custom node package,
through a ``custom_nodes:`` entry of their ``extra_model_paths.yaml``. A real checkpoint cannot be
loaded at tiny size (ComfyUI only detects SD1.5 at full width, and there is no CLIP to encode
text), so these nodes give a full sampling graph what it needs:

* ``HP3TestTinyModel``: the tiny SD1.5-shaped MODEL of :mod:`harness.comfy_inprocess`
  (``TINY_SD15_UNET``, seeded ``init_parameters``) in a ModelPatcher on the CPU;
* ``HP3TestConditioning``: a seeded random CONDITIONING ``[1, tokens, width]``;
* ``HP3TestLoadHead``: an ``HP3_HEAD`` (HeadFeatures) read from a ``.safetensors`` path;
* ``HP3TestLatentPreview``: LATENT samples -> IMAGE (first 3 channels, fixed affine map to 0..1,
  nearest upscale x8) so a core SaveImage writes a PNG without a VAE.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CATEGORY = "HP3 tests"


def _harness_module():
    """tests/harness/comfy_inprocess.py, imported by file path (the source of truth of the tiny UNet)."""
    name = "hp3_test_harness_comfy_inprocess"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "comfy_inprocess.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _head_features_class():
    """HeadFeatures from the pack as the server loaded it (else from the installed hp3_core)."""
    if "ComfyUI-HP3" in sys.modules:
        return importlib.import_module("ComfyUI-HP3.hp3_core.head_encoder.features").HeadFeatures
    return importlib.import_module("hp3_core.head_encoder.features").HeadFeatures


class HP3TestTinyModel:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = "Test only: the tiny SD1.5-shaped MODEL (TINY_SD15_UNET), seeded weights."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed: int):
        import comfy.model_base
        import comfy.model_patcher
        import comfy.supported_models
        harness = _harness_module()
        config = comfy.supported_models.SD15(dict(harness.TINY_SD15_UNET))
        cpu = torch.device("cpu")
        model = comfy.model_base.BaseModel(config, device=cpu)
        harness.init_parameters(model, seed)
        model.eval()
        return (comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu),)


class HP3TestConditioning:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    DESCRIPTION = "Test only: a seeded random CONDITIONING [1, tokens, width] (the tiny model has no CLIP)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 77}),
                             "width": ("INT", {"default": 32, "min": 1, "max": 2048})}}

    def make(self, seed: int, tokens: int, width: int):
        gen = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, width, generator=gen), {}]],)


class HP3TestLoadHead:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("HP3_HEAD",)
    FUNCTION = "load"
    DESCRIPTION = "Test only: HeadFeatures read from an absolute .safetensors path (HeadFeatures.save)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}

    def load(self, path: str):
        return (_head_features_class().load(path),)


class HP3TestLatentPreview:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "preview"
    DESCRIPTION = "Test only: LATENT -> IMAGE without a VAE (first 3 channels, (x + 3) / 6 clamped, x8 nearest)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def preview(self, samples):
        x = samples["samples"].float()[:, :3]
        x = ((x + 3.0) / 6.0).clamp(0.0, 1.0)
        x = x.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        return (x.movedim(1, -1).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "HP3TestTinyModel": HP3TestTinyModel,
    "HP3TestConditioning": HP3TestConditioning,
    "HP3TestLoadHead": HP3TestLoadHead,
    "HP3TestLatentPreview": HP3TestLatentPreview,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: f"{name} (tests only)" for name in NODE_CLASS_MAPPINGS}
