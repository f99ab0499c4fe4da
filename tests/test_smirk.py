"""SMIRK encoder architecture, its safe checkpoint loader, and SMIRK's face crop."""
from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.needs import installed
from harness.smirk_files import write_smirk_checkpoint
from hp3_core.errors import HP3Error, InputImageError, MissingModelFileError, WeightFileError
from hp3_core.head3d.smirk_crop import apply_transform, smirk_crop_transform, warp_crop
from hp3_core.head3d.smirk_encoder import SmirkEncoder, SmirkWeightFileError, load_smirk_encoder

# ---- The layout read from SMIRK's src/smirk_encoder.py (georgeretsi/smirk @ c7de404) with the
# timm MobileNetV3Features layout (timm 0.9.16 in SMIRK's requirements; same keys in timm 1.x).
# state-dict entries (parameters + BN buffers incl. num_batches_tracked), parameter tensors,
# parameter elements, last feature width.
BACKBONES = {
    "pose_encoder.encoder": ("tf_mobilenetv3_small_minimal_100", 204, 102, 428_888, 576),
    "shape_encoder.encoder": ("tf_mobilenetv3_large_minimal_100", 276, 138, 1_413_208, 960),
    "expression_encoder.encoder": ("tf_mobilenetv3_large_minimal_100", 276, 138, 1_413_208, 960),
}
HEADS = {
    "pose_encoder.pose_cam_layers.0.weight": (6, 576),
    "pose_encoder.pose_cam_layers.0.bias": (6,),
    "shape_encoder.shape_layers.0.weight": (300, 960),
    "shape_encoder.shape_layers.0.bias": (300,),
    "expression_encoder.expression_layers.0.weight": (55, 960),
    "expression_encoder.expression_layers.0.bias": (55,),
}
TOTAL_ENTRIES = 204 + 276 + 276 + len(HEADS)  # 762
OUTPUT_SHAPES = {"shape": 300, "expression": 50, "eyelids": 2, "jaw": 3, "pose": 3, "camera": 3}


@pytest.fixture(scope="module")
def encoder() -> SmirkEncoder:
    """A random SmirkEncoder whose heads and BN statistics are all non-trivial, in eval mode."""
    torch.manual_seed(0)
    enc = SmirkEncoder()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "_layers." in name:  # SMIRK zero/near-zero initialises the heads: randomise them
                p.copy_(torch.randn(p.shape, generator=gen) * 0.002)
        for name, b in enc.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        # Push some outputs into the clamps: eyelids below 0 / above 1, jaw opening negative,
        # jaw sideways beyond +-0.2.
        enc.expression_encoder.expression_layers[0].weight[50:55] = 0.0
        bias = enc.expression_encoder.expression_layers[0].bias
        bias[50], bias[51], bias[52], bias[53], bias[54] = -5.0, 5.0, -5.0, 5.0, -5.0
    return enc.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))


def _raw_heads(enc: SmirkEncoder, img: torch.Tensor) -> dict[str, torch.Tensor]:
    def pooled(backbone):
        return backbone(img)[-1].mean(dim=(2, 3))
    return {"pose_cam": enc.pose_encoder.pose_cam_layers(pooled(enc.pose_encoder.encoder)),
            "shape": enc.shape_encoder.shape_layers(pooled(enc.shape_encoder.encoder)),
            "exp": enc.expression_encoder.expression_layers(pooled(enc.expression_encoder.encoder))}


# ------------------------------------------------------------------------------ architecture

