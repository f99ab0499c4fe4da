"""A pickle reader that interprets opcodes instead of running pickle's object model.

``pickle.Unpickler`` (even with a restricted ``find_class``) hands the file's data to real
constructors: ``numpy.dtype.__setstate__`` trusts the flags and offsets it is given,
``ndarray.__new__`` allocates whatever shape it is told, ``BUILD`` sets attributes on any object
the file names, and nested containers are built and later hashed or freed recursively in C. A
file of a few bytes can therefore crash the process or make it allocate gigabytes.

:class:`PickleMachine` walks the opcodes itself (``pickletools``' opcode table and argument
readers, no ``pickle.Unpickler``) and builds only inert values: ``None``, ``bool``, ``int``
(at most 64 bits), ``float``, ``str``, ``bytes`` and its own container nodes. Everything that
would call Python code (``GLOBAL``, ``REDUCE``, ``NEWOBJ``, ``BUILD``, persistent ids) is
delegated to a :class:`PicklePolicy`, which interprets the few calls a known file layout needs
and refuses every other one. Limits are checked *before* anything is built:

* nesting depth of containers and of open ``MARK``\\ s (:attr:`PickleLimits.max_depth`);
* the *expanded* size of every value, counting a part each time it is referenced
  (:attr:`PickleLimits.max_nodes`), so one list referenced many times through the memo cannot
  turn a few kilobytes into gigabytes when the result is converted to arrays;
* a container may not change after it was put into another one (pickle writers never do
  that), which also rules out reference cycles and keeps the two counts above exact.

Failures raise :class:`PickleRefused` with a one-line reason; callers add the file name and the
fix (e.g. :class:`~hp3_core.head3d.safe_pickle.FlameFileError`).
"""
from __future__ import annotations

import codecs
import io
import pickletools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Opcodes by their one-byte code (pickletools' public table, not a private dict).
_OPCODES: dict[bytes, pickletools.OpcodeInfo] = {op.code.encode("latin-1"): op
                                                 for op in pickletools.opcodes}
_SCALARS = (type(None), bool, int, float, str, bytes)


class PickleRefused(Exception):
    """The pickle was refused; ``str(err)`` is a one-line reason without file name or fix."""


@dataclass(frozen=True)
class PickleLimits:
    """Caps checked while reading, before anything is built from the file.

    Attributes:
        max_depth: deepest nesting of containers (and of open MARKs) allowed.
        max_nodes: the most values any one value may expand to, counting shared parts each time
            they are referenced (a container counts 1 plus its items; an array counts 1).
        max_int_bits: the widest integer accepted (larger ones are never needed by the formats
            read here and would only cost time).
    """

    max_depth: int = 32
    max_nodes: int = 2_000_000
    max_int_bits: int = 64

    @classmethod
    def for_size(cls, n_bytes: int, max_depth: int = 32) -> PickleLimits:
        """Limits for a pickle of ``n_bytes``: without shared references a pickle of n bytes
        holds fewer than n values, so n plus a small allowance leaves legitimate files alone."""
        return cls(max_depth=max_depth, max_nodes=int(n_bytes) + 1_000_000)


class Node:
    """A value built by the machine that holds other values.

    Attributes:
        depth: nesting depth (1 for a container of scalars).
        size: expanded size (1 + the sizes of its items, shared items counted every time).
        frozen: set once the node is put into another value; it may not change after that.
    """

    kind = "node"

    def __init__(self) -> None:
        self.depth = 1
        self.size = 1
        self.frozen = False

    def describe(self) -> str:
        """What the node is, for messages."""
        return self.kind


class TupleNode(Node):
    """A pickled tuple (immutable: its items are fixed when it is made)."""

    kind = "tuple"

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        self.items: tuple[Any, ...] = tuple(items)


class ListNode(Node):
    """A pickled list."""

    kind = "list"

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Any] = []


class DictNode(Node):
    """A pickled dict; keys are scalars only (hashing a nested key is never needed)."""

    kind = "dict"

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[Any, Any] = {}


class SetNode(Node):
    """A pickled set or frozenset of scalars."""

    kind = "set"

    def __init__(self, frozen_set: bool = False) -> None:
        super().__init__()
        self.items: set[Any] = set()
        self.is_frozenset = frozen_set


class GlobalRef(Node):
    """A class or function the pickle names; ``target`` is what the policy resolved it to."""

    kind = "global"

    def __init__(self, module: str, name: str, target: Any) -> None:
        super().__init__()
        self.module, self.name, self.target = module, name, target
        self.frozen = True  # never changed (BUILD on it is refused)

    def describe(self) -> str:
        return f"'{self.module}.{self.name}'"


