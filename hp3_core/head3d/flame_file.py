"""FLAME 2020 model files: the model's arrays (:class:`FlameAssets`), finding and reading them.

What a user places (all optional except the model):

* ``generic_model.pkl``: FLAME 2020 from https://flame.is.tue.mpg.de (or ``generic_model.npz``
  written by :func:`~.flame_npz.save_flame_npz`);
* ``l_eyelid.npy`` and ``r_eyelid.npy``: SMIRK's eyelid blendshapes (``assets/`` of
  https://github.com/georgeretsi/smirk), plain ``[5023, 3]`` float arrays;
* ``FLAME_masks.pkl``: FLAME's vertex masks (the ``face`` entry gives the face region).

``generic_model.pkl`` and ``FLAME_masks.pkl`` are Python-2 pickles holding chumpy and
scipy-sparse objects; they are read by :mod:`.safe_pickle`, which interprets the pickle's opcodes
itself (no ``pickle.Unpickler``), rebuilds only their plain numeric arrays and refuses any other
class with a :class:`FlameFileError`.

``.npz`` files use FLAME's own field names (``v_template``, ``shapedirs``, ``posedirs``,
``J_regressor`` dense, ``kintree_table``, ``weights``, ``f``), plus the optional ``n_shape``,
``l_eyelid``, ``r_eyelid`` and ``face_vertex_ids``. They and the eyelid ``.npy`` files are read
by :func:`_read_npy`: plain numeric dtypes only (never pickled objects), every array's shape
checked against the bytes that are really there, and an ``.npz`` may not unpack to more than
:func:`_npz_budget` of its own size, so a small file can never make the reader allocate much.
The :class:`FlameAssets` names (``faces``, ``lbs_weights``, ``parents``) are accepted too.

Writing a model as ``.npz`` is in :mod:`.flame_npz`.
"""
from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingModelFileError
from .safe_pickle import (FIX_MODEL, MAX_DIMS, MAX_PICKLE_BYTES, FlameFileError, _plain,
                          _read_pickle)

log = logging.getLogger(__name__)

FLAME_MODEL_NAMES: tuple[str, ...] = ("generic_model.pkl", "generic_model.npz")
EYELID_NAMES: tuple[str, str] = ("l_eyelid.npy", "r_eyelid.npy")
MASKS_NAME = "FLAME_masks.pkl"
FLAME_URL = "https://flame.is.tue.mpg.de (FLAME 2020, generic_model.pkl)"
SMIRK_URL = "https://github.com/georgeretsi/smirk (assets/l_eyelid.npy, assets/r_eyelid.npy)"
MASKS_URL = ("https://flame.is.tue.mpg.de (FLAME vertex masks) or "
             "https://github.com/georgeretsi/smirk (assets/FLAME_masks/FLAME_masks.pkl)")
FIX_MASKS = ("use the original FLAME_masks.pkl from flame.is.tue.mpg.de (or SMIRK's "
             "assets/FLAME_masks) or convert it to .npz")
FIX_EYELIDS = "use l_eyelid.npy and r_eyelid.npy from SMIRK's assets folder, unchanged"
# FLAME (and SMIRK, DECA) put the expression components from index 300 of shapedirs on.
FLAME_N_SHAPE = 300
FLAME_NUM_JOINTS = 5  # global/root, neck, jaw, left eye, right eye