def test_state_dict_layout_matches_smirk_source():
    state = SmirkEncoder().state_dict()
    assert len(state) == TOTAL_ENTRIES
    for prefix, (_name, entries, n_params, n_elems, _width) in BACKBONES.items():
        sub = {k: v for k, v in state.items() if k.startswith(prefix + ".")}
        params = {k: v for k, v in sub.items()
                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        assert len(sub) == entries, prefix
        assert len(params) == n_params, prefix
        assert sum(v.numel() for v in params.values()) == n_elems, prefix
        assert {k[len(prefix) + 1:].split(".")[0] for k in sub} == {"conv_stem", "bn1", "blocks"}
    assert "pose_encoder.encoder.conv_stem.weight" in state
    assert "pose_encoder.encoder.blocks.5.0.conv.weight" in state  # small: 6 stages, last 1x1 to 576
    assert "shape_encoder.encoder.blocks.6.0.conv.weight" in state  # large: 7 stages, last 1x1 to 960
    assert "expression_encoder.encoder.blocks.0.0.conv_dw.weight" in state
    for key, shape in HEADS.items():
        assert tuple(state[key].shape) == shape, key
    backbone_keys = sum(e for _n, e, *_ in BACKBONES.values())
    assert set(state) - set(HEADS) == {k for k in state if k.split(".")[1] == "encoder"}
    assert len(state) - len(HEADS) == backbone_keys


def test_backbone_feature_widths():
    enc = SmirkEncoder()
    for prefix, (name, *_rest, width) in BACKBONES.items():
        module = enc.get_submodule(prefix)
        assert module.feature_info[-1]["num_chs"] == width, name
    assert enc.pose_encoder.pose_cam_layers[0].bias[3].item() == 7.0  # SMIRK's camera-scale init


def test_checkpoint_round_trip_is_exact(encoder, images, tmp_path):
    path = write_smirk_checkpoint(tmp_path / "SMIRK_em1.pt", encoder)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert sum(k.startswith("smirk_encoder.") for k in raw) == TOTAL_ENTRIES
    assert any(k.startswith("smirk_generator.") for k in raw)
    assert all(k.startswith(("smirk_encoder.", "smirk_generator.")) for k in raw)

    loaded = load_smirk_encoder(path)
    assert not loaded.training
    with torch.no_grad():
        a, b = encoder(images), loaded(images)
    assert set(a) == set(OUTPUT_SHAPES)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # A bare (unprefixed) encoder state dict loads too.
    bare = tmp_path / "bare.pt"
    torch.save(encoder.state_dict(), bare)
    with torch.no_grad():
        assert torch.equal(load_smirk_encoder(bare)(images)["shape"], a["shape"])


def test_outputs_shapes_and_smirk_post_processing(encoder, images):
    with torch.no_grad():
        out = encoder(images)
        raw = _raw_heads(encoder, images)
    for key, n in OUTPUT_SHAPES.items():
        assert out[key].shape == (2, n), key
    assert torch.equal(out["pose"], raw["pose_cam"][:, :3])
    assert torch.equal(out["camera"], raw["pose_cam"][:, 3:])
    assert torch.equal(out["shape"], raw["shape"])
    assert torch.equal(out["expression"], raw["exp"][:, :50])
    assert torch.equal(out["eyelids"], raw["exp"][:, 50:52].clamp(0, 1))
    assert torch.equal(out["jaw"][:, 0], torch.relu(raw["exp"][:, 52]))
    assert torch.equal(out["jaw"][:, 1:], raw["exp"][:, 53:55].clamp(-0.2, 0.2))
    # The biases pushed these into the clamps, so the clamps are really exercised.
    assert (out["eyelids"][:, 0] == 0).all() and (out["eyelids"][:, 1] == 1).all()
    assert (out["jaw"][:, 0] == 0).all()
    assert (out["jaw"][:, 1] == 0.2).all() and (out["jaw"][:, 2] == -0.2).all()
    assert not torch.equal(out["expression"][0], out["expression"][1])  # depends on the image


# ------------------------------------------------------------------------------ loader errors

class _Sneaky:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_loader_refuses_unsafe_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"smirk_encoder.x": torch.zeros(1), "payload": _Sneaky(marker)}, path)
    with pytest.raises(SmirkWeightFileError) as err:
        load_smirk_encoder(path)
    msg = str(err.value)
    assert isinstance(err.value, WeightFileError) and isinstance(err.value, HP3Error)
    assert str(path) in msg and "weights_only" in msg and "SMIRK_em1.pt" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_loader_rejects_garbage_and_non_dict(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(SmirkWeightFileError, match="junk.pt") as err:
        load_smirk_encoder(junk)
    assert "\n" not in str(err.value)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(SmirkWeightFileError, match="not a state dict"):
        load_smirk_encoder(listed)
    other = tmp_path / "other.pt"
    torch.save({"model.conv.weight": torch.zeros(2)}, other)
    with pytest.raises(SmirkWeightFileError, match="no SMIRK encoder tensors.*model.conv.weight"):
        load_smirk_encoder(other)


def test_loader_names_key_and_shapes_on_mismatch(encoder, tmp_path):
    path = write_smirk_checkpoint(tmp_path / "SMIRK_em1.pt", encoder)
    state = torch.load(path, weights_only=True)
    state["smirk_encoder.shape_encoder.shape_layers.0.weight"] = torch.zeros(200, 960)
    torch.save(state, path)
    with pytest.raises(SmirkWeightFileError) as err:
        load_smirk_encoder(path)
    msg = str(err.value)
    assert "smirk_encoder.shape_encoder.shape_layers.0.weight" in msg
    assert "expected (300, 960)" in msg and "found (200, 960)" in msg
    assert str(path) in msg and "SMIRK_em1.pt from the SMIRK repository" in msg and "\n" not in msg


def test_loader_names_missing_and_unexpected_keys(encoder, tmp_path):
    path = write_smirk_checkpoint(tmp_path / "ckpt.pt", encoder)
    state = torch.load(path, weights_only=True)
    del state["smirk_encoder.pose_encoder.pose_cam_layers.0.bias"]
    torch.save(state, path)
    with pytest.raises(SmirkWeightFileError, match=r"'smirk_encoder\.pose_encoder\.pose_cam_layers\.0\.bias' "
                                                   r"is missing \(expected shape \(6,\)"):
        load_smirk_encoder(path)
    state["smirk_encoder.pose_encoder.pose_cam_layers.0.bias"] = torch.zeros(6)
    state["smirk_encoder.pose_encoder.extra_layer.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(SmirkWeightFileError, match=r"unexpected tensor 'smirk_encoder\.pose_encoder"
                                                   r"\.extra_layer\.weight' \(shape \(3, 3\)"):
        load_smirk_encoder(path)


def test_loader_missing_file(tmp_path):
    with pytest.raises(MissingModelFileError) as err:
        load_smirk_encoder(tmp_path / "SMIRK_em1.pt")
    msg = str(err.value)
    assert "SMIRK_em1.pt" in msg and str(tmp_path) in msg and "smirk" in msg.lower()


# ------------------------------------------------------------------------------ crop

def _square(cx: float, cy: float, side: float) -> np.ndarray:
    t = np.linspace(-side / 2, side / 2, 9)
    border = [(cx + a, cy - side / 2) for a in t] + [(cx + a, cy + side / 2) for a in t]
    border += [(cx - side / 2, cy + a) for a in t] + [(cx + side / 2, cy + a) for a in t]
    return np.array(border)


def test_crop_transform_geometry():
    cx, cy, side = 310.25, 205.75, 100.0
    m = smirk_crop_transform(_square(cx, cy, side), scale=1.4, crop_size=224)
    assert m.shape == (3, 3) and np.allclose(m[2], [0, 0, 1])
    assert m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] == m[1, 1]
    size = int(side * 1.4)  # 140
    assert np.allclose(m[0, 0], 223 / size)
    # Box centre -> crop centre (pixel centres at integers: 111.5); the scaled square -> 0..223.
    assert np.allclose(apply_transform(m, [[cx, cy]]), [[111.5, 111.5]])
    corners = apply_transform(m, [[cx - size / 2, cy - size / 2], [cx + size / 2, cy + size / 2]])
    assert np.allclose(corners, [[0, 0], [223, 223]])
    # The landmark box itself is 1/1.4 of the crop.
    box = apply_transform(m, [[cx - side / 2, cy - side / 2], [cx + side / 2, cy + side / 2]])
    assert np.allclose(box[1] - box[0], 223 * side / size)
    # Non-square box: side is the mean of width and height, truncated like SMIRK's int().
    pts = np.array([[0.0, 0.0], [90.0, 0.0], [0.0, 131.0], [90.0, 131.0]])
    m2 = smirk_crop_transform(pts, scale=1.4)
    assert np.isclose(m2[0, 0], 223 / int((90 + 131) / 2 * 1.4))
    # Extra columns (MediaPipe z) are ignored.
    assert np.array_equal(smirk_crop_transform(np.c_[pts, np.ones(4)]), m2)


