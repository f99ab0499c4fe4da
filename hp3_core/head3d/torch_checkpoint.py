"""Checks on a PyTorch checkpoint (``torch.save``'s zip format) before ``torch.load`` reads it.

``torch.load(weights_only=True)`` refuses classes outside its allow-list, but it still builds
whatever structure the file describes: a deeply nested tuple used as a dict key crashes the
interpreter when it is hashed, a deflated zip record inflates to any size, and the legacy
(non-zip) format allocates every storage at the size the file claims before reading it.
:func:`check_torch_checkpoint` looks at the file first, allocating nothing the file's bytes do
not hold:

* the file is a zip whose records are all stored uncompressed (as ``torch.save`` writes them)
  and whose sizes add up to no more than the file;
* its ``data.pkl`` is walked opcode by opcode with :class:`~.pickle_machine.PickleMachine` under
  the same caps as FLAME's pickles (nesting depth, expanded size, plain dict keys); no class is
  resolved or called (``weights_only`` still decides which are allowed);
* every storage it references is a record of the archive whose size is exactly the storage's
  element count times its element size.

Failures raise :class:`CheckpointRefused` with a one-line reason; the caller adds the file name
and the fix (e.g. :class:`~.smirk_encoder.SmirkWeightFileError`).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from .pickle_machine import (GlobalRef, ObjectNode, PickleLimits, PickleMachine, PicklePolicy,
                             PickleRefused, TupleNode)

MAX_RECORDS = 100_000
MAX_PICKLE_BYTES = 256 * 2**20  # SMIRK_em1.pt's data.pkl is well under 1 MB
MAX_DEPTH = 32

# Bytes per element of the storage classes a state dict may name (torch.<Name>Storage).
_STORAGE_ELEMENT_SIZES = {
    "UntypedStorage": 1, "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1,
    "ShortStorage": 2, "HalfStorage": 2, "BFloat16Storage": 2, "IntStorage": 4,
    "FloatStorage": 4, "LongStorage": 8, "DoubleStorage": 8, "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


class CheckpointRefused(Exception):
    """The checkpoint was refused; ``str(err)`` is a one-line reason without file name or fix."""


class _ScanPolicy(PicklePolicy):
    """Structure only: globals and calls become opaque objects; storages are checked.

    Args:
        records: uncompressed size of every record of the archive, by name.
        prefix: the archive's top folder (``<prefix>/data.pkl``).
    """

    item_kinds = frozenset({"opaque"})  # an OrderedDict made by REDUCE gets SETITEMS

    def __init__(self, records: dict[str, int], prefix: str) -> None:
        self.records = records
        self.prefix = prefix

    def resolve(self, module: str, name: str) -> str:
        return f"{module}.{name}"

    def call(self, machine: PickleMachine, func: Any, args: TupleNode) -> Any:
        return machine.make(ObjectNode("opaque"), [func, args])

    new = call

    def build(self, machine: PickleMachine, obj: Any, state: Any) -> None:
        if obj.kind != "opaque":
            super().build(machine, obj, state)

    def persistent(self, machine: PickleMachine, pid: Any) -> Any:
        # ('storage', torch.<Type>Storage, key, location, numel), as torch.save writes it.
        items = pid.items if isinstance(pid, TupleNode) else ()
        if len(items) != 5 or items[0] != "storage" or not isinstance(items[1], GlobalRef) \
                or not isinstance(items[2], str) or type(items[4]) is not int or items[4] < 0:
            raise PickleRefused("a tensor's storage reference is not ('storage', type, key, "
                                "location, size)")
        size = _STORAGE_ELEMENT_SIZES.get(items[1].name) if items[1].module == "torch" else None
        if size is None:
            raise PickleRefused(f"a tensor's storage type {items[1].describe()} is not supported")
        record = f"{self.prefix}/data/{items[2]}"
        if self.records.get(record) != items[4] * size:
            raise PickleRefused(f"storage '{items[2]}' claims {items[4] * size} bytes but the "
                                f"archive holds {self.records.get(record, 0)}")
        return ObjectNode("storage")


def _records(archive: zipfile.ZipFile, file_size: int) -> dict[str, int]:
    """Uncompressed record sizes by name, after the zip-level checks."""
    infos = archive.infolist()
    if len(infos) > MAX_RECORDS:
        raise CheckpointRefused(f"the archive has {len(infos)} records")
    if any(i.compress_type != zipfile.ZIP_STORED or i.compress_size != i.file_size for i in infos):
        raise CheckpointRefused("the archive has compressed records (torch.save never writes "
                                "them; they can unpack to any size)")
    if sum(i.file_size for i in infos) > file_size:
        raise CheckpointRefused("the archive's records claim more bytes than the file has")
    return {i.filename: i.file_size for i in infos}


def check_torch_checkpoint(path: str | Path) -> None:
    """Check ``path`` as described in the module docstring; returns if it may be loaded.

    Raises:
        CheckpointRefused: not a zip checkpoint, compressed or oversized records, a ``data.pkl``
            that is damaged, nested too deep or expands too much, or a storage whose record is
            missing or of the wrong size.
    """
    path = Path(path)
    file_size = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointRefused(f"not a PyTorch zip checkpoint ({err}); the pre-1.6 format is "
                                "refused, as it allocates whatever sizes it claims (a file you "
                                "trust can be re-saved with a current torch.save)") from None
    with archive:
        records = _records(archive, file_size)
        pickles = [n for n in records if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointRefused(f"the archive has {len(pickles)} data.pkl records, not one")
        if records[pickles[0]] > MAX_PICKLE_BYTES:
            raise CheckpointRefused(f"its data.pkl is {records[pickles[0]]} bytes")
        data = archive.read(pickles[0])
    prefix = pickles[0].split("/", 1)[0]
    try:
        PickleMachine(data, _ScanPolicy(records, prefix),
                      PickleLimits.for_size(len(data), MAX_DEPTH)).run()
    except PickleRefused as err:
        raise CheckpointRefused(f"its data.pkl is refused: {err}") from None
