"""The 3D nodes inside the in-process 2024 ComfyUI: IMAGE batches in, maps out, bad input handled."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hp3_core.image_io import load_image


def as_image(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


@pytest.fixture(scope="module")
def nodes(comfy):
    m = comfy.nodes.NODE_CLASS_MAPPINGS
    (rec,) = m["HP3ReconstructorLoader"]().load("mediapipe", "cpu")
    return m, rec


def run_retarget(nodes, source, driving, **kw):
    m, rec = nodes
    args = dict(mode="full", region="head", face_index=0, missing_face="error") | kw
    with torch.inference_mode():
        return m["HP3HeadRetarget"]().retarget(rec, source, driving, **args)


def test_batch_of_driving_frames(nodes, assets):
    source = as_image(load_image(assets / "faces" / "source_s42.jpg"))
    d9 = load_image(assets / "faces" / "driving_d9.jpg")
    d19 = load_image(assets / "faces" / "driving_d19.jpg")
    out = run_retarget(nodes, source, as_image(d9, d19))
    head3d, shaded, normal, depth, mask, info = out["result"]
    assert shaded.shape == normal.shape == depth.shape == (2, 720, 720, 3) and mask.shape == (2, 720, 720)
    assert 0 <= shaded.min() and shaded.max() <= 1 and (mask.flatten(1).sum(1) > 1000).all()
    assert not torch.equal(mask[0], mask[1]) and head3d.found == [0, 1]
    assert "face only" in info and out["ui"]["images"] and out["ui"]["text"] == [info]


def test_missing_face_policy(comfy, nodes, assets):
    source = as_image(load_image(assets / "faces" / "source_s42.jpg"))
    d9 = load_image(assets / "faces" / "driving_d9.jpg")
    cat = load_image(assets / "faces" / "source_s39.jpg")[:720, :720]
    errors = comfy.pack_module("hp3_core.errors")
    with pytest.raises(errors.InputImageError, match="driving frame 1"):
        run_retarget(nodes, source, as_image(d9, cat))
    out = run_retarget(nodes, source, as_image(d9, cat), missing_face="blank maps")
    mask = out["result"][4]
    assert mask[1].sum() == 0 and mask[0].sum() > 0 and "frame 1: blank maps" in out["result"][5]
