"""A tiny HP3 training set written with the real format's writers (:mod:`hp3_core.dataset.manifest`),
and the tiny model folders a training config needs (base pipeline, CLIP vision, ArcFace ONNX).

Images are smooth random colour fields (fixed by the seed) with a brighter "face" blob where the
keypoints say the face is; renders are grey blobs; ArcFace embeddings are seeded unit vectors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hp3_core.dataset import manifest
from hp3_core.head3d.params import HeadParams

SIZE = 64  # the tiny pipelines' image size (latent 8)
GROUPS = {"alice": 3, "bob": 2, "carol": 1}  # carol: a single image, unpairable
FACE_BOX = [18.0, 14.0, 46.0, 50.0]
KEYPOINTS = [[25.0, 27.0], [39.0, 27.0], [32.0, 34.0], [26.5, 42.0], [37.5, 42.0]]


def _smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
    from PIL import Image
    img = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.Resampling.BICUBIC))
                    for c in range(3)], -1)
    return np.clip(img, 0, 255)


def _blob(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))


def _head(rng: np.random.Generator) -> HeadParams:
    t = {name: torch.from_numpy(rng.standard_normal((1,) + shape).astype(np.float32))
         for name, shape in (("shape", (8,)), ("expression", (4,)), ("eyelids", (2,)), ("jaw", (3,)),
                             ("pose", (3,)), ("camera", (3,)))}
    return HeadParams(backend="mediapipe", image_to_crop=torch.eye(3)[None], crop_size=224,
                      image_size=[(SIZE, SIZE)], faces=[None], **t)


def write_tiny_dataset(root: Path, groups: dict[str, int] | None = None, seed: int = 0, size: int = SIZE) -> Path:
    """A dataset folder ``root`` with ``groups`` (name -> image count) of ``size`` px images."""
    from PIL import Image
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    settings = {"size": size, "backend": "mediapipe", "render_style": "shaded_face", "crop_size": 224,
                "detection": "mediapipe"}
    manifest.write_header(root, settings)
    for g, (group, count) in enumerate((groups or GROUPS).items()):
        tensors: dict[str, torch.Tensor] = {}
        identity = rng.standard_normal(512).astype(np.float32)
        for k in range(count):
            key = f"img{k}"
            shift = rng.uniform(-2, 2, 2)
            box = [FACE_BOX[0] + shift[0], FACE_BOX[1] + shift[1], FACE_BOX[2] + shift[0], FACE_BOX[3] + shift[1]]
            kps = [[x + shift[0], y + shift[1]] for x, y in KEYPOINTS]
            face = _blob(size, 32 + shift[0], 32 + shift[1], 9.0)[..., None]
            tint = np.array([200, 150 + 30 * g, 120], np.float32)
            image = _smooth(rng, size) * (1 - face) + tint * face
            render = (180 * _blob(size, 32 + shift[0], 32 + shift[1], 10.0))[..., None].repeat(3, -1)
            for rel, arr in ((manifest.image_path(group, key), image), (manifest.render_path(group, key), render)):
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).save(path)
            emb = identity + 0.3 * rng.standard_normal(512).astype(np.float32)
            tensors[f"{key}.{manifest.ARCFACE_KEY}"] = torch.from_numpy(emb / np.linalg.norm(emb))
            tensors.update(manifest.head_tensors(key, _head(rng)))
            manifest.write_shard(root, group, tensors)
            record = manifest.DatasetRecord(
                group=group, key=key, source=f"{group}/{key}.png", image=manifest.image_path(group, key),
                render=manifest.render_path(group, key), caption="a photo of a person smiling",
                face_box=box, keypoints=kps, det_score=0.9, crop_box=[0, 0, size])
            manifest.append_jsonl(root / manifest.MANIFEST, record.to_json())
    return root


def write_tiny_setup(tmp: Path, family: str = "sd15") -> dict[str, Path]:
    """Everything a tiny training config names: ``base`` (pipeline folder), ``dataset``,
    ``clip_vision`` (folder), ``arcface`` (ONNX file)."""
    from harness.tiny_clip import write_tiny_clip_folder
    from harness.tiny_onnx import write_tiny_arcface
    from harness.tiny_pipeline import tiny_sd15_pipe, tiny_sdxl_pipe
    tmp = Path(tmp)
    base = tmp / f"base_{family}"
    if not (base / "model_index.json").is_file():
        pipe, _ = (tiny_sd15_pipe if family == "sd15" else tiny_sdxl_pipe)(tmp / f"tok_{family}")
        pipe.save_pretrained(base)
    dataset = tmp / "dataset"
    if not (dataset / manifest.HEADER).is_file():
        write_tiny_dataset(dataset)
    clip = tmp / "clip"
    if not (clip / "config.json").is_file():
        write_tiny_clip_folder(clip)
    arcface = tmp / "glintr100.onnx"
    if not arcface.is_file():
        write_tiny_arcface(arcface)
    return {"base": base, "dataset": dataset, "clip_vision": clip, "arcface": arcface}


def tiny_train_config(paths: dict[str, Path], out: Path, **overrides) -> dict:
    """A training config dict for the tiny setup (fast: few steps, no dropout)."""
    cfg = {"base": str(paths["base"]), "dataset": str(paths["dataset"]), "output_dir": str(out),
           "clip_vision": str(paths["clip_vision"]), "arcface": str(paths["arcface"]),
           "max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "text_dropout": 0.0, "head_dropout": 0.0,
           "id_loss_max_timestep": 1000, "checkpoint_every": 0, "log_every": 1, "seed": 0}
    cfg.update(overrides)
    return cfg