@dataclass(eq=False)
class FlameAssets:
    """The arrays of a FLAME model, in FLAME's native frame (y up, z toward the camera, metres).

    Shapes (V vertices, F triangles, J = 5 joints, K = n_shape + n_expression components,
    P = 9 * (J - 1) = 36 pose-corrective components):

    * ``v_template`` [V, 3] float64: the mean head, metres.
    * ``shapedirs`` [V, 3, K] float64: shape components ``[:, :, :n_shape]`` then expression
      components ``[:, :, n_shape:]`` (FLAME 2020: 300 + 100), metres per unit coefficient.
    * ``posedirs`` [P, V * 3] float64: pose-corrective blendshapes in the layout the skinning
      uses: row ``9 * (j - 1) + 3 * r + c`` is element ``(r, c)`` of joint ``j``'s
      ``R_j - I`` (j = 1..4, the non-global joints), column ``3 * v + axis``. FLAME's file has
      ``[V, 3, P]``; this is ``reshape(V * 3, P).T`` of it.
    * ``J_regressor`` [J, V] float64, dense: joints = ``J_regressor @ shaped vertices``.
    * ``parents`` [J] int64: kinematic tree (``parents[0] == -1``, ``parents[j] < j``).
    * ``lbs_weights`` [V, J] float64: skinning weights, rows sum to 1.
    * ``faces`` [F, 3] int64: triangles, counter-clockwise seen from outside.
    * ``n_shape``: how many leading components of ``shapedirs`` are shape (default
      ``min(300, K)``, FLAME's split).
    * ``eyelids`` [2, V, 3] float64 or None: SMIRK's eyelid blendshapes, ``[0]`` left
      (``l_eyelid.npy``, driven by eyelid parameter 0), ``[1]`` right (``r_eyelid.npy``,
      parameter 1). SMIRK adds them to the *skinned* vertices (see :mod:`.flame`).
    * ``face_vertex_ids`` [N] int64 or None: vertices of the face region
      (``FLAME_masks.pkl['face']``).
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    parents: np.ndarray
    lbs_weights: np.ndarray
    faces: np.ndarray
    n_shape: int | None = None
    eyelids: np.ndarray | None = None
    face_vertex_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        f64 = np.float64
        self.v_template = _as_array(self.v_template, f64)
        self.shapedirs = _as_array(self.shapedirs, f64)
        self.posedirs = _as_array(self.posedirs, f64)
        self.J_regressor = _as_array(self.J_regressor, f64)
        self.parents = _as_array(self.parents, np.int64)
        self.lbs_weights = _as_array(self.lbs_weights, f64)
        self.faces = _as_array(self.faces, np.int64)
        if self.eyelids is not None:
            self.eyelids = _as_array(self.eyelids, f64)
        if self.face_vertex_ids is not None:
            self.face_vertex_ids = _as_array(self.face_vertex_ids, np.int64).reshape(-1)
        self._check()

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.J_regressor.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.shapedirs.shape[2]) - int(self.n_shape or 0)

    def _check(self) -> None:
        """Shapes and values; raises ValueError with what is wrong (loaders wrap it)."""
        v = self.v_template
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
            raise ValueError(f"v_template has shape {v.shape}, expected [V, 3]")
        n_v = v.shape[0]
        if self.shapedirs.ndim != 3 or self.shapedirs.shape[:2] != (n_v, 3):
            raise ValueError(f"shapedirs has shape {self.shapedirs.shape}, expected [{n_v}, 3, K]")
        n_k = self.shapedirs.shape[2]
        if self.n_shape is None:
            self.n_shape = min(FLAME_N_SHAPE, n_k)
        self.n_shape = int(self.n_shape)
        if not 0 <= self.n_shape <= n_k:
            raise ValueError(f"n_shape is {self.n_shape} but shapedirs has {n_k} components")
        jr = self.J_regressor
        if jr.ndim != 2 or jr.shape[1] != n_v:
            raise ValueError(f"J_regressor has shape {jr.shape}, expected [J, {n_v}]")
        n_j = jr.shape[0]
        if n_j != FLAME_NUM_JOINTS:
            raise ValueError(f"the model has {n_j} joints; FLAME has {FLAME_NUM_JOINTS} "
                             "(global, neck, jaw, left eye, right eye)")
        n_p = 9 * (n_j - 1)
        if self.posedirs.shape != (n_p, n_v * 3):
            raise ValueError(f"posedirs has shape {self.posedirs.shape}, expected [{n_p}, {n_v * 3}]")
        par = self.parents
        if par.shape != (n_j,) or par[0] != -1 or any(not 0 <= par[j] < j for j in range(1, n_j)):
            raise ValueError(f"parents {par.tolist()} is not a kinematic tree of {n_j} joints "
                             "(root -1, every parent before its child)")
        if self.lbs_weights.shape != (n_v, n_j):
            raise ValueError(f"weights has shape {self.lbs_weights.shape}, expected [{n_v}, {n_j}]")
        f = self.faces
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
            raise ValueError(f"faces has shape {f.shape}, expected [F, 3]")
        if f.min() < 0 or f.max() >= n_v:
            raise ValueError(f"faces index vertices {f.min()}..{f.max()} of a {n_v}-vertex mesh")
        if self.eyelids is not None and self.eyelids.shape != (2, n_v, 3):
            raise ValueError(f"eyelid blendshapes have shape {self.eyelids.shape}, "
                             f"expected [2, {n_v}, 3]")
        ids = self.face_vertex_ids
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= n_v):
            raise ValueError(f"face vertex ids reach {ids.max()}, the mesh has {n_v} vertices")
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} holds NaN or infinite values")


def _as_array(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=dtype))


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _npz_budget(n_bytes: int) -> int:
    """The most bytes an ``.npz`` of ``n_bytes`` may unpack to. ``np.savez`` stores arrays as they
    are and ``savez_compressed`` of FLAME's float data gains little, while a crafted member can
    inflate a thousandfold."""
    return 8 * 2**20 + 4 * int(n_bytes)


def _read_npy(fh: Any, payload: int, what: str, path: Path, fix: str) -> np.ndarray:
    """One ``.npy`` array from ``fh``, whose header and data take exactly ``payload`` bytes.

    Only a plain numeric dtype is accepted, and the header's shape must match the bytes there:
    the array is allocated only after that check (``np.load`` would allocate the shape first).

    Raises:
        FlameFileError: not an ``.npy``, a pickled-object or structured array, or a shape that
            the bytes do not hold.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        start = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, RecursionError, MemoryError) as err:
        raise FlameFileError(path, f"{what} is not a plain .npy array ({err})", fix) from None
    if dtype.hasobject:
        raise FlameFileError(path, f"it holds Python objects (pickled arrays, in {what}), which "
                             "are refused", fix)
    if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None \
            or len(shape) > MAX_DIMS:
        raise FlameFileError(path, f"{what} is not a plain numeric array (dtype {dtype}, "
                             f"shape {shape})", fix)
    need = math.prod(shape) * dtype.itemsize
    if need != payload - start:
        raise FlameFileError(path, f"{what} claims shape {list(shape)} ({dtype}, {need} bytes) but "
                             f"holds {payload - start} bytes", fix)
    data = fh.read(need)
    if len(data) != need:
        raise FlameFileError(path, f"{what} is truncated", fix)
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, order="C")


