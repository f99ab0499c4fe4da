"""Restricted unpickling of FLAME's pickle files.

FLAME's ``generic_model.pkl`` and ``FLAME_masks.pkl`` are Python-2 pickles. The model's dict
holds numpy arrays (``v_template``, ``posedirs``, ``weights``, ``kintree_table``, ``f``, ``J``),
a ``chumpy.ch.Ch`` object (``shapedirs``) and a ``scipy.sparse.csc.csc_matrix``
(``J_regressor``). Unpickling can run any function a file names, so these files are read with
:class:`RestrictedUnpickler`, which resolves only an explicit allow-list of globals: numpy's
array/dtype/scalar reconstructors, and stand-ins for the chumpy and scipy-sparse classes that
only keep the arrays of their pickled state. Only arrays are rebuilt: chumpy is never imported
(nor are scipy's classes, through the pickle). Any other class is refused with a
:class:`FlameFileError` naming the file and the class, before it can run.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HP3Error

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]

FIX_MODEL = ("use the original generic_model.pkl from flame.is.tue.mpg.de or convert it to .npz "
             "(hp3_core.head3d.flame_synthetic.save_flame_npz)")


class FlameFileError(HP3Error):
    """A FLAME-related file that cannot be used: names the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX_MODEL) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"FLAME file '{self.path}': {problem}. Fix: {fix}")


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
