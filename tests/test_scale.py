"""Scale: very large photos are analysed reduced and rendered capped (bounded memory), video maps
stream to disk (memory flat in the number of frames), source and driver each choose their face,
and temporal smoothing reaches the CLI and the node. Memory is measured as a child process's own
peak RSS; time is never asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hp3_core.errors import HP3Error, InputImageError
from hp3_core.head3d import retarget_images as ri
from hp3_core.head3d.reconstructor import build_reconstructor
from hp3_core.image_io import AnalysisImage, analysis_image, load_for_analysis, load_image

# Runs one CLI command in a child and reports that child's own peak RSS (bytes) on the last line.
PEAK = r"""
import json, resource, sys
from hp3_core.cli import main
code = main(json.loads(sys.argv[1]), restore_stderr=True)
print("PEAK", code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
GB = 1024 ** 3


def run_peak(argv: list[str]) -> tuple[int, int, str]:
    out = subprocess.run([sys.executable, "-c", PEAK, json.dumps(argv)], capture_output=True, text=True, timeout=900)
    assert "PEAK" in out.stdout, out.stderr[-3000:]
    _, code, peak = out.stdout.strip().splitlines()[-1].split()
    return int(code), int(peak), out.stderr


@pytest.fixture(scope="module")
def ict():
    return build_reconstructor("ict")


@pytest.fixture(scope="module")
def photos(assets) -> dict[str, np.ndarray]:
    faces = assets / "faces"
    return {name: load_image(faces / f"{name}.jpg") for name in ("source_s42", "driving_d9", "driving_d19")}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_12000_px_photo_is_retargeted_in_bounded_memory(assets, tmp_path):
    big = tmp_path / "big.jpg"
    Image.open(assets / "faces" / "driving_d9.jpg").resize((12000, 12000), Image.BILINEAR).save(big, quality=85)
    code, peak, stderr = run_peak(["retarget", "--source", str(assets / "faces" / "source_s42.jpg"),
                                   "--driving", str(big), "--out", str(tmp_path / "maps")])
    assert code == 0, stderr[-3000:]
    # Before: 13.9 GB (full-size float copies of the photo and of every map); now ~2.5 GB.
    assert peak < 4 * GB, f"peak RSS {peak / GB:.2f} GB"
    for name in ("shaded", "normal", "depth", "mask"):
        with Image.open(tmp_path / "maps" / f"{name}.png") as im:
            assert im.size == (12000, 12000), name
    mask = load_for_analysis(tmp_path / "maps" / "mask.png").pixels[..., 0]
    assert 0.05 < (mask > 127).mean() < 0.6, "the head covers part of the frame"
    params = json.loads((tmp_path / "maps" / "params.json").read_text())
    assert params["head"]["image_size"] == [12000, 12000]


def _video(path: Path, frame: np.ndarray, count: int) -> Path:
    import cv2
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    rng = np.random.default_rng(0)
    for _ in range(count):  # small shifts, so frames differ
        dx, dy = rng.integers(-6, 7, 2)
        writer.write(cv2.cvtColor(np.roll(frame, (int(dy), int(dx)), axis=(0, 1)), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_video_memory_is_flat_in_the_number_of_frames(assets, photos, tmp_path):
    peaks = {}
    for count in (10, 40):
        clip = _video(tmp_path / f"clip{count}.mp4", photos["driving_d9"], count)
        code, peaks[count], stderr = run_peak(
            ["retarget", "--source", str(assets / "faces" / "source_s42.jpg"), "--driving", str(clip),
             "--out", str(tmp_path / f"out{count}"), "--backend", "mediapipe", "--smoothing", "0.5"])
        assert code == 0, stderr[-3000:]
        assert len(list((tmp_path / f"out{count}").iterdir())) == count
    # Held in memory, 30 more 720x720 frames' maps would add ~600 MB (20 MB each).
    assert peaks[40] - peaks[10] < 150 * 1024 ** 2, {k: f"{v / GB:.2f} GB" for k, v in peaks.items()}


def test_frames_stream_one_at_a_time(ict, photos):
    """The generator yields each frame's maps before reading the next frame."""
    read = []

    def frames():
        for i in range(3):
            read.append(i)
            yield photos["driving_d9"]

    retargeter = ri.Retargeter(ict, photos["source_s42"])
    for item in retargeter.frames(frames()):
        assert read == list(range(item.index + 1)), "the next frame is not read before this one is out"
        assert item.maps is not None and item.maps.mask.shape[1:] == (720, 720)


def test_large_frames_are_analysed_reduced_and_put_back_in_full_pixels(ict, photos):
    small = photos["driving_d9"]
    big = np.asarray(Image.fromarray(small).resize((2880, 2880), Image.BILINEAR))
    item = analysis_image(big)
    assert item.full_size == (2880, 2880) and max(item.pixels.shape[:2]) == 2048
    retargeter = ri.Retargeter(ict, photos["source_s42"])
    (a,) = retargeter.frames([small])
    (b,) = retargeter.frames([item])
    assert b.head.image_size == [(2880, 2880)] and b.full().mask.shape == (1, 2880, 2880)
    box_a, box_b = np.array(a.head.faces[0].box), np.array(b.head.faces[0].box)
    np.testing.assert_allclose(box_b / 4, box_a, atol=6), "the face box is put back in full-frame pixels"
    mask_b = torch.nn.functional.interpolate(b.full().mask[None], size=(720, 720), mode="area")[0] > 0.5
    mask_a = a.full().mask > 0.5
    iou = (mask_a & mask_b).sum() / (mask_a | mask_b).sum()
    assert iou > 0.93, f"IoU {float(iou):.3f}"


def test_capped_render_matches_the_full_resolution_render(ict, photos, monkeypatch):
    frame = np.asarray(Image.fromarray(photos["driving_d9"]).resize((1600, 1600), Image.BILINEAR))
    retargeter = ri.Retargeter(ict, photos["source_s42"])
    (full,) = retargeter.frames([frame])
    monkeypatch.setattr(ri, "RENDER_MAX_SIDE", 512)
    (capped,) = retargeter.frames([frame])
    assert capped.maps.mask.shape == (1, 512, 512) and full.maps.mask.shape == (1, 1600, 1600)
    up = capped.full()
    assert up.shaded.shape == (1, 1600, 1600, 3) and set(up.mask.unique().tolist()) <= {0.0, 1.0}
    a, b = full.maps.mask > 0.5, up.mask > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.98
    assert (full.maps.normal - up.normal).abs().mean() < 0.02
    u8 = capped.uint8("mask")
    assert u8.shape == (1600, 1600) and set(np.unique(u8).tolist()) <= {0, 255}
    assert np.array_equal(u8 > 127, b[0].numpy()) or ((u8 > 127) != b[0].numpy()).mean() < 1e-3


def _two_faces(photos) -> np.ndarray:
    """[s42 | d19] side by side, the right one smaller so the order by size is known."""
    left = np.asarray(Image.fromarray(photos["source_s42"]).resize((720, 720), Image.BILINEAR))
    right = np.asarray(Image.fromarray(photos["driving_d19"]).resize((540, 540), Image.BILINEAR))
    canvas = np.zeros((720, 1260, 3), np.uint8)
    canvas[:, :720] = left
    canvas[90:630, 720:] = right
    return canvas


def test_source_and_driver_choose_their_faces_separately(ict, photos):
    group = _two_faces(photos)
    first = ri.retarget_images(ict, group, [photos["driving_d9"]], face_index=0)
    second = ri.retarget_images(ict, group, [photos["driving_d9"]], face_index=1)
    assert (first.source_face.face_index, second.source_face.face_index) == (0, 1)
    assert second.source_face.faces_found == 2 and second.source_face.box[0] > 700
    assert not torch.allclose(first.source.shape, second.source.shape), "another person's head shape"
    # The driver has one face: the source's face_index no longer applies to it.
    assert second.found == [0]
    with pytest.raises(InputImageError, match="the driving image has 1 face"):
        ri.retarget_images(ict, group, [photos["driving_d9"]], face_index=1, driving_face_index=1)
    drive_second = ri.retarget_images(ict, photos["source_s42"], [group], driving_face_index=1)
    assert drive_second.heads.faces[0].face_index == 1 and drive_second.heads.faces[0].box[0] > 700


def test_cli_driving_face_index(assets, photos, tmp_path):
    group = tmp_path / "group.png"
    Image.fromarray(_two_faces(photos)).save(group)
    out = subprocess.run([sys.executable, "-m", "hp3_core", "retarget", "--source", str(group), "--face-index", "1",
                          "--driving", str(assets / "faces" / "driving_d9.jpg"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    params = json.loads((tmp_path / "o" / "params.json").read_text())
    assert params["source_face"]["face_index"] == 1 and params["head"]["face"]["face_index"] == 0


def test_smoothing_reduces_frame_to_frame_jitter(ict, photos):
    rng = np.random.default_rng(1)
    shifts = rng.integers(-12, 13, (12, 2))
    frames = [np.roll(photos["driving_d9"], (int(dy), int(dx)), axis=(0, 1)) for dy, dx in shifts]

    def centroid_jitter(strength: float) -> float:
        result = ri.retarget_images(ict, photos["source_s42"], frames, smoothing=strength)
        centres = []
        for maps in result.maps:
            ys, xs = torch.nonzero(maps.mask[0] > 0.5, as_tuple=True)
            centres.append((float(xs.float().mean()), float(ys.float().mean())))
        return float(np.abs(np.diff(np.array(centres), axis=0)).mean())

    raw, smooth = centroid_jitter(0.0), centroid_jitter(0.8)
    assert smooth < 0.6 * raw, (raw, smooth)
    with pytest.raises(HP3Error, match="smoothing must be in"):
        ri.retarget_images(ict, photos["source_s42"], frames[:1], smoothing=1.0)


def test_in_common_crop_keeps_the_screen_vertices(ict, photos):
    (item,) = ri.Retargeter(ict, photos["source_s42"]).frames([photos["driving_d9"]])
    head = item.head
    other = head.image_to_crop.clone()
    other[0, 0, 0] *= 1.3
    other[0, 1, 1] *= 1.3
    other[0, :2, 2] += torch.tensor([17.0, -9.0])
    moved = ri.in_common_crop(head, other)
    from hp3_core.head3d.render_head import screen_vertices
    a, b = screen_vertices(head, ict.head_model), screen_vertices(moved, ict.head_model)
    assert torch.allclose(a, b, atol=1e-2) and torch.equal(moved.image_to_crop, other)


def test_node_smoothing_and_driving_face_index_are_optional(comfy, photos):
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    spec = m["HP3HeadRetarget"].INPUT_TYPES()
    assert {"driving_face_index", "smoothing"} <= set(spec["optional"]) and "smoothing" not in spec["required"]
    (rec,) = m["HP3ReconstructorLoader"]().load("mediapipe", "cpu")
    as_image = lambda *a: torch.from_numpy(np.stack(a)).float() / 255  # noqa: E731
    d19 = np.asarray(Image.fromarray(photos["driving_d19"]).resize(photos["driving_d9"].shape[1::-1]))
    source, driving = as_image(photos["source_s42"]), as_image(photos["driving_d9"], d19)
    with torch.inference_mode():
        old = m["HP3HeadRetarget"]().retarget(rec, source, driving, "full", "head", 0, "error")  # saved workflow
        new = m["HP3HeadRetarget"]().retarget(rec, source, driving, "full", "head", 0, "error",
                                              driving_face_index=0, smoothing=0.6)
    assert (old["result"][4][0] != new["result"][4][0]).float().mean() < 1e-3, "the first frame is its own average"
    assert not torch.equal(old["result"][4][1], new["result"][4][1]), "the second frame is smoothed"
    assert isinstance(new["result"][0].maps[0].mask, torch.Tensor) and new["result"][1].shape == (2, 720, 720, 3)


def test_analysis_image_is_reduced_without_touching_small_images(photos):
    small = photos["source_s42"]
    item = analysis_image(small)
    assert isinstance(item, AnalysisImage) and item.pixels is small or np.array_equal(item.pixels, small)
    assert not item.reduced
