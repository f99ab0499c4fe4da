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

The example-workflow runs (tests/test_workflows_run.py) replace the core loaders of real weights
by stand-ins with the same outputs:

* ``HP3TestTinyCheckpoint`` for CheckpointLoaderSimple: a tiny SD1.5- or SDXL-shaped MODEL, a
  seeded text encoder for CLIPTextEncode, and a latent <-> image VAE for VAEDecode/VAEEncode;
* ``HP3TestTinyControlNet`` for ControlNetLoader: a real comfy ControlNet mirroring the tiny UNet;
* ``HP3TestTinyUpscaleModel`` for UpscaleModelLoader; ``HP3TestTinyClipVision`` for CLIPVisionLoader.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CATEGORY = "HP3 tests"


def _harness_file_module(stem: str):
    """tests/harness/<stem>.py, imported by file path (the server has no tests/ on sys.path)."""
    name = f"hp3_test_harness_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _harness_module():
    """tests/harness/comfy_inprocess.py (the source of truth of the tiny UNet)."""
    return _harness_file_module("comfy_inprocess")


def _pack_module_name() -> str | None:
    """The name the host registered the HP3 pack under: ``ComfyUI-HP3`` on the 2024 host, its
    full path on the 2025 host (found by the pack's ``__init__.py`` beside ``hp3_core/``)."""
    if "ComfyUI-HP3" in sys.modules:
        return "ComfyUI-HP3"
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None) or ""
        if file.endswith("__init__.py") and (Path(file).parent / "hp3_core").is_dir() \
                and hasattr(module, "NODE_CLASS_MAPPINGS") and "HP3Apply" in module.NODE_CLASS_MAPPINGS:
            return name
    return None


def _head_features_class():
    """HeadFeatures from the pack as the server loaded it (else from the installed hp3_core)."""
    pack = _pack_module_name()
    if pack is not None:
        return importlib.import_module(f"{pack}.hp3_core.head_encoder.features").HeadFeatures
    return importlib.import_module("hp3_core.head_encoder.features").HeadFeatures


def _seed_input() -> tuple:
    """The INT input of a seed: the whole range a workflow's seed widget allows."""
    return ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})


class _SeededTestLoader:
    """A test-only loader whose one input is the seed of the weights it makes; a subclass sets
    ``RETURN_TYPES``, ``DESCRIPTION`` and ``load(seed)``."""

    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": _seed_input()}}


class HP3TestTinyModel(_SeededTestLoader):
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = "Test only: the tiny SD1.5-shaped MODEL (TINY_SD15_UNET), seeded weights."

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
        return {"required": {"seed": _seed_input(),
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


# -- stand-ins for the model files the example workflows load (tests/test_workflows_run.py) --------

# family -> (context width, pooled width) of the tiny text encoder
TINY_TEXT = {"sd15": (32, 32), "sdxl": (64, 64)}


def _tiny_model(family: str, seed: int):
    """A tiny SD1.5- or SDXL-shaped MODEL (real comfy BaseModel/SDXL in a ModelPatcher, CPU)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
    harness = _harness_module()
    cpu = torch.device("cpu")
    if family == "sd15":
        model = comfy.model_base.BaseModel(comfy.supported_models.SD15(dict(harness.TINY_SD15_UNET)), device=cpu)
    else:
        config = comfy.supported_models.SDXL(dict(harness.TINY_SDXL_UNET))
        config.unet_config["num_head_channels"] = 16  # SDXL forces 64-channel heads: too wide here
        config.unet_config["num_heads"] = -1
        model = comfy.model_base.SDXL(config, device=cpu)
        model.embedder = Timestep(8)  # size embeddings of 8 (256 in the real SDXL)
    harness.init_parameters(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


class TinyTextEncoder:
    """A CLIP stand-in for the core CLIPTextEncode: a seeded random [1, 8, width] per prompt text."""

    def __init__(self, width: int, pooled_width: int) -> None:
        self.width, self.pooled_width = width, pooled_width

    def clone(self) -> TinyTextEncoder:
        return self

    def tokenize(self, text: str, return_word_ids: bool = False) -> str:
        return text

    def encode_from_tokens(self, tokens: str, return_pooled: bool = False, return_dict: bool = False):
        gen = torch.Generator().manual_seed(zlib.crc32(str(tokens).encode()))
        cond = torch.randn(1, 8, self.width, generator=gen)
        pooled = torch.randn(1, self.pooled_width, generator=gen)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: str, unprojected: bool = False, add_dict: dict | None = None,
                                     show_pbar: bool = True) -> list:
        """The 2025 host's CLIPTextEncode calls this: a CONDITIONING list [[cond, {pooled_output}]]."""
        cond, pooled = self.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled, **(add_dict or {})}]]