class ObjectNode(Node):
    """An object a policy made (an array waiting for its state, a stand-in for a class).

    Attributes:
        kind: the policy's name for it.
        value: whatever the policy keeps (e.g. the finished numpy array).
        state: the value BUILD gave it, if any.
        built: whether BUILD was applied (at most once).
    """

    def __init__(self, kind: str, value: Any = None) -> None:
        super().__init__()
        self.kind = kind
        self.value = value
        self.state: Any = None
        self.built = False


def measure(value: Any) -> tuple[int, int]:
    """(depth, expanded size) of a value: scalars and leaf values are (0, 1)."""
    if isinstance(value, Node):
        return value.depth, value.size
    return 0, 1


def is_scalar(value: Any) -> bool:
    """Whether ``value`` is a plain scalar (usable as a dict key or set item)."""
    return type(value) in _SCALARS


class PicklePolicy:
    """What a file layout allows beyond plain data. The default refuses everything.

    Subclasses override the hooks they need; each returns a value for the stack or raises
    :class:`PickleRefused`. They get the machine to make nodes (:meth:`PickleMachine.make`),
    so that sizes and depths stay accounted.
    """

    #: Kinds of :class:`ObjectNode` that accept APPEND/SETITEM (e.g. an OrderedDict).
    item_kinds: frozenset[str] = frozenset()

    def resolve(self, module: str, name: str) -> Any:
        raise PickleRefused(f"refused to load class '{module}.{name}' from the pickle")

    def call(self, machine: PickleMachine, func: Any, args: TupleNode) -> Any:
        raise PickleRefused(f"calling {_describe(func)} is not allowed")

    def new(self, machine: PickleMachine, cls: Any, args: TupleNode) -> Any:
        raise PickleRefused(f"creating an object of {_describe(cls)} is not allowed")

    def build(self, machine: PickleMachine, obj: Any, state: Any) -> None:
        raise PickleRefused(f"setting the state of {_describe(obj)} (BUILD) is not allowed")

    def persistent(self, machine: PickleMachine, pid: Any) -> Any:
        raise PickleRefused("the pickle uses persistent ids, which are refused")


def _describe(value: Any) -> str:
    if isinstance(value, Node):
        return value.describe()
    return f"a {type(value).__name__}"


def _read_py2_string(f: io.BytesIO) -> str:
    """Protocol 0's ``STRING`` argument as ``pickle.Unpickler(encoding='latin1')`` reads it.

    (pickletools' own reader decodes it as ASCII, which Python 2's binary strings are not.)
    """
    line = f.readline()
    if not line.endswith(b"\n"):
        raise PickleRefused("a protocol-0 string has no end of line")
    data = line[:-1]
    if len(data) < 2 or data[:1] not in (b"'", b'"') or data[-1:] != data[:1]:
        raise PickleRefused("a protocol-0 string is not quoted")
    try:
        return codecs.escape_decode(data[1:-1])[0].decode("latin-1")
    except ValueError as err:
        raise PickleRefused(f"a protocol-0 string is malformed ({err})") from None


