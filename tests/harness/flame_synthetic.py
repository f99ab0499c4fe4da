"""Synthetic FLAME-format files for tests: a FLAME-shaped head with random bases.

:func:`write_flame_pickle` writes fields in the layout of FLAME's Python-2 ``generic_model.pkl``
(without chumpy or scipy), :func:`make_synthetic_flame` builds a FLAME-shaped head with random
bases, and :func:`write_synthetic_flame` writes it with SMIRK's eyelid files and FLAME's vertex
masks. The ``.npz`` writer users need too is the core's :mod:`hp3_core.head3d.flame_npz`.
"""
from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hp3_core.head3d.flame_file import EYELID_NAMES, FLAME_N_SHAPE, FLAME_NUM_JOINTS, MASKS_NAME, FlameAssets
from hp3_core.benchmarks.meshes import uv_sphere
from hp3_core.head3d.flame_npz import flame_fields


class _Py2PickleWriter:
    """Emits a protocol-2 pickle as Python 2 wrote FLAME's files: ``str`` as byte strings,
    numpy arrays through ``numpy.core.multiarray._reconstruct``, and objects of the classes
    named by :class:`_Object` (``chumpy.ch.Ch``, ``scipy.sparse.csc.csc_matrix``) through
    NEWOBJ + BUILD, without importing or defining those classes.
    """

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.memo: dict[tuple[str, str], int] = {}

    def global_(self, module: str, name: str) -> None:
        key = (module, name)
        if key in self.memo:
            idx = self.memo[key]
            self.out.write(b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx))
            return
        idx = len(self.memo)
        self.memo[key] = idx
        self.out.write(b"c" + f"{module}\n{name}\n".encode("ascii"))
        self.out.write(b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx))

    def bytestr(self, data: bytes) -> None:
        if len(data) < 256:
            self.out.write(b"U" + bytes([len(data)]) + data)
        else:
            self.out.write(b"T" + struct.pack("<i", len(data)) + data)

    def marked(self, items: Iterable[Any], closing: bytes) -> None:
        """MARK, each of ``items``, then ``closing``: the opcode that takes everything back to the
        mark (``t`` makes a tuple, ``e`` appends to the list below, ``u`` sets the dict's items)."""
        self.out.write(b"(")
        for item in items:
            self.save(item)
        self.out.write(closing)

    def save(self, obj: Any) -> None:  # noqa: C901 - one branch per pickled type
        w = self.out.write
        if obj is None:
            w(b"N")
        elif obj is True or obj is False:
            w(b"\x88" if obj else b"\x89")
        elif isinstance(obj, (int, np.integer)):
            val = int(obj)
            if 0 <= val < 256:
                w(b"K" + bytes([val]))
            elif -(2**31) <= val < 2**31:
                w(b"J" + struct.pack("<i", val))
            else:
                raw = val.to_bytes((val.bit_length() + 8) // 8, "little", signed=True)
                w(b"\x8a" + bytes([len(raw)]) + raw)
        elif isinstance(obj, float):
            w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            self.bytestr(obj.encode("latin1"))
        elif isinstance(obj, tuple):
            if not obj:
                w(b")")
            elif len(obj) <= 3:
                for item in obj:
                    self.save(item)
                w(b"\x85\x86\x87"[len(obj) - 1: len(obj)])
            else:
                self.marked(obj, b"t")
        elif isinstance(obj, list):
            w(b"]")
            if obj:
                self.marked(obj, b"e")
        elif isinstance(obj, dict):
            w(b"}")
            if obj:
                self.marked((x for pair in obj.items() for x in pair), b"u")
        elif isinstance(obj, np.dtype):
            self.global_("numpy", "dtype")
            self.save((obj.str[1:], 0, 1))
            w(b"R")
            self.save((3, "|" if obj.itemsize == 1 else "<", None, None, None, -1, -1, 0))
            w(b"b")
        elif isinstance(obj, bytes):
            self.bytestr(obj)
        elif isinstance(obj, np.ndarray):
            # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype, fortran, raw).
            arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # keeps 0-d arrays 0-d
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            self.global_("numpy.core.multiarray", "_reconstruct")
            self.global_("numpy", "ndarray")
            self.save((0,))
            self.save("b")
            w(b"\x87R")
            self.save((1, tuple(int(n) for n in arr.shape), arr.dtype, False, arr.tobytes()))
            w(b"b")
        elif isinstance(obj, _Object):
            self.global_(obj.module, obj.name)
            w(b")\x81")
            self.save(obj.state)
            w(b"b")
        else:
            raise TypeError(f"cannot write {type(obj).__name__} in a FLAME pickle")

    def dumps(self, obj: Any) -> bytes:
        self.out.write(b"\x80\x02")
        self.save(obj)
        self.out.write(b".")
        return self.out.getvalue()


@dataclass
class _Object:
    """An object of class ``module.name`` pickled as NEWOBJ with ``state`` for BUILD."""

    module: str
    name: str
    state: dict[str, Any]


def _csc_state(dense: np.ndarray) -> dict[str, Any]:
    """The pickled ``__dict__`` of a ``scipy.sparse.csc_matrix`` (as old scipy wrote it)."""
    cols, rows = np.nonzero(dense.T)  # column-major order, rows ascending in each column
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=dense.shape[1]))])
    return {"_shape": tuple(int(n) for n in dense.shape), "maxprint": 50, "format": "csc",
            "data": dense[rows, cols].astype(np.float64), "indices": rows.astype(np.int32),
            "indptr": indptr.astype(np.int32)}


