"""HP3 applied to a tiny SDXL-shaped ComfyUI MODEL (2024 host, in-process, CPU).

The tiny SDXL UNet matches ``tiny_hp3_config('sdxl')`` (channels 32, 64, 64; context 64;
``y`` of 64 + 6 * 8 = 112), so the connector's decoder shapes fit it.
"""
from __future__ import annotations

import pytest
import torch

from harness.comfy_inprocess import TINY_SDXL_UNET, init_parameters
from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model
from test_hp3_comfy import apply, direct_prediction


@pytest.fixture
def tiny_sdxl(comfy):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    config = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET))
    # SDXL's unet_extra_config forces 64-channel heads, wider than this UNet's 32 channels
    config.unet_config["num_head_channels"] = 16
    config.unet_config["num_heads"] = -1
    cpu = torch.device("cpu")
    model = comfy.model_base.SDXL(config, device=cpu)
    init_parameters(model, seed=0)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def prediction(mp, x, sigma, context, y, cond_or_uncond):
    return direct_prediction(mp, x, sigma, context, cond_or_uncond, y=y)


def inputs(batch=2, size=(8, 8)):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, *size, generator=gen) * 5
    sigma = torch.full((batch,), 5.0)
    context = torch.randn(batch, 8, 64, generator=gen)
    y = torch.randn(batch, 64 + 6 * 8, generator=gen)
    return x, sigma, context, y


def test_tiny_model_is_sdxl(comfy, tiny_sdxl):
    assert comfy.pack_module("nodes.model_family").model_family(tiny_sdxl) == "sdxl"
    assert len(tiny_sdxl.model.diffusion_model.output_blocks) == 9


def test_zero_connector_keeps_the_sdxl_noise_prediction_exactly(comfy, tiny_sdxl, patch_mod):
    hp3 = tiny_hp3_model(tiny_hp3_config("sdxl"), seed=0, trained=False)
    patched = apply(patch_mod, tiny_sdxl, hp3)
    assert len(patched.object_patches) == 9
    x, sigma, ctx, y = inputs()
    a = prediction(patched, x, sigma, ctx, y, [0, 1])
    b = prediction(tiny_sdxl, x, sigma, ctx, y, [0, 1])
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(b).all()
    assert torch.equal(a, b)


def test_trained_connector_changes_only_the_cond_row(comfy, tiny_sdxl, patch_mod):
    hp3 = tiny_hp3_model(tiny_hp3_config("sdxl"), seed=0, trained=True)
    patched = apply(patch_mod, tiny_sdxl, hp3)
    x, sigma, ctx, y = inputs()
    a = prediction(patched, x, sigma, ctx, y, [0, 1])
    b = prediction(tiny_sdxl, x, sigma, ctx, y, [0, 1])
    assert torch.isfinite(a).all()
    assert not torch.allclose(a[:1], b[:1], atol=1e-4), "the cond row must change"
    assert torch.equal(a[1:], b[1:]), "the uncond row must be the base UNet exactly"


def test_sd15_weights_on_sdxl_model_are_a_clear_error(comfy, tiny_sdxl, patch_mod):
    errors = comfy.pack_module("hp3_core.errors")
    sd15 = tiny_hp3_model(tiny_hp3_config("sd15"), trained=True)
    with pytest.raises(errors.WeightFileError, match="trained for SD1.5 but the MODEL it is applied to is SDXL"):
        apply(patch_mod, tiny_sdxl, sd15)
