"""FLAME 2020 in torch (hp3_core.head3d.flame) and its safe file reader (flame_file).

All on synthetic FLAME-format files (random bases on a small closed head mesh, in the real
``generic_model.pkl`` layout with ``chumpy.ch.Ch`` and ``scipy.sparse.csc.csc_matrix`` objects),
checked against independent numpy/scipy computations.
"""
from __future__ import annotations

import dataclasses
import pickle
import pickletools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from harness.flame_synthetic import make_synthetic_flame, write_synthetic_flame
from hp3_core.errors import HP3Error, MissingModelFileError
from hp3_core.head3d import flame_file, safe_pickle
from hp3_core.head3d.flame import FlameModel, FlameParameterError
from hp3_core.head3d.flame_file import (FlameAssets, find_flame_model, load_eyelids,
                                        load_face_vertex_ids, load_flame)
from hp3_core.head3d.flame_npz import flame_fields, save_flame_npz
from hp3_core.head3d.safe_pickle import FlameFileError

ARRAY_FIELDS = ("v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights",
                "faces", "eyelids", "face_vertex_ids")
F64 = torch.float64


def assert_same_assets(a: FlameAssets, b: FlameAssets) -> None:
    assert a.n_shape == b.n_shape and a.n_expression == b.n_expression
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.fixture(scope="module")
def flame_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("flame")
    write_synthetic_flame(folder / "generic_model.pkl", fmt="pkl", seed=3)
    write_synthetic_flame(folder / "generic_model.npz", fmt="npz", seed=3)
    return folder


@pytest.fixture(scope="module")
def assets(flame_dir) -> FlameAssets:
    return load_flame(flame_dir / "generic_model.pkl", eyelids=flame_dir, masks=flame_dir)


@pytest.fixture(scope="module")
def model(assets) -> FlameModel:
    return FlameModel(assets, dtype=F64)


def zeros(model: FlameModel, batch: int = 1) -> dict[str, torch.Tensor]:
    return {"shape": torch.zeros(batch, model.n_shape, dtype=F64),
            "expression": torch.zeros(batch, model.n_expression, dtype=F64),
            "global_pose": torch.zeros(batch, 3, dtype=F64),
            "jaw": torch.zeros(batch, 3, dtype=F64)}


