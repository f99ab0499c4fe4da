"""HP3 applied to a ComfyUI MODEL (2024 host, in-process, CPU, tiny models).

The tiny SD1.5 MODEL's UNet matches ``tiny_hp3_config('sd15')``; heads and 3D renders are made
synthetically (random ArcFace/CLIP features, a random shaded render).
"""
from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.comfy_inprocess import make_conditioning
from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model, write_tiny_hp3
from hp3_core.head3d.retarget_images import RetargetResult
from hp3_core.head_encoder.features import HeadFeatures
from hp3_core.render.maps import RenderedMaps


# -- helpers ------------------------------------------------------------------------------------
def make_head(seed: int = 0, clip_width: int = 48) -> HeadFeatures:
    gen = torch.Generator().manual_seed(seed)
    return HeadFeatures(id_embeds=torch.randn(1, 512, generator=gen),
                        clip_hidden=torch.randn(1, 50, clip_width, generator=gen),
                        crops=torch.rand(1, 32, 32, 3, generator=gen),
                        keypoints=[np.zeros((5, 2), np.float32)], clip_width=clip_width)


def make_head3d(frames: int = 1, size: tuple[int, int] = (64, 64), seed: int = 0,
                backend: str = "smirk") -> RetargetResult:
    """A retarget result whose frames hold random shaded renders (the other maps blank)."""
    gen = torch.Generator().manual_seed(seed)
    blank = torch.zeros(1, *size, 3)
    maps = [RenderedMaps(shaded=torch.rand(1, *size, 3, generator=gen), normal=blank, depth=blank,
                         mask=torch.zeros(1, *size)) for _ in range(frames)]
    return RetargetResult(heads=None, maps=maps, found=list(range(frames)), missing={}, source_face=None,
                          backend=backend, full_head=backend != "mediapipe")


def sample(model, seed=1, steps=3, cfg=4.0, batch=2, size=(8, 8), positive=None):
    import comfy.sample
    latent = torch.zeros(batch, 4, *size)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal",
                                   positive or make_conditioning(batch, seed=1), make_conditioning(batch, seed=2),
                                   latent, seed=seed, disable_pbar=True)


class Spy:
    """Wraps ``HP3Model.control_features``: counts calls and records the inputs' shapes."""

    def __init__(self, model, replace=None):
        self.inner = model.control_features
        self.replace = replace
        self.calls = []

    def __call__(self, sample, timesteps, tokens, hint, y=None):
        self.calls.append({"sample": tuple(sample.shape), "tokens": tuple(tokens.shape),
                           "hint": tuple(hint.shape), "hint_value": hint.clone(), "t": timesteps.clone()})
        out = self.inner(sample, timesteps, tokens, hint, y)
        return self.replace(out) if self.replace else out


@pytest.fixture
def errors(comfy):
    return comfy.pack_module("hp3_core.errors")


@pytest.fixture
def zero_hp3():
    return tiny_hp3_model(tiny_hp3_config("sd15"), seed=0, trained=False)


@pytest.fixture
def trained_hp3():
    return tiny_hp3_model(tiny_hp3_config("sd15"), seed=0, trained=True)


def spy_on(monkeypatch, model, replace=None) -> Spy:
    spy = Spy(model, replace)
    monkeypatch.setattr(model, "control_features", spy, raising=False)
    return spy


def apply(patch_mod, mp, hp3, frames=1, **kw):
    cond = patch_mod.head_control_from_inputs(hp3, make_head(), make_head3d(frames), **kw)
    return patch_mod.apply_hp3(mp, cond)


def direct_prediction(patched, x, sigma, context, cond_or_uncond, y=None):
    """One model call through the MODEL's wrapper (object patches installed, then removed);
    ``y`` is SDXL's added conditioning."""
    base = patched.model
    to = dict(patched.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cond_or_uncond)
    c = {"c_crossattn": context, "transformer_options": to}
    if y is not None:
        c["y"] = y
    patched.patch_model()
    try:
        with torch.inference_mode():
            wrapper = patched.model_options.get("model_function_wrapper")
            args = {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": list(cond_or_uncond)}
            return wrapper(base.apply_model, args) if wrapper else base.apply_model(x, sigma, **c)
    finally:
        patched.unpatch_model()


def direct_inputs(batch=4, size=(8, 8)):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, *size, generator=gen) * 5
    sigma = torch.full((batch,), 5.0)
    context = torch.randn(batch, 8, 32, generator=gen)
    return x, sigma, context


