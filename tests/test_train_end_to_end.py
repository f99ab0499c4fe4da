"""From data to the node: ``build-dataset`` on the real example ID group, a tiny ``train`` run on it,
and the exported file in ComfyUI's HP3 nodes (2024 host, in-process, tiny SD1.5 MODEL).

The tiny diffusers UNet the trainer uses and the tiny ComfyUI MODEL have the same layout
(``tiny_hp3_config('sd15')``), as a real SD1.5 diffusers folder and its single-file checkpoint do.
"""
from __future__ import annotations

import statistics

import pytest
import torch

from harness.needs import installed
from harness.tiny_dataset import tiny_train_config, write_tiny_setup
from harness.tiny_onnx import write_tiny_pack
from test_hp3_comfy import make_head, make_head3d, sample

installed("onnx2torch", "the identity loss needs it (requirements-train.txt)")

STEPS = 24


@pytest.fixture(scope="module")
def trained(assets, tmp_path_factory):
    """(dataset folder, TrainResult) of a tiny run on ``id_group_hp3``."""
    from hp3_core.dataset.builder import BuildConfig, build_dataset
    from hp3_core.training.config import TrainConfig
    from hp3_core.training.trainer import train
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "groups").mkdir()
    (tmp / "groups" / "hp3_example").symlink_to(assets / "id_group_hp3", target_is_directory=True)
    write_tiny_pack(tmp / "insightface", "antelopev2")
    summary = build_dataset(BuildConfig(input=tmp / "groups", out=tmp / "dataset", size=64, backend="mediapipe",
                                        face_dirs=[tmp / "insightface"], detection="mediapipe", workers=1,
                                        progress_bar=False))
    assert summary.images == 4 and summary.pairable_groups == 1
    paths = write_tiny_setup(tmp / "setup") | {"dataset": tmp / "dataset",
                                                "arcface": tmp / "insightface" / "models" / "antelopev2" /
                                                "glintr100.onnx"}
    config = TrainConfig.from_dict(tiny_train_config(paths, tmp / "run", max_steps=STEPS, fixed_noise=True,
                                                     export_name="hp3_example.safetensors"))
    return tmp / "dataset", train(config)


def test_training_on_the_real_group_lowers_the_loss(trained):
    _, result = trained
    first, last = statistics.mean(result.losses[:5]), statistics.mean(result.losses[-5:])
    assert len(result.losses) == STEPS and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert last < 0.8 * first, f"loss {first:.4f} -> {last:.4f}: expected at least a 20% drop"


def test_exported_file_changes_the_comfy_model_and_strength_zero_does_not(trained, comfy, tiny_model, hp3_folder):
    dataset, result = trained
    (hp3_folder / "trained.safetensors").write_bytes(result.export.read_bytes())
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    (hp3,) = nodes["HP3ModelLoader"]().load("trained.safetensors")
    info = nodes["HP3ModelInfo"]().describe(hp3)["result"][0]
    assert "mediapipe" in info and f"trained_steps: {STEPS}" in info.replace("=", ": "), info
    head, head3d = make_head(), make_head3d(backend="mediapipe")
    base = sample(tiny_model)
    (on,) = nodes["HP3Apply"]().apply(tiny_model, hp3, head, head3d, 1.0, 0.0, 1.0)
    (off,) = nodes["HP3Apply"]().apply(tiny_model, hp3, head, head3d, 0.0, 0.0, 1.0)
    assert torch.equal(sample(off), base), "strength 0 is the base model exactly"
    assert (sample(on) - base).abs().max() > 1e-4, "the trained connector changes the output"