def random_params(model: FlameModel, batch: int, seed: int = 0,
                  dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(dtype)

    return {"shape": r(batch, model.n_shape), "expression": r(batch, model.n_expression),
            "global_pose": r(batch, 3, scale=0.3), "jaw": r(batch, 3, scale=0.2),
            "neck": r(batch, 3, scale=0.2), "eyes": r(batch, 6, scale=0.2),
            "eyelids": r(batch, 2, scale=0.5)}


def numpy_flame(a: FlameAssets, shape, expression, pose15, eyelids=None) -> np.ndarray:
    """FLAME by the book in numpy: 4x4 homogeneous transforms along the chain, scipy rotations."""
    betas = np.zeros(a.shapedirs.shape[2])
    betas[: len(shape)] = shape
    betas[a.n_shape: a.n_shape + len(expression)] = expression
    v_shaped = a.v_template + a.shapedirs @ betas
    joints = a.J_regressor @ v_shaped
    rot = Rotation.from_rotvec(np.asarray(pose15).reshape(5, 3)).as_matrix()
    v_posed = v_shaped + ((rot[1:] - np.eye(3)).reshape(-1) @ a.posedirs).reshape(-1, 3)
    world = np.zeros((5, 4, 4))
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        p = a.parents[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0.0)
        world[j] = local if p < 0 else world[p] @ local
    rel = world.copy()
    rel[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    blend = np.einsum("vj,jab->vab", a.lbs_weights, rel)
    verts = np.einsum("vab,vb->va", blend[:, :3, :3], v_posed) + blend[:, :3, 3]
    if eyelids is not None:
        verts = verts + eyelids[0] * a.eyelids[0] + eyelids[1] * a.eyelids[1]
    return verts


class ImportRecorder:
    """A meta-path finder that records every module import attempted while installed."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        self.names.append(fullname)
        return None


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_pkl_and_npz_load_to_identical_assets_without_chumpy(flame_dir):
    pkl = flame_dir / "generic_model.pkl"
    globals_ = {arg for op, arg, _ in pickletools.genops(pkl.read_bytes()) if op.name == "GLOBAL"}
    # The synthetic pickle has the real FLAME structure the restricted unpickler must handle.
    assert {"chumpy.ch Ch", "scipy.sparse.csc csc_matrix",
            "numpy.core.multiarray _reconstruct"} <= globals_
    assert pkl.read_bytes()[:2] == b"\x80\x02"

    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    try:
        from_pkl = load_flame(pkl, eyelids=flame_dir, masks=flame_dir / "FLAME_masks.pkl")
    finally:
        sys.meta_path.remove(recorder)
    assert "chumpy" not in sys.modules
    assert not [n for n in recorder.names if n.startswith(("chumpy", "scipy"))], recorder.names

    from_npz = load_flame(flame_dir / "generic_model.npz", eyelids=flame_dir, masks=flame_dir)
    assert_same_assets(from_pkl, from_npz)
    assert_same_assets(from_pkl, make_synthetic_flame(seed=3))
    assert from_pkl.n_shape == 300 and from_pkl.n_expression == 100
    assert from_pkl.shapedirs.shape == (from_pkl.num_vertices, 3, 400)
    assert from_pkl.parents.tolist() == [-1, 0, 1, 1, 1]
    # A folder resolves to generic_model.pkl.
    assert_same_assets(load_flame(flame_dir, eyelids=flame_dir, masks=flame_dir), from_pkl)


def test_posedirs_layout_follows_flame(flame_dir, assets):
    raw = np.load(flame_dir / "generic_model.npz", allow_pickle=False)["posedirs"]
    n_v = assets.num_vertices
    assert raw.shape == (n_v, 3, 36) and assets.posedirs.shape == (36, n_v * 3)
    rng = np.random.default_rng(0)
    for v, d, p in zip(rng.integers(0, n_v, 20), rng.integers(0, 3, 20), rng.integers(0, 36, 20)):
        assert assets.posedirs[p, 3 * v + d] == raw[v, d, p]


def test_custom_sizes_keep_the_shape_expression_split(tmp_path):
    path = write_synthetic_flame(tmp_path / "m.pkl", n_vertices=300, n_shape=20, n_expression=7,
                                 fmt="pkl", side_files=False)
    a = load_flame(path)
    assert (a.n_shape, a.n_expression) == (20, 7)
    assert a.eyelids is None and a.face_vertex_ids is None
    assert abs(a.num_vertices - 300) < 40


def test_npz_conversion_round_trip(tmp_path, assets):
    path = save_flame_npz(assets, tmp_path / "converted.npz")
    assert_same_assets(load_flame(path), assets)  # eyelids and face ids travel in the npz


def test_protocol0_python2_objects_are_rebuilt(tmp_path):
    # Python 2's default protocol writes objects through copy_reg._reconstructor.
    data = (b"(dp0\nS'shapedirs'\np1\n"
            b"ccopy_reg\n_reconstructor\np2\n(cchumpy.ch\nCh\np3\nc__builtin__\nobject\np4\nNtp5\n"
            b"Rp6\n(dp7\nS'x'\np8\n(lp9\nF1.5\naF2.5\nasbs.")
    path = tmp_path / "p0.pkl"
    path.write_bytes(data)
    fields = flame_file._read_fields(path, safe_pickle.FIX_MODEL)
    assert np.array_equal(fields["shapedirs"], [1.5, 2.5])
    assert "chumpy" not in sys.modules


def _reduce_pickle(module: str, name: str, arg: str | None) -> bytes:
    """``module.name(arg)`` as a protocol-2 pickle, inside a dict like FLAME's."""
    call = f"c{module}\n{name}\n".encode()
    call += (b"X" + len(arg.encode()).to_bytes(4, "little") + arg.encode() + b"\x85R") \
        if arg is not None else b")R"
    return b"\x80\x02}(X\n\x00\x00\x00v_templateK\x01X\x04\x00\x00\x00evil" + call + b"u."


@pytest.mark.parametrize("module,name,kind", [
    ("builtins", "eval", "eval"), ("os", "system", "shell"), ("posix", "system", "shell"),
    ("collections", "OrderedDict", None), ("chumpy.ch_ops", "add", None),
    ("scipy.sparse._coo", "coo_matrix", None), ("numpy", "load", None)])
def test_refuses_foreign_classes_without_running_them(tmp_path, module, name, kind):
    marker = tmp_path / "side_effect"
    arg = {"eval": f"open({str(marker)!r}, 'w').write('ran')",
           "shell": f"touch '{marker}'", None: None}[kind]
    data = _reduce_pickle(module, name, arg)
    if kind == "eval":  # the payload is live: plain pickle would run it
        pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    for path, loader in ((tmp_path / "generic_model.pkl", load_flame),
                         (tmp_path / "FLAME_masks.pkl", load_face_vertex_ids)):
        path.write_bytes(data)
        with pytest.raises(FlameFileError) as info:
            loader(path)
        msg = str(info.value)
        assert str(path) in msg and f"'{module}.{name}'" in msg and "\n" not in msg
        assert isinstance(info.value, HP3Error)
        assert not marker.exists()
    assert "flame.is.tue.mpg.de" in str(FlameFileError("x", "y")) and ".npz" in FlameFileError(
        "x", "y").fix


def test_refuses_npz_with_pickled_objects_and_junk(tmp_path, assets):
    fields = flame_fields(assets)
    fields["shapedirs"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "obj.npz", **fields)
    with pytest.raises(FlameFileError, match="Python objects"):
        load_flame(tmp_path / "obj.npz")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(FlameFileError, match="junk.pkl"):
        load_flame(tmp_path / "junk.pkl")
    del fields["shapedirs"]
    np.savez(tmp_path / "partial.npz", **fields)
    with pytest.raises(FlameFileError, match="shapedirs"):
        load_flame(tmp_path / "partial.npz")


def test_missing_files_list_folders_and_names(tmp_path):
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    with pytest.raises(MissingModelFileError) as info:
        load_flame(empty)
    assert info.value.searched == [str(empty)]
    assert info.value.expected == ["generic_model.pkl", "generic_model.npz"]
    assert "generic_model.pkl or generic_model.npz" in str(info.value) and str(empty) in str(info.value)

    with pytest.raises(MissingModelFileError) as info:
        find_flame_model([empty, other])
    assert info.value.searched == [str(empty), str(other)]
    assert str(other) in str(info.value) and "flame.is.tue.mpg.de" in str(info.value)

    with pytest.raises(MissingModelFileError) as info:
        load_flame(other / "my_flame.pkl")
    assert info.value.expected == ["my_flame.pkl"] and info.value.searched == [str(other)]

    with pytest.raises(MissingModelFileError) as info:
        load_eyelids(empty)
    assert "l_eyelid.npy" in str(info.value) and "r_eyelid.npy" in str(info.value)
    assert str(empty) in str(info.value)

    with pytest.raises(MissingModelFileError) as info:
        load_face_vertex_ids(empty)
    assert info.value.expected == ["FLAME_masks.pkl"] and str(empty) in str(info.value)


def test_synthetic_mesh_is_a_closed_head(assets):
    v, f = assets.v_template, assets.faces
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    directed = {tuple(e) for e in edges.tolist()}
    assert len(directed) == len(edges)  # consistent winding: every directed edge once
    assert all((b, a) in directed for a, b in directed)  # closed: every edge has its twin
    tri = v[f]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert volume > 0  # outward normals
    height = v[:, 1].max() - v[:, 1].min()
    assert 0.15 < height < 0.3
    assert np.allclose(assets.lbs_weights.sum(1), 1.0) and (assets.lbs_weights >= 0).all()
    joints = assets.J_regressor @ v
    assert joints[1, 1] < joints[2, 1] < joints[3, 1] and joints[3, 0] > 0 > joints[4, 0]


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def test_zero_parameters_give_the_template(model, assets):
    out = model(**zeros(model, 2))
    torch.testing.assert_close(out, torch.from_numpy(assets.v_template).expand(2, -1, -1),
                               rtol=0, atol=1e-15)
    out32 = FlameModel(assets)(torch.zeros(1, 0), torch.zeros(1, 0), torch.zeros(1, 3),
                               torch.zeros(1, 3))
    assert out32.dtype == torch.float32
    assert np.abs(out32[0].numpy() - assets.v_template).max() < 1e-7


def test_shape_and_expression_add_their_blendshapes(model, assets):
    rng = np.random.default_rng(1)
    shape, expression = rng.normal(size=(1, 300)), rng.normal(size=(1, 60))
    p = zeros(model)
    p.update(shape=torch.from_numpy(shape), expression=torch.from_numpy(expression))
    out = model(**p)[0].numpy()
    expected = (assets.v_template + np.einsum("vdk,k->vd", assets.shapedirs[:, :, :300], shape[0])
                + np.einsum("vdk,k->vd", assets.shapedirs[:, :, 300:360], expression[0]))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert np.abs(out - assets.v_template).max() > 1e-3


def test_fewer_components_are_zero_padded_more_are_refused(model):
    p = random_params(model, 2, seed=4)
    short = dict(p, shape=p["shape"][:, :50], expression=p["expression"][:, :10])
    padded = dict(p, shape=torch.cat([p["shape"][:, :50], torch.zeros(2, 250, dtype=F64)], 1),
                  expression=torch.cat([p["expression"][:, :10], torch.zeros(2, 90, dtype=F64)], 1))
    torch.testing.assert_close(model(**short), model(**padded), rtol=0, atol=1e-14)
    with pytest.raises(FlameParameterError, match=r"101 FLAME expression .* has 100"):
        model(**dict(p, expression=torch.zeros(2, 101, dtype=F64)))
    with pytest.raises(FlameParameterError, match=r"301 FLAME shape .* has 300"):
        model(**dict(p, shape=torch.zeros(2, 301, dtype=F64)))


def test_global_rotation_is_rigid_about_the_root_joint(model, assets):
    rng = np.random.default_rng(2)
    shape = rng.normal(size=(1, 300))
    rotvec = np.array([0.4, -0.7, 0.25])
    p = zeros(model)
    p.update(shape=torch.from_numpy(shape), global_pose=torch.from_numpy(rotvec[None]))
    out = model(**p)[0].numpy()
    v_shaped = assets.v_template + assets.shapedirs[:, :, :300] @ shape[0]
    root = assets.J_regressor[0] @ v_shaped
    expected = (v_shaped - root) @ Rotation.from_rotvec(rotvec).as_matrix().T + root
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert np.abs(out - v_shaped).max() > 0.01


def test_jaw_moves_only_jaw_weighted_vertices(assets):
    no_pose_correctives = dataclasses.replace(assets, posedirs=np.zeros_like(assets.posedirs))
    model = FlameModel(no_pose_correctives, dtype=F64)
    jaw_rot = np.array([0.35, 0.05, 0.0])
    p = zeros(model)
    rest = model(**p)[0].numpy()
    p["jaw"] = torch.from_numpy(jaw_rot[None])
    out = model(**p)[0].numpy()
    w = assets.lbs_weights[:, 2]
    moved = np.linalg.norm(out - rest, axis=1)
    assert (w == 0).sum() > 100 and (w == 1).sum() > 10
    assert moved[w == 0].max() < 1e-15
    assert moved[w == 1].min() > 1e-3
    # Fully jaw-weighted vertices turn rigidly about the jaw joint.
    jaw_joint = assets.J_regressor[2] @ assets.v_template
    rigid = (rest - jaw_joint) @ Rotation.from_rotvec(jaw_rot).as_matrix().T + jaw_joint
    np.testing.assert_allclose(out[w == 1], rigid[w == 1], rtol=0, atol=1e-12)


def test_full_forward_matches_independent_numpy_flame(model, assets):
    p = random_params(model, 1, seed=5)
    p["expression"] = p["expression"][:, :50]
    out = model(**p)[0].numpy()
    pose15 = torch.cat([p["global_pose"], p["neck"], p["jaw"], p["eyes"]], 1)[0].numpy()
    expected = numpy_flame(assets, p["shape"][0].numpy(), p["expression"][0].numpy(), pose15,
                           p["eyelids"][0].numpy())
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    # Pose correctives contribute: without them the result differs.
    flat = dataclasses.replace(assets, posedirs=np.zeros_like(assets.posedirs))
    assert np.abs(FlameModel(flat, dtype=F64)(**p)[0].numpy() - out).max() > 1e-4
    _, joints = model.forward_with_joints(**p)
    root = assets.J_regressor[0] @ (assets.v_template + assets.shapedirs[:, :, :300]
                                    @ p["shape"][0].numpy()
                                    + assets.shapedirs[:, :, 300:350] @ p["expression"][0].numpy())
    np.testing.assert_allclose(joints[0, 0].numpy(), root, rtol=0, atol=1e-12)


def test_eyelids_add_exactly_their_blendshapes(model, assets):
    p = random_params(model, 1, seed=6)
    lids = p.pop("eyelids")
    base = model(**p)[0].numpy()
    out = model(**p, eyelids=lids)[0].numpy()
    e = lids[0].numpy()
    np.testing.assert_allclose(out - base, e[0] * assets.eyelids[0] + e[1] * assets.eyelids[1],
                               rtol=0, atol=1e-14)
    assert np.abs(out - base).max() > 1e-4
    torch.testing.assert_close(model(**p, eyelids=torch.zeros(1, 2, dtype=F64))[0],
                               torch.from_numpy(base), rtol=0, atol=0)
    without = FlameModel(dataclasses.replace(assets, eyelids=None), dtype=F64)
    with pytest.raises(FlameParameterError, match="l_eyelid.npy"):
        without(**p, eyelids=lids)


def test_batch_equals_items(model):
    p = random_params(model, 3, seed=7)
    batch = model(**p)
    for i in range(3):
        item = model(**{k: v[i:i + 1] for k, v in p.items()})
        torch.testing.assert_close(batch[i:i + 1], item, rtol=0, atol=1e-14)
    assert not torch.allclose(batch[0], batch[1])


def test_gradients_reach_every_input(assets):
    model = FlameModel(assets)
    p = {k: v.requires_grad_() for k, v in random_params(model, 2, seed=8,
                                                         dtype=torch.float32).items()}
    target = torch.from_numpy(assets.v_template).float()
    (model(**p) - target).square().sum().backward()
    for name, value in p.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum(1).min() > 0, name
    assert not any(True for _ in model.parameters())


def test_face_subset_from_masks_and_fallback(model, assets):
    faces, ids = assets.faces, assets.face_vertex_ids
    subset = model.face_subset()
    assert subset.dtype == torch.bool and subset.shape == (faces.shape[0],)
    expected = np.isin(faces, ids).all(axis=1)
    assert np.array_equal(subset.numpy(), expected) and 0 < expected.sum() < len(faces)
    assert model.faces.dtype == torch.long and model.num_vertices == assets.num_vertices

    fallback = FlameModel(dataclasses.replace(assets, face_vertex_ids=None))
    assert fallback.face_region_source == "geometric fallback"
    sub = fallback.face_subset().numpy()
    v = assets.v_template
    neck_y = (assets.J_regressor @ v)[1, 1]
    z_mid = 0.5 * (v[:, 2].min() + v[:, 2].max())
    tri = v[faces[sub]]
    assert sub.sum() > 50 and (tri[..., 2] > z_mid).all() and (tri[..., 1] > neck_y).all()
    back = (v[faces][..., 2] < z_mid).all(axis=1)
    assert not (sub & back).any()