def _read_npz(path: Path, fix: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (a zip of ``.npy`` files) by name, within :func:`_npz_budget`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            unpacked = sum(m.file_size for m in members)
            if len(members) > 1000 or unpacked > _npz_budget(path.stat().st_size):
                raise FlameFileError(path, f"it unpacks to {unpacked} bytes in {len(members)} "
                                     "entries, far more than its size allows", fix)
            out = {}
            for member in members:
                if member.is_dir():
                    continue
                key = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                with archive.open(member) as fh:
                    out[key] = _read_npy(fh, member.file_size, f"array '{key}'", path, fix)
            return out
    except FlameFileError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile raises several types for damaged files
        raise FlameFileError(path, f"not a readable .npz ({type(err).__name__}: {err})",
                             fix) from None


def _read_fields(path: Path, fix: str) -> dict[str, Any]:
    """The top-level dict of a FLAME-style ``.pkl`` or ``.npz`` file, arrays made plain."""
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise FlameFileError(path, f"the file is {size / 2**20:.0f} MB, far more than FLAME needs", fix)
    if _is_zip(path):
        return _read_npz(path, fix)
    obj = _read_pickle(path, fix)
    if not isinstance(obj, dict):
        raise FlameFileError(path, f"the pickle holds a {type(obj).__name__}, not a dict", fix)
    return {str(k): _plain(v, str(k), path, fix) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# Finding files
# ---------------------------------------------------------------------------------------------

def find_flame_model(folders: Iterable[str | Path],
                     names: Sequence[str] = FLAME_MODEL_NAMES) -> Path:
    """The first ``names`` entry found in the first folder that has one.

    Raises:
        MissingModelFileError: listing every folder and name when none is there.
    """
    searched = [Path(f) for f in folders]
    for folder in searched:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise MissingModelFileError("FLAME 2020 head model", names, searched, FLAME_URL)


def _resolve_model_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        return find_flame_model([path])
    if not path.is_file():
        raise MissingModelFileError("FLAME 2020 head model", [path.name], [path.parent], FLAME_URL)
    return path


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _field(fields: Mapping[str, Any], path: Path, *names: str) -> Any:
    for name in names:
        if name in fields:
            return fields[name]
    raise FlameFileError(path, f"it has no '{names[0]}' (fields: {', '.join(sorted(fields))})")


def _posedirs_layout(posedirs: np.ndarray, n_v: int, path: Path) -> np.ndarray:
    """FLAME's [V, 3, P] (or [V*3, P], [P, V*3]) as the stored [P, V*3]."""
    pd = np.asarray(posedirs, np.float64)
    if pd.ndim == 3 and pd.shape[:2] == (n_v, 3):
        return pd.reshape(n_v * 3, pd.shape[2]).T
    if pd.ndim == 2 and pd.shape[0] == n_v * 3:
        return pd.T
    if pd.ndim == 2 and pd.shape[1] == n_v * 3:
        return pd
    raise FlameFileError(path, f"posedirs has shape {pd.shape}, expected [{n_v}, 3, 36]")


def _parents(fields: Mapping[str, Any], path: Path) -> np.ndarray:
    if "parents" in fields:
        return np.asarray(fields["parents"], np.int64).reshape(-1)
    table = np.asarray(_field(fields, path, "kintree_table"))
    if table.ndim != 2 or table.shape[0] != 2:
        raise FlameFileError(path, f"kintree_table has shape {table.shape}, expected [2, J]")
    ids = table[1].astype(np.int64)
    if not np.array_equal(ids, np.arange(ids.size)):
        raise FlameFileError(path, f"kintree_table joint ids {ids.tolist()} are not 0..J-1")
    parents = table[0].astype(np.int64)  # the root's entry is 2**32 - 1 in FLAME's file
    parents[0] = -1
    return parents


def assets_from_fields(fields: Mapping[str, Any], path: str | Path = "<memory>") -> FlameAssets:
    """:class:`FlameAssets` from a FLAME-style field dict (FLAME or FlameAssets names).

    Raises:
        FlameFileError: a field is missing or has the wrong shape.
    """
    path = Path(path)
    try:  # a field of the wrong type (text, a dict...) is a FlameFileError too, not a TypeError
        v_template = np.asarray(_field(fields, path, "v_template"), np.float64)
        n_v = v_template.shape[0] if v_template.ndim == 2 else -1
        eyelids = None
        if "eyelids" in fields:
            eyelids = fields["eyelids"]
        elif "l_eyelid" in fields and "r_eyelid" in fields:
            eyelids = np.stack([np.asarray(fields["l_eyelid"]), np.asarray(fields["r_eyelid"])])
        n_shape = fields.get("n_shape")
        return FlameAssets(
            v_template=v_template,
            shapedirs=_field(fields, path, "shapedirs"),
            posedirs=_posedirs_layout(_field(fields, path, "posedirs"), n_v, path),
            J_regressor=_field(fields, path, "J_regressor"),
            parents=_parents(fields, path),
            lbs_weights=_field(fields, path, "weights", "lbs_weights"),
            faces=_field(fields, path, "f", "faces"),
            n_shape=None if n_shape is None else int(np.asarray(n_shape)),
            eyelids=eyelids,
            face_vertex_ids=fields.get("face_vertex_ids"),
        )
    except (ValueError, TypeError, IndexError, OverflowError) as err:
        raise FlameFileError(path, f"not a usable FLAME model: {err}") from None


def load_flame(path: str | Path, eyelids: str | Path | Sequence[str | Path] | None = None,
               masks: str | Path | None = None) -> FlameAssets:
    """Read a FLAME model safely.

    Args:
        path: ``generic_model.pkl`` (FLAME 2020, Python-2 pickle, read by
            :mod:`.safe_pickle` without unpickling), a FLAME-style ``.npz``, or a folder holding one of
            :data:`FLAME_MODEL_NAMES`. The format is told by the file's first bytes.
        eyelids: optional folder with ``l_eyelid.npy`` and ``r_eyelid.npy``, or the two paths
            (left, right); see :func:`load_eyelids`.
        masks: optional ``FLAME_masks.pkl`` (or its folder) for the face region.

    Raises:
        MissingModelFileError: a file is not there (lists the folders and names).
        FlameFileError: a file is refused, damaged, or not a FLAME model.
    """
    model_path = _resolve_model_path(path)
    assets = assets_from_fields(_read_fields(model_path, FIX_MODEL), model_path)
    if eyelids is not None:
        lids = load_eyelids(eyelids)
        if lids.shape[1] != assets.num_vertices:
            raise FlameFileError(eyelids if isinstance(eyelids, (str, Path)) else eyelids[0],
                                 f"the eyelid blendshapes have {lids.shape[1]} vertices, the FLAME "
                                 f"model {assets.num_vertices}", FIX_EYELIDS)
        assets.eyelids = lids
    if masks is not None:
        ids = load_face_vertex_ids(masks)
        if ids.size and ids.max() >= assets.num_vertices:
            raise FlameFileError(masks, f"face vertex ids reach {ids.max()}, the FLAME model has "
                                 f"{assets.num_vertices} vertices", FIX_MASKS)
        assets.face_vertex_ids = ids
    log.info("FLAME model %s: %d vertices, %d shape + %d expression components%s%s", model_path,
             assets.num_vertices, assets.n_shape, assets.n_expression,
             ", eyelids" if assets.eyelids is not None else "",
             ", face mask" if assets.face_vertex_ids is not None else "")
    return assets


def load_eyelids(source: str | Path | Sequence[str | Path]) -> np.ndarray:
    """SMIRK's eyelid blendshapes as one [2, V, 3] float64 array (left, right).

    Args:
        source: a folder holding ``l_eyelid.npy`` and ``r_eyelid.npy``, or the two file paths
            (left first). The files are plain numpy arrays (no pickled objects; shape checked
            against the file's size before anything is allocated).

    Raises:
        MissingModelFileError: a file is missing (lists the folder and the names).
        FlameFileError: a file is not a [V, 3] float array, or the two differ in size.
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        files = [folder / name for name in EYELID_NAMES]
    else:
        files = [Path(p) for p in source]
        if len(files) != 2:
            raise ValueError("eyelids: give a folder or exactly two files (left, right)")
    missing = [f for f in files if not f.is_file()]
    if missing:
        folders = list(dict.fromkeys(str(f.parent) for f in missing))
        names = [f.name for f in missing]
        raise MissingModelFileError("SMIRK eyelid blendshapes", [" and ".join(names)], folders,
                                    SMIRK_URL)
    out = []
    for f in files:
        size = f.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise FlameFileError(f, f"the file is {size / 2**20:.0f} MB, far more than eyelid "
                                 "blendshapes need", FIX_EYELIDS)
        with f.open("rb") as fh:
            arr = _read_npy(fh, size, "the file", f, FIX_EYELIDS)
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.dtype.kind not in "fiu":
            raise FlameFileError(f, f"expected a [V, 3] float array, got {getattr(arr, 'shape', '?')}",
                                 FIX_EYELIDS)
        out.append(arr.astype(np.float64))
    if out[0].shape != out[1].shape:
        raise FlameFileError(files[1], f"shape {out[1].shape} differs from {files[0].name}'s "
                             f"{out[0].shape}", FIX_EYELIDS)
    return np.stack(out)


def load_face_vertex_ids(path: str | Path, region: str = "face") -> np.ndarray:
    """Vertex indices of one region of FLAME's vertex masks (``FLAME_masks.pkl``).

    Args:
        path: ``FLAME_masks.pkl`` (read by :mod:`.safe_pickle`), an ``.npz`` with the same keys, or a
            folder holding ``FLAME_masks.pkl``.
        region: the mask's key (``face``, ``lips``, ``left_eyeball``...).

    Raises:
        MissingModelFileError, FlameFileError.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MASKS_NAME
        if not path.is_file():
            raise MissingModelFileError("FLAME vertex masks", [MASKS_NAME], [path.parent], MASKS_URL)
    elif not path.is_file():
        raise MissingModelFileError("FLAME vertex masks", [path.name], [path.parent], MASKS_URL)
    fields = _read_fields(path, FIX_MASKS)
    if region not in fields:
        raise FlameFileError(path, f"it has no '{region}' mask (masks: {', '.join(sorted(fields))})",
                             FIX_MASKS)
    try:
        ids = np.asarray(fields[region])
    except (ValueError, TypeError):  # ragged nested lists
        ids = np.zeros((0, 0))
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise FlameFileError(path, f"mask '{region}' is not a list of vertex indices", FIX_MASKS)
    return ids.astype(np.int64)
