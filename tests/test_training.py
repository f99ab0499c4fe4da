"""``train`` (hp3_core.training) on tiny models: ArcFace in torch, overfitting, frozen parts,
resume, export, SDXL, the CLI, and ``bench train`` at tiny size. Deterministic on the CPU."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.needs import installed
from harness.tiny_dataset import tiny_train_config, write_tiny_dataset, write_tiny_setup
from hp3_core.errors import HP3Error
from hp3_core.training.config import ConfigError, TrainConfig

REPO = Path(__file__).resolve().parent.parent
installed("accelerate", "training needs it (requirements-train.txt)")
installed("onnx2torch", "the identity loss needs it (requirements-train.txt)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_setup(tmp_path_factory.mktemp("train_setup"))


def _config(setup, out: Path, **overrides) -> TrainConfig:
    return TrainConfig.from_dict(tiny_train_config(setup, out, **overrides))


# --------------------------------------------------------------------------- 1. ArcFace in torch


def test_onnx2torch_arcface_equals_onnxruntime(tmp_path):
    import onnxruntime as ort

    from harness.tiny_onnx import write_tiny_arcface
    from hp3_core.training.arcface_torch import TorchArcFace
    path = write_tiny_arcface(tmp_path / "glintr100.onnx", seed=3)
    net = TorchArcFace.from_onnx(path)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    # face_analysis's preprocessing: RGB, (x - 127.5) / 127.5, NCHW.
    blob = ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: blob})[0]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = net(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0)
    assert np.abs(got.detach().numpy() - ref).max() < 1e-4
    assert not any(p.requires_grad for p in net.parameters())


def test_torch_alignment_matches_norm_crop_on_a_photo_and_passes_gradients(assets, tmp_path):
    from harness.tiny_onnx import write_tiny_pack
    from hp3_core.head_encoder import face_analysis as fa
    from hp3_core.image_io import load_image
    from hp3_core.head_encoder.face_analysis import alignment_matrix
    from hp3_core.training.arcface_torch import align_faces, grid_theta
    photo = load_image(assets / "faces" / "source_s42.jpg")
    analyzer = fa.InsightFaceAnalyzer([write_tiny_pack(tmp_path)], detection="mediapipe")
    face = analyzer.analyze(photo, name="source_s42.jpg")
    theta = grid_theta(alignment_matrix(face.keypoints), photo.shape[:2])
    image = (torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1.0).requires_grad_(True)
    aligned = align_faces(image, theta[None])
    ours = ((aligned[0].detach().permute(1, 2, 0) + 1.0) * 127.5).numpy()
    diff = np.abs(ours - face.aligned.astype(np.float32))
    # cv2 rounds to uint8 and quantises its bilinear weights to 1/32: at most ~1-2 levels apart.
    assert diff.mean() < 0.6 and np.percentile(diff, 99) < 3.0, (diff.mean(), np.percentile(diff, 99))
    aligned.sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0
    assert float(image.grad[0, :, :10, :10].abs().sum()) == 0  # far from the face: no influence


def test_identity_loss_lowers_when_the_face_matches(tmp_path):
    from harness.tiny_onnx import write_tiny_arcface
    from hp3_core.head_encoder.face_analysis import alignment_matrix
    from hp3_core.training.arcface_torch import TorchArcFace, grid_theta
    from hp3_core.training.losses import identity_loss
    arc = TorchArcFace.from_onnx(write_tiny_arcface(tmp_path / "a.onnx"))
    kps = np.array([[25, 27], [39, 27], [32, 34], [26.5, 42], [37.5, 42]], np.float32)
    theta = grid_theta(alignment_matrix(kps), (64, 64))[None]
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    from hp3_core.training.arcface_torch import align_faces
    same = arc(align_faces(images, theta))
    loss_same, _ = identity_loss(arc, images, theta, same, 1)
    loss_other, _ = identity_loss(arc, images, theta, torch.nn.functional.normalize(torch.randn(1, 512), dim=-1), 1)
    assert float(loss_same) < 1e-5 < float(loss_other)


# --------------------------------------------------------------------------- 2. overfit, frozen parts


def _frozen_state(trainer) -> dict[str, torch.Tensor]:
    mods = {"unet": trainer.unet, "vae": trainer.vae, **{f"text{i}": m for i, m in enumerate(trainer.text_encoders)}}
    return {f"{n}.{k}": v.detach().clone() for n, m in mods.items() for k, v in m.state_dict().items()}


def test_overfit_lowers_the_loss_and_trains_only_hp3(setup, tmp_path):
    from hp3_core.diffusers_patch import decoder_resnets
    from hp3_core.pipeline import load_pipeline
    from hp3_core.training.trainer import Trainer
    cfg = _config(setup, tmp_path / "out", max_steps=30, learning_rate=3e-3, fixed_noise=True)
    trainer = Trainer(cfg)
    trainer.setup()
    before = {k: v.detach().clone() for k, v in trainer.hp3.state_dict().items()}
    trainer.start_step = 0
    from hp3_core.training.trainer import TrainResult
    from tqdm.auto import tqdm
    result = TrainResult(step=0)
    trainer._loop(result, tqdm)
    losses = result.losses
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    assert last < 0.7 * first, (first, last, losses)
    # Every trained part moved (the zero-initialised connector included)...
    after = trainer.hp3.state_dict()
    for prefix in ("token_decoder.", "controller.", "connector."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    # ...and the frozen base is bit-identical to the folder it came from.
    from hp3_core.diffusers_patch import remove
    remove(trainer.handle)
    fresh = load_pipeline(setup["base"])
    trained = _frozen_state(trainer)
    ref = {"unet": fresh.unet, "vae": fresh.vae, "text0": fresh.text_encoder}
    ref_state = {f"{n}.{k}": v for n, m in ref.items() for k, v in m.state_dict().items()}
    assert set(trained) == set(ref_state)
    assert all(torch.equal(trained[k], ref_state[k]) for k in ref_state)
    assert all(not p.requires_grad for p in trainer.unet.parameters())
    assert len(decoder_resnets(trainer.unet)) > 0


def test_gradient_checkpointing_gives_the_same_gradients(setup, tmp_path):
    """The connector-aware checkpointing re-activates the conditions when the backward recomputes."""
    from hp3_core.training.trainer import Trainer
    grads = []
    for ckpt in (False, True):
        trainer = Trainer(_config(setup, tmp_path / f"gc{ckpt}", gradient_checkpointing=ckpt, id_loss_weight=0.0,
                                  arcface=None))
        trainer.setup()
        batch = next(iter(trainer.loader))
        loss, _ = trainer.compute_loss(batch, 0, 0)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in trainer.hp3.named_parameters() if p.grad is not None})
        from hp3_core.diffusers_patch import remove
        remove(trainer.handle)
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("connector.") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- 3. resume, 4. export


@pytest.fixture(scope="module")
def straight_run(setup, tmp_path_factory):
    """6 steps with a checkpoint at 3, uninterrupted."""
    from hp3_core.training.trainer import train
    out = tmp_path_factory.mktemp("straight")
    result = train(_config(setup, out, max_steps=6, checkpoint_every=3, use_ema=True, ema_decay=0.9))
    return out, result


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(setup, straight_run, tmp_path):
    from hp3_core.training.trainer import train
    from hp3_core.weights import load_hp3_weights
    out_a, result_a = straight_run
    out_b = tmp_path / "resumed"
    (out_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(out_a / "checkpoints" / "checkpoint-3", out_b / "checkpoints" / "checkpoint-3")
    result_b = train(_config(setup, out_b, max_steps=6, checkpoint_every=3, use_ema=True, ema_decay=0.9,
                             resume="latest", log_every=2))
    assert result_b.step == 6 and len(result_b.losses) == 3
    np.testing.assert_allclose(result_b.losses, result_a.losses[3:], rtol=1e-5)
    a = load_hp3_weights(result_a.export).state_dict
    b = load_hp3_weights(result_b.export).state_dict
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_resume_with_a_changed_config_is_refused_naming_the_field(setup, straight_run):
    from hp3_core.training.trainer import train
    out_a, _ = straight_run
    cfg = _config(setup, out_a, max_steps=8, checkpoint_every=3, use_ema=True, ema_decay=0.9,
                  resume=str(out_a / "checkpoints" / "checkpoint-3"), learning_rate=5e-4)
    with pytest.raises(ConfigError, match="learning_rate") as err:
        train(cfg)
    assert "\n" not in str(err.value)


def test_export_loads_in_the_model_and_records_the_training(straight_run):
    from hp3_core.hp3_model import HP3Model
    from hp3_core.weights import load_hp3_weights
    out, result = straight_run
    for path in (result.export, out / "checkpoints" / "checkpoint-3" / "hp3.safetensors"):
        weights = load_hp3_weights(path)
        HP3Model.from_weights(weights)  # keys, shapes, strict load
        assert weights.metadata["status"] == "trained"
        assert weights.metadata["ema"] == "true"
        assert weights.config.render_backend == "mediapipe" and weights.config.render_style == "shaded_face"
        assert weights.metadata["dataset"] == "dataset"
    assert load_hp3_weights(result.export).metadata["trained_steps"] == "6"
    assert load_hp3_weights(out / "checkpoints" / "checkpoint-3" / "hp3.safetensors").metadata["trained_steps"] == "3"
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "train_state.json").read_text())
    assert state["step"] == 3 and state["config"]["max_steps"] == 6


def test_start_from_init_weights_and_write_validation_grids(setup, straight_run, tmp_path):
    from hp3_core.training.trainer import train
    _, result = straight_run
    out = tmp_path / "from_init"
    res = train(_config(setup, out, max_steps=1, init_weights=str(result.export), validation_every=1,
                        validation_pairs=2, validation_steps=2, batch_size=1))
    grids = sorted((out / "validation").glob("*.png"))
    assert len(grids) == 1
    from hp3_core.image_io import load_image
    assert load_image(grids[0]).shape == (2 * 64, 4 * 64, 3)
    assert res.step == 1


def test_sdxl_trains_a_few_steps(tmp_path):
    from hp3_core.training.trainer import train
    from hp3_core.weights import load_hp3_weights
    paths = write_tiny_setup(tmp_path, "sdxl")
    result = train(_config(paths, tmp_path / "out", max_steps=2))
    weights = load_hp3_weights(result.export)
    assert weights.family == "sdxl" and weights.metadata["trained_steps"] == "2"
    assert all(np.isfinite(result.losses))


def test_bf16_with_checkpointing_and_ema_trains_and_exports_float32(setup, tmp_path):
    """The GPU recipe's switches together (bf16 autocast runs on the CPU too). In a subprocess:
    accelerate allows one mixed-precision setting per process."""
    import yaml
    from hp3_core.weights import load_hp3_weights
    cfg = tiny_train_config(setup, tmp_path / "out", max_steps=2, mixed_precision="bf16",
                            gradient_checkpointing=True, use_ema=True)
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(cfg))
    run = _cli("train", "--config", str(tmp_path / "bf16.yaml"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mixed precision bf16" in run.stderr and "step 2/2:" in run.stderr
    weights = load_hp3_weights(tmp_path / "out" / "hp3_trained.safetensors")
    assert {t.dtype for t in weights.state_dict.values()} == {torch.float32}, "master weights are exported"
    assert weights.metadata["ema"] == "true"


def test_dataset_without_pairable_group_is_a_clear_error(setup, tmp_path):
    from hp3_core.training.trainer import train
    data = write_tiny_dataset(tmp_path / "singles", groups={"a": 1, "b": 1})
    paths = dict(setup, dataset=data)
    with pytest.raises(HP3Error, match="no pairable ID group"):
        train(_config(paths, tmp_path / "out"))


def test_config_errors_name_the_field(setup, tmp_path):
    base = tiny_train_config(setup, tmp_path)
    with pytest.raises(ConfigError, match="unknown field.*lerning_rate"):
        TrainConfig.from_dict({**base, "lerning_rate": 1.0})
    missing = dict(base)
    del missing["clip_vision"]
    with pytest.raises(ConfigError, match="clip_vision"):
        TrainConfig.from_dict(missing)
    with pytest.raises(ConfigError, match="'mixed_precision'"):
        TrainConfig.from_dict({**base, "mixed_precision": "fp8"})
    with pytest.raises(ConfigError, match="'batch_size' must be int"):
        TrainConfig.from_dict({**base, "batch_size": "two"})
    with pytest.raises(ConfigError, match="'arcface' is required"):
        TrainConfig.from_dict({**base, "arcface": None})


# --------------------------------------------------------------------------- 5. bench, 6. CLI


def test_bench_train_core_at_tiny_size():
    from harness.tiny_hp3 import tiny_hp3_config
    from hp3_core.benchmarks import train_bench
    from hp3_core.unet_convert import unet_config
    hp3_config = tiny_hp3_config("sd15")
    stacks = train_bench.build("cpu", unet_config(hp3_config, sample_size=8), hp3_config, latent=8, text_tokens=8,
                               clip_tokens=8, precision="no")
    results = train_bench.measure(stacks, steps=2, device="cpu")
    assert set(results) == {"controlnet", "hp3"}
    lines = train_bench.report(results, "cpu", "no", 2, "tiny")
    for key in ("train_steps_per_s", "train_peak_mem_gb", "ratio_vs_controlnet"):
        line = next(line for line in lines if line.startswith(key + ": "))
        assert float(line.split(": ")[1]) > 0
    assert [line.split(":")[0] for line in lines[-2:]] == ["train_steps_per_s", "train_peak_mem_gb"], \
        "the report ends with the two contract lines"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_train_end_to_end_and_bad_config(setup, tmp_path):
    import yaml
    cfg = tiny_train_config(setup, tmp_path / "out", max_steps=2, batch_size=1)
    # Relative paths resolve against the config file's folder.
    cfg["output_dir"] = "out"
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    run = _cli("train", "--config", str(tmp_path / "train.yaml"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "hp3_trained.safetensors").is_file()
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-2" / "train_state.json").is_file()
    assert "trained 2 steps" in run.stdout
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "batch_sise": 2}))
    bad = _cli("train", "--config", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "batch_sise" in errors[0]


def test_two_processes_train_as_one_data_parallel_run(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo): one run of 2 processes, not 2 runs; one export."""
    import yaml
    from hp3_core.hp3_model import HP3Model
    from hp3_core.weights import load_hp3_weights
    cfg = tiny_train_config(setup, tmp_path / "out", max_steps=2, batch_size=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "hp3_core", "train", "--config", str(tmp_path / "train.yaml")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("accelerate: 2 process(es)") == 2, run.stderr[-3000:]
    assert run.stderr.count("step 2/2:") == 1, "the main process logs the mean loss once"
    weights = load_hp3_weights(tmp_path / "out" / "hp3_trained.safetensors")
    assert weights.metadata["trained_steps"] == "2"
    HP3Model.from_weights(weights)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_example_configs_are_valid(name):
    """The documented example configs parse (every field known, values in range)."""
    config = TrainConfig.load(REPO / "hp3_core" / "training" / "examples" / f"{name}.yaml")
    assert config.mixed_precision == "bf16" and config.gradient_checkpointing and config.report_to is None