# -- exactness of the untrained connector --------------------------------------------------------
def test_zero_connector_keeps_the_sampled_output_exactly(comfy, tiny_model, patch_mod, zero_hp3, monkeypatch):
    spy = spy_on(monkeypatch, zero_hp3)
    patched = apply(patch_mod, tiny_model, zero_hp3)
    a = sample(patched, batch=2)
    assert len(spy.calls) == 3, "the controller runs once per step"
    b = sample(tiny_model, batch=2)
    assert torch.equal(a, b)


def test_zero_connector_keeps_the_noise_prediction_exactly(comfy, tiny_model, patch_mod, zero_hp3):
    patched = apply(patch_mod, tiny_model, zero_hp3)
    x, sigma, ctx = direct_inputs()
    assert torch.equal(direct_prediction(patched, x, sigma, ctx, [0, 1]),
                       direct_prediction(tiny_model, x, sigma, ctx, [0, 1]))


def test_uncond_rows_get_no_head_conditions(comfy, tiny_model, patch_mod, trained_hp3):
    patched = apply(patch_mod, tiny_model, trained_hp3)
    x, sigma, ctx = direct_inputs()
    hp3 = direct_prediction(patched, x, sigma, ctx, [0, 1])
    base = direct_prediction(tiny_model, x, sigma, ctx, [0, 1])
    assert not torch.allclose(hp3[:2], base[:2], atol=1e-4), "cond rows must change"
    assert torch.equal(hp3[2:], base[2:]), "uncond rows must be the base UNet exactly"
    # chunk order is the host's choice: uncond first works the same way
    hp3 = direct_prediction(patched, x, sigma, ctx, [1, 0])
    assert torch.equal(hp3[:2], base[:2]) and not torch.allclose(hp3[2:], base[2:], atol=1e-4)


# -- a trained connector, strength and window -------------------------------------------------------
def test_trained_connector_changes_the_output(comfy, tiny_model, patch_mod, trained_hp3):
    a = sample(apply(patch_mod, tiny_model, trained_hp3))
    b = sample(tiny_model)
    assert torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-4)


def test_controller_runs_once_per_step_on_cond_rows_only(comfy, tiny_model, patch_mod, trained_hp3, monkeypatch):
    spy = spy_on(monkeypatch, trained_hp3)
    sample(apply(patch_mod, tiny_model, trained_hp3), batch=2, steps=3)
    assert len(spy.calls) == 3
    for call in spy.calls:  # the model call holds 4 rows (2 cond + 2 uncond); HP3 sees 2
        assert call["sample"] == (2, 4, 8, 8) and call["tokens"] == (2, 4, 32)
        assert call["hint"] == (2, 3, 64, 64)
    assert spy.calls[0]["t"].dtype == torch.float32 and 900 < float(spy.calls[0]["t"][0]) <= 999


def test_strength_zero_is_the_base_model(comfy, tiny_model, patch_mod, trained_hp3, monkeypatch):
    spy = spy_on(monkeypatch, trained_hp3)
    a = sample(apply(patch_mod, tiny_model, trained_hp3, strength=0.0))
    assert spy.calls == [] and torch.equal(a, sample(tiny_model))


def test_window_outside_every_step_is_the_base_model(comfy, tiny_model, patch_mod, trained_hp3, monkeypatch):
    spy = spy_on(monkeypatch, trained_hp3)
    # 3 "normal" steps run at sigma 14.6, 1.6, 0.03; the window 10%..20% is about sigma 8.6..5.3
    a = sample(apply(patch_mod, tiny_model, trained_hp3, start_percent=0.1, end_percent=0.2))
    assert spy.calls == [] and torch.equal(a, sample(tiny_model))


def test_partial_window_runs_some_steps(comfy, tiny_model, patch_mod, trained_hp3, monkeypatch):
    spy = spy_on(monkeypatch, trained_hp3)
    a = sample(apply(patch_mod, tiny_model, trained_hp3, start_percent=0.0, end_percent=0.3), steps=4)
    assert 1 <= len(spy.calls) < 4
    assert not torch.allclose(a, sample(tiny_model, steps=4), atol=1e-4)


def test_strength_scales_the_change(comfy, tiny_model, patch_mod, trained_hp3):
    x, sigma, ctx = direct_inputs()
    base = direct_prediction(tiny_model, x, sigma, ctx, [0, 1])
    weak = direct_prediction(apply(patch_mod, tiny_model, trained_hp3, strength=0.2), x, sigma, ctx, [0, 1])
    strong = direct_prediction(apply(patch_mod, tiny_model, trained_hp3, strength=1.5), x, sigma, ctx, [0, 1])
    assert (weak - base).abs().mean() < (strong - base).abs().mean()


