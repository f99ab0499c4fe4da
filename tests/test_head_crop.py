"""The head crop on real photos: square, whole head with hair, padded (not shifted) at borders."""
from __future__ import annotations

import numpy as np
import pytest

from hp3_core.errors import InputImageError
from hp3_core.head3d.face_landmarks import shared_landmarker
from hp3_core.head_encoder.head_crop import (HEAD_LIFT, HEAD_SCALE, PAD_FILL, apply, draw_keypoints, head_crop,
                                             suppress_background)
from hp3_core.image_io import load_image

NAMES = ["source_s42", "driving_d30", "source_s5", "driving_d8", "source_s9", "driving_d19"]
# MediaPipe landmarks: eye corners, nose tip, mouth corners (5 points like ArcFace's).
FIVE = [33, 263, 1, 61, 291]


@pytest.fixture(scope="module")
def faces(assets):
    out = {}
    for n in NAMES:
        image = load_image(assets / "faces" / f"{n}.jpg")
        face, _ = shared_landmarker().pick(image, name=n)
        out[n] = (image, face)
    return out


def corners(box):
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)


@pytest.mark.parametrize("size", [224, 96, 512])
def test_crops_are_square_of_the_requested_size(faces, size):
    for name, (image, face) in faces.items():
        hc = head_crop(image, face.box, size=size)
        assert hc.image.shape == (size, size, 3) and hc.image.dtype == np.uint8, name
        assert hc.size == size
        assert hc.box[2] == round(HEAD_SCALE * face.size), name
        m = hc.image_to_crop
        assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == m[1, 0] == 0  # no stretch/rotation
        np.testing.assert_allclose(hc.crop_to_image @ m, np.eye(3), atol=1e-12)


def test_face_box_lies_inside_the_crop_with_margin(faces):
    for name, (image, face) in faces.items():
        hc = head_crop(image, face.box)
        c = apply(hc.image_to_crop, corners(face.box))
        margin = 0.15 * hc.size
        assert c.min() >= margin and c.max() <= hc.size - 1 - margin, (name, c)
        # Horizontally centred on the face.
        assert abs(c[:, 0].mean() - (hc.size - 1) / 2) <= 1.0, name


def test_crop_reaches_well_above_the_face_for_hair(faces):
    for name, (image, face) in faces.items():
        hc = head_crop(image, face.box)
        x0, y0, x1, y1 = face.box
        fh = y1 - y0
        top = hc.crop_to_image[1, 2] + hc.crop_to_image[1, 1] * -0.5  # y of the crop's top edge
        bottom = hc.crop_to_image[1, 2] + hc.crop_to_image[1, 1] * (hc.size - 0.5)
        above, below = (y0 - top) / fh, (bottom - y1) / fh
        assert above >= 0.7, (name, above)
        # The centre is lifted: more room above the forehead than below the chin.
        assert above - below >= 1.5 * HEAD_LIFT, (name, above, below)


def test_long_hair_above_the_forehead_is_inside(faces):
    image, face = faces["source_s42"]
    hc = head_crop(image, face.box)
    x0, y0, x1, y1 = face.box
    # In source_s42.jpg the crown of the hair is at about y = 85 px; the landmark box starts at the
    # forehead (y ~ 176). The whole band x0..x1, 80..y0 must be in the crop, with margin.
    band = apply(hc.image_to_crop, corners((x0, 80.0, x1, y0)))
    assert band.min() >= 0.05 * hc.size and band.max() <= 0.95 * hc.size, band
    # And it is the photo there (the hair), not padding.
    for x, y in [(250, 95), (262, 110), (274, 125)]:
        u, v = np.rint(apply(hc.image_to_crop, np.array([[x, y]]))[0]).astype(int)
        k = max(1, round(1 / hc.image_to_crop[0, 0]))
        patch = image[y - k:y + k + 1, x - k:x + k + 1].reshape(-1, 3).mean(0)
        assert np.abs(hc.image[v, u].astype(float) - patch).max() < 30, (x, y, hc.image[v, u], patch)