def write_flame_pickle(fields: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``fields`` as a pickle in the layout of FLAME's ``generic_model.pkl``.

    ``shapedirs`` becomes a ``chumpy.ch.Ch`` object (state ``{'x': array}``), ``J_regressor`` a
    ``scipy.sparse.csc.csc_matrix``; strings are Python-2 byte strings and arrays go through
    ``numpy.core.multiarray._reconstruct``, as in the original file. Neither chumpy nor scipy is
    needed (the class names are written directly). For tests and conversions only.
    """
    obj: dict[str, Any] = {}
    for key, val in fields.items():
        if key == "shapedirs":
            val = _Object("chumpy.ch", "Ch", {"x": np.asarray(val)})
        elif key == "J_regressor":
            val = _Object("scipy.sparse.csc", "csc_matrix", _csc_state(np.asarray(val, np.float64)))
        obj[key] = val
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_Py2PickleWriter().dumps(obj))
    return path


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """0 for x <= lo, 1 for x >= hi, cubic in between (exact 0 and 1 outside the band)."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_field(rng: np.random.Generator, points: np.ndarray, n_out: int,
                  n_features: int = 24) -> np.ndarray:
    """Random smooth vector fields: [N, 3, n_out], unit-ish amplitude, wavelength ~ 0.1 m."""
    omega = rng.normal(0.0, 1.5, size=(n_features, 3))
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n_features)
    coeff = rng.normal(0.0, 1.0 / math.sqrt(n_features), size=(n_features, 3, n_out))
    feats = np.cos((points / 0.1) @ omega.T + phase)
    return np.einsum("vm,mdk->vdk", feats, coeff)


# Joint positions of the synthetic head (metres): root, neck, jaw, left eye (+x), right eye.
_SYN_RADII = np.array([0.075, 0.115, 0.095])
_SYN_EYE_RADIUS = 0.0125


def _synthetic_joints() -> np.ndarray:
    ex, ey = 0.032, 0.02
    rx, ry, rz = _SYN_RADII
    ez = rz * math.sqrt(1.0 - (ex / rx) ** 2 - (ey / ry) ** 2) - 0.006
    return np.array([[0.0, -0.10, -0.01], [0.0, -0.07, -0.01], [0.0, -0.02, -0.01],
                     [ex, ey, ez], [-ex, ey, ez]])


