"""FLAME 2020 model files: safe reading, an ``.npz`` form, and synthetic files for tests.

What a user places (all optional except the model):

* ``generic_model.pkl``: FLAME 2020 from https://flame.is.tue.mpg.de (or ``generic_model.npz``
  written by :func:`save_flame_npz`);
* ``l_eyelid.npy`` and ``r_eyelid.npy``: SMIRK's eyelid blendshapes (``assets/`` of
  https://github.com/georgeretsi/smirk), plain ``[5023, 3]`` float arrays;
* ``FLAME_masks.pkl``: FLAME's vertex masks (the ``face`` entry gives the face region).

``generic_model.pkl`` is a Python-2 pickle. Its dict holds numpy arrays (``v_template``,
``posedirs``, ``weights``, ``kintree_table``, ``f``, ``J``), a ``chumpy.ch.Ch`` object
(``shapedirs``) and a ``scipy.sparse.csc.csc_matrix`` (``J_regressor``). Unpickling can run any
function a file names, so it is read with :class:`RestrictedUnpickler`, which resolves only an
explicit allow-list of globals: numpy's array/dtype/scalar reconstructors, and stand-ins for the
chumpy and scipy-sparse classes that only keep the arrays of their pickled state (chumpy and
scipy's classes are never imported through the pickle). Anything else is refused with a
:class:`FlameFileError` naming the file and the class, before it can run.

``.npz`` files use FLAME's own field names (``v_template``, ``shapedirs``, ``posedirs``,
``J_regressor`` dense, ``kintree_table``, ``weights``, ``f``), plus the optional ``n_shape``,
``l_eyelid``, ``r_eyelid`` and ``face_vertex_ids``; they are read with ``allow_pickle=False``.
The :class:`FlameAssets` names (``faces``, ``lbs_weights``, ``parents``) are accepted too.
"""
from __future__ import annotations

import io
import logging
import math
import pickle
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HP3Error, MissingModelFileError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]

log = logging.getLogger(__name__)

FLAME_MODEL_NAMES: tuple[str, ...] = ("generic_model.pkl", "generic_model.npz")
EYELID_NAMES: tuple[str, str] = ("l_eyelid.npy", "r_eyelid.npy")
MASKS_NAME = "FLAME_masks.pkl"
FLAME_URL = "https://flame.is.tue.mpg.de (FLAME 2020, generic_model.pkl)"
SMIRK_URL = "https://github.com/georgeretsi/smirk (assets/l_eyelid.npy, assets/r_eyelid.npy)"
MASKS_URL = ("https://flame.is.tue.mpg.de (FLAME vertex masks) or "
             "https://github.com/georgeretsi/smirk (assets/FLAME_masks/FLAME_masks.pkl)")
FIX_MODEL = ("use the original generic_model.pkl from flame.is.tue.mpg.de or convert it to .npz "
             "(hp3_core.head3d.flame_file.save_flame_npz)")
FIX_MASKS = ("use the original FLAME_masks.pkl from flame.is.tue.mpg.de (or SMIRK's "
             "assets/FLAME_masks) or convert it to .npz")
FIX_EYELIDS = "use l_eyelid.npy and r_eyelid.npy from SMIRK's assets folder, unchanged"
# FLAME (and SMIRK, DECA) put the expression components from index 300 of shapedirs on.
FLAME_N_SHAPE = 300
FLAME_NUM_JOINTS = 5  # global/root, neck, jaw, left eye, right eye


class FlameFileError(HP3Error):
    """A FLAME-related file that cannot be used: names the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX_MODEL) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"FLAME file '{self.path}': {problem}. Fix: {fix}")


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


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------

class _ChStandIn:
    """Stands in for ``chumpy.ch.Ch``: keeps only the ``x`` array of its pickled state."""

    x: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        x = state.get("x") if isinstance(state, dict) else None
        self.x = None if x is None else np.asarray(x)


class _SparseStandIn:
    """Stands in for a pickled scipy CSC/CSR matrix: keeps data/indices/indptr/shape."""

    axis = 1  # which axis indptr runs over: 1 for CSC (columns), 0 for CSR (rows)

    def __setstate__(self, state: Any) -> None:
        state = state if isinstance(state, dict) else {}
        self.data = state.get("data")
        self.indices = state.get("indices")
        self.indptr = state.get("indptr")
        self.shape = state.get("_shape", state.get("shape"))

    def to_dense(self) -> np.ndarray:
        shape = tuple(int(s) for s in self.shape)
        data, indices = np.asarray(self.data, np.float64), np.asarray(self.indices, np.int64)
        indptr = np.asarray(self.indptr, np.int64)
        if len(shape) != 2 or indptr.shape != (shape[self.axis] + 1,) or indptr[-1] > data.size:
            raise ValueError("a sparse matrix with inconsistent shape/indptr")
        dense = np.zeros(shape, np.float64)
        outer = np.repeat(np.arange(shape[self.axis]), np.diff(indptr))
        inner = indices[: indptr[-1]]
        if self.axis == 1:
            np.add.at(dense, (inner, outer), data[: indptr[-1]])
        else:
            np.add.at(dense, (outer, inner), data[: indptr[-1]])
        return dense


class _CscStandIn(_SparseStandIn):
    axis = 1


class _CsrStandIn(_SparseStandIn):
    axis = 0


_STAND_INS = (_ChStandIn, _CscStandIn, _CsrStandIn)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` (Python-2 protocol 0/1 objects), for the stand-ins only."""
    if cls not in _STAND_INS or base is not object:
        raise pickle.UnpicklingError(f"copy_reg._reconstructor of {cls!r} is not allowed")
    return object.__new__(cls)


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python-3 pickles of bytes (protocol < 3) use it; latin-1 only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin-1 strings only")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("chumpy.ch", "Ch"): _ChStandIn,
        ("copy_reg", "_reconstructor"): _safe_reconstructor,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = _np_reconstruct
        table[(mod, "scalar")] = _np_scalar
    for mod in ("scipy.sparse.csc", "scipy.sparse._csc"):
        table[(mod, "csc_matrix")] = _CscStandIn
    for mod in ("scipy.sparse.csr", "scipy.sparse._csr"):
        table[(mod, "csr_matrix")] = _CsrStandIn
    return table


_ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED_GLOBALS`; any other global is refused.

    Args:
        file: the open binary file.
        path: the file's path, for messages.
        fix: the fix a refusal message gives.
    """

    def __init__(self, file: io.BufferedIOBase, path: str | Path, fix: str = FIX_MODEL) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path
        self._fix = fix

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise FlameFileError(
                self._path, f"refused to load class '{module}.{name}' from the pickle (only numpy "
                "arrays, chumpy.ch.Ch and scipy sparse matrices are allowed; nothing was run)",
                self._fix)
        return target

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise FlameFileError(self._path, "the pickle uses persistent ids, which are refused",
                             self._fix)


def _read_pickle(path: Path, fix: str) -> Any:
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, path, fix).load()
    except HP3Error:
        raise
    except Exception as err:  # a damaged or foreign file: say so in one line
        raise FlameFileError(path, f"not a readable pickle ({type(err).__name__}: {err})",
                             fix) from err


def _plain(value: Any, key: str, path: Path, fix: str) -> Any:
    """A pickled value as a numpy array (stand-ins converted); other values unchanged."""
    if isinstance(value, _ChStandIn):
        if value.x is None:
            raise FlameFileError(path, f"'{key}' is a chumpy object without stored values", fix)
        return value.x
    if isinstance(value, _SparseStandIn):
        try:
            return value.to_dense()
        except (TypeError, ValueError) as err:
            raise FlameFileError(path, f"'{key}' is a damaged sparse matrix ({err})", fix) from err
    return value


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _read_npz(path: Path, fix: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise FlameFileError(path, "it holds Python objects (pickled arrays), which are refused",
                                 fix) from err
        raise FlameFileError(path, f"not a readable .npz ({err})", fix) from err
    except Exception as err:
        raise FlameFileError(path, f"not a readable .npz ({type(err).__name__}: {err})",
                             fix) from err


def _read_fields(path: Path, fix: str) -> dict[str, Any]:
    """The top-level dict of a FLAME-style ``.pkl`` or ``.npz`` file, arrays made plain."""
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
    v_template = np.asarray(_field(fields, path, "v_template"), np.float64)
    n_v = v_template.shape[0] if v_template.ndim == 2 else -1
    eyelids = None
    if "eyelids" in fields:
        eyelids = fields["eyelids"]
    elif "l_eyelid" in fields and "r_eyelid" in fields:
        eyelids = np.stack([np.asarray(fields["l_eyelid"]), np.asarray(fields["r_eyelid"])])
    n_shape = fields.get("n_shape")
    try:
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
    except (ValueError, TypeError) as err:
        raise FlameFileError(path, f"not a usable FLAME model: {err}") from err


def load_flame(path: str | Path, eyelids: str | Path | Sequence[str | Path] | None = None,
               masks: str | Path | None = None) -> FlameAssets:
    """Read a FLAME model safely.

    Args:
        path: ``generic_model.pkl`` (FLAME 2020, Python-2 pickle, read with
            :class:`RestrictedUnpickler`), a FLAME-style ``.npz``, or a folder holding one of
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
            (left first). The files are plain numpy arrays, read with ``allow_pickle=False``.

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
        try:
            arr = np.load(f, allow_pickle=False)
        except Exception as err:
            raise FlameFileError(f, f"not a plain .npy array ({type(err).__name__}: {err})",
                                 FIX_EYELIDS) from err
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 3 \
                or arr.dtype.kind not in "fiu":
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
        path: ``FLAME_masks.pkl`` (restricted unpickler), an ``.npz`` with the same keys, or a
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
    ids = np.asarray(fields[region])
    if ids.dtype.kind not in "iu" or ids.ndim != 1:
        raise FlameFileError(path, f"mask '{region}' is not a list of vertex indices", FIX_MASKS)
    return ids.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def flame_fields(assets: FlameAssets, extras: bool = True) -> dict[str, np.ndarray]:
    """The FLAME-named fields of ``assets`` (posedirs in FLAME's [V, 3, P] layout).

    Args:
        extras: also ``l_eyelid``/``r_eyelid``/``face_vertex_ids`` when the assets have them.
    """
    n_v, n_j = assets.num_vertices, assets.num_joints
    kintree = np.stack([assets.parents, np.arange(n_j)]).astype(np.int64)
    kintree[0, 0] = 2**32 - 1  # as in FLAME's file
    fields = {
        "v_template": assets.v_template,
        "shapedirs": assets.shapedirs,
        "posedirs": assets.posedirs.T.reshape(n_v, 3, -1),
        "J_regressor": assets.J_regressor,
        "kintree_table": kintree,
        "weights": assets.lbs_weights,
        "f": assets.faces.astype(np.uint32),
        "J": assets.J_regressor @ assets.v_template,
    }
    if assets.n_shape != min(FLAME_N_SHAPE, assets.shapedirs.shape[2]):
        fields["n_shape"] = np.asarray(assets.n_shape, np.int64)
    if extras and assets.eyelids is not None:
        fields["l_eyelid"], fields["r_eyelid"] = assets.eyelids[0], assets.eyelids[1]
    if extras and assets.face_vertex_ids is not None:
        fields["face_vertex_ids"] = assets.face_vertex_ids
    return fields


def save_flame_npz(assets: FlameAssets, path: str | Path, extras: bool = True) -> Path:
    """Write ``assets`` as a FLAME-style ``.npz`` (no pickled objects; see :func:`flame_fields`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, **flame_fields(assets, extras))
    return path


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
                w(b"(")
                for item in obj:
                    self.save(item)
                w(b"t")
        elif isinstance(obj, list):
            w(b"]")
            if obj:
                w(b"(")
                for item in obj:
                    self.save(item)
                w(b"e")
        elif isinstance(obj, dict):
            w(b"}")
            if obj:
                w(b"(")
                for key, val in obj.items():
                    self.save(key)
                    self.save(val)
                w(b"u")
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


def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with y as the polar axis: ``n_lat`` rings of ``n_lon`` vertices and two poles.

    Returns vertices [n_lat * n_lon + 2, 3] (top pole first, bottom pole last) and outward,
    counter-clockwise faces [2 * n_lat * n_lon, 3].
    """
    theta = np.pi * np.arange(1, n_lat + 1) / (n_lat + 1)
    phi = 2.0 * np.pi * np.arange(n_lon) / n_lon
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    ring = np.stack([st * np.sin(phi), np.broadcast_to(ct, (n_lat, n_lon)), st * np.cos(phi)], -1)
    verts = np.concatenate([[[0.0, 1.0, 0.0]], ring.reshape(-1, 3), [[0.0, -1.0, 0.0]]])
    idx = 1 + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    top, bottom = 0, n_lat * n_lon + 1
    faces = [np.stack([np.full(n_lon, top), idx[0], nxt[0]], -1)]
    for i in range(n_lat - 1):
        a, b, c, d = idx[i], nxt[i], idx[i + 1], nxt[i + 1]
        faces += [np.stack([a, c, b], -1), np.stack([b, c, d], -1)]
    faces.append(np.stack([np.full(n_lon, bottom), nxt[-1], idx[-1]], -1))
    faces_arr = np.concatenate(faces).astype(np.int64)
    # Make the winding outward (positive signed volume).
    tri = verts[faces_arr]
    if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
        faces_arr = faces_arr[:, ::-1].copy()
    return verts, faces_arr


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
    unit, head_faces = _uv_sphere(n_lat, n_lon)
    narrow = 1.0 - 0.4 * _smoothstep(0.3, 0.75, -unit[:, 1])
    head = unit * _SYN_RADII * np.stack([narrow, np.ones_like(narrow), narrow], -1)
    joints = _synthetic_joints()
    eye_unit, eye_faces = _uv_sphere(n_eye_lat, n_eye_lon)
    eyes = [joints[3] + _SYN_EYE_RADIUS * eye_unit, joints[4] + _SYN_EYE_RADIUS * eye_unit]
    v_template = np.concatenate([head, *eyes])
    nh = head.shape[0]
    faces = np.concatenate([head_faces, eye_faces + nh, eye_faces + nh + n_eye])
    n_v = v_template.shape[0]
    is_head = np.arange(n_v) < nh
    eye_ids = [np.arange(nh, nh + n_eye), np.arange(nh + n_eye, n_v)]

    # Skinning weights.
    x, y, z = head[:, 0], head[:, 1], head[:, 2]
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
