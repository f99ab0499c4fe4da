"""Face analysis for the head encoder: pack discovery, detection, alignment, ArcFace embeddings.

The recognizer is a tiny seeded ArcFace-format ONNX file (tests/harness/tiny_onnx.py) loaded
through the real insightface 2.1 / onnxruntime path; detection is MediaPipe (offline) or a tiny
SCRFD-format file that "detects" bright squares. No real insightface pack is needed.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from harness.needs import installed
from harness.tiny_onnx import write_tiny_arcface, write_tiny_pack
from hp3_core.errors import InputImageError, MissingModelFileError
from hp3_core.head_encoder import face_analysis as fa

REPO = Path(__file__).resolve().parent.parent

installed("onnxruntime", "face analysis runs its ONNX models")
installed("insightface", "face analysis uses its alignment and model zoo")


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory) -> Path:
    """An insightface folder with the antelopev2 recognizer (tiny) and no detector."""
    return write_tiny_pack(tmp_path_factory.mktemp("insightface"), "antelopev2")


@pytest.fixture(scope="module")
def analyzer(pack_root) -> fa.InsightFaceAnalyzer:
    installed("mediapipe", "detection='mediapipe' needs it")
    return fa.InsightFaceAnalyzer([pack_root], detection="mediapipe")


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, np.ndarray]:
    from hp3_core.image_io import load_image
    names = ["source_s42.jpg", "driving_d19.jpg", "source_s39.jpg"]
    return {n: load_image(assets / "faces" / n) for n in names}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- recognizer


def test_tiny_model_is_routed_to_insightfaces_arcface_and_preprocessed_like_it(analyzer, pack_root, photos):
    import onnxruntime as ort
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = pack_root / "models" / "antelopev2" / "glintr100.onnx"
    model = get_model(str(path), providers=["CPUExecutionProvider"], download=False)
    assert isinstance(model, ArcFaceONNX)
    assert (model.input_mean, model.input_std, model.input_size) == (127.5, 127.5, (112, 112))
    assert isinstance(analyzer._recognizer, fa._InsightFaceRecognizer)  # the insightface path

    face = analyzer.analyze(photos["source_s42.jpg"])
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(np.linalg.norm(face.embedding) - 1.0) < 1e-5
    # insightface's documented call: BGR crop in -> embedding
    ref = model.get_feat(np.ascontiguousarray(face.aligned[..., ::-1]))[0]
    np.testing.assert_allclose(face.embedding, ref / np.linalg.norm(ref), atol=1e-5)
    # ... which means the network sees RGB as (x - 127.5) / 127.5 (not BGR)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blob = ((face.aligned.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    raw = sess.run(None, {"input.1": blob})[0][0]
    assert _cos(raw, face.embedding) > 0.99999
    bgr = sess.run(None, {"input.1": np.ascontiguousarray(blob[:, ::-1])})[0][0]
    assert _cos(bgr, face.embedding) < 0.999  # channel order matters for this model


def test_router_fallback_uses_the_same_preprocessing(tmp_path, analyzer, photos):
    """A recognizer with symbolic height/width makes insightface's router fail; the plain
    onnxruntime fallback must give the same embedding as insightface's wrapper."""
    write_tiny_arcface(tmp_path / "models" / "antelopev2" / "glintr100.onnx", seed=0, dynamic_size=True)
    fallback = fa.InsightFaceAnalyzer([tmp_path], detection="mediapipe")
    assert isinstance(fallback._recognizer, fa._OrtRecognizer)
    a = analyzer.analyze(photos["source_s42.jpg"]).embedding
    b = fallback.analyze(photos["source_s42.jpg"]).embedding
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_embedding_is_deterministic_and_tells_people_apart(analyzer, photos):
    import cv2
    s42 = photos["source_s42.jpg"]
    first, again = analyzer.analyze(s42), analyzer.analyze(s42.copy())
    np.testing.assert_array_equal(first.embedding, again.embedding)
    other = analyzer.analyze(photos["driving_d19.jpg"])
    assert not np.allclose(first.embedding, other.embedding, atol=1e-3)
    # the same photo, rescaled by 0.8 and shifted: alignment undoes it, so the embedding stays
    # (the tiny model is a random projection of a 14x14 thumbnail of the aligned crop: it cannot
    # recognise anyone, but aligned crops of one photo match far better than two people's)
    h, w = s42.shape[:2]
    moved = cv2.warpAffine(s42, np.float32([[0.8, 0, 37], [0, 0.8, 21]]), (w, h),
                           flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    same = analyzer.analyze(moved)
    np.testing.assert_allclose(same.keypoints, first.keypoints * 0.8 + [37, 21], atol=4.0)
    assert _cos(same.embedding, first.embedding) > 0.99
    assert _cos(same.embedding, first.embedding) > _cos(other.embedding, first.embedding) + 0.2


def test_result_fields(analyzer, photos):
    face = analyzer.analyze(photos["source_s42.jpg"], name="source image 1")
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert face.keypoints.shape == (5, 2) and face.keypoints.dtype == np.float32
    assert ((face.keypoints >= [x0, y0]) & (face.keypoints <= [x1, y1])).all()
    assert face.aligned.shape == (112, 112, 3) and face.aligned.dtype == np.uint8
    assert face.recognizer == "glintr100.onnx" and "mediapipe" in face.detector
    assert face.det_score is not None and 0.5 < face.det_score <= 1.0
    assert (face.face_index, face.faces_found) == (0, 1)


# --------------------------------------------------------------------------- keypoints, alignment


@pytest.mark.parametrize("photo", ["source_s42.jpg", "driving_d19.jpg"])
def test_mediapipe_keypoints_land_on_eyes_nose_mouth(analyzer, photos, photo):
    import cv2
    from insightface.utils.face_align import arcface_dst, estimate_norm

    from hp3_core.head3d.face_landmarks import shared_landmarker

    face = analyzer.analyze(photos[photo])
    k = face.keypoints
    # insightface's order: image-left eye, image-right eye, nose, image-left/right mouth corner
    assert k[0, 0] < k[2, 0] < k[1, 0] and k[3, 0] < k[4, 0]
    assert max(k[0, 1], k[1, 1]) < k[2, 1] < min(k[3, 1], k[4, 1])
    # the similarity insightface estimates maps them onto ArcFace's template
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-image 0.26 deprecates estimate()
        m = estimate_norm(k, 112)
    mapped = k @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - arcface_dst).max() < 6.0
    # independent check: MediaPipe run again on the aligned crop finds the same parts where
    # ArcFace's template expects them (eyes tightly, nose/mouth move with pose and expression)
    up = cv2.resize(face.aligned, (448, 448), interpolation=cv2.INTER_CUBIC)
    again = shared_landmarker().detect(up)
    assert again, "no face in the aligned crop"
    found = again[0].points[list(fa.MEDIAPIPE_KEYPOINTS), :2] / 4.0
    err = np.linalg.norm(found - arcface_dst, axis=1)
    assert err[:2].max() < 3.5 and err.max() < 8.0, err