def test_face_at_the_border_is_padded_not_shifted(faces):
    image, face = faces["driving_d19"]
    cut = int(face.box[0])
    edge = np.ascontiguousarray(image[:, cut:])        # the face now touches the left edge
    box = (face.box[0] - cut, face.box[1], face.box[2] - cut, face.box[3])
    assert box[0] < 1.0
    full = head_crop(image, face.box)
    hc = head_crop(edge, box)
    assert hc.box[0] < 0  # the square leaves the image: padding, not a shift to the right
    # Same geometry as without the cut: the face box maps to the same crop pixels.
    np.testing.assert_allclose(apply(hc.image_to_crop, corners(box)),
                               apply(full.image_to_crop, corners(face.box)), atol=1e-9)
    shift = np.array([[1, 0, cut], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(hc.image_to_crop, full.image_to_crop @ shift, atol=1e-9)
    # Crop columns whose source lies left of the photo are the fill colour; those well inside
    # are the very same pixels as the uncut crop.
    inv = hc.crop_to_image
    src_x = inv[0, 0] * np.arange(hc.size) + inv[0, 2]
    pad_cols = np.nonzero(src_x < -2.0)[0]
    in_cols = np.nonzero(src_x > 2.0)[0]
    assert len(pad_cols) > 20 and len(in_cols) > 100
    rows = np.nonzero((inv[1, 1] * np.arange(hc.size) + inv[1, 2] > 2.0)
                      & (inv[1, 1] * np.arange(hc.size) + inv[1, 2] < image.shape[0] - 3.0))[0]
    assert (hc.image[:, pad_cols] == np.array(PAD_FILL, dtype=np.uint8)).all()
    assert np.array_equal(hc.image[np.ix_(rows, in_cols)], full.image[np.ix_(rows, in_cols)])
    assert not (full.image[np.ix_(rows, pad_cols)] == np.array(PAD_FILL, dtype=np.uint8)).all()
    # The face is still horizontally centred.
    c = apply(hc.image_to_crop, corners(box))
    assert abs(c[:, 0].mean() - (hc.size - 1) / 2) <= 1.0


@pytest.mark.parametrize("side_scale", [0.5, 3.0])  # the crop shrinks / enlarges the source
def test_transform_matches_the_pixels(side_scale):
    # A bright blob at a known sub-pixel position must appear where image_to_crop puts it.
    h, w = 300, 400
    cx, cy = 211.3, 140.7
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (6 / side_scale) ** 2))  # 6 px in the crop
    image = np.repeat((blob * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    face = 224 / HEAD_SCALE / side_scale
    box = (180.0, 110.0, 180.0 + face, 110.0 + face)
    hc = head_crop(image, box, fill=(0, 0, 0))
    expected = apply(hc.image_to_crop, np.array([[cx, cy]]))[0]
    g = hc.image[..., 0].astype(np.float64)
    g = np.where(g > 0.2 * g.max(), g, 0.0)
    vv, uu = np.mgrid[0:hc.size, 0:hc.size]
    found = np.array([(g * uu).sum() / g.sum(), (g * vv).sum() / g.sum()])
    np.testing.assert_allclose(found, expected, atol=0.3)


def test_drawn_keypoints_land_where_apply_puts_them(faces):
    image, face = faces["driving_d30"]
    hc = head_crop(image, face.box)
    pts = apply(hc.image_to_crop, face.points[FIVE])
    assert ((pts > 0) & (pts < hc.size - 1)).all()
    # On a blank canvas, each dot's centroid is the point, to sub-pixel precision.
    blank = np.zeros_like(hc.image)
    dots = draw_keypoints(blank, pts, radius=3, color=(255, 255, 255))
    assert not blank.any()  # the input is not drawn on
    g = dots[..., 0].astype(np.float64)
    for x, y in pts:
        u0, v0 = int(x) - 6, int(y) - 6
        win = g[v0:v0 + 14, u0:u0 + 14]
        vv, uu = np.mgrid[v0:v0 + 14, u0:u0 + 14]
        found = np.array([(win * uu).sum() / win.sum(), (win * vv).sum() / win.sum()])
        np.testing.assert_allclose(found, (x, y), atol=0.35)
    # On the crop itself the dot centres take the colour, and the eyes' dots are on the eyes.
    drawn = draw_keypoints(hc.image, pts, radius=2, color=(255, 0, 0))
    for x, y in np.rint(pts).astype(int):
        assert tuple(drawn[y, x]) == (255, 0, 0)
    changed = np.argwhere((drawn != hc.image).any(-1))
    assert len(changed) < len(pts) * 40
    # A float crop in 0..1 comes back as float.
    fl = draw_keypoints(hc.image.astype(np.float32) / 255, pts[:1], radius=2, color=(255, 0, 0))
    assert fl.dtype == np.float32 and fl.max() <= 1.0


def test_suppress_background_and_bad_inputs():
    crop = np.full((8, 8, 3), 200, dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    out = suppress_background(crop, mask)
    assert (out[mask] == 200).all() and (out[~mask] == np.array(PAD_FILL, dtype=np.uint8)).all()
    half = suppress_background(crop, np.full((8, 8), 0.5), fill=(0, 0, 0))
    assert (half == 100).all()
    with pytest.raises(InputImageError):
        head_crop(crop, (5, 5, 5, 9))  # zero-width box
    with pytest.raises(InputImageError):
        head_crop(crop[..., 0], (1, 1, 5, 5))