# -- isolation and weight sharing ------------------------------------------------------------------
def test_clones_stay_isolated(comfy, tiny_model, patch_mod, trained_hp3):
    base = sample(tiny_model)
    other = tiny_model.clone()
    patched = apply(patch_mod, tiny_model, trained_hp3)
    assert not torch.equal(sample(patched), base)
    assert torch.equal(sample(tiny_model), base), "the original MODEL must be unchanged"
    assert torch.equal(sample(other), base), "another clone must be unchanged"
    assert "model_function_wrapper" not in tiny_model.model_options and not tiny_model.object_patches
    norm = tiny_model.model.diffusion_model.output_blocks[0][0].in_layers[0]
    assert type(norm).__name__ == "GroupNorm", "the original module is back after unpatching"
    assert torch.equal(sample(patched), sample(patched)), "and HP3 is reproducible"


def test_weights_are_shared_not_copied(comfy, tiny_model, patch_mod, trained_hp3):
    ptr = trained_hp3.connector.blocks[0].inject.weight.data_ptr()
    cond = patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d())
    a = patch_mod.apply_hp3(tiny_model, cond)
    b = patch_mod.apply_hp3(tiny_model.clone(), cond)
    for mp in (a, b, a.clone(), b.clone()):
        wrapper = mp.model_options["model_function_wrapper"]
        assert wrapper.control.model.connector.blocks[0].inject.weight.data_ptr() == ptr
    copied = copy.deepcopy(a.model_options)["model_function_wrapper"]
    assert copied is a.model_options["model_function_wrapper"], "patch objects are shared, not copied"
    assert copied.control.model.connector.blocks[0].inject.weight.data_ptr() == ptr
    assert copy.deepcopy(cond).model is trained_hp3
    assert a.object_patches["diffusion_model.output_blocks.3.0.in_layers.0"].original is \
        tiny_model.model.diffusion_model.output_blocks[3][0].in_layers[0], "the UNet's own GroupNorm, wrapped"


def test_patch_objects_follow_the_host_protocol(comfy, tiny_model, patch_mod, trained_hp3):
    patched = apply(patch_mod, tiny_model, trained_hp3)
    wrapper = patched.model_options["model_function_wrapper"]
    (out_patch,) = patched.model_options["transformer_options"]["patches"]["output_block_patch"]
    for p in (wrapper, out_patch):
        assert p.to(torch.device("cpu")) is p and p.to(torch.float16) is p and p.to(None) is p
    (patcher,) = wrapper.models()  # the HP3 model under the host's memory management
    assert patcher.model is trained_hp3 and out_patch.models() == []
    assert type(patcher).__name__ == "ModelPatcher"
    if hasattr(patched, "model_patches_models"):  # the 2025 host finds the models to load there
        assert patcher in patched.model_patches_models()
    assert trained_hp3.connector.blocks[0].inject.weight.dtype == torch.float32, "dtype kept"
    patched.model_patches_to(torch.device("cpu"))
    patched.model_patches_to(patched.model_dtype())


def test_existing_wrapper_is_chained(comfy, tiny_model, patch_mod, trained_hp3):
    calls = []

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    mine = tiny_model.clone()
    mine.set_model_unet_function_wrapper(wrapper)
    patched = apply(patch_mod, mine, trained_hp3)
    a = sample(patched)
    assert calls == [4, 4, 4], "the MODEL's own wrapper still runs"
    plain = apply(patch_mod, tiny_model, trained_hp3)
    assert torch.equal(a, sample(plain)), "a pass-through inner wrapper changes nothing"


