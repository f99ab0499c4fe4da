"""The HP3 model under the host's memory management (nodes/hp3_memory.py), in-process on the CPU.

Like the host's ControlNet, the HP3 model is a ``ModelPatcher`` the host loads with the UNet,
lists among its loaded models and offloads; under an fp16 UNet it computes in fp16 (a cast copy:
the loaded float32 weights are untouched) and the untrained connector still gives the base
model's output exactly.
"""
from __future__ import annotations

import pytest
import torch

from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model
from test_hp3_comfy import apply, sample


@pytest.fixture
def mm(comfy):
    return comfy.module("comfy.model_management")


def hp3(trained: bool):
    return tiny_hp3_model(tiny_hp3_config("sd15"), seed=0, trained=trained)


def patcher_of(mp):
    (patcher,) = mp.model_options["model_function_wrapper"].models()
    return patcher


def loaded(mm) -> list:
    return [m.model for m in mm.current_loaded_models]


def half(mp, dtype: torch.dtype = torch.float16):
    """The tiny MODEL with its UNet stored and computed in ``dtype`` (as an fp16 checkpoint loads)."""
    mp.model.to(dtype)
    mp.model.diffusion_model.dtype = dtype
    return mp


def test_sampling_loads_the_hp3_model_and_unloading_offloads_it(comfy, tiny_model, patch_mod, mm):
    model = hp3(trained=True)
    patched = apply(patch_mod, tiny_model, model)
    patcher = patcher_of(patched)
    assert patcher.model is model and patcher.offload_device == tiny_model.offload_device
    mm.unload_all_models()
    assert patcher not in loaded(mm)
    sample(patched, steps=2)
    assert patcher in loaded(mm), "after sampling, the host lists the HP3 model as loaded"
    mm.unload_all_models()
    assert patcher not in loaded(mm)
    assert all(p.device == torch.device(patcher.offload_device) for p in model.parameters())


def test_one_patcher_per_model_and_dtype(comfy, tiny_model, patch_mod):
    model = hp3(trained=True)
    a, b = apply(patch_mod, tiny_model, model), apply(patch_mod, tiny_model.clone(), model)
    assert patcher_of(a) is patcher_of(b), "two Applies of one HP3 model share its patcher"
    other = apply(patch_mod, tiny_model, hp3(trained=True))
    assert patcher_of(other) is not patcher_of(a)


def test_fp16_unet_gets_fp16_hp3_and_the_zero_connector_stays_exact(comfy, tiny_model, patch_mod, mm):
    unet = half(tiny_model)
    model = hp3(trained=False)
    patched = apply(patch_mod, unet, model)
    patcher = patcher_of(patched)
    assert patcher.model is not model and patcher.hp3_source is model
    assert {p.dtype for p in patcher.model.parameters()} == {torch.float16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}, "the loaded weights stay float32"
    assert torch.equal(sample(patched), sample(unet)), "an untrained connector is the base fp16 UNet exactly"


def test_fp16_hp3_follows_the_fp32_result_at_fp16_tolerance(comfy, tiny_model, patch_mod):
    model = hp3(trained=True)
    base32 = sample(tiny_model)
    full = sample(apply(patch_mod, tiny_model, model))
    unet16 = half(tiny_model)  # in place: the clone above shares this UNet
    base16 = sample(unet16)
    patched16 = apply(patch_mod, unet16, model)
    calls = []
    patcher_of(patched16).model.controller.register_forward_hook(
        lambda mod, args, out: calls.append(next(mod.parameters()).dtype))
    out16 = sample(patched16).float()
    assert calls and set(calls) == {torch.float16}, "the controller ran in fp16"
    change = (full - base32).abs().max()
    assert (out16 - full).abs().max() < 0.05 * full.abs().max(), "fp16 HP3 follows the fp32 result"
    assert (out16 - base16.float()).abs().max() > 0.5 * change, "HP3 still changes the fp16 output"


def test_bf16_unet_gets_bf16_hp3(comfy, tiny_model, patch_mod):
    mem = comfy.pack_module("nodes.hp3_memory")
    assert mem.compute_dtype(half(tiny_model, torch.bfloat16)) == torch.bfloat16
    patcher = patcher_of(apply(patch_mod, tiny_model, hp3(trained=True)))
    assert {p.dtype for p in patcher.model.parameters()} == {torch.bfloat16}
