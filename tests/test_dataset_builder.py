"""``build-dataset``: real photos and a real talking-head video in, the HP3 dataset format out.

3D backend: MediaPipe (embedded). ArcFace: a tiny ONNX recognizer in antelopev2's file name
(tests/harness/tiny_onnx.py) with MediaPipe keypoints, so no model download is needed. Images are
built small (--size 256/128) to keep the file fast on a 2-core CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.tiny_onnx import write_tiny_pack
from hp3_core.dataset import item_worker
from hp3_core.dataset.builder import BuildConfig, ProgressEvent, build_dataset
from hp3_core.dataset.frame_select import single_clear_face, square_box
from hp3_core.dataset.manifest import (ARCFACE_KEY, HEAD_PREFIX, MANIFEST, SKIPPED, DatasetError, HP3Dataset,
                                       read_header, read_jsonl, read_shard)
from hp3_core.head3d.face_landmarks import FaceLandmarks
from hp3_core.head3d.mediapipe_head import MediaPipeHeadModel
from hp3_core.head3d.params import HeadParams
from hp3_core.head3d.render_head import render_heads
from hp3_core.image_io import load_image

REPO = Path(__file__).resolve().parent.parent
SIZE = 256


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("insightface")
    write_tiny_pack(root, "antelopev2")
    return root


def _config(inp: Path, out: Path, face_dir: Path, **kw) -> BuildConfig:
    base = dict(input=inp, out=out, size=SIZE, fps=1.0, max_frames_per_video=3, backend="mediapipe",
                face_dirs=[face_dir], detection="mediapipe", workers=1, progress_bar=False)
    base.update(kw)
    return BuildConfig(**base)


def _hp3_group(assets: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in (assets / "id_group_hp3").iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def inputs(assets, tmp_path_factory) -> Path:
    """Groups: hp3 (the paper's 4 captioned frames), vid (a talking-head video, captioned),
    dups (a photo twice, a cat, garbage bytes, two people side by side: one usable image) and empty."""
    root = tmp_path_factory.mktemp("input")
    _hp3_group(assets, root / "hp3")
    vid = root / "vid"
    vid.mkdir()
    os.symlink(assets / "faces" / "source_s18.mp4", vid / "talk.mp4")
    (vid / "captions.json").write_text(json.dumps({"talk.mp4": "a young woman talks in a bright room"}))
    dups = root / "dups"
    dups.mkdir()
    shutil.copyfile(assets / "faces" / "source_s42.jpg", dups / "a_photo.jpg")
    shutil.copyfile(assets / "faces" / "source_s42.jpg", dups / "b_copy.jpg")
    shutil.copyfile(assets / "faces" / "source_s39.jpg", dups / "cat.jpg")
    (dups / "garbage.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    a, b = load_image(assets / "faces" / "source_s42.jpg"), load_image(assets / "faces" / "driving_d9.jpg")
    b = np.asarray(Image.fromarray(b).resize((a.shape[0], a.shape[0]), Image.LANCZOS))
    Image.fromarray(np.concatenate([a, b], axis=1)).save(dups / "two_people.png")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def built(inputs, face_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    events: list[ProgressEvent] = []
    summary = build_dataset(_config(inputs, out, face_dir), progress=events.append)
    return out, summary, events


def _records(out: Path) -> dict[str, dict]:
    return {f"{r['group']}/{r['key']}": r for r in read_jsonl(out / MANIFEST)}


# --------------------------------------------------------------------------- pure helpers


def test_square_box_is_the_largest_square_centred_on_the_head_and_never_padded():
    # A face near the left edge of a landscape frame: the square slides to the edge, not past it.
    assert square_box((720, 1280, 3), (10, 300, 110, 420)) == (0, 0, 720)
    # A face near the right edge: clamped to the right.
    assert square_box((720, 1280, 3), (1200, 300, 1270, 400)) == (560, 0, 720)
    # A centred face in a portrait frame: vertical position follows the (lifted) head centre.
    x0, y0, side = square_box((1000, 600, 3), (250, 450, 350, 550))
    assert (x0, side) == (0, 600) and 0 < y0 < 400
    assert y0 + side / 2 < 500  # lifted above the face centre (hair kept)


def _face(size: float, conf: float | None) -> FaceLandmarks:
    return FaceLandmarks(points=np.zeros((478, 3), np.float32), box=(0.0, 0.0, size, size), confidence=conf)


def test_single_clear_face_rules():
    assert single_clear_face([]).reason == "no_face"
    assert single_clear_face([_face(200, 0.9), _face(150, 0.9)]).reason == "multiple_faces"
    assert single_clear_face([_face(200, 0.9), _face(60, 0.9)]).face is not None      # small background face
    assert single_clear_face([_face(200, 0.9), _face(180, 0.55)]).face is not None    # doubtful detection
    assert single_clear_face([_face(200, 0.9), _face(150, 0.9)], second_face_ratio=0.8).face is not None


# --------------------------------------------------------------------------- one build, many checks


def test_id_group_records_shards_images_and_renders(built, assets):
    out, summary, _ = built
    records = _records(out)
    hp3 = {k: r for k, r in records.items() if r["group"] == "hp3"}
    assert sorted(hp3) == [f"hp3/frame_{i}" for i in range(4)]
    captions = json.loads((assets / "id_group_hp3" / "captions.json").read_text())
    shard = read_shard(out, "hp3")
    for r in hp3.values():
        assert r["caption"] == captions[f"{r['key']}.png"] and not r["caption_missing"]
        assert r["frame"] is None and r["source"] == f"hp3/{r['key']}.png"
        assert r["crop_box"] == [0, 0, 340]  # the 340x340 frame is its own square
        image = np.asarray(Image.open(out / r["image"]))
        render = np.asarray(Image.open(out / r["render"]))
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert render.shape == (SIZE, SIZE, 3) and render.dtype == np.uint8
        x0, y0, x1, y1 = r["face_box"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and (x1 - x0) > SIZE / 5
        kps = np.asarray(r["keypoints"])
        assert kps.shape == (5, 2)
        assert np.all((kps[:, 0] >= x0) & (kps[:, 0] <= x1) & (kps[:, 1] >= y0) & (kps[:, 1] <= y1))
        assert kps[0, 0] < kps[1, 0] and kps[3, 0] < kps[4, 0]  # ArcFace order: image-left first
        assert r["det_score"] is not None and r["det_score"] > 0.5
        inside = render[int(y0):int(y1), int(x0):int(x1)].astype(np.float32)
        assert (inside.max(axis=-1) > 20).mean() > 0.5, "the face box should be mostly covered by the render"
        outside = render.copy()
        outside[int(y0):int(y1), int(x0):int(x1)] = 0
        assert (outside.max(axis=-1) > 20).mean() < 0.1, "the face-only render stays near the face"
        emb = shard[f"{r['key']}.{ARCFACE_KEY}"]
        assert emb.shape == (512,) and emb.dtype == torch.float32
        assert abs(float(emb.norm()) - 1.0) < 1e-4
        for name in HeadParams.TENSORS:
            assert shard[f"{r['key']}.{HEAD_PREFIX}{name}"].shape[0] == 1
    embs = torch.stack([shard[f"frame_{i}.{ARCFACE_KEY}"] for i in range(4)])
    assert not torch.allclose(embs[0], embs[1]), "different frames give different embeddings"
    header = read_header(out)
    s = header["settings"]
    assert (s["size"], s["backend"], s["render_style"], s["recognizer"], s["pack"], s["detection"]) == (
        SIZE, "mediapipe", "shaded_face", "glintr100.onnx", "antelopev2", "mediapipe")
    assert s["crop_size"] == 224 and s["fps"] == 1.0 and s["dedup_threshold"] > 0 and s["builder_version"] >= 1
    assert header["summary"]["images"] == summary.images


def test_stored_head_params_reproduce_the_saved_render(built):
    """What the trainer does: HeadParams from the shard + the header's settings -> the same render."""
    out, _, _ = built
    ds = HP3Dataset.load(out)
    item = ds.items[ds.groups["hp3"][1]]
    params = item.head_params(ds.settings["backend"], ds.settings["crop_size"], ds.settings["size"])
    shaded = render_heads(params, MediaPipeHeadModel(), "head")[0].shaded[0].numpy()
    saved = np.asarray(Image.open(item.render_file)).astype(np.float32) / 255.0
    assert np.abs(shaded - saved).mean() < 2.0 / 255.0


def test_dataset_loads_and_pairs(built):
    out, _, _ = built
    ds = HP3Dataset.load(out)
    assert set(ds.pairable_groups()) == {"hp3", "vid"}
    assert len(ds.groups["dups"]) == 1
    assert len(ds) == 4 + 3 + 1
    assert ds.settings["size"] == SIZE


def test_video_frames_sampled_with_indices_and_the_video_caption(built):
    out, _, _ = built
    vid = sorted((r for r in _records(out).values() if r["group"] == "vid"), key=lambda r: r["frame"])
    # 30 fps sampled at 1 frame/s, at most 3 frames.
    assert [r["frame"] for r in vid] == [0, 30, 60]
    assert [r["key"] for r in vid] == ["talk_f000000", "talk_f000030", "talk_f000060"]
    for r in vid:
        assert r["caption"] == "a young woman talks in a bright room" and not r["caption_missing"]
        assert r["source"] == "vid/talk.mp4"
        x0, y0, side = r["crop_box"]
        assert side == 720 and y0 == 0 and 0 <= x0 <= 1280 - 720  # never padded
        assert Image.open(out / r["image"]).size == (SIZE, SIZE)


def test_bad_inputs_are_skipped_with_reasons_and_reported(built):
    out, summary, events = built
    skips = {s["key"]: s for s in read_jsonl(out / SKIPPED)}
    assert skips["b_copy"]["reason"] == "near_duplicate" and "a_photo" in skips["b_copy"]["detail"]
    assert skips["cat"]["reason"] == "no_face"
    assert skips["garbage"]["reason"] == "unreadable" and "garbage.jpg" in skips["garbage"]["detail"]
    assert skips["two_people"]["reason"] == "multiple_faces"
    assert set(skips) == {"b_copy", "cat", "garbage", "two_people"}
    assert summary.skipped == {"multiple_faces": 1, "near_duplicate": 1, "no_face": 1, "unreadable": 1}
    assert (summary.groups, summary.images, summary.pairable_groups) == (3, 8, 2)
    assert summary.unpairable_groups == ["dups"] and summary.empty_groups == ["empty"]
    assert summary.captions_missing == 1  # dups/a_photo.jpg has no caption
    assert _records(out)["dups/a_photo"]["caption_missing"] is True
    assert summary.new_images == 8 and summary.new_skipped == 4 and summary.already_done == 0
    assert [e.status for e in events].count("recorded") == 8 and len(events) == 12
    lines = summary.lines()
    assert any("unpairable" in line and "dups" in line for line in lines)
    assert any("empty" in line and "empty" in line for line in lines)


def test_second_run_does_nothing(built, inputs, face_dir, monkeypatch):
    out, _, _ = built
    calls = []
    real = item_worker.reconstruct
    monkeypatch.setattr(item_worker, "reconstruct", lambda *a, **k: calls.append(1) or real(*a, **k))
    manifest, skipped = (out / MANIFEST).read_bytes(), (out / SKIPPED).read_bytes()
    summary = build_dataset(_config(inputs, out, face_dir))
    assert calls == []
    assert (out / MANIFEST).read_bytes() == manifest and (out / SKIPPED).read_bytes() == skipped
    assert summary.new_images == 0 and summary.new_skipped == 0 and summary.already_done == 12
    assert summary.images == 8 and summary.skipped["near_duplicate"] == 1


def test_resume_with_other_settings_is_refused_naming_the_fields(built, inputs, face_dir):
    out, _, _ = built
    with pytest.raises(DatasetError, match=r"size: 256 -> 320.*fps: 1\.0 -> 2\.0.*new --out"):
        build_dataset(_config(inputs, out, face_dir, size=320, fps=2.0))
    assert read_header(out)["settings"]["size"] == SIZE  # untouched


# --------------------------------------------------------------------------- interruption and workers


def test_interrupted_run_resumes_only_the_rest(assets, face_dir, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    _hp3_group(assets, inp / "hp3")
    out = tmp_path / "ds"
    recorded = []

    def stop_after_two(event: ProgressEvent) -> None:
        recorded.append(event.status)
        if recorded.count("recorded") == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(_config(inp, out, face_dir, size=128), progress=stop_after_two)
    assert len(read_jsonl(out / MANIFEST)) == 2  # the finished items were written on the way out
    assert len(read_shard(out, "hp3")) == 2 * (1 + len(HeadParams.TENSORS))
    calls = []
    real = item_worker.reconstruct
    monkeypatch.setattr(item_worker, "reconstruct", lambda *a, **k: calls.append(1) or real(*a, **k))
    summary = build_dataset(_config(inp, out, face_dir, size=128))
    assert len(calls) == 2
    assert summary.already_done == 2 and summary.new_images == 2 and summary.images == 4
    assert len(read_jsonl(out / MANIFEST)) == 4  # nothing recorded twice
    assert len(HP3Dataset.load(out)) == 4


def test_worker_processes_give_the_same_dataset(built, assets, face_dir, tmp_path):
    out1, _, _ = built
    inp = tmp_path / "in"
    _hp3_group(assets, inp / "hp3")
    out2 = tmp_path / "ds"
    summary = build_dataset(_config(inp, out2, face_dir, workers=2, flush_every=3))
    assert summary.workers == 2 and summary.images == 4
    r1, r2 = read_jsonl(out1 / MANIFEST), read_jsonl(out2 / MANIFEST)
    assert [r["key"] for r in r2] == [f"frame_{i}" for i in range(4)]  # submission order kept
    hp3_1 = {r["key"]: r for r in r1 if r["group"] == "hp3"}
    for r in r2:
        np.testing.assert_allclose(r["keypoints"], hp3_1[r["key"]]["keypoints"], atol=1e-2)
    s1, s2 = read_shard(out1, "hp3"), read_shard(out2, "hp3")
    assert set(s2) == set(s1)
    for k in s2:
        torch.testing.assert_close(s2[k], s1[k], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- the command line


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hp3_core", "build-dataset", *args]


def test_cli_killed_mid_run_then_resumed(assets, face_dir, tmp_path):
    """A real SIGKILL (no cleanup at all) between items; the rerun finishes only the rest."""
    group = _hp3_group(assets, tmp_path / "in" / "hp3")
    for i in range(4):  # mirrored frames: 8 distinct images of one person
        Image.fromarray(np.ascontiguousarray(load_image(group / f"frame_{i}.png")[:, ::-1])).save(
            group / f"mirror_{i}.png")
    out = tmp_path / "ds"
    args = _cli("--input", str(tmp_path / "in"), "--out", str(out), "--size", "128", "--backend", "mediapipe",
                "--models-dir", str(face_dir), "--detection", "mediapipe", "--workers", "1", "--flush-every", "1",
                "--no-progress")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / MANIFEST).is_file() and (out / MANIFEST).read_text().count("\n") >= 1:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = len(read_jsonl(out / MANIFEST))
    assert 1 <= before < 8, f"the kill should land mid-run ({before} of 8 recorded)"
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].endswith("1 groups, 8 images, 1 pairable groups")
    assert f"{8 - before} new images" in lines[1] and f"{before} already done" in lines[1]
    assert any(line.startswith("captions missing: 4") for line in lines)  # the mirrored frames
    assert "Traceback" not in done.stderr
    assert len(read_jsonl(out / MANIFEST)) == 8  # no item recorded twice
    assert len(HP3Dataset.load(out)) == 8


def test_cli_on_an_older_format_is_one_line_error(tmp_path, face_dir):
    inp = tmp_path / "in"
    (inp / "g").mkdir(parents=True)
    out = tmp_path / "old"
    out.mkdir()
    (out / "dataset.json").write_text(json.dumps({"format_version": 0, "settings": {}, "summary": {}}))
    done = subprocess.run(_cli("--input", str(inp), "--out", str(out), "--backend", "mediapipe",
                               "--models-dir", str(face_dir), "--detection", "mediapipe", "--no-progress"),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "older version" in errors[0] and "new folder" in errors[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_ict_backend_dataset_stores_full_head_params(assets, face_dir, tmp_path):
    """The built-in full head in a dataset: its settings say so, and the stored parameters
    reproduce the saved render (what the trainer relies on)."""
    from hp3_core.head3d.ict import ICTHeadModel
    inp = tmp_path / "in"
    _hp3_group(assets, inp / "hp3")
    summary = build_dataset(_config(inp, tmp_path / "ds", face_dir, backend="ict", size=128))
    assert summary.images == 4
    ds = HP3Dataset.load(tmp_path / "ds")
    assert (ds.settings["backend"], ds.settings["render_style"]) == ("ict", "shaded_full_head_ict")
    item = ds.items[ds.groups["hp3"][0]]
    params = item.head_params(ds.settings["backend"], ds.settings["crop_size"], ds.settings["size"])
    assert params.shape.shape == (1, 100) and params.expression.shape == (1, 55)
    shaded = render_heads(params, ICTHeadModel(), "head")[0].shaded[0].numpy()
    saved = np.asarray(Image.open(item.render_file)).astype(np.float32) / 255.0
    assert np.abs(shaded - saved).mean() < 2.0 / 255.0