class PickleMachine:
    """Interprets one pickle's opcodes (see the module docstring).

    Args:
        data: the whole pickle.
        policy: what the file layout allows beyond plain data.
        limits: the caps (:meth:`PickleLimits.for_size` by default).
    """

    def __init__(self, data: bytes, policy: PicklePolicy, limits: PickleLimits | None = None) -> None:
        self.data = data
        self.policy = policy
        self.limits = limits or PickleLimits.for_size(len(data))
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self._dispatch: dict[str, Callable[[Any], None]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    # ----------------------------------------------------------------------------- accounting

    def check(self, node: Node) -> Node:
        """Refuse ``node`` if it is nested too deep or expands to too many values."""
        if node.depth > self.limits.max_depth:
            raise PickleRefused(f"values are nested more than {self.limits.max_depth} levels deep")
        if node.size > self.limits.max_nodes:
            raise PickleRefused(f"a value expands to more than {self.limits.max_nodes:,} items "
                                "(parts of it are referenced over and over)")
        return node

    def adopt(self, node: Node, children: Iterable[Any]) -> None:
        """Account ``children`` as now held by ``node``; they are frozen from now on."""
        children = list(children)
        for child in children:  # freeze first: a node added to itself is then refused below
            if isinstance(child, Node):
                child.frozen = True
        if node.frozen and not isinstance(node, GlobalRef):
            raise PickleRefused(f"the pickle changes a {node.describe()} after using it "
                                "(pickle writers never do; the file was crafted)")
        for child in children:
            depth, size = measure(child)
            node.depth = max(node.depth, depth + 1)
            node.size += size
        self.check(node)

    def make(self, node: Node, children: Iterable[Any] = ()) -> Node:
        """A new node holding ``children`` (accounted and checked)."""
        self.adopt(node, children)
        return node

    # ------------------------------------------------------------------------------- running

    def run(self) -> Any:
        """Interpret the pickle up to STOP; returns the value it describes."""
        f = io.BytesIO(self.data)
        while True:
            pos = f.tell()
            code = f.read(1)
            op = _OPCODES.get(code)
            if op is None:
                raise PickleRefused("the pickle ends before its STOP opcode" if not code else
                                    f"unknown pickle opcode {code!r} at byte {pos}")
            try:
                if op.name == "STRING":
                    arg = _read_py2_string(f)
                else:
                    arg = None if op.arg is None else op.arg.reader(f)
            except PickleRefused:
                raise
            except Exception as err:  # pickletools' readers raise ValueError and friends
                raise PickleRefused(f"damaged {op.name} at byte {pos} ({err})") from None
            if op.name == "STOP":
                if self.marks or len(self.stack) != 1:
                    raise PickleRefused("the pickle stops with unfinished values")
                return self.stack.pop()
            handler = self._dispatch.get(op.name)
            if handler is None:
                raise PickleRefused(f"the pickle opcode {op.name} is not supported by this reader")
            try:
                handler(arg)
            except IndexError:
                raise PickleRefused(f"{op.name} at byte {pos} finds too few values") from None

    # ------------------------------------------------------------------------------- helpers

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise IndexError
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise IndexError
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise PickleRefused("the pickle closes a MARK it never opened")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def _int(self, value: int | bool) -> int | bool:
        if not isinstance(value, bool) and value.bit_length() > self.limits.max_int_bits:
            raise PickleRefused(f"an integer wider than {self.limits.max_int_bits} bits")
        return value

    @staticmethod
    def _key(value: Any) -> Any:
        if not is_scalar(value):
            raise PickleRefused(f"a dict key or set item is {_describe(value)}, not a plain value")
        return value

    def _container(self, what: str, kinds: tuple[type, ...] = (), item_ok: bool = False) -> Any:
        target = self.top()
        if isinstance(target, kinds):
            return target
        if item_ok and isinstance(target, ObjectNode) and target.kind in self.policy.item_kinds:
            return target
        raise PickleRefused(f"{what} applied to {_describe(target)}")

    # ------------------------------------------------------------------------------- opcodes
    # One method per supported opcode (``op_<NAME>``); anything else is refused in run().

    def op_PROTO(self, arg: int) -> None:
        if not 0 <= arg <= 5:
            raise PickleRefused(f"unknown pickle protocol {arg}")

    def op_FRAME(self, arg: int) -> None:
        pass  # framing only groups opcodes; their bytes follow inline

    def op_MARK(self, arg: None) -> None:
        if len(self.marks) >= self.limits.max_depth:
            raise PickleRefused(f"values are nested more than {self.limits.max_depth} levels deep")
        self.marks.append(self.stack)
        self.stack = []

    def op_POP(self, arg: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self, arg: None) -> None:
        self.pop_mark()

    def op_DUP(self, arg: None) -> None:
        self.push(self.top())

    def op_NONE(self, arg: None) -> None:
        self.push(None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.push(True)

    def op_NEWFALSE(self, arg: None) -> None:
        self.push(False)

    def _push_int(self, arg: int) -> None:
        self.push(self._int(arg))

    op_INT = op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = _push_int

    def op_FLOAT(self, arg: float) -> None:
        self.push(float(arg))

    op_BINFLOAT = op_FLOAT

    def _push_str(self, arg: str) -> None:
        self.push(str(arg))

    # Python 2 byte strings are read as latin-1 text, as pickle.Unpickler(encoding="latin1") does.
    op_STRING = op_BINSTRING = op_SHORT_BINSTRING = _push_str
    op_UNICODE = op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = _push_str

    def _push_bytes(self, arg: bytes) -> None:
        self.push(bytes(arg))

    # A bytearray (protocol 5's in-band buffer) is read as plain bytes: nothing here mutates it.
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = op_BYTEARRAY8 = _push_bytes

    def op_EMPTY_TUPLE(self, arg: None) -> None:
        self.push(TupleNode())

    def op_TUPLE(self, arg: None) -> None:
        items = self.pop_mark()
        self.push(self.make(TupleNode(items), items))

    def _tuple_n(self, n: int) -> None:
        if len(self.stack) < n:
            raise IndexError
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        self.push(self.make(TupleNode(items), items))

    def op_TUPLE1(self, arg: None) -> None:
        self._tuple_n(1)

    def op_TUPLE2(self, arg: None) -> None:
        self._tuple_n(2)

    def op_TUPLE3(self, arg: None) -> None:
        self._tuple_n(3)

    def op_EMPTY_LIST(self, arg: None) -> None:
        self.push(ListNode())

    def op_LIST(self, arg: None) -> None:
        items = self.pop_mark()
        node = ListNode()
        node.items.extend(items)
        self.push(self.make(node, items))

    def op_APPEND(self, arg: None) -> None:
        value = self.pop()
        self._append([value])

    def op_APPENDS(self, arg: None) -> None:
        self._append(self.pop_mark())

    def _append(self, items: list[Any]) -> None:
        target = self._container("APPEND", (ListNode,), item_ok=True)
        self.adopt(target, items)
        if isinstance(target, ListNode):
            target.items.extend(items)

    def op_EMPTY_DICT(self, arg: None) -> None:
        self.push(DictNode())

    def op_DICT(self, arg: None) -> None:
        items = self.pop_mark()
        node = DictNode()
        self.push(node)
        self._set_items(items)

    def op_SETITEM(self, arg: None) -> None:
        value = self.pop()
        key = self.pop()
        self._set_items([key, value])

    def op_SETITEMS(self, arg: None) -> None:
        self._set_items(self.pop_mark())

    def _set_items(self, items: list[Any]) -> None:
        if len(items) % 2:
            raise PickleRefused("a dict is given an odd number of keys and values")
        target = self._container("SETITEM", (DictNode,), item_ok=True)
        keys = [self._key(k) for k in items[::2]]
        self.adopt(target, items)
        if isinstance(target, DictNode):
            target.items.update(zip(keys, items[1::2]))

    def op_EMPTY_SET(self, arg: None) -> None:
        self.push(SetNode())

    def op_ADDITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        target = self._container("ADDITEMS", (SetNode,))
        keys = [self._key(k) for k in items]
        self.adopt(target, keys)
        target.items.update(keys)

    def op_FROZENSET(self, arg: None) -> None:
        items = [self._key(k) for k in self.pop_mark()]
        node = SetNode(frozen_set=True)
        node.items.update(items)
        self.push(self.make(node, items))

    def op_GLOBAL(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self.push(self._resolve(module, name))

    def op_STACK_GLOBAL(self, arg: None) -> None:
        name, module = self.pop(), self.pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise PickleRefused("STACK_GLOBAL names a class with non-strings")
        self.push(self._resolve(module, name))

    def _resolve(self, module: str, name: str) -> GlobalRef:
        return GlobalRef(module, name, self.policy.resolve(module, name))

    def op_REDUCE(self, arg: None) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(args, TupleNode):
            raise PickleRefused(f"REDUCE with {_describe(args)} as arguments")
        self.adopt(TupleNode(), [func, args])  # freezes them
        self.push(self.policy.call(self, func, args))

    def op_NEWOBJ(self, arg: None) -> None:
        args = self.pop()
        cls = self.pop()
        if not isinstance(args, TupleNode):
            raise PickleRefused(f"NEWOBJ with {_describe(args)} as arguments")
        self.adopt(TupleNode(), [cls, args])
        self.push(self.policy.new(self, cls, args))

    def op_BUILD(self, arg: None) -> None:
        state = self.pop()
        obj = self.top()
        if not isinstance(obj, ObjectNode) or obj.built:
            raise PickleRefused(f"setting the state of {_describe(obj)} (BUILD) is not allowed")
        self.adopt(obj, [state])  # refuses an object already used elsewhere
        self.policy.build(self, obj, state)
        obj.state, obj.built = state, True

    def op_PERSID(self, arg: str) -> None:
        self.push(self.policy.persistent(self, arg))

    def op_BINPERSID(self, arg: None) -> None:
        pid = self.pop()
        if isinstance(pid, Node):
            pid.frozen = True
        self.push(self.policy.persistent(self, pid))

    def _put(self, index: int) -> None:
        if index < 0:
            raise PickleRefused("a negative memo index")
        self.memo[index] = self.top()

    def op_PUT(self, arg: int) -> None:
        self._put(int(arg))

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_MEMOIZE(self, arg: None) -> None:
        self._put(len(self.memo))

    def op_GET(self, arg: int) -> None:
        try:
            self.push(self.memo[int(arg)])
        except KeyError:
            raise PickleRefused(f"memo entry {arg} is used before it is stored") from None

    op_BINGET = op_LONG_BINGET = op_GET