def test_applying_hp3_again_replaces_it(comfy, tiny_model, patch_mod, trained_hp3):
    once = apply(patch_mod, tiny_model, trained_hp3, strength=1.0)
    twice = apply(patch_mod, once, trained_hp3, strength=1.0)
    assert len(twice.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert twice.model_options["model_function_wrapper"].inner is None
    assert torch.equal(sample(twice), sample(once))


# -- composition with other packs' UNet wrappers, and HP3 applied twice ---------------------------------
HALF = 0.5  # the stand-in wrapper halves the prediction: exact in float, so its effect is checkable


def third_party_wrapper(mp, chaining: bool, calls: list):
    """A clone of ``mp`` with a stand-in for another pack's UNet function wrapper.

    A closure, as most packs write it. A ``chaining`` one calls the wrapper it found (as
    well-behaved packs do); the other calls the UNet directly. Either way it halves the output.
    """
    m = mp.clone()
    previous = m.model_options.get("model_function_wrapper") if chaining else None

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        if previous is not None:
            out = previous(apply_model, args)
        else:
            out = apply_model(args["input"], args["timestep"], **args["c"])
        return out * HALF

    m.set_model_unet_function_wrapper(wrapper)
    return m


def predict(mp):
    x, sigma, ctx = direct_inputs()
    return direct_prediction(mp, x, sigma, ctx, [0, 1])


def displaced_warnings(caplog) -> int:
    return sum("switched OFF" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("chaining", [True, False], ids=["chaining", "not-chaining"])
def test_hp3_chains_a_wrapper_installed_before_it(comfy, tiny_model, patch_mod, trained_hp3, chaining, caplog):
    calls = []
    patched = apply(patch_mod, third_party_wrapper(tiny_model, chaining, calls), trained_hp3)
    with caplog.at_level(logging.WARNING):
        both = predict(patched)
    assert calls == [4], "the other pack's wrapper runs once per model call"
    hp3_only = predict(apply(patch_mod, tiny_model, trained_hp3))
    assert torch.equal(both, hp3_only * HALF), "both act: HP3's conditions and the other wrapper's change"
    assert not torch.allclose(both, predict(tiny_model) * HALF, atol=1e-4)
    assert displaced_warnings(caplog) == 0


def test_a_chaining_wrapper_installed_after_hp3_keeps_hp3(comfy, tiny_model, patch_mod, trained_hp3, caplog):
    calls = []
    patched = third_party_wrapper(apply(patch_mod, tiny_model, trained_hp3), True, calls)
    with caplog.at_level(logging.WARNING):
        out = predict(patched)
    assert calls == [4]
    assert torch.equal(out, predict(apply(patch_mod, tiny_model, trained_hp3)) * HALF)
    assert displaced_warnings(caplog) == 0


def test_a_non_chaining_wrapper_installed_after_hp3_is_reported(comfy, tiny_model, patch_mod, trained_hp3,
                                                                 monkeypatch, caplog):
    spy = spy_on(monkeypatch, trained_hp3)
    calls = []
    patched = third_party_wrapper(apply(patch_mod, tiny_model, trained_hp3), False, calls)
    with caplog.at_level(logging.WARNING):
        first, second = predict(patched), predict(patched)
    assert calls == [4, 4] and spy.calls == [], "HP3's wrapper was displaced: its controller never ran"
    assert torch.equal(first, predict(tiny_model) * HALF) and torch.equal(second, first)
    assert displaced_warnings(caplog) == 1, "said once per Apply, not per block or step"
    assert "Apply HP3 after that node" in caplog.text
    # the documented fix: HP3 applied after that node chains it, and both act
    fixed = apply(patch_mod, patched, trained_hp3)
    assert torch.equal(predict(fixed), predict(apply(patch_mod, tiny_model, trained_hp3)) * HALF)


def test_hp3_again_over_a_chaining_wrapper_runs_only_the_later_hp3(comfy, tiny_model, patch_mod, trained_hp3,
                                                                   monkeypatch, caplog):
    other = tiny_hp3_model(tiny_hp3_config("sd15"), seed=1, trained=True)
    spy_first, spy_later = spy_on(monkeypatch, trained_hp3), spy_on(monkeypatch, other)
    calls = []
    wrapped = third_party_wrapper(apply(patch_mod, tiny_model, trained_hp3), True, calls)
    with caplog.at_level(logging.WARNING):
        stacked = apply(patch_mod, wrapped, other)
    assert "already has HP3 applied" in caplog.text and "replaces it" in caplog.text
    out = predict(stacked)
    assert calls == [4], "the other pack's wrapper still runs"
    assert spy_first.calls == [] and len(spy_later.calls) == 1, "one controller per model call, the later one"
    assert torch.equal(out, predict(apply(patch_mod, tiny_model, other)) * HALF)
    assert not torch.allclose(out, predict(apply(patch_mod, tiny_model, trained_hp3)) * HALF, atol=1e-4)
    spy_first.calls.clear()
    spy_later.calls.clear()
    sample(stacked, steps=2)  # the same through the host's sampler (its own transformer_options copy)
    assert spy_first.calls == [] and len(spy_later.calls) == 2


def test_a_later_apply_replaces_the_earlier_with_a_note(comfy, tiny_model, patch_mod, trained_hp3, caplog):
    first = apply(patch_mod, tiny_model, trained_hp3, strength=1.0)
    with caplog.at_level(logging.WARNING):
        second = apply(patch_mod, first, trained_hp3, strength=0.5)
    assert "already has HP3 applied" in caplog.text and "strength 1" in caplog.text
    assert patch_mod.installed_hp3(second).strength == 0.5 and patch_mod.installed_hp3(first).strength == 1.0
    assert len(second.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    alone = predict(apply(patch_mod, tiny_model, trained_hp3, strength=0.5))
    assert torch.equal(predict(second), alone) and not torch.allclose(predict(first), alone, atol=1e-4)


def test_strength_zero_leaves_an_earlier_hp3_in_place(comfy, tiny_model, patch_mod, trained_hp3, caplog):
    first = apply(patch_mod, tiny_model, trained_hp3, strength=1.0)
    with caplog.at_level(logging.INFO):
        zero = apply(patch_mod, first, trained_hp3, strength=0.0)
    assert "strength 0" in caplog.text and "in place" in caplog.text
    assert patch_mod.installed_hp3(zero) is patch_mod.installed_hp3(first)
    assert torch.equal(predict(zero), predict(first))
    assert not torch.allclose(predict(zero), predict(tiny_model), atol=1e-4), "the earlier HP3 still acts"
    plain = apply(patch_mod, tiny_model, trained_hp3, strength=0.0)
    assert "model_function_wrapper" not in plain.model_options and patch_mod.installed_hp3(plain) is None


# -- batch, sizes, frames ----------------------------------------------------------------------------
def test_batch_and_latent_size_differ_from_the_render(comfy, tiny_model, patch_mod, trained_hp3, monkeypatch):
    spy = spy_on(monkeypatch, trained_hp3)
    patched = apply(patch_mod, tiny_model, trained_hp3)  # render 64x64, latent 6x10
    a = sample(patched, batch=2, size=(6, 10))
    assert a.shape == (2, 4, 6, 10) and torch.isfinite(a).all()
    assert spy.calls[0]["hint"] == (2, 3, 48, 80) and spy.calls[0]["sample"] == (2, 4, 6, 10)
    assert not torch.allclose(a, sample(tiny_model, batch=2, size=(6, 10)), atol=1e-4)


def test_frames_map_to_the_batch(comfy, tiny_model, patch_mod, trained_hp3):
    import comfy.utils
    head3d = make_head3d(frames=3, size=(64, 48))
    cond = patch_mod.head_control_from_inputs(trained_hp3, make_head(), head3d)
    assert cond.renders.shape == (3, 64, 48, 3)
    cpu, f32 = torch.device("cpu"), torch.float32
    full = comfy.utils.common_upscale(cond.renders.movedim(-1, 1), 80, 48, "bilinear", "center")
    assert torch.equal(cond.hint(6, 10, 3, 3, cpu, f32), full), "F == rows: one frame each"
    assert torch.equal(cond.hint(6, 10, 5, 5, cpu, f32), full[[0, 1, 2, 0, 1]]), "repeats"
    assert torch.equal(cond.hint(6, 10, 4, 2, cpu, f32), full[[0, 1, 0, 1]]), "two conditional chunks of 2"
    one = patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(frames=1))
    h = one.hint(8, 8, 4, 4, cpu, f32)
    assert h.shape == (4, 3, 64, 64) and all(torch.equal(h[0], h[i]) for i in range(4)), "broadcast"


def test_frames_of_other_sizes_are_resized(comfy, patch_mod, trained_hp3):
    head3d = make_head3d(frames=2)
    head3d.maps[1].shaded = torch.rand(1, 32, 40, 3)
    cond = patch_mod.head_control_from_inputs(trained_hp3, make_head(), head3d)
    assert cond.renders.shape == (2, 64, 64, 3)


# -- errors --------------------------------------------------------------------------------------
def test_wrong_family_is_a_clear_error(comfy, tiny_model, patch_mod, comfy_weights_error):
    xl = tiny_hp3_model(tiny_hp3_config("sdxl"), trained=True)
    cond = patch_mod.head_control_from_inputs(xl, make_head(), make_head3d())
    with pytest.raises(comfy_weights_error, match="trained for SDXL but the MODEL it is applied to is SD1.5"):
        patch_mod.apply_hp3(tiny_model, cond)


@pytest.fixture
def comfy_weights_error(comfy):
    return comfy.pack_module("hp3_core.errors").WeightFileError


def test_nan_conditions_are_a_clear_error(comfy, tiny_model, patch_mod, errors, trained_hp3, monkeypatch):
    spy_on(monkeypatch, trained_hp3, replace=lambda out: [torch.full_like(t, float("nan")) for t in out])
    with pytest.raises(errors.HP3Error, match="not finite .*decoder block 0"):
        sample(apply(patch_mod, tiny_model, trained_hp3))


def test_nan_inputs_are_a_clear_error(comfy, patch_mod, errors, trained_hp3):
    head3d = make_head3d()
    head3d.maps[0].shaded[0, 0, 0, 0] = float("nan")
    with pytest.raises(errors.HP3Error, match="renders contain NaN"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), head3d)


@pytest.mark.parametrize("name, value", [("strength", float("nan")), ("strength", float("inf")),
                                         ("strength", -0.5), ("start_percent", float("nan")),
                                         ("end_percent", float("inf"))])
def test_bad_numbers_are_refused_naming_the_input(comfy, patch_mod, errors, trained_hp3, name, value):
    with pytest.raises(errors.HP3Error, match=f"HP3 input '{name}' (is|must be 0 or more)"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(), **{name: value})


def test_non_finite_head_features_are_refused_naming_them(comfy, patch_mod, errors, trained_hp3):
    head = make_head()
    head.clip_hidden[0, 3, 5] = float("inf")
    with pytest.raises(errors.HP3Error, match="head input's clip_hidden contains NaN/inf"):
        patch_mod.head_control_from_inputs(trained_hp3, head, make_head3d())


def test_non_finite_connector_weights_are_refused_naming_the_tensor(comfy, patch_mod, errors):
    bad = tiny_hp3_model(tiny_hp3_config("sd15"), seed=0, trained=True)
    with torch.no_grad():
        bad.connector.blocks[2].shift_out.bias[0] = float("nan")
    with pytest.raises(errors.HP3Error, match=r"connector\.blocks\.2\.shift_out\.bias"):
        patch_mod.head_control_from_inputs(bad, make_head(), make_head3d())


def test_a_non_finite_latent_is_named_not_blamed_on_hp3(comfy, tiny_model, patch_mod, errors, trained_hp3):
    x, sigma, ctx = direct_inputs()
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(errors.HP3Error, match="latent entering the UNet at sigma 5 contains NaN"):
        direct_prediction(apply(patch_mod, tiny_model, trained_hp3), x, sigma, ctx, [0, 1])


def test_missing_inputs_are_clear_errors(comfy, tiny_model, patch_mod, errors, trained_hp3):
    with pytest.raises(errors.HP3Error, match="hp3_model: nothing is connected: connect 'Load HP3 Model'"):
        patch_mod.head_control_from_inputs(None, make_head(), make_head3d())
    with pytest.raises(errors.HP3Error, match="head: nothing is connected: connect 'HP3 Head Encode'"):
        patch_mod.head_control_from_inputs(trained_hp3, None, make_head3d())
    with pytest.raises(errors.HP3Error, match="head3d: nothing is connected: connect 'HP3 3D Head Retarget'"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), None)
    empty = make_head3d()
    empty.maps.clear()
    with pytest.raises(errors.HP3Error, match="no rendered frames"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), empty)
    with pytest.raises(errors.HP3Error, match="start_percent"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(), start_percent=0.8, end_percent=0.2)
    cond = patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d())
    with pytest.raises(errors.HP3Error, match="model: nothing is connected"):
        patch_mod.apply_hp3(None, cond)
    with pytest.raises(errors.HP3Error, match="conditions: nothing is connected: connect 'HP3 Head Controller'"):
        patch_mod.apply_hp3(tiny_model, None)