def make_synthetic_flame(n_vertices: int = 1200, n_shape: int = FLAME_N_SHAPE,
                         n_expression: int = 100, seed: int = 0) -> FlameAssets:
    """A FLAME-shaped model with random bases on a closed head-like mesh (for tests).

    The head is a UV sphere made an ellipsoid (0.15 x 0.23 x 0.19 m) that narrows into a neck,
    plus two separate eyeball spheres, all in FLAME's frame (y up, z toward the camera, +x the
    subject's left). Joints as FLAME: 0 root (neck base), 1 neck, 2 jaw, 3 left eye, 4 right eye.
    Skinning weights are smooth and exactly zero outside their bands: root on the neck's base,
    jaw on the lower front (below the mouth line, above the neck), neck on the rest of the head,
    each eye on its eyeball only. Shape/expression/pose bases are small random smooth fields
    (expression only on the front half), and the eyelid blendshapes pull the skin above each eye
    down. ``face_vertex_ids`` is the front of the head above the neck.

    Args:
        n_vertices: about how many vertices (the nearest UV-sphere size is used).
        n_shape, n_expression: numbers of components.
        seed: seed of the random bases (the geometry does not depend on it).
    """
    rng = np.random.default_rng(seed)
    n_eye_lat, n_eye_lon = 5, 8
    n_eye = n_eye_lat * n_eye_lon + 2
    n_head = max(n_vertices - 2 * n_eye, 8 * 3 + 2)
    n_lon = max(8, int(round(math.sqrt(2.0 * (n_head - 2)))))
    n_lat = max(3, int(round((n_head - 2) / n_lon)))
    unit, head_faces = uv_sphere(n_lat, n_lon)
    narrow = 1.0 - 0.4 * _smoothstep(0.3, 0.75, -unit[:, 1])
    head = unit * _SYN_RADII * np.stack([narrow, np.ones_like(narrow), narrow], -1)
    joints = _synthetic_joints()
    eye_unit, eye_faces = uv_sphere(n_eye_lat, n_eye_lon)
    eyes = [joints[3] + _SYN_EYE_RADIUS * eye_unit, joints[4] + _SYN_EYE_RADIUS * eye_unit]
    v_template = np.concatenate([head, *eyes])
    nh = head.shape[0]
    faces = np.concatenate([head_faces, eye_faces + nh, eye_faces + nh + n_eye])
    n_v = v_template.shape[0]
    is_head = np.arange(n_v) < nh
    eye_ids = [np.arange(nh, nh + n_eye), np.arange(nh + n_eye, n_v)]

    # Skinning weights.
    y, z = head[:, 1], head[:, 2]
    root = 1.0 - _smoothstep(-0.095, -0.075, y)
    jaw = ((1.0 - _smoothstep(-0.035, -0.02, y)) * _smoothstep(-0.085, -0.07, y)
           * _smoothstep(0.0, 0.03, z))
    jaw = np.minimum(jaw, 1.0 - root)
    weights = np.zeros((n_v, FLAME_NUM_JOINTS))
    weights[:nh, 0], weights[:nh, 2] = root, jaw
    weights[:nh, 1] = 1.0 - root - jaw
    weights[eye_ids[0], 3] = 1.0
    weights[eye_ids[1], 4] = 1.0

    # Joint regressor: eyes = mean of their eyeball; others = the minimum-norm affine
    # combination of the head vertices nearest the joint's height that gives the joint.
    regressor = np.zeros((FLAME_NUM_JOINTS, n_v))
    for j in range(3):
        near = np.argsort(np.abs(y - joints[j, 1]), kind="stable")[: 2 * n_lon]
        a = np.vstack([head[near].T, np.ones(near.size)])
        regressor[j, near] = np.linalg.lstsq(a, np.append(joints[j], 1.0), rcond=None)[0]
    for j, ids in zip((3, 4), eye_ids):
        regressor[j, ids] = 1.0 / ids.size

    # Bases: smooth random fields; eyeballs move rigidly with shape and not with expression.
    n_k = n_shape + n_expression
    decay = 1.0 / np.sqrt(1.0 + np.arange(n_k) / 10.0)
    scale = np.where(np.arange(n_k) < n_shape, 3e-3, 2e-3) * decay
    field = _smooth_field(rng, np.concatenate([v_template, joints[3:]]), n_k) * scale
    shapedirs = field[:n_v].copy()
    for j, ids in zip((3, 4), eye_ids):
        shapedirs[ids] = field[n_v + j - 3]
    front = _smoothstep(0.0, 0.04, v_template[:, 2]) * is_head
    shapedirs[:, :, n_shape:] *= front[:, None, None]
    posedirs = _smooth_field(rng, v_template, 9 * (FLAME_NUM_JOINTS - 1)) * 5e-4
    posedirs[~is_head] = 0.0

    # Eyelids: the skin just above each eye moves down and a little forward.
    eyelids = np.zeros((2, n_v, 3))
    for k, j in enumerate((3, 4)):
        dist = np.linalg.norm(head - joints[j], axis=1)
        w = np.clip(1.0 - dist / 0.025, 0.0, None) ** 2 * (y > joints[j, 1] - 0.004)
        eyelids[k, :nh] = w[:, None] * np.array([0.0, -0.008, 0.002])

    face_ids = np.nonzero((z > 0.03) & (y > -0.085) & (y < 0.075))[0]
    return FlameAssets(v_template=v_template, shapedirs=shapedirs,
                       posedirs=posedirs.reshape(n_v * 3, -1).T, J_regressor=regressor,
                       parents=np.array([-1, 0, 1, 1, 1]), lbs_weights=weights, faces=faces,
                       n_shape=n_shape, eyelids=eyelids, face_vertex_ids=face_ids)