def test_crop_transform_equals_skimage_estimate():
    skt = installed("skimage.transform", "scikit-image is the cross-check")
    rng = np.random.default_rng(3)
    lms = rng.uniform([100, 80], [400, 420], size=(478, 2))
    left, top = lms.min(0)
    right, bottom = lms.max(0)
    size = int((right - left + bottom - top) / 2 * 1.4)
    c = np.array([right - (right - left) / 2, bottom - (bottom - top) / 2])
    src = np.array([[c[0] - size / 2, c[1] - size / 2], [c[0] - size / 2, c[1] + size / 2],
                    [c[0] + size / 2, c[1] - size / 2]])
    ref = skt.estimate_transform("similarity", src, np.array([[0, 0], [0, 223], [223, 0]])).params
    assert np.allclose(smirk_crop_transform(lms), ref, atol=1e-9)


def test_crop_transform_rejects_degenerate_landmarks():
    with pytest.raises(InputImageError, match="too small"):
        smirk_crop_transform(np.array([[5.0, 5.0], [5.2, 5.3]]))
    with pytest.raises(InputImageError, match="NaN"):
        smirk_crop_transform(np.array([[5.0, np.nan], [50.0, 60.0]]))


def test_warp_crop_puts_marked_pixel_where_the_transform_says():
    image = np.zeros((300, 400, 3), np.uint8)
    image[120, 250] = (255, 128, 7)  # row y=120, column x=250
    m = smirk_crop_transform(_square(230.0, 140.0, 160.0), scale=1.0, crop_size=224)
    # Scale 223/160 > 1 spreads the pixel; the brightest crop pixel is nearest the mapped point.
    u, v = apply_transform(m, [[250.0, 120.0]])[0]
    crop = warp_crop(image, m, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    iy, ix = np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2])
    assert abs(ix - u) <= 0.5 + 1e-6 and abs(iy - v) <= 0.5 + 1e-6
    assert crop[iy, ix, 0] > crop[iy, ix, 1] > crop[iy, ix, 2]  # channel order kept
    # Float images keep their dtype; the outside of the image is constant black.
    fimg = np.ones((50, 60, 3), np.float32)
    m_out = smirk_crop_transform(_square(30.0, 25.0, 40.0), scale=3.0)  # crop much larger than image
    fcrop = warp_crop(fimg, m_out)
    assert fcrop.dtype == np.float32 and fcrop.shape == (224, 224, 3)
    assert fcrop[0, 0].tolist() == [0, 0, 0] and np.allclose(fcrop[112, 112], 1.0)


