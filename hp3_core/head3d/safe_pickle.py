"""Reading FLAME's pickle files without running pickle's object model.

FLAME's ``generic_model.pkl`` and ``FLAME_masks.pkl`` are Python-2 pickles. The model's dict
holds numpy arrays (``v_template``, ``posedirs``, ``weights``, ``kintree_table``, ``f``, ``J``),
a ``chumpy.ch.Ch`` object (``shapedirs``) and a ``scipy.sparse.csc.csc_matrix``
(``J_regressor``). A pickle can name any function, and even numpy's own reconstructors trust the
file (a forged ``numpy.dtype`` state makes numpy follow a pointer read from the file; an
``ndarray`` shape allocates whatever it says), so these files are never given to
``pickle.Unpickler``. :func:`_read_pickle` interprets the opcodes with
:class:`~.pickle_machine.PickleMachine` and understands only what FLAME files contain:

* plain data: dicts, lists, tuples, sets, strings, numbers;
* numpy arrays pickled through ``numpy.core.multiarray._reconstruct`` + state (or protocol 5's
  ``_frombuffer``) and numpy scalars, with a dtype from :data:`PLAIN_DTYPES` only (never an
  object or structured dtype), built by :func:`numpy.frombuffer` from bytes that are in the file
  and match the shape exactly;
* ``chumpy.ch.Ch`` objects (only their ``x`` array is kept) and scipy CSC/CSR matrices (their
  ``data``/``indices``/``indptr``/``shape``), rebuilt by stand-ins; neither chumpy nor scipy is
  imported.

Any other class is refused before anything is built, as are BUILD on anything but an array,
dtype or stand-in, nesting deeper than :data:`MAX_DEPTH`, values that expand to more items than
the file could hold, and dense matrices larger than the file justifies. Every failure is a
one-line :class:`FlameFileError` naming the file and the fix.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HP3Error
from .pickle_machine import (DictNode, GlobalRef, ListNode, Node, ObjectNode, PickleLimits,
                             PickleMachine, PicklePolicy, PickleRefused, SetNode, TupleNode,
                             is_scalar)

FIX_MODEL = ("use the original generic_model.pkl from flame.is.tue.mpg.de or convert it to .npz "
             "(hp3_core.head3d.flame_npz.save_flame_npz)")

# numpy type strings (without byte order) an array in a FLAME file may have.
PLAIN_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
MAX_DEPTH = 32  # FLAME's pickles nest 5 levels (dict > Ch > state > set > list)
MAX_DIMS = 8  # FLAME's arrays have at most 3 dimensions
MAX_PICKLE_BYTES = 1 << 30  # FLAME 2020's generic_model.pkl is about 50 MB


def dense_budget(n_bytes: int) -> int:
    """The most elements a sparse matrix of a file of ``n_bytes`` may expand to when made dense.

    FLAME's J_regressor is 5 x 5023; a file's dense matrices may take a few times the file's own
    size, never gigabytes from a small file.
    """
    return 1_000_000 + 4 * int(n_bytes)


class FlameFileError(HP3Error):
    """A FLAME-related file that cannot be used: names the file, the problem and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = FIX_MODEL) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"FLAME file '{self.path}': {problem}. Fix: {fix}")


class _ChStandIn:
    """Stands in for ``chumpy.ch.Ch``: keeps only the ``x`` value of its pickled state."""

    def __init__(self, x: Any = None) -> None:
        self.x = x