def test_sockets_are_checked_by_type_not_by_attributes(comfy, tiny_model, patch_mod, errors, trained_hp3):
    """A look-alike (the attributes the old probes read) is refused at once, naming the input and the node."""
    look_alike_head3d = SimpleNamespace(maps=make_head3d().maps, backend="smirk", full_head=True)
    with pytest.raises(errors.HP3Error, match="head3d: expected the output of 'HP3 3D Head Retarget', got a "
                                              "SimpleNamespace"):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), look_alike_head3d)
    head = make_head()
    look_alike_head = SimpleNamespace(**{k: getattr(head, k) for k in ("id_embeds", "clip_hidden", "crops")})
    with pytest.raises(errors.HP3Error, match="head: expected the output of 'HP3 Head Encode'"):
        patch_mod.head_control_from_inputs(trained_hp3, look_alike_head, make_head3d())
    with pytest.raises(errors.HP3Error, match="hp3_model: expected the output of 'Load HP3 Model', got a Tensor"):
        patch_mod.head_control_from_inputs(torch.zeros(3), make_head(), make_head3d())
    swapped = make_head3d()  # a HEAD3D where the conditions belong
    with pytest.raises(errors.HP3Error, match="conditions: expected the output of 'HP3 Head Controller', got a "
                                              "RetargetResult"):
        patch_mod.apply_hp3(tiny_model, swapped)