def test_warp_crop_matches_skimage_warp():
    skt = installed("skimage.transform", "scikit-image is the cross-check")
    rng = np.random.default_rng(4)
    image = (rng.uniform(0, 255, (240, 320, 3))).astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(image[::8, ::8], 8, 0), 8, 1))  # smooth-ish
    m = smirk_crop_transform(rng.uniform([60, 40], [280, 230], size=(50, 2)))
    ours = warp_crop(image, m).astype(np.float64)
    theirs = skt.warp(image, skt.SimilarityTransform(m).inverse, output_shape=(224, 224),
                      preserve_range=True)
    inside = theirs.sum(-1) > 0
    assert np.abs(ours - theirs)[inside].mean() < 2.0


def test_mediapipe_crop_on_a_real_photo(assets):
    import cv2
    import mediapipe as mp
    photo = assets / "faces" / "source_s42.jpg"
    bgr = cv2.imread(str(photo))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as mesh:
        result = mesh.process(rgb)
    assert result.multi_face_landmarks, "MediaPipe found no face in the photo"
    h, w = rgb.shape[:2]
    lms = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark])
    assert lms.shape == (478, 2)
    m = smirk_crop_transform(lms)
    crop = warp_crop(rgb, m)
    in_crop = apply_transform(m, lms)
    assert (in_crop >= 0).all() and (in_crop <= 223).all()
    lo, hi = in_crop.min(0), in_crop.max(0)
    assert np.allclose((lo + hi) / 2, 111.5, atol=1e-6)
    # The landmark box's mean side is 1/1.4 of the crop (up to SMIRK's int() of the crop side).
    assert abs((hi - lo).mean() / (223 / 1.4) - 1) < 0.01
    # The face is in the crop: the crop is not black where the face is and matches the photo there.
    nose = apply_transform(m, lms[[1]])[0]
    u, v = np.round(nose).astype(int)
    src = np.round(lms[1]).astype(int)
    assert np.abs(crop[v, u].astype(int) - rgb[src[1], src[0]].astype(int)).max() < 40
    assert crop[int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])].mean() > 20