class _SparseStandIn:
    """Stands in for a pickled scipy CSC/CSR matrix: keeps data/indices/indptr/shape.

    Attributes:
        axis: the axis ``indptr`` runs over: 1 for CSC (columns), 0 for CSR (rows).
        max_elements: the largest dense size :meth:`to_dense` may allocate.
    """

    axis = 1

    def __init__(self, state: dict[str, Any], max_elements: int) -> None:
        self.data = state.get("data")
        self.indices = state.get("indices")
        self.indptr = state.get("indptr")
        self.shape = state.get("_shape", state.get("shape"))
        self.max_elements = max_elements

    def to_dense(self) -> np.ndarray:
        """The matrix as a dense float64 [rows, cols] array.

        Raises:
            ValueError: inconsistent parts, indices out of range, or a dense size over
                ``max_elements``.
        """
        shape = _dims(self.shape)
        if len(shape) != 2:
            raise ValueError(f"a sparse matrix of shape {self.shape!r}")
        if shape[0] * shape[1] > self.max_elements:
            raise ValueError(f"a sparse matrix of {shape[0]} x {shape[1]} is larger than the file "
                             "can describe")
        data = _numeric(self.data, "data").reshape(-1).astype(np.float64)
        indices = _numeric(self.indices, "indices", "iu").reshape(-1).astype(np.int64)
        indptr = _numeric(self.indptr, "indptr", "iu").reshape(-1).astype(np.int64)
        outer_n, inner_n = shape[self.axis], shape[1 - self.axis]
        nnz = int(indptr[-1]) if indptr.size else -1
        if (indptr.shape != (outer_n + 1,) or indptr[0] != 0 or (np.diff(indptr) < 0).any()
                or nnz > min(data.size, indices.size)):
            raise ValueError("a sparse matrix with inconsistent shape/indptr")
        inner = indices[:nnz]
        if inner.size and (inner.min() < 0 or inner.max() >= inner_n):
            raise ValueError("a sparse matrix with indices out of range")
        dense = np.zeros(shape, np.float64)
        outer = np.repeat(np.arange(outer_n), np.diff(indptr))
        where = (inner, outer) if self.axis == 1 else (outer, inner)
        np.add.at(dense, where, data[:nnz])
        return dense


class _CscStandIn(_SparseStandIn):
    axis = 1


class _CsrStandIn(_SparseStandIn):
    axis = 0


def _dims(shape: Any) -> tuple[int, ...]:
    """A shape from the file as a tuple of non-negative ints (bools and floats refused)."""
    if not isinstance(shape, tuple) or len(shape) > MAX_DIMS \
            or any(type(n) is not int or n < 0 for n in shape):
        raise ValueError(f"the shape {shape!r} is not a tuple of at most {MAX_DIMS} sizes")
    return shape


def _numeric(value: Any, what: str, kinds: str = "biuf") -> np.ndarray:
    """``value`` (an array, or nested lists of numbers) as a plain numeric array."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"'{what}' is not a numeric array ({err})") from None
    if arr.dtype.kind not in kinds or arr.dtype.names is not None:
        raise ValueError(f"'{what}' is not a numeric array (dtype {arr.dtype})")
    return arr


# ------------------------------------------------------------------------------------ policy

# What each allowed global stands for; anything else is refused before it is used. One row per
# object: (the names of its module, which moved between Python 2 and 3, numpy 1 and 2, and scipy
# versions; its name in that module; what it stands for).
_ALLOWED_OBJECTS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("numpy",), "ndarray", "ndarray"),
    (("numpy",), "dtype", "dtype"),
    (("chumpy.ch",), "Ch", "ch"),
    (("copy_reg", "copyreg"), "_reconstructor", "reconstructor"),
    (("__builtin__", "builtins"), "object", "object"),
    (("__builtin__", "builtins"), "set", "set"),
    (("__builtin__", "builtins"), "frozenset", "frozenset"),
    (("_codecs",), "encode", "encode"),
    (("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct", "reconstruct"),
    (("numpy.core.multiarray", "numpy._core.multiarray"), "scalar", "scalar"),
    (("numpy.core.numeric", "numpy._core.numeric"), "_frombuffer", "frombuffer"),
    (("scipy.sparse.csc", "scipy.sparse._csc"), "csc_matrix", "csc"),
    (("scipy.sparse.csr", "scipy.sparse._csr"), "csr_matrix", "csr"),
)
_ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    (module, name): meaning for modules, name, meaning in _ALLOWED_OBJECTS for module in modules}
_STAND_IN_KINDS = ("ch", "csc", "csr")
_LATIN1 = ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1")


def _target(value: Any) -> str | None:
    return value.target if isinstance(value, GlobalRef) else None


def _raw_bytes(raw: Any, what: str) -> bytes:
    """Array data as pickled: bytes, or a Python-2 byte string read as latin-1 text."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            raise PickleRefused(f"{what} data is text, not bytes") from None
    if isinstance(raw, ListNode):
        raise PickleRefused(f"{what} holds Python objects, which are refused")
    raise PickleRefused(f"{what} data is a {type(raw).__name__}, not bytes")


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, ObjectNode) or value.kind != "dtype":
        raise PickleRefused(f"an array's dtype is {type(value).__name__}, not a numpy dtype")
    return value.value