class TinyVAE:
    """A VAE stand-in: decode = HP3TestLatentPreview's map; encode = its inverse on 8x8 means."""

    downscale_ratio = 8
    latent_channels = 4

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples.float()[:, :3]
        x = ((x + 3.0) / 6.0).clamp(0.0, 1.0)
        x = x.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        return x.movedim(1, -1).contiguous()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(pixels[..., :3].movedim(-1, 1).float(), 8) * 6.0 - 3.0
        return torch.cat([x, x.mean(1, keepdim=True)], dim=1)


class HP3TestTinyCheckpoint:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    DESCRIPTION = ("Test only: stands in for CheckpointLoaderSimple (same outputs): a tiny SD1.5- or "
                   "SDXL-shaped MODEL, a seeded text-encoder stand-in and a latent<->image VAE stand-in.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(TINY_TEXT), {"default": "sd15"}),
                             "seed": _seed_input()}}

    def load(self, family: str, seed: int):
        return (_tiny_model(family, seed), TinyTextEncoder(*TINY_TEXT[family]), TinyVAE())


class HP3TestTinyControlNet(_SeededTestLoader):
    RETURN_TYPES = ("CONTROL_NET",)
    DESCRIPTION = ("Test only: stands in for ControlNetLoader: a real comfy ControlNet whose control "
                   "model mirrors the tiny SD1.5 UNet (3-channel hint), seeded weights.")

    def load(self, seed: int):
        import comfy.cldm.cldm
        import comfy.controlnet
        harness = _harness_module()
        config = dict(harness.TINY_SD15_UNET, hint_channels=3, device=torch.device("cpu"), dtype=torch.float32)
        control_model = comfy.cldm.cldm.ControlNet(**config)
        harness.init_parameters(control_model, seed)
        control_model.eval()
        return (comfy.controlnet.ControlNet(control_model, load_device=torch.device("cpu")),)


class TinyUpscaler(torch.nn.Module):
    """An UPSCALE_MODEL stand-in: nearest x``scale`` then a seeded 1x1 colour mix near identity."""

    def __init__(self, scale: int, seed: int) -> None:
        super().__init__()
        self.scale = scale
        gen = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(3).view(3, 3, 1, 1) + 0.05 * torch.randn(3, 3, 1, 1, generator=gen))
            self.mix.bias.zero_()

    @property
    def model(self) -> torch.nn.Module:
        """The 2025 host's ImageUpscaleWithModel sizes ``upscale_model.model`` (spandrel's layout)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest"))


class HP3TestTinyUpscaleModel:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load"
    DESCRIPTION = "Test only: stands in for UpscaleModelLoader: nearest x scale + a seeded 1x1 conv."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scale": ("INT", {"default": 4, "min": 1, "max": 8}),
                             "seed": _seed_input()}}

    def load(self, scale: int, seed: int):
        return (TinyUpscaler(scale, seed).eval(),)


class HP3TestTinyClipVision(_SeededTestLoader):
    RETURN_TYPES = ("CLIP_VISION",)
    DESCRIPTION = ("Test only: stands in for CLIPVisionLoader: the tiny CLIP vision of harness/tiny_clip.py "
                   "(width 48, as tiny HP3 weights expect) as a comfy ClipVisionModel.")

    def load(self, seed: int):
        tiny_clip = _harness_file_module("tiny_clip")
        with tempfile.TemporaryDirectory() as tmp:
            return (tiny_clip.comfy_clip_vision(tiny_clip.tiny_clip_model(seed), Path(tmp)),)


NODE_CLASS_MAPPINGS = {
    "HP3TestTinyModel": HP3TestTinyModel,
    "HP3TestConditioning": HP3TestConditioning,
    "HP3TestLoadHead": HP3TestLoadHead,
    "HP3TestLatentPreview": HP3TestLatentPreview,
    "HP3TestTinyCheckpoint": HP3TestTinyCheckpoint,
    "HP3TestTinyControlNet": HP3TestTinyControlNet,
    "HP3TestTinyUpscaleModel": HP3TestTinyUpscaleModel,
    "HP3TestTinyClipVision": HP3TestTinyClipVision,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: f"{name} (tests only)" for name in NODE_CLASS_MAPPINGS}
