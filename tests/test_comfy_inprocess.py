"""The pack inside the 2024 ComfyUI, in-process on the CPU, and the tiny-model harness itself."""
from __future__ import annotations

import pytest
import torch

from harness.comfy_inprocess import make_conditioning, tiny_sd15_model
from harness.tiny_hp3 import write_tiny_hp3


def sample(comfy, model, seed=1, steps=3, cfg=4.0, batch=1, size=8):
    import comfy.sample
    latent = torch.zeros(batch, 4, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal",
                                   make_conditioning(batch, seed=1), make_conditioning(batch, seed=2),
                                   latent, seed=seed, disable_pbar=True)


def test_pack_is_loaded_by_the_host(comfy):
    for name in ("HP3ModelLoader", "HP3ModelInfo"):
        assert comfy.nodes.NODE_CLASS_MAPPINGS[name] is comfy.pack.NODE_CLASS_MAPPINGS[name]
    assert comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS["HP3ModelLoader"] == "Load HP3 Model"


def test_tiny_model_every_parameter_is_set(tiny_model):
    for name, p in tiny_model.model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.abs().max() < 100, f"{name} looks uninitialised"


def test_real_sampling_runs_the_tiny_unet(comfy, tiny_model):
    calls = []

    def wrapper(apply_model, args):
        calls.append((args["input"].shape, list(args["cond_or_uncond"])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = tiny_model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    a = sample(comfy, patched, batch=2)
    b = sample(comfy, tiny_model, batch=2)
    assert a.shape == (2, 4, 8, 8) and torch.isfinite(a).all()
    # cond and uncond run together in one call per step: batch 2 x 2.
    assert len(calls) == 3 and calls[0][0] == (4, 4, 8, 8) and sorted(calls[0][1]) == [0, 1]
    assert torch.equal(a, b), "a pass-through wrapper must not change the result"
    assert "model_function_wrapper" not in tiny_model.model_options, "clone() must isolate patches"


def test_sampling_depends_on_the_weights(comfy, tiny_model):
    other = tiny_sd15_model(comfy, seed=7)
    a, b = sample(comfy, tiny_model), sample(comfy, other)
    assert not torch.allclose(a, b), "different UNet weights must give different samples"
    assert torch.equal(a, sample(comfy, tiny_model)), "same seed, same model: same result"


def test_model_family_of_the_tiny_model(comfy, tiny_model):
    family = comfy.pack_module("nodes.model_family")
    assert family.model_family(tiny_model) == "sd15"


def test_registration_keeps_extra_model_paths(comfy, tmp_path):
    fp = comfy.folder_paths
    folders = comfy.pack_module("nodes.model_folders")
    saved = {k: (list(v[0]), set(v[1])) for k, v in fp.folder_names_and_paths.items()}
    try:
        # As the host leaves it after reading a user's yaml: unknown names get no extension filter.
        fp.folder_names_and_paths.pop("hp3")
        fp.add_model_folder_path("hp3", str(tmp_path / "user_hp3"))
        fp.folder_names_and_paths["smirk"] = ([str(tmp_path / "user_smirk")], {".ckpt"})
        folders.register()
        hp3_paths, hp3_exts = fp.folder_names_and_paths["hp3"]
        assert str(tmp_path / "user_hp3") in hp3_paths and hp3_paths[0].endswith("models/hp3")
        assert not hp3_exts, "an unfiltered user entry stays unfiltered"
        smirk_paths, smirk_exts = fp.folder_names_and_paths["smirk"]
        assert str(tmp_path / "user_smirk") in smirk_paths and {".ckpt", ".pt"} <= smirk_exts
        folders.register()
        assert fp.folder_names_and_paths["hp3"][0].count(hp3_paths[0]) == 1, "idempotent"
    finally:
        fp.folder_names_and_paths.clear()
        fp.folder_names_and_paths.update({k: (v[0], v[1]) for k, v in saved.items()})
        fp.filename_list_cache.clear()


def test_loader_node_lists_loads_and_rejects_family(comfy, hp3_folder, tiny_model):
    write_tiny_hp3(hp3_folder / "tiny_xl.safetensors", "sdxl")
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["HP3ModelLoader"]
    assert "tiny_xl.safetensors" in loader.INPUT_TYPES()["required"]["hp3_name"][0]
    (weights,) = loader().load("tiny_xl.safetensors")
    assert weights.family == "sdxl" and weights.state_dict["token_decoder.queries"].shape == (4, 64)
    info = comfy.nodes.NODE_CLASS_MAPPINGS["HP3ModelInfo"]().describe(weights)
    assert "SDXL" in info["ui"]["text"][0] and info["result"][0] == info["ui"]["text"][0]
    weights_mod = comfy.pack_module("hp3_core.weights")
    family = comfy.pack_module("nodes.model_family").model_family(tiny_model)
    with pytest.raises(weights_mod.WeightFileError, match="trained for SDXL but the MODEL .* is SD1.5"):
        weights_mod.check_family(weights.path, weights.family, family)


def test_loader_is_changed_follows_the_file(comfy, hp3_folder):
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["HP3ModelLoader"]
    path = write_tiny_hp3(hp3_folder / "w.safetensors", "sd15", seed=0)
    before = loader.IS_CHANGED("w.safetensors")
    write_tiny_hp3(path, "sd15", seed=1, note="retrained")
    assert loader.IS_CHANGED("w.safetensors") != before


def test_missing_file_lists_the_folders_searched(comfy, hp3_folder):
    errors = comfy.pack_module("hp3_core.errors")
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["HP3ModelLoader"]
    with pytest.raises(errors.MissingModelFileError) as err:
        loader().load("gone.safetensors")
    msg = str(err.value)
    assert "gone.safetensors" in msg and str(hp3_folder) in msg and "models/hp3" in msg
    assert "\n" not in msg