def _array(raw: Any, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    """An array of a plain dtype from bytes that hold exactly ``shape``'s elements (copied)."""
    try:
        dims = _dims(shape.items if isinstance(shape, TupleNode) else shape)
    except ValueError as err:
        raise PickleRefused(f"an array's {err}") from None
    data = _raw_bytes(raw, "an array's")
    if math.prod(dims) * dtype.itemsize != len(data):
        raise PickleRefused(f"an array of shape {list(dims)} ({dtype}) needs "
                            f"{math.prod(dims) * dtype.itemsize} bytes but the file has {len(data)}")
    flat = np.frombuffer(data, dtype=dtype)
    return np.array(flat.reshape(dims, order="F" if fortran else "C"), order="C")


class FlamePolicy(PicklePolicy):
    """What FLAME's pickles need beyond plain data (see the module docstring).

    Args:
        max_dense: the largest dense size a sparse matrix of this file may take.
    """

    def __init__(self, max_dense: int) -> None:
        self.max_dense = max_dense

    def resolve(self, module: str, name: str) -> str:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise PickleRefused(
                f"refused to load class '{module}.{name}' from the pickle (only numpy arrays, "
                "chumpy.ch.Ch and scipy sparse matrices are allowed; nothing was run)")
        return target

    def call(self, machine: PickleMachine, func: Any, args: TupleNode) -> Any:
        handler = {"reconstruct": self._reconstruct, "dtype": self._dtype, "scalar": self._scalar,
                   "frombuffer": self._frombuffer, "reconstructor": self._reconstructor,
                   "set": self._set, "frozenset": self._set, "encode": self._encode,
                   }.get(_target(func))
        if handler is None:
            what = func.describe() if isinstance(func, Node) else type(func).__name__
            raise PickleRefused(f"calling {what} is not allowed")
        return handler(machine, _target(func), args.items)

    def new(self, machine: PickleMachine, cls: Any, args: TupleNode) -> Any:
        if _target(cls) not in _STAND_IN_KINDS or args.items:
            return super().new(machine, cls, args)
        return ObjectNode(_target(cls))

    def build(self, machine: PickleMachine, obj: Any, state: Any) -> None:
        if obj.kind == "array":
            obj.value = self._array_state(state)
        elif obj.kind == "dtype":
            obj.value = self._dtype_state(obj.value, state)
        elif obj.kind in _STAND_IN_KINDS:
            if not isinstance(state, DictNode):
                raise PickleRefused(f"the state of a {obj.kind} object is not a dict")
        else:
            super().build(machine, obj, state)

    # The calls FLAME's pickles make. Each checks its arguments and allocates nothing the
    # file's bytes do not hold.

    @staticmethod
    def _reconstruct(machine: PickleMachine, _: str, args: tuple) -> ObjectNode:
        # numpy's _reconstruct(ndarray, (0,), b'b') makes an empty array that BUILD fills; the
        # real one would allocate the shape given here, so it is only checked, never used.
        if len(args) != 3 or _target(args[0]) != "ndarray" or not isinstance(args[1], TupleNode) \
                or args[2] not in ("b", b"b"):
            raise PickleRefused("numpy's _reconstruct is called with unexpected arguments")
        return ObjectNode("array")

    @staticmethod
    def _dtype(machine: PickleMachine, _: str, args: tuple) -> ObjectNode:
        name = args[0] if args else None
        base = name.lstrip("<>|=") if isinstance(name, str) else None
        if base not in PLAIN_DTYPES or len(args) > 3:
            raise PickleRefused(f"refused numpy dtype {name!r}: only plain numeric arrays "
                                f"({', '.join(sorted(PLAIN_DTYPES))}) are read")
        return ObjectNode("dtype", np.dtype(name))

    @staticmethod
    def _dtype_state(dtype: np.dtype, state: Any) -> np.dtype:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata]):
        # a plain dtype has no subarray/names/fields and no flags; anything else is refused
        # rather than handed to numpy's dtype.__setstate__, which trusts it.
        items = state.items if isinstance(state, TupleNode) else ()
        if len(items) not in (8, 9) or items[0] not in (3, 4) or items[1] not in ("<", ">", "|", "=") \
                or items[2:5] != (None, None, None) or items[7] != 0 \
                or items[5] not in (-1, dtype.itemsize) or items[6] not in (-1, dtype.alignment) \
                or (len(items) == 9 and items[8] is not None):
            raise PickleRefused("a numpy dtype with a structured, object or unusual state")
        order = items[1]
        return dtype.newbyteorder(order) if order in ("<", ">") and dtype.itemsize > 1 else dtype

    @staticmethod
    def _array_state(state: Any) -> np.ndarray:
        # ndarray state: (version, shape, dtype, is_fortran, raw) or, older, without version.
        items = state.items if isinstance(state, TupleNode) else ()
        if len(items) == 5 and items[0] == 1:
            items = items[1:]
        if len(items) != 4 or type(items[2]) not in (bool, int):
            raise PickleRefused("an array's state is not (shape, dtype, fortran order, data)")
        shape, dtype, fortran, raw = items
        return _array(raw, _dtype_of(dtype), shape, bool(fortran))

    @staticmethod
    def _frombuffer(machine: PickleMachine, _: str, args: tuple) -> np.ndarray:
        # Protocol 5: _frombuffer(buffer, dtype, shape, order[, axis_order]); order "K" means
        # the buffer is C-ordered in memory order and axis_order transposes it back.
        if len(args) not in (4, 5) or args[3] not in ("C", "F", "K"):
            raise PickleRefused("numpy's _frombuffer is called with unexpected arguments")
        arr = _array(args[0], _dtype_of(args[1]), args[2], args[3] == "F")
        axes = args[4] if len(args) == 5 else None
        if args[3] != "K" or axes is None:
            return arr
        if not isinstance(axes, TupleNode) or sorted(axes.items) != list(range(arr.ndim)):
            raise PickleRefused("numpy's _frombuffer is given an axis order that is not a permutation")
        return np.ascontiguousarray(arr.transpose(axes.items))

    @staticmethod
    def _scalar(machine: PickleMachine, _: str, args: tuple) -> np.generic:
        if len(args) != 2:
            raise PickleRefused("numpy's scalar is called with unexpected arguments")
        dtype = _dtype_of(args[0])
        data = _raw_bytes(args[1], "a numpy scalar's")
        if len(data) != dtype.itemsize:
            raise PickleRefused(f"a numpy {dtype} scalar with {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype, count=1)[0]

    @staticmethod
    def _reconstructor(machine: PickleMachine, _: str, args: tuple) -> ObjectNode:
        # copy_reg._reconstructor(cls, object, None): how Python 2's protocols 0/1 make objects.
        if len(args) != 3 or _target(args[0]) not in _STAND_IN_KINDS or _target(args[1]) != "object" \
                or args[2] is not None:
            raise PickleRefused("copy_reg._reconstructor is allowed for chumpy and scipy objects only")
        return ObjectNode(_target(args[0]))

    @staticmethod
    def _set(machine: PickleMachine, kind: str, args: tuple) -> SetNode:
        if len(args) > 1 or (args and not isinstance(args[0], (ListNode, TupleNode, SetNode))):
            raise PickleRefused(f"{kind}() is called with unexpected arguments")
        items = list(args[0].items) if args else []
        if not all(is_scalar(item) for item in items):
            raise PickleRefused(f"a {kind} holds something other than plain values")
        node = SetNode(frozen_set=kind == "frozenset")
        node.items.update(items)
        return machine.make(node, items)

    @staticmethod
    def _encode(machine: PickleMachine, _: str, args: tuple) -> bytes:
        # _codecs.encode(text, 'latin1'): how Python 3 writes bytes in protocol 2.
        if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str) \
                or args[1].lower() not in _LATIN1:
            raise PickleRefused("_codecs.encode is allowed for latin-1 strings only")
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise PickleRefused("_codecs.encode of text that is not latin-1") from None


