"""HP3 Head Crop: the whole head (hair, skull, ears, chin) inside the crop, padding marked, clear
errors; the node inside the in-process ComfyUI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hp3_core.errors import InputImageError
from hp3_core.head3d.face_landmarks import shared_landmarker
from hp3_core.head_encoder.head_crop import HEAD_LIFT, HEAD_SCALE, crop_transform, head_square
from hp3_core.head_encoder.head_crop_images import head_crops
from hp3_core.image_io import load_image


def test_the_crop_holds_the_whole_head(assets):
    """The built-in full head, fitted to the portrait, marks where the skull, ears and chin are:
    all of it (above the neck) lies inside HP3's head crop."""
    from hp3_core.head3d.ict import ICTReconstructor
    from hp3_core.head3d.retarget_images import retarget_images
    for name in ("source_s42.jpg", "driving_d8.jpg", "source_s9.jpg"):
        image = load_image(assets / "faces" / name)
        head = retarget_images(ICTReconstructor(), image, [image], region="head").maps[0].mask[0].numpy()
        chin_y = float(shared_landmarker().detect(image)[0].points[152, 1])
        rows, cols = np.nonzero(head[: int(chin_y) + 1])                    # the head above the chin
        box = head_square(shared_landmarker().detect(image)[0].box, HEAD_SCALE, HEAD_LIFT)
        m = crop_transform(box, 512)
        corners = np.array([[cols.min(), rows.min()], [cols.max(), chin_y]], dtype=np.float64)
        in_crop = corners @ m[:2, :2].T + m[:2, 2]
        assert (in_crop > 0).all() and (in_crop < 511).all(), (name, in_crop)
        crops = head_crops([image], size=512)
        assert crops.boxes[0] == box and crops.found == [True]


def test_padding_is_marked_and_the_face_keeps_its_place(assets):
    # Room all round the head (edge-extended), then the same photo with the crown cut off.
    image = np.pad(load_image(assets / "faces" / "source_s42.jpg"), ((500, 500), (500, 500), (0, 0)), mode="edge")
    face = shared_landmarker().detect(image)[0]
    cut = image[int(face.box[1]) - 10:]                                     # the crown cut off
    full, cropped = head_crops([image], size=256), head_crops([cut], size=256)
    assert full.coverage[0].min() == 1.0, "a portrait with room around the head needs no padding"
    cov = cropped.coverage[0]
    assert cov[0].max() == 0.0 and cov[-1].min() == 1.0, "padding on top, photo below"
    # Same scale (MediaPipe's box moves by a pixel or so between the two photos): padded, not zoomed.
    assert abs(cropped.boxes[0][2] - full.boxes[0][2]) < 0.03 * full.boxes[0][2]


def test_no_face_is_an_error_or_a_centred_square(assets):
    cat = load_image(assets / "faces" / "source_s39.jpg")
    with pytest.raises(InputImageError, match="no face found in the image"):
        head_crops([cat])
    out = head_crops([cat], size=128, no_face="center")
    assert out.found == [False] and out.crops[0].shape == (128, 128, 3)
    h, w = cat.shape[:2]
    x0, y0, side = out.boxes[0]
    assert abs(side - min(h, w)) <= 1 and abs(x0 - (w - side) / 2) <= 1 and abs(y0 - (h - side) / 2) <= 1
    with pytest.raises(InputImageError, match="size"):
        head_crops([cat], size=4, no_face="center")


def test_head_crop_node(comfy, assets):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["HP3HeadCrop"]()
    a = load_image(assets / "faces" / "source_s42.jpg")
    b = np.ascontiguousarray(a[:, ::-1])  # a batch shares one size: the mirrored portrait
    batch = torch.from_numpy(np.stack([a, b])).float() / 255.0
    head, coverage, boxes = node.crop(batch, 224, HEAD_SCALE, HEAD_LIFT, 0, "error")
    assert head.shape == (2, 224, 224, 3) and coverage.shape == (2, 224, 224)
    assert 0.0 <= float(head.min()) and float(head.max()) <= 1.0
    parsed = json.loads(boxes)
    assert [p["face_found"] for p in parsed] == [True, True] and all(p["side"] > 100 for p in parsed)
    expected = head_crops([a], size=224).crops[0].astype(np.float32) / 255.0
    assert np.abs(head[0].numpy() - expected).max() < 1e-6
