"""The offline MediaPipe backend on real photos: reconstruction, retargeting, rendering."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hp3_core.errors import InputImageError
from hp3_core.head3d.face_landmarks import shared_landmarker
from hp3_core.head3d.mediapipe_head import NUM_POINTS, mouth_opening, topology
from hp3_core.head3d.reconstructor import MediaPipeReconstructor, reconstruct
from hp3_core.head3d.render_head import screen_vertices
from hp3_core.head3d.retarget import retarget
from hp3_core.head3d.retarget_images import retarget_images
from hp3_core.head3d.rotation import yaw_pitch_roll
from hp3_core.image_io import load_image


@pytest.fixture(scope="module")
def photos(assets):
    names = ["source_s42", "driving_d9", "driving_d19", "driving_d8", "source_s9", "driving_d30",
             "source_s39", "source_s25", "source_s31"]
    return {n: load_image(assets / "faces" / f"{n}.jpg") for n in names}


@pytest.fixture(scope="module")
def rec():
    return MediaPipeReconstructor()


def head(rec, image, name="image"):
    return reconstruct(rec, [image], names=[name]).params


def test_topology_is_a_closed_surface_with_eye_and_mouth_holes():
    faces = topology()["faces"]
    assert faces.shape == (852, 3) and faces.max() == NUM_POINTS - 1
    # Euler characteristic of a disc with three holes (two eyes, mouth): V - E + F = 1 - 3.
    edges = {tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[0], f[2]))}
    assert NUM_POINTS - len(edges) + len(faces) == -2
    # One winding (smooth normals need it): every directed edge is used once at most.
    directed = [(f[i], f[(i + 1) % 3]) for f in faces.tolist() for i in range(3)]
    assert len(set(directed)) == len(directed)


def test_projection_reproduces_the_landmarks(rec, photos):
    image = photos["driving_d30"]
    face, _ = shared_landmarker().pick(image)
    params = head(rec, image)
    verts = screen_vertices(params, rec.head_model)[0]
    assert torch.allclose(verts[:, :2], torch.from_numpy(face.points[:NUM_POINTS, :2]), atol=0.05)
    dz = verts[:, 2] - torch.from_numpy(face.points[:NUM_POINTS, 2])
    assert dz.std() < 0.05, "depth equals MediaPipe's up to a constant"


@pytest.mark.parametrize("name", ["source_s9", "driving_d30", "driving_d8"])
def test_mirrored_face_has_opposite_yaw(rec, photos, name):
    yaw = yaw_pitch_roll(head(rec, photos[name]).pose)[0, 0]
    yaw_mirror = yaw_pitch_roll(head(rec, np.ascontiguousarray(photos[name][:, ::-1])).pose)[0, 0]
    assert abs(yaw + yaw_mirror) < 4.0 and abs(yaw) > 3.0


def test_open_mouth_driver_opens_the_source_mouth(rec, photos):
    source = head(rec, photos["source_s42"])
    model = rec.head_model
    opened = mouth_opening(model.vertices(retarget(source, head(rec, photos["driving_d19"]))))
    closed = mouth_opening(model.vertices(retarget(source, head(rec, photos["driving_d8"]))))
    own = mouth_opening(model.vertices(source))
    assert opened > 3 * closed and opened > 3 * own


def test_pose_only_moves_the_source_rigidly(rec, photos):
    source, driving = head(rec, photos["source_s42"]), head(rec, photos["driving_d30"])
    moved = rec.head_model.vertices(retarget(source, driving, "pose"))[0]
    original = rec.head_model.vertices(source)[0]
    # The best rotation from original to moved explains it exactly (Kabsch).
    u, _, vt = torch.linalg.svd(original.T @ moved)
    r = u @ vt
    assert torch.linalg.det(r) > 0
    assert (original @ r - moved).abs().max() < 1e-4
    assert not torch.allclose(original, moved, atol=1e-2), "the driver's pose differs from the source's"


def test_expression_only_keeps_the_source_pose(rec, photos):
    source, driving = head(rec, photos["source_s42"]), head(rec, photos["driving_d19"])
    out = retarget(source, driving, "expression")
    assert torch.equal(out.pose, source.pose) and torch.equal(out.expression, driving.expression)
    assert torch.equal(out.camera, driving.camera), "placed in the driving frame"


def test_maps_lie_on_the_drivers_face(rec, photos):
    import cv2
    driving = photos["driving_d9"]
    result = retarget_images(rec, photos["source_s42"], [driving])
    maps = result.maps[0]
    h, w = driving.shape[:2]
    assert maps.shaded.shape == (1, h, w, 3) and maps.mask.shape == (1, h, w)
    mask = maps.mask[0].numpy() > 0.5
    face, _ = shared_landmarker().pick(driving)
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(face.points[:NUM_POINTS, :2].astype(np.int32)), 1)
    hull = hull.astype(bool)
    iou = (mask & hull).sum() / (mask | hull).sum()
    assert iou > 0.8, f"mask/face-hull IoU {iou:.2f}"
    grown = cv2.dilate(hull.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    assert (mask & ~grown).sum() == 0, "nothing far from the face"
    assert "face only" in result.report() and "confidence 0." in result.report()


def test_cat_gives_the_no_face_error(rec, photos):
    with pytest.raises(InputImageError, match="no face found in the source image"):
        retarget_images(rec, photos["source_s39"], [photos["driving_d9"]], source_name="the source image")
    with pytest.raises(InputImageError, match="driving frame 1"):
        retarget_images(rec, photos["source_s42"], [photos["driving_d9"], photos["source_s39"]])


def test_missing_driving_frames_can_get_blank_maps(rec, photos):
    frames = [photos["driving_d9"], photos["source_s39"][:720, :720], photos["driving_d19"]]
    result = retarget_images(rec, photos["source_s42"], frames, allow_missing=True)
    assert result.found == [0, 2] and list(result.missing) == [1]
    assert result.maps[1].mask.sum() == 0 and result.maps[1].shaded.shape[1:3] == (720, 720)
    assert result.maps[0].mask.sum() > 1000 and "frame 1: blank maps" in result.report()


@pytest.mark.parametrize("dog", ["source_s25", "source_s31"])
def test_dogs_do_not_crash_and_say_what_detected_them(rec, photos, dog):
    try:
        result = retarget_images(rec, photos[dog], [photos["driving_d9"]])
    except InputImageError as err:
        assert "no face found" in str(err)
        return
    assert "mediapipe" in result.report() and "confidence" in result.report()


def test_unusual_inputs_do_not_crash(rec, photos, tmp_path):
    from PIL import Image
    s42 = photos["source_s42"]
    grey = np.asarray(Image.fromarray(s42).convert("L"))
    rgba = np.concatenate([s42, np.full(s42.shape[:2] + (1,), 255, np.uint8)], -1)
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "deep.png")
    deep = load_image(tmp_path / "deep.png")
    huge = np.asarray(Image.fromarray(s42).resize((4096, 4096)))
    tiny = np.asarray(Image.fromarray(s42).resize((48, 48)))
    from hp3_core.image_io import to_rgb_uint8
    for name, image in {"grey": grey, "rgba": rgba, "deep": deep, "huge": huge, "tiny": tiny}.items():
        image = to_rgb_uint8(image, name)
        try:
            result = retarget_images(rec, s42, [image])
            assert result.maps[0].mask.shape[1:] == image.shape[:2], name
        except InputImageError as err:
            assert name == "tiny" and "no face found" in str(err)
