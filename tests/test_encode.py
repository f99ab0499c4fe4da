"""Head encoding end to end: the ``encode`` command and the nodes, on tiny ONNX/CLIP models."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.needs import installed
from harness.tiny_clip import comfy_clip_vision, tiny_clip_model, write_tiny_clip_folder
from harness.tiny_hp3 import write_tiny_hp3
from harness.tiny_onnx import write_tiny_pack
from hp3_core.head_encoder.features import HeadFeatures
from hp3_core.image_io import load_image


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode_models")
    write_tiny_pack(root / "insightface", "antelopev2")
    write_tiny_clip_folder(root / "clip")
    write_tiny_clip_folder(root / "clip_wide", hidden_size=64)
    write_tiny_hp3(root / "hp3.safetensors", "sd15")  # its decoder expects CLIP width 48
    return root


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], capture_output=True, text=True, timeout=600)


def encode(models, out, *sources, extra=()):
    return cli("encode", "--source", *map(str, sources), "--models-dir", str(models / "insightface"),
               "--clip-vision", str(models / "clip"), "--detection", "mediapipe", "--out", str(out), *extra)


def test_encode_command_multi_reference_and_deterministic(models, assets, tmp_path):
    photos = [assets / "id_group_hp3" / f"frame_{i}.png" for i in (0, 1)]
    first = encode(models, tmp_path / "a.safetensors", *photos, extra=("--hp3", str(models / "hp3.safetensors")))
    assert first.returncode == 0, first.stderr[-2000:]
    again = encode(models, tmp_path / "b.safetensors", *photos, extra=("--hp3", str(models / "hp3.safetensors")))
    assert again.returncode == 0
    a, b = HeadFeatures.load(tmp_path / "a.safetensors"), HeadFeatures.load(tmp_path / "b.safetensors")
    assert a.num_refs == 2 and a.id_embeds.shape == (2, 512) and a.clip_hidden.shape == (2, 50, 48)
    assert a.tokens.shape == (4, 32), "N x D head tokens from the HP3 file's decoder"
    for name in ("id_embeds", "clip_hidden", "crops", "tokens"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # Two frames of one person: same crop size, square, different content.
    assert a.crops.shape[1] == a.crops.shape[2] == 224 and not torch.equal(a.crops[0], a.crops[1])


def test_encode_without_insightface_models_lists_the_folders(models, assets, tmp_path):
    out = cli("encode", "--source", str(assets / "faces" / "source_s42.jpg"), "--models-dir", str(tmp_path / "none"),
              "--identity", "insightface",
              "--clip-vision", str(models / "clip"), "--out", str(tmp_path / "x.safetensors"))
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr
    assert str(tmp_path / "none") in lines[0] and "glintr100.onnx" in lines[0] and "scrfd_10g_bnkps.onnx" in lines[0]


def test_encode_without_insightface_uses_dlib_and_insightface_weights_refuse_it(models, assets, tmp_path):
    installed("dlib", "the dlib identity backend needs dlib-bin")
    src = str(assets / "faces" / "source_s42.jpg")
    common = ("--models-dir", str(tmp_path / "none"), "--clip-vision", str(models / "clip"))
    out = cli("encode", "--source", src, *common, "--out", str(tmp_path / "d.safetensors"))
    assert out.returncode == 0, out.stderr[-2000:]
    feats = HeadFeatures.load(tmp_path / "d.safetensors")
    assert feats.id_embeds.shape == (1, 128) and feats.identity == "dlib"
    refused = cli("encode", "--source", src, *common, "--out", str(tmp_path / "e.safetensors"),
                  "--hp3", str(models / "hp3.safetensors"))
    lines = [l for l in refused.stderr.splitlines() if l.startswith("error:")]
    assert refused.returncode == 1 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert "insightface ArcFace" in lines[0] and "dlib" in lines[0]


def test_clip_width_mismatch_is_a_clear_error(models, assets, tmp_path):
    out = cli("encode", "--source", str(assets / "faces" / "source_s42.jpg"), "--models-dir", str(models / "insightface"),
              "--clip-vision", str(models / "clip_wide"), "--detection", "mediapipe", "--out", str(tmp_path / "x.safetensors"),
              "--hp3", str(models / "hp3.safetensors"))
    assert out.returncode == 1 and "64-wide features" in out.stderr and "trained with 48" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_face_names_the_image(models, assets, tmp_path):
    out = encode(models, tmp_path / "x.safetensors", assets / "faces" / "source_s42.jpg", assets / "faces" / "source_s39.jpg")
    assert out.returncode == 1 and "source_s39.jpg" in out.stderr and "no face found" in out.stderr


def test_head_encode_node_with_comfy_clip_vision(comfy, models, assets, tmp_path):
    """The node on ComfyUI's own CLIP_VISION gives the same features as transformers on the same weights."""
    model = tiny_clip_model()
    clip = comfy_clip_vision(model, tmp_path)
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    fp = comfy.folder_paths
    fp.add_model_folder_path("insightface", str(models / "insightface"))
    try:
        (analysis,) = m["HP3FaceAnalysisLoader"]().load("auto", "cpu", "mediapipe")
        image = torch.from_numpy(np.stack([load_image(assets / "faces" / "source_s42.jpg")])).float() / 255
        with torch.inference_mode():
            out = m["HP3HeadEncode"]().encode(analysis, clip, image, 0, 2.2)
    finally:
        fp.folder_names_and_paths["insightface"][0].remove(str(models / "insightface"))
    head, crops, info = out["result"]
    assert head.clip_hidden.shape == (1, 50, 48) and crops.shape == (1, 224, 224, 3)
    from hp3_core.head_encoder.clip_vision import ClipVisionEncoder
    reference = ClipVisionEncoder(model).encode(head.crops)
    # float32 tolerance: the two hosts use different attention kernels.
    assert torch.allclose(head.clip_hidden, reference, atol=1e-3, rtol=1e-3), "ComfyUI and transformers agree"
    assert "CLIP vision width 48" in info and out["ui"]["images"]


def test_face_analysis_node_chooses_dlib_and_head_encode_uses_it(comfy, assets, tmp_path):
    """identity 'dlib' in the loader node: 128-d identity, MediaPipe detection for 'insightface',
    and the Head Encode report names the backend."""
    installed("dlib", "the dlib identity backend needs dlib-bin")
    clip = comfy_clip_vision(tiny_clip_model(), tmp_path)
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    loader = m["HP3FaceAnalysisLoader"]
    assert loader.INPUT_TYPES()["optional"]["identity"][0] == ["auto", "insightface", "dlib"]
    (analysis,) = loader().load("auto", "cpu", "insightface", "dlib")
    assert analysis.identity == "dlib" and analysis.detection == "mediapipe"
    image = torch.from_numpy(np.stack([load_image(assets / "faces" / "source_s42.jpg")])).float() / 255
    with torch.inference_mode():
        out = m["HP3HeadEncode"]().encode(analysis, clip, image, 0, 2.2)
    features, _, text = out["result"]
    assert features.id_embeds.shape == (1, 128) and features.identity == "dlib"
    assert "dlib_face_recognition_resnet_model_v1.dat (dlib)" in text
