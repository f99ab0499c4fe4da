"""Bad option values, paths and images: one clear ``error:`` line naming the input and the fix,
the last line printed, never a traceback or "internal error" (CLI); an HP3Error naming the input
(nodes). Many CLI cases run in one child process through ``cli.main`` (a process per case would
spend most of its time importing torch); a few run as real ``python -m hp3_core`` processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hp3_core.errors import HP3Error, InputImageError
from hp3_core.image_io import load_for_analysis, load_image, save_image

# Runs each argv through cli.main with fd 2 sent to a temporary file; prints [[code, stderr], ...].
DRIVER = r"""
import json, os, sys, tempfile
from hp3_core.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            code = main(argv, restore_stderr=True)
        except SystemExit as e:
            code = e.code
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        results.append([code, f.read().decode("utf-8", "replace")])
sys.stdout.write("\nRESULTS " + json.dumps(results) + "\n")
"""


def run_cases(argvs: list[list[str]], prefix: list[str] | None = None, timeout: int = 600) -> list[tuple[int, str]]:
    cmd = [*(prefix or []), sys.executable, "-c", DRIVER, json.dumps(argvs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert "RESULTS " in out.stdout, out.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.stdout.split("RESULTS ", 1)[1])]


def assert_clean(code: int, stderr: str, *needles: str, exit_code: int = 1) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == exit_code, stderr[-2000:]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-2000:]
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory, assets) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    (root / "a_file").write_text("not a folder")
    (root / "notes.txt").write_text("not an image")
    (root / "base").mkdir()
    (root / "hp3.safetensors").write_bytes(b"\0" * 16)
    (root / "ckpt.safetensors").write_bytes(b"\0" * 16)
    (root / "protocol.yaml").write_text("identities: []\n")
    (root / "config.yaml").write_text("{}\n")
    (root / "input").mkdir()
    return {"root": root, "face": assets / "faces" / "source_s42.jpg",
            "video": assets / "faces" / "driving_d10.mp4", "driving": assets / "faces" / "driving_d9.jpg"}


def test_every_option_value_is_checked_up_front(files, tmp_path):
    r, face, video = files["root"], str(files["face"]), str(files["video"])
    out = str(tmp_path / "out")
    retarget = ["retarget", "--source", face, "--driving", video, "--out", out]
    encode = ["encode", "--source", face, "--clip-vision", str(r / "base"), "--out", str(tmp_path / "h.safetensors")]
    generate = ["generate", "--base", str(r / "base"), "--hp3", str(r / "hp3.safetensors"), "--source", face,
                "--driving", face, "--prompt", "p", "--out", str(tmp_path / "g.png"), "--clip-vision", str(r / "base")]
    dataset = ["build-dataset", "--input", str(r / "input"), "--out", out]
    cases = [  # (argv, words the error line must contain)
        (retarget + ["--every", "0"], ["--every", ">= 1"]),
        (retarget + ["--every", "-3"], ["--every"]),
        (retarget + ["--max-frames", "-1"], ["--max-frames", ">= 1"]),
        (retarget + ["--max-frames", "0"], ["--max-frames"]),
        (retarget + ["--face-index", "-1"], ["--face-index", "largest"]),
        (retarget + ["--driving-face-index", "-2"], ["--driving-face-index"]),
        (retarget + ["--smoothing", "1"], ["--smoothing", "< 1"]),
        (retarget + ["--smoothing", "nan"], ["--smoothing", "finite"]),
        (retarget + ["--smoothing", "-0.1"], ["--smoothing"]),
        (retarget + ["--device", "toaster"], ["--device", "cpu"]),
        (["retarget", "--source", face, "--driving", video, "--out", str(r / "a_file")], ["--out", "is a file"]),
        (["retarget", "--source", face, "--driving", video, "--out", str(r / "a_file" / "sub")], ["--out"]),
        (["retarget", "--source", str(r / "missing.jpg"), "--driving", video, "--out", out], ["--source", "does not exist"]),
        (["retarget", "--source", str(r / "base"), "--driving", video, "--out", out], ["--source", "folder"]),
        (["retarget", "--source", face, "--driving", str(r / "notes.txt"), "--out", out], ["--driving", "neither"]),
        (["retarget", "--source", face, "--driving", str(r / "nope.mp4"), "--out", out], ["--driving", "does not exist"]),
        (["retarget", "--source", str(r / "notes.txt"), "--driving", face, "--out", out], ["notes.txt", "JPEG"]),
        (encode + ["--crop-scale", "0"], ["--crop-scale", ">= 1.2"]),
        (encode + ["--crop-scale", "-2"], ["--crop-scale"]),
        (encode + ["--crop-scale", "1e9"], ["--crop-scale", "<= 4"]),
        (encode + ["--crop-scale", "inf"], ["--crop-scale", "finite"]),
        (encode + ["--face-index", "-1"], ["--face-index"]),
        (["encode", "--source", face, "--clip-vision", str(r / "base"), "--out", str(tmp_path / "h.txt")],
         ["--out", ".safetensors"]),
        (generate + ["--steps", "0"], ["--steps", "from 1 to 1000"]),
        (generate + ["--guidance", "nan"], ["--guidance"]),
        (generate + ["--strength", "-1"], ["--strength"]),
        (generate + ["--start", "0.9", "--end", "0.1"], ["--start", "--end"]),
        (generate + ["--width", "100"], ["--width", "multiple of 8", "96"]),
        (generate + ["--height", "0"], ["--height"]),
        (generate + ["--seed", "-1"], ["--seed"]),
        (dataset + ["--fps", "0"], ["--fps", "> 0"]),
        (dataset + ["--size", "0"], ["--size"]),
        (dataset + ["--workers", "0"], ["--workers"]),
        (dataset + ["--second-face-ratio", "2"], ["--second-face-ratio"]),
        (dataset + ["--flush-every", "0"], ["--flush-every"]),
        (dataset + ["--max-frames-per-video", "-5"], ["--max-frames-per-video"]),
        (["build-dataset", "--input", str(r / "nothing"), "--out", out], ["--input", "does not exist"]),
        (["init", "--base", str(r / "ckpt.safetensors"), "--family", "sd15", "--out", str(tmp_path / "i.safetensors"),
          "--seed", "-1"], ["--seed"]),
        (["init", "--base", str(r / "ckpt.safetensors"), "--family", "sd15", "--out", str(r / "base")],
         ["--out", ".safetensors"]),
        (["evaluate", "--protocol", str(r / "protocol.yaml"), "--out", out, "--steps", "0"], ["--steps"]),
        (["evaluate", "--protocol", str(r / "protocol.yaml"), "--out", str(r / "a_file")], ["--out", "is a file"]),
        (["train", "--config", str(r / "config.yaml"), "--max-steps", "0"], ["--max-steps"]),
        (["train", "--config", str(r / "nope.yaml")], ["--config", "does not exist"]),
        (["bench", "retarget", "--repeats", "0"], ["--repeats"]),
        (["demo", "--port", "70000"], ["--port", "65535"]),
        (["info", str(r / "nope.safetensors")], ["does not exist"]),
    ]
    results = run_cases([argv for argv, _ in cases])
    for (argv, needles), (code, stderr) in zip(cases, results):
        assert_clean(code, stderr, *needles)
    assert not Path(out).exists() or not any(Path(out).iterdir()), "nothing is written when an option is bad"


def test_unparseable_values_are_one_line_usage_errors(files, tmp_path):
    base = ["retarget", "--source", str(files["face"]), "--driving", str(files["video"]), "--out", str(tmp_path)]
    cases = [base + ["--every", "abc"], base + ["--mode", "sideways"], ["encode", "--crop-scale", "big"]]
    for (code, stderr), option in zip(run_cases(cases), ["--every", "--mode", None]):
        assert_clean(code, stderr, "(see python -m hp3_core", *([option] if option else []), exit_code=2)
        assert "usage:" not in stderr


def test_a_failing_command_ends_with_its_error_line_after_mediapipe_ran(assets, tmp_path):
    """MediaPipe's native threads log from C++; the error line must still come last, and their
    noise ('W0000 ... inference_feedback_manager') is not shown without --debug."""
    out = subprocess.run([sys.executable, "-m", "hp3_core", "retarget", "--source", str(assets / "faces" / "source_s42.jpg"),
                          "--driving", str(assets / "faces" / "source_s39.jpg"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert_clean(out.returncode, out.stderr, "no face found in driving image")
    assert "inference_feedback_manager" not in out.stderr and "W0000" not in out.stderr


def test_decompression_bomb_is_a_clear_error(tmp_path, assets):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 megapixels in a few kilobytes
    assert bomb.stat().st_size < 1_000_000
    for load in (load_image, load_for_analysis):
        with pytest.raises(InputImageError, match="too large to open safely.*downscale it"):
            load(bomb)
    (code, stderr), = run_cases([["retarget", "--source", str(assets / "faces" / "source_s42.jpg"),
                                  "--driving", str(bomb), "--out", str(tmp_path / "o")]])
    assert_clean(code, stderr, "bomb.png", "downscale")


def test_writing_to_a_full_device_names_the_file_and_the_fix(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    full = tmp_path / "maps.png"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with pytest.raises(HP3Error, match="cannot write '.*maps.png': the disk is full"):
        save_image(full, np.zeros((64, 64, 3), np.uint8))
    assert os.path.exists("/dev/full"), "a failed write removes partial files, never devices"
    with pytest.raises(HP3Error, match="unknown image type"):
        save_image(tmp_path / "maps.xyz", np.zeros((4, 4, 3), np.uint8))


def _unshare_prefix(script: str) -> list[str]:
    return ["unshare", "-rm", "sh", "-c", script + ' && exec "$0" "$@"']


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (user namespaces)")
def test_read_only_and_full_disks_are_refused_before_any_work(tmp_path, assets):
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {ro}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces with tmpfs mounts are not allowed here: {probe.stderr.decode()[:200]}")
    setup = (f"mount -t tmpfs -o size=1m tmpfs {ro} && mount -o remount,ro {ro} && "
             f"mount -t tmpfs -o size=256k tmpfs {full} && "
             f"(dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null; true)")
    source = str(assets / "faces" / "source_s42.jpg")
    cases = [["retarget", "--source", source, "--driving", source, "--out", str(ro / "maps")],
             ["retarget", "--source", source, "--driving", source, "--out", str(ro)],
             ["retarget", "--source", source, "--driving", source, "--out", str(full / "maps")],
             ["encode", "--source", source, "--clip-vision", str(tmp_path), "--out", str(ro / "h.safetensors")]]
    results = run_cases(cases, prefix=_unshare_prefix(setup))
    assert_clean(*results[0], "--out", "read-only")
    assert_clean(*results[1], "--out", "read-only")
    assert_clean(*results[2], "--out", "disk")
    assert_clean(*results[3], "--out", "read-only")


# --- nodes (in-process ComfyUI) --------------------------------------------------------------

@pytest.fixture(scope="module")
def retarget_node(comfy):
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    (rec,) = m["HP3ReconstructorLoader"]().load("mediapipe", "cpu")
    errors = comfy.pack_module("hp3_core.errors")  # the pack's own copy of the module
    return m, rec, errors


def _call(node, rec, source, driving, **kw):
    args = dict(mode="full", region="head", face_index=0, missing_face="error") | kw
    with torch.inference_mode():
        return node().retarget(rec, source, driving, **args)


def test_node_inputs_give_hp3_errors_naming_the_input(retarget_node, assets):
    m, rec, errors = retarget_node
    node = m["HP3HeadRetarget"]
    image = torch.from_numpy(load_image(assets / "faces" / "source_s42.jpg"))[None].float() / 255
    bad = [
        (dict(smoothing=1.0), "smoothing"),
        (dict(smoothing=float("nan")), "smoothing"),
        (dict(driving_face_index=-1), "driving_face_index"),
        (dict(face_index=-3), "face_index"),
        (dict(mode="sideways"), "mode"),
        (dict(region="torso"), "region"),
        (dict(missing_face="ignore"), "missing_face"),
    ]
    for kw, name in bad:
        with pytest.raises(errors.HP3Error, match=name):
            _call(node, rec, image, image, **kw)
    with pytest.raises(errors.HP3Error, match="driving: the IMAGE batch is empty"):
        _call(node, rec, image, image[:0])
    with pytest.raises(errors.HP3Error, match=r"source: expected an IMAGE batch"):
        _call(node, rec, image[0], image)
    with pytest.raises(errors.HP3Error, match="reconstructor"):
        _call(node, None, image, image)
    with pytest.raises(errors.HP3Error, match="backend"):
        m["HP3ReconstructorLoader"]().load("nonsense", "cpu")


def test_head_encode_and_face_analysis_inputs_are_checked(comfy):
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    errors = comfy.pack_module("hp3_core.errors")

    face_analysis = comfy.pack_module("hp3_core.head_encoder.face_analysis")

    class Analyzer(face_analysis.FaceAnalyzer):  # stands in for a loaded face analysis; never reached
        def __init__(self):
            pass

        def analyze(self, *a, **k):
            raise AssertionError("inputs are checked before any analysis")

    class LookAlike:  # has the method, is not a face analysis
        def analyze(self, *a, **k):
            raise AssertionError("a look-alike is refused before any analysis")

    class Clip:
        def encode_image(self, *a, **k):
            raise AssertionError("inputs are checked before any encoding")

    image = torch.rand(1, 64, 64, 3)
    encode = m["HP3HeadEncode"]().encode
    cases = [((Analyzer(), Clip(), image[:0], 0, 2.2), "image: the IMAGE batch is empty"),
             ((Analyzer(), Clip(), image, -1, 2.2), "face_index must be a whole number"),
             ((Analyzer(), Clip(), image, 0, 0.0), "crop_scale must be a number from 1.2 to 4"),
             ((Analyzer(), Clip(), image, 0, float("inf")), "crop_scale"),
             ((None, Clip(), image, 0, 2.2), "face_analysis: nothing is connected: connect 'Load HP3 Face Analysis'"),
             ((LookAlike(), Clip(), image, 0, 2.2), "face_analysis: expected the output of 'Load HP3 Face Analysis', "
                                                    "got a LookAlike"),
             ((Analyzer(), object(), image, 0, 2.2), "clip_vision: connect")]
    for args, message in cases:
        with pytest.raises(errors.HP3Error, match=message):
            encode(*args)
    with pytest.raises(errors.HP3Error, match="provider must be one of"):
        m["HP3FaceAnalysisLoader"]().load("auto", "tpu", "insightface")