def test_backend_mismatch_warns(comfy, patch_mod, trained_hp3, caplog):
    with caplog.at_level(logging.WARNING):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(backend="mediapipe"))
    assert "'mediapipe' backend" in caplog.text and "'smirk'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(backend="smirk"))
    assert "backend" not in caplog.text


# -- the nodes ----------------------------------------------------------------------------------------
def test_two_nodes_and_all_in_one_give_identical_samples(comfy, tiny_model, hp3_folder):
    write_tiny_hp3(hp3_folder / "t.safetensors", "sd15", trained=True)
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    (hp3,) = nodes["HP3ModelLoader"]().load("t.safetensors")
    head, head3d = make_head(), make_head3d()
    (cond,) = nodes["HP3HeadController"]().build(hp3, head, head3d, 0.8, 0.0, 1.0)
    (two,) = nodes["HP3ApplyConnector"]().apply(tiny_model, cond)
    (one,) = nodes["HP3Apply"]().apply(tiny_model, hp3, head, head3d, 0.8, 0.0, 1.0)
    a, b = sample(two), sample(one)
    assert torch.equal(a, b)
    assert not torch.allclose(a, sample(tiny_model), atol=1e-4), "the loaded trained weights act"


def test_loaded_model_keeps_path_metadata_and_info(comfy, tiny_model, hp3_folder):
    write_tiny_hp3(hp3_folder / "xl.safetensors", "sdxl", note="hello")
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    (hp3,) = nodes["HP3ModelLoader"]().load("xl.safetensors")
    assert hp3.path.endswith("xl.safetensors") and hp3.metadata["note"] == "hello"
    assert type(hp3.model).__name__ == "HP3Model" and copy.deepcopy(hp3).model is hp3.model
    text = nodes["HP3ModelInfo"]().describe(hp3)["result"][0]
    assert "SDXL" in text and "note: hello" in text
    errors = comfy.pack_module("hp3_core.errors")
    with pytest.raises(errors.WeightFileError, match="xl.safetensors.*trained for SDXL"):
        nodes["HP3Apply"]().apply(tiny_model, hp3, make_head(), make_head3d(), 1.0, 0.0, 1.0)