# ------------------------------------------------------------------------------ conversion

class _Converter:
    """The machine's result as plain Python values, arrays and stand-ins (shared parts once)."""

    def __init__(self, max_dense: int) -> None:
        self.max_dense = max_dense
        self.done: dict[int, Any] = {}

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, Node):
            return value  # scalars, numpy arrays and numpy scalars
        key = id(value)
        if key not in self.done:
            self.done[key] = self._convert(value)
        return self.done[key]

    def _convert(self, node: Node) -> Any:
        if isinstance(node, TupleNode):
            return tuple(self(v) for v in node.items)
        if isinstance(node, ListNode):
            return [self(v) for v in node.items]
        if isinstance(node, DictNode):
            return {k: self(v) for k, v in node.items.items()}
        if isinstance(node, SetNode):
            return frozenset(node.items) if node.is_frozenset else set(node.items)
        if isinstance(node, ObjectNode):
            return self._object(node)
        raise PickleRefused(f"the data holds a class reference ({node.describe()}), not a value")

    def _object(self, node: ObjectNode) -> Any:
        if node.kind == "array":
            if node.value is None:
                raise PickleRefused("an array has no data (its state was never set)")
            return node.value
        if node.kind == "dtype":
            return node.value
        state = self(node.state) if node.state is not None else {}
        if node.kind == "ch":
            return _ChStandIn(state.get("x"))
        cls = _CscStandIn if node.kind == "csc" else _CsrStandIn
        return cls(state, self.max_dense)


