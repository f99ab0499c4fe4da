"""The SMIRK/FLAME code path end to end on files the tests build (random weights in the real
files' layouts: tests/harness/smirk_files.py), backend selection, and the retarget command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from harness.smirk_files import write_synthetic_models
from hp3_core.errors import MissingModelFileError
from hp3_core.head3d.reconstructor import BACKENDS, build_reconstructor
from hp3_core.head3d.retarget_images import retarget_images
from hp3_core.image_io import load_image


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    return write_synthetic_models(tmp_path_factory.mktemp("synthetic_models"))


def test_smirk_backend_runs_its_whole_path_on_test_built_files(synthetic_files, assets):
    rec = build_reconstructor("smirk", [synthetic_files / "smirk"], [synthetic_files / "flame"])
    assert rec.name == "smirk" and rec.head_model.full_head
    source = load_image(assets / "faces" / "source_s42.jpg")
    driving = [load_image(assets / "faces" / n) for n in ("driving_d9.jpg", "driving_d30.jpg")]
    result = retarget_images(rec, source, driving)
    heads, src = result.heads, result.source
    assert heads.shape.shape == (2, 300) and heads.expression.shape == (2, 50)
    assert heads.eyelids.shape == (2, 2) and heads.jaw.shape == (2, 3) and heads.camera.shape == (2, 3)
    assert torch.equal(heads.shape, src.shape.expand(2, -1)), "the source's shape"
    assert not torch.equal(heads.expression[0], heads.expression[1]), "each driver's expression"
    for frame, maps in zip(driving, result.maps):
        assert maps.shaded.shape == (1, *frame.shape[:2], 3) and maps.mask.sum() > 0
    face_maps = retarget_images(rec, source, driving[:1], region="face").maps[0]
    assert 0 < face_maps.mask.sum() < result.maps[0].mask.sum(), "the face is part of the head"


def test_auto_prefers_smirk_when_its_files_are_there(synthetic_files, tmp_path):
    rec = build_reconstructor("auto", [synthetic_files / "smirk"], [synthetic_files / "flame"])
    assert rec.name == "smirk"
    assert build_reconstructor("auto", [tmp_path], [tmp_path]).name == "ict"


def test_users_are_offered_no_test_only_backend():
    assert BACKENDS == ("auto", "smirk", "ict", "mediapipe")  # the loader node lists exactly these
    with pytest.raises(ValueError, match="unknown 3D backend 'synthetic'"):
        build_reconstructor("synthetic")
    out = cli("retarget", "--help")
    assert out.returncode == 0 and "{auto,smirk,ict,mediapipe}" in out.stdout and "synthetic" not in out.stdout


def test_missing_smirk_files_list_the_folders(synthetic_files, tmp_path):
    with pytest.raises(MissingModelFileError) as err:
        build_reconstructor("smirk", [tmp_path / "a", tmp_path / "b"], [synthetic_files / "flame"])
    msg = str(err.value)
    assert "SMIRK_em1.pt" in msg and str(tmp_path / "a") in msg and str(tmp_path / "b") in msg
    with pytest.raises(MissingModelFileError, match="generic_model.pkl"):
        build_reconstructor("smirk", [synthetic_files / "smirk"], [tmp_path])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], capture_output=True, text=True, timeout=600)


def test_retarget_command_writes_the_maps(assets, tmp_path):
    out = cli("retarget", "--source", str(assets / "faces" / "source_s42.jpg"),
              "--driving", str(assets / "faces" / "driving_d19.jpg"), "--out", str(tmp_path), "--backend", "mediapipe")
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("shaded.png", "normal.png", "depth.png", "mask.png", "params.json"):
        assert (tmp_path / name).is_file(), name
    params = json.loads((tmp_path / "params.json").read_text())
    assert params["backend"] == "mediapipe" and params["full_head"] is False
    assert params["head"]["image_size"] == [720, 720] or len(params["head"]["image_size"]) == 2
    assert load_image(tmp_path / "shaded.png").shape[:2] == load_image(assets / "faces" / "driving_d19.jpg").shape[:2]


def test_retarget_command_on_a_video(assets, tmp_path, synthetic_files):
    out = cli("retarget", "--source", str(assets / "faces" / "source_s42.jpg"),
              "--driving", str(assets / "faces" / "driving_d10.mp4"), "--out", str(tmp_path),
              "--every", "10", "--max-frames", "3", "--models-dir", str(synthetic_files), "--backend", "smirk")
    assert out.returncode == 0, out.stderr[-2000:]
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["frame_00000", "frame_00010", "frame_00020"]
    assert all((tmp_path / f / "mask.png").is_file() for f in folders)


def test_retarget_command_no_face_is_one_line(assets, tmp_path):
    out = cli("retarget", "--source", str(assets / "faces" / "source_s39.jpg"),
              "--driving", str(assets / "faces" / "driving_d9.jpg"), "--out", str(tmp_path))
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert out.returncode == 1 and len(lines) == 1 and "no face found in source" in lines[0]
    assert "Traceback" not in out.stderr