# --------------------------------------------------------------------------- face choice, errors


def test_two_faces_largest_first_index_chooses(analyzer, photos):
    import cv2
    big = photos["source_s42.jpg"]  # 512 x 512
    small = cv2.resize(photos["driving_d19.jpg"], (300, 300), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((512, 512 + 300, 3), np.uint8)
    canvas[:, :512] = big
    canvas[106:406, 512:] = small
    first = analyzer.analyze(canvas)
    assert first.faces_found == 2 and first.face_index == 0
    assert first.box[2] <= 512  # the big face, on the left
    second = analyzer.analyze(canvas, face_index=1)
    assert second.box[0] >= 512 and second.face_index == 1
    alone_big = analyzer.analyze(big).embedding
    alone_small = analyzer.analyze(small).embedding
    assert _cos(first.embedding, alone_big) > _cos(first.embedding, alone_small)
    assert _cos(second.embedding, alone_small) > _cos(second.embedding, alone_big)
    with pytest.raises(InputImageError, match=r"group photo has 2 face\(s\) but face_index is 5; "
                                              r"use 0 \(largest\) to 1"):
        analyzer.analyze(canvas, face_index=5, name="group photo")


def test_no_face_names_the_image(analyzer, photos):
    with pytest.raises(InputImageError, match=r"no face found in source image 2 \(1080x1439 px\)"):
        analyzer.analyze(photos["source_s39.jpg"], name="source image 2")


def test_scrfd_path_sorts_by_area_and_reports_no_face(tmp_path):
    """The pack's SCRFD through insightface (a tiny SCRFD-format file that fires on bright 32 px
    cells: grey gives a lower score but a bigger box than white)."""
    write_tiny_pack(tmp_path, "buffalo_l", detector=True)
    an = fa.InsightFaceAnalyzer([tmp_path], detection="insightface")
    assert an.pack == "buffalo_l" and "det_10g.onnx" in an.detector
    img = np.zeros((640, 640, 3), np.uint8)
    img[160:192, 160:192] = 255  # white: score ~1.0, box 8 px from the anchor
    img[320:352, 64:96] = 191  # grey: score ~0.75, box 12 px from the anchor
    grey, white = an.analyze(img), an.analyze(img, face_index=1)
    assert grey.faces_found == white.faces_found == 2
    assert grey.det_score == pytest.approx(0.748, abs=0.01) and white.det_score > 0.99
    assert grey.box == pytest.approx((52, 308, 76, 332), abs=0.5)
    assert white.box == pytest.approx((152, 152, 168, 168), abs=0.5)
    assert white.keypoints[0] == pytest.approx((160 - 0.2 * 32, 160 - 0.15 * 32), abs=0.5)
    assert abs(np.linalg.norm(white.embedding) - 1.0) < 1e-5
    with pytest.raises(InputImageError, match=r"no face found in dark frame \(640x640 px\) by "
                                              r"insightface's SCRFD"):
        an.analyze(np.zeros((640, 640, 3), np.uint8), name="dark frame")


def test_analyze_is_thread_safe(analyzer, photos):
    s42 = photos["source_s42.jpg"]
    ref = analyzer.analyze(s42).embedding
    out: list[np.ndarray] = []

    def work():
        out.append(analyzer.analyze(s42).embedding)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4 and all(np.array_equal(ref, e) for e in out)


# --------------------------------------------------------------------------- pack discovery


def test_missing_pack_lists_folders_and_files(tmp_path):
    folders = [tmp_path / "models" / "insightface", tmp_path / "extra" / "insightface"]
    with pytest.raises(MissingModelFileError) as err:
        fa.InsightFaceAnalyzer(folders)
    msg = str(err.value)
    for text in ("antelopev2/glintr100.onnx", "antelopev2/scrfd_10g_bnkps.onnx",
                 "buffalo_l/w600k_r50.onnx", "buffalo_l/det_10g.onnx", "insightface model zoo",
                 "non-commercial", *map(str, folders)):
        assert text in msg, (text, msg)
    assert "\n" not in msg
    with pytest.raises(MissingModelFileError) as err:
        fa.find_pack(folders, "buffalo_l")
    assert "buffalo_l/w600k_r50.onnx" in str(err.value) and "glintr100" not in str(err.value)
    with pytest.raises(MissingModelFileError, match=r"no folder is configured"):
        fa.find_pack([], "auto")


def test_detector_file_missing_for_insightface_detection(pack_root):
    with pytest.raises(MissingModelFileError) as err:
        fa.InsightFaceAnalyzer([pack_root], detection="insightface")
    msg = str(err.value)
    assert "antelopev2/scrfd_10g_bnkps.onnx" in msg and str(pack_root) in msg
    assert "glintr100.onnx" in msg and "mediapipe" in msg
    # ... while mediapipe detection needs only the recognizer
    assert fa.find_pack([pack_root])[1]["detector"] is None


def test_pack_layouts_and_auto_order(tmp_path):
    write_tiny_arcface(tmp_path / "a" / "buffalo_l" / "w600k_r50.onnx")  # <folder>/<pack>/
    name, files = fa.find_pack([tmp_path / "a"])
    assert name == "buffalo_l" and files["recognizer"] == tmp_path / "a" / "buffalo_l" / "w600k_r50.onnx"
    # antelopev2 wins under auto, even in a later folder; the zip's nested folder is found too
    nested = tmp_path / "b" / "models" / "antelopev2" / "antelopev2" / "glintr100.onnx"
    write_tiny_arcface(nested)
    both = [tmp_path / "a", tmp_path / "b"]
    assert fa.find_pack(both) == ("antelopev2", {"recognizer": nested, "detector": None})
    assert fa.find_pack(both, "buffalo_l")[0] == "buffalo_l"
    assert fa.find_pack(str(tmp_path / "a"))[0] == "buffalo_l"  # one folder as a string
    with pytest.raises(fa.HP3Error, match="unknown insightface pack 'glint'"):
        fa.find_pack([tmp_path / "a"], "glint")


def test_analyzer_cache_reuses_sessions(pack_root, tmp_path):
    installed("mediapipe", "detection='mediapipe' needs it")
    cache = fa.AnalyzerCache(max_entries=2)
    a = cache.get([pack_root], detection="mediapipe")
    assert cache.get([str(pack_root)], detection="mediapipe") is a
    b = cache.get([pack_root], pack="antelopev2", detection="mediapipe")
    assert b is not a and len(cache) == 2
    cache.get([pack_root], providers="cpu", detection="mediapipe", det_size=320)
    assert len(cache) == 2  # least recently used dropped
    # installing a pack later is picked up on the next call with the same folders
    before = cache.get([tmp_path, pack_root], detection="mediapipe")
    assert before.files["recognizer"].is_relative_to(pack_root)
    write_tiny_arcface(tmp_path / "models" / "antelopev2" / "glintr100.onnx", seed=1)
    after = cache.get([tmp_path, pack_root], detection="mediapipe")
    assert after is not before and after.files["recognizer"].is_relative_to(tmp_path)
    assert isinstance(fa.analyzer_cache, fa.AnalyzerCache)


# --------------------------------------------------------------------------- optional packages


def test_import_without_insightface_then_clear_error(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules['insightface'] = None  # as if not installed
        from hp3_core.errors import MissingDependencyError
        import hp3_core.head_encoder.face_analysis as fa
        for make in (lambda: fa.InsightFaceAnalyzer([{str(tmp_path)!r}], detection='mediapipe'),
                     lambda: fa.analyzer_cache.get([{str(tmp_path)!r}])):
            try:
                make()
            except MissingDependencyError as err:
                assert "'insightface'" in str(err) and "pip install --no-deps insightface" in str(err), err
            else:
                raise AssertionError('no MissingDependencyError')
        assert sys.modules['insightface'] is None
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