def _synthetic_masks(assets: FlameAssets) -> dict[str, np.ndarray]:
    w = assets.lbs_weights
    return {"face": assets.face_vertex_ids if assets.face_vertex_ids is not None
            else np.zeros(0, np.int64),
            "left_eyeball": np.nonzero(w[:, 3] == 1.0)[0],
            "right_eyeball": np.nonzero(w[:, 4] == 1.0)[0],
            "neck": np.nonzero(w[:, 0] > 0.5)[0]}


def write_synthetic_flame(path: str | Path, n_vertices: int = 1200,
                          n_shape: int = FLAME_N_SHAPE, n_expression: int = 100, seed: int = 0,
                          fmt: str = "npz", side_files: bool = True) -> Path:
    """Write :func:`make_synthetic_flame`'s model as a FLAME-format file.

    Args:
        path: the model file to write.
        fmt: ``"npz"`` (FLAME field names, no pickled objects) or ``"pkl"`` (the layout of
            FLAME's ``generic_model.pkl``: Python-2 byte strings, ``shapedirs`` a
            ``chumpy.ch.Ch``, ``J_regressor`` a ``scipy.sparse.csc.csc_matrix``).
        side_files: also write ``l_eyelid.npy``, ``r_eyelid.npy`` (SMIRK's format) and
            ``FLAME_masks.pkl`` (FLAME's format, ``face`` and a few other masks) beside it.

    Returns:
        ``path``. The model file itself holds no eyelids or masks (as FLAME's does not).
    """
    if fmt not in ("npz", "pkl"):
        raise ValueError(f"fmt must be 'npz' or 'pkl', not {fmt!r}")
    assets = make_synthetic_flame(n_vertices, n_shape, n_expression, seed)
    path = Path(path)
    fields: dict[str, Any] = dict(flame_fields(assets, extras=False))
    if fmt == "npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez(fh, **fields)
    else:
        fields.update({"bs_style": "lbs", "bs_type": "lrotmin"})
        write_flame_pickle(fields, path)
    if side_files and assets.eyelids is not None:
        for name, lid in zip(EYELID_NAMES, assets.eyelids):
            np.save(path.parent / name, lid, allow_pickle=False)
        _write_masks(_synthetic_masks(assets), path.parent / MASKS_NAME)
    return path


def _write_masks(masks: Mapping[str, np.ndarray], path: Path) -> None:
    path.write_bytes(_Py2PickleWriter().dumps(dict(masks)))