def _read_pickle(path: Path, fix: str) -> Any:
    """The value a FLAME-style pickle describes (arrays, stand-ins, plain data).

    Raises:
        FlameFileError: the file is refused, damaged or too large; one line with ``fix``.
    """
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise FlameFileError(path, f"the file is {size / 2**20:.0f} MB, far more than a FLAME "
                                 "model needs", fix)
        data = path.read_bytes()
        limits = PickleLimits.for_size(len(data), MAX_DEPTH)
        value = PickleMachine(data, FlamePolicy(dense_budget(len(data))), limits).run()
        return _Converter(dense_budget(len(data)))(value)
    except HP3Error:
        raise
    except PickleRefused as err:
        raise FlameFileError(path, str(err), fix) from None
    except MemoryError:
        raise FlameFileError(path, "it needs more memory than this machine has", fix) from None
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file: say so in one line
        raise FlameFileError(path, f"not a readable pickle ({type(err).__name__}: {err})",
                             fix) from None


def _plain(value: Any, key: str, path: Path, fix: str) -> Any:
    """A pickled value as a numpy array (stand-ins converted); other values unchanged."""
    try:
        if isinstance(value, _ChStandIn):
            if value.x is None:
                raise FlameFileError(path, f"'{key}' is a chumpy object without stored values", fix)
            return _numeric(value.x, key)
        if isinstance(value, _SparseStandIn):
            return value.to_dense()
    except (TypeError, ValueError) as err:
        raise FlameFileError(path, f"'{key}' is a damaged array or sparse matrix ({err})",
                             fix) from None
    return value