def test_nodes_are_registered(comfy):
    names = comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert names["HP3HeadController"] == "HP3 Head Controller"
    assert names["HP3ApplyConnector"] == "HP3 Adaptive Connector"
    assert names["HP3Apply"] == "Apply HP3 (all-in-one)"
    assert comfy.nodes.NODE_CLASS_MAPPINGS["HP3HeadController"].RETURN_TYPES == ("HP3_CONDITIONS",)


def test_core_controlnet_still_works_on_the_same_model(comfy, tiny_model, patch_mod, zero_hp3, trained_hp3):
    from comfy import controlnet, ops
    from comfy.cldm import cldm
    from harness.comfy_inprocess import TINY_SD15_UNET, init_parameters
    config = {k: v for k, v in TINY_SD15_UNET.items() if k != "out_channels"}
    net = cldm.ControlNet(hint_channels=3, operations=ops.disable_weight_init,
                                     dtype=torch.float32, **config)
    init_parameters(net, seed=5)  # non-zero "zero convs": the ControlNet visibly acts
    cpu = torch.device("cpu")
    control = controlnet.ControlNet(net, load_device=cpu)  # no device= on the 2025 host
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(9))
    (positive,) = comfy.nodes.NODE_CLASS_MAPPINGS["ControlNetApply"]().apply_controlnet(
        make_conditioning(2, seed=1), control, hint, 1.0)
    base, with_cn = sample(tiny_model), sample(tiny_model, positive=positive)
    assert not torch.allclose(base, with_cn, atol=1e-4), "the ControlNet acts"
    zero = sample(apply(patch_mod, tiny_model, zero_hp3), positive=positive)
    assert torch.equal(zero, with_cn), "an untrained HP3 leaves the ControlNet's result unchanged"
    both = sample(apply(patch_mod, tiny_model, trained_hp3), positive=positive)
    hp3_only = sample(apply(patch_mod, tiny_model, trained_hp3))
    assert torch.isfinite(both).all()
    assert not torch.allclose(both, with_cn, atol=1e-4) and not torch.allclose(both, hp3_only, atol=1e-4)


