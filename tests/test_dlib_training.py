"""Training with the dlib identity backend: the identity loss through the torch port of dlib's
ResNet on real photos, a dataset whose embeddings are dlib's, and HP3 weights that record it.

The base pipeline, CLIP vision and VAE are the tiny ones of ``harness.tiny_dataset``; the identity
model is dlib's real public-domain network (``make test`` installs it).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require
from harness.needs import installed
from harness.tiny_dataset import tiny_train_config, write_tiny_setup
from hp3_core.dataset import manifest
from hp3_core.training.config import ConfigError, TrainConfig

installed("accelerate", "training needs it (requirements-train.txt)")
require(importlib.util.find_spec("dlib") is not None, "dlib (the dlib-bin wheel) is not installed")

FRAMES = [f"frame_{i}.png" for i in range(4)]
OTHERS = ["source_s42.jpg", "source_s5.jpg"]
SIZE = 64  # the tiny pipelines' image size


@pytest.fixture(scope="module")
def analyzer():
    from hp3_core.head_encoder.dlib_analysis import DlibFaceAnalyzer
    return DlibFaceAnalyzer(detection="mediapipe")


@pytest.fixture(scope="module")
def recognizer():
    from hp3_core.head_encoder.dlib_analysis import find_dlib_files
    from hp3_core.training.dlib_torch import TorchDlibRecognizer
    return TorchDlibRecognizer.from_file(find_dlib_files()["recognizer"])


def _square_face_crop(image: np.ndarray, face, size: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A square crop 2x the face box around it, resized to ``size``: (image, keypoints, box) in its pixels."""
    from PIL import Image
    x0, y0, x1, y1 = face.box
    side = 2.0 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = cx - side / 2, cy - side / 2
    crop = Image.fromarray(image).crop((int(left), int(top), int(left + side), int(top + side)))
    scale = size / int(side)
    kps = (face.keypoints - [int(left), int(top)]) * scale
    box = [(x0 - int(left)) * scale, (y0 - int(top)) * scale, (x1 - int(left)) * scale, (y1 - int(top)) * scale]
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC)), kps, box


@pytest.fixture(scope="module")
def dlib_setup(tmp_path_factory, assets, analyzer) -> dict[str, Path]:
    """The tiny base/CLIP setup with a dataset of real photos whose cached embeddings and
    keypoints are dlib's (two groups: four frames of one person, two photos of others)."""
    from PIL import Image

    from hp3_core.image_io import load_image
    tmp = tmp_path_factory.mktemp("dlib_train")
    paths = write_tiny_setup(tmp)
    root = tmp / "dlib_dataset"
    root.mkdir()
    manifest.write_header(root, {"size": SIZE, "backend": "mediapipe", "render_style": "shaded_face",
                                 "crop_size": 224, "detection": "mediapipe", "identity": "dlib",
                                 "identity_dim": 128, "recognizer": "dlib_face_recognition_resnet_model_v1.dat"})
    from harness.tiny_dataset import _head
    rng = np.random.default_rng(0)
    for group, names in (("person", FRAMES), ("others", OTHERS)):
        tensors: dict[str, torch.Tensor] = {}
        for k, name in enumerate(names):
            folder = "id_group_hp3" if name in FRAMES else "faces"
            photo = load_image(assets / folder / name)
            face = analyzer.analyze(photo, name=name)
            image, kps, box = _square_face_crop(photo, face, SIZE)
            key = f"img{k}"
            Image.fromarray(image).save(_mkdir(root / manifest.image_path(group, key)))
            Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(_mkdir(root / manifest.render_path(group, key)))
            tensors[f"{key}.{manifest.ARCFACE_KEY}"] = torch.from_numpy(face.embedding)
            tensors.update(manifest.head_tensors(key, _head(rng)))
            manifest.write_shard(root, group, tensors)
            record = manifest.DatasetRecord(group=group, key=key, source=name, image=manifest.image_path(group, key),
                                            render=manifest.render_path(group, key), caption="a photo of a person",
                                            face_box=box, keypoints=kps.round(3).tolist(), det_score=0.9,
                                            crop_box=[0, 0, SIZE])
            manifest.append_jsonl(root / manifest.MANIFEST, record.to_json())
    return {**paths, "dataset": root}


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_dlib_identity_loss_on_a_real_photo_prefers_the_person_and_can_be_lowered(assets, analyzer, recognizer):
    from hp3_core.head_encoder.identity import aligned_size, alignment_for
    from hp3_core.image_io import load_image
    from hp3_core.training.arcface_torch import grid_theta
    from hp3_core.training.losses import identity_loss
    photo = load_image(assets / "id_group_hp3" / FRAMES[0])
    face = analyzer.analyze(photo, name="frame")
    same = torch.from_numpy(analyzer.analyze(load_image(assets / "id_group_hp3" / FRAMES[2])).embedding)[None]
    other = torch.from_numpy(analyzer.analyze(load_image(assets / "faces" / OTHERS[0])).embedding)[None]
    theta = grid_theta(alignment_for("dlib", face.keypoints), photo.shape[:2], aligned_size("dlib"))[None]
    image = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    l_same, _ = identity_loss(recognizer, image, theta, same, 1)
    l_other, _ = identity_loss(recognizer, image, theta, other, 1)
    assert float(l_same) < 0.06 < float(l_other), (float(l_same), float(l_other))
    # Gradient steps on the pixels towards the other person lower the loss (the gradient is useful).
    delta = torch.zeros_like(image, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.01)
    losses = []
    for _ in range(6):
        loss, _ = identity_loss(recognizer, image + delta, theta, other, 1)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_training_with_dlib_lowers_the_identity_loss_and_records_dlib(dlib_setup, tmp_path):
    from hp3_core.diffusers_patch import remove
    from hp3_core.training.trainer import Trainer
    cfg = TrainConfig.from_dict(tiny_train_config(dlib_setup, tmp_path / "out", identity="dlib", arcface=None,
                                                  fixed_noise=True, id_loss_weight=10.0, learning_rate=3e-3,
                                                  batch_size=2))
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        assert trainer.hp3.config.encoder.identity == "dlib"
        assert trainer.hp3.token_decoder.id_proj.weight.shape[1] == 128
        batch = next(iter(trainer.loader))
        assert batch["source_arcface"].shape[1] == 128
        ids = []
        for _ in range(8):
            loss, logs = trainer.compute_loss(batch, 0, 0)  # same step: the same noise and timesteps
            ids.append(logs["loss_id"])
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
        assert logs["id_rows"] > 0 and all(np.isfinite(ids))
        assert ids[-1] < ids[0], ids
    finally:
        remove(trainer.handle)


def test_identity_mismatch_with_the_dataset_is_refused(dlib_setup, tmp_path):
    from hp3_core.training.trainer import Trainer
    cfg = TrainConfig.from_dict(tiny_train_config(dlib_setup, tmp_path / "out"))  # insightface (the default)
    with pytest.raises(ConfigError, match="built with 'dlib' embeddings; set identity: dlib"):
        Trainer(cfg).setup()