def test_weight_patches_still_reach_the_wrapped_groupnorm(comfy, tiny_model, patch_mod, trained_hp3):
    """A LoRA or model merge that patches a decoder GroupNorm keeps working while HP3 is installed:
    the wrapper keeps the original's parameter names, so the host finds and patches them."""
    import comfy.model_management
    patched = patch_mod.apply_hp3(tiny_model, patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d()))
    key = "diffusion_model.output_blocks.3.0.in_layers.0.weight"
    patched.add_patches({key: (torch.full_like(tiny_model.model.state_dict()[key], 0.5),)}, 1.0, 1.0)
    comfy.model_management.load_model_gpu(patched)
    try:
        wrapper = patched.model.diffusion_model.output_blocks[3][0].in_layers[0]
        assert isinstance(wrapper, patch_mod.ModulatedGroupNorm)
        assert set(dict(wrapper.named_parameters())) == {"weight", "bias"}
        assert not torch.equal(wrapper.weight, wrapper.original.weight), "the patch reached the norm HP3 uses"
    finally:
        comfy.model_management.unload_all_models()
    assert tiny_model.model.diffusion_model.output_blocks[3][0].in_layers[0] is wrapper.original


# -- the start/end window means the same on both hosts ---------------------------------------------
@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.1, 0.2), (0.25, 0.7), (0.5, 0.5), (0.0, 0.35), (0.6, 1.0)])
def test_the_window_acts_on_the_same_steps_in_comfyui_and_diffusers(comfy, tiny_model, patch_mod, trained_hp3,
                                                                   tmp_path_factory, start, end):
    """One schedule (the 20 timesteps of the diffusers pipeline's scheduler), the same start/end: the
    ComfyUI wrapper and the diffusers pipeline run the head controller on exactly the same steps, and those are the steps
    ComfyUI's own ControlNet rule (sigma between percent_to_sigma(end) and percent_to_sigma(start))
    picks."""
    from harness.tiny_pipeline import tiny_sd15_pipe
    from hp3_core.pipeline import HP3Pipeline
    pipe, config = tiny_sd15_pipe(tmp_path_factory.mktemp("window_pipe"))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(config.encoder.num_tokens, config.encoder.width, generator=g)
    seen: list[float] = []
    real = trained_hp3.control_features

    def record(sample, timesteps, *args, **kwargs):
        seen.append(float(timesteps[0]))
        return real(sample, timesteps, *args, **kwargs)

    trained_hp3.control_features = record
    try:
        with torch.no_grad():
            HP3Pipeline(pipe, trained_hp3)(prompt="a", head_tokens=tokens, render=torch.rand(64, 64, 3),
                                           start=start, end=end, num_inference_steps=20, guidance_scale=1.0,
                                           generator=torch.Generator().manual_seed(0), output_type="latent",
                                           height=64, width=64)
    finally:
        del trained_hp3.control_features
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    diffusers_steps = [i for i, t in enumerate(timesteps) if t in seen]

    ms = tiny_model.model.model_sampling
    sigmas = [float(ms.sigma(torch.tensor(t))) for t in timesteps]
    control = patch_mod.head_control_from_inputs(trained_hp3, make_head(), make_head3d(), start_percent=start,
                                                 end_percent=end)
    wrapper = patch_mod.apply_hp3(tiny_model, control).model_options["model_function_wrapper"]
    x, _, _ = direct_inputs(batch=1)
    comfy_steps = [i for i, s in enumerate(sigmas)
                   if wrapper.connector_state(x, torch.tensor([s]), {}, [0]) is not None]
    rule = [i for i, s in enumerate(sigmas)
            if float(ms.percent_to_sigma(end)) <= s <= float(ms.percent_to_sigma(start))]
    assert comfy_steps == rule, "ComfyUI: the window is ControlNet's start/end percent"
    assert diffusers_steps == comfy_steps, "diffusers acts on the same steps as ComfyUI"
    if (start, end) == (0.0, 1.0):
        assert len(comfy_steps) == 20
    if start == end:
        assert comfy_steps == []
    if (start, end) == (0.1, 0.2):
        assert 0 < len(comfy_steps) < 5
