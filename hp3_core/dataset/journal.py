"""The builder's side of a dataset folder: what is done already, and writing new items in order.

``build-dataset`` is resumable: the manifest and ``skipped.jsonl`` are its journal. On start,
:meth:`DatasetJournal.open` checks the folder's header (format version and settings: a run with
other settings would mix two kinds of items, so it is refused, naming the fields) and reads which
items are recorded or skipped for a content reason; those are not redone.

Finished items are buffered and written in batches of ``flush_every``: each batch first rewrites
the group's shard (atomically) with the new tensors, *then* appends the records, so a record in
the manifest always has its features on disk (the format's rule). A killed run loses at most the
unflushed batch, which a resumed run redoes. Batching matters: rewriting a whole shard per item
would make a group of n items cost O(n^2) bytes written.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .item_worker import ItemResult
from .manifest import (FORMAT_VERSION, HEADER, MANIFEST, SKIPPED, DatasetError, DatasetRecord, append_jsonl,
                       read_header, read_jsonl, read_shard, write_header, write_shard)
from .skips import Skip

log = logging.getLogger(__name__)

# Settings that change what an item is: a resumed run must use the same values.
COMPARED_SETTINGS = ("size", "backend", "render_style", "recognizer", "pack", "detection", "fps",
                     "max_frames_per_video", "dedup_threshold", "second_face_ratio", "builder_version")

RECORDED = "recorded"
SKIPPED_BEFORE = "skipped"


class DatasetJournal:
    """A dataset folder opened for building (see the module docstring).

    Attributes:
        root: the dataset folder.
        settings: the header's settings (``crop_size`` filled in once the first item is known).
        records: id -> record, every item in the manifest (the last line of an id wins).
        skips: id -> the last skip of each item that is not recorded.
    """

    def __init__(self, root: Path, settings: dict[str, Any], flush_every: int = 8) -> None:
        self.root = root
        self.settings = settings
        self.flush_every = max(1, int(flush_every))
        self.records: dict[str, DatasetRecord] = {}
        self.skips: dict[str, Skip] = {}
        self._pending: list[ItemResult] = []
        self._shard_cache: dict[str, dict[str, torch.Tensor]] = {}
        for data in read_jsonl(root / MANIFEST):
            rec = DatasetRecord.from_dict(data)
            self.records[rec.id] = rec
        for data in read_jsonl(root / SKIPPED):
            skip = Skip.from_dict(data)
            self.skips[skip.id] = skip
        for item_id in self.records:
            self.skips.pop(item_id, None)  # a retried item that later succeeded

    @classmethod
    def open(cls, root: str | Path, settings: Mapping[str, Any], flush_every: int = 8) -> DatasetJournal:
        """Open ``root`` for building with ``settings`` (a new folder gets a header).

        Raises:
            DatasetError: an older/newer format (from :func:`read_header`), other settings
                (names the fields), or a non-empty folder that is not a dataset.
        """
        root = Path(root)
        settings = dict(settings)
        if (root / HEADER).is_file():
            old = dict(read_header(root).get("settings", {}))
            diff = [k for k in COMPARED_SETTINGS if old.get(k) != settings.get(k)]
            if diff:
                changes = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                raise DatasetError(f"dataset '{root}' was built with other settings ({changes}); a resumed run "
                                   "must use the same ones: rerun with the old values, or build into a new --out")
            settings["crop_size"] = old.get("crop_size") or settings.get("crop_size")
            journal = cls(root, settings, flush_every)
            log.info("resuming %s: %d item(s) recorded, %d skipped", root, len(journal.records), len(journal.skips))
            return journal
        if root.exists() and not root.is_dir():
            raise DatasetError(f"--out '{root}' is a file; give a folder for the dataset")
        if root.is_dir() and any(root.iterdir()):
            raise DatasetError(f"--out '{root}' is not empty and is not an HP3 dataset (no {HEADER}); "
                               "give a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
        write_header(root, settings, {"status": "building"})
        return cls(root, settings, flush_every)

    # ----------------------------------------------------------------------- state

    def status(self, group: str, key: str) -> str | None:
        """``recorded``, ``skipped`` (for a content reason: not redone) or None (to do)."""
        item_id = f"{group}/{key}"
        if item_id in self.records:
            return RECORDED
        skip = self.skips.get(item_id)
        if skip is not None and skip.is_content:
            return SKIPPED_BEFORE
        return None

    def source_skipped(self, group: str, key: str, source: str) -> bool:
        """Whether a whole file (an unreadable image or video) was skipped for a content reason."""
        skip = self.skips.get(f"{group}/{key}")
        return skip is not None and skip.is_content and skip.frame is None and skip.source == source

    # ----------------------------------------------------------------------- writing

    def skip(self, skip: Skip) -> None:
        """Record a skipped input (at once: it has no features to order against)."""
        last = self.skips.get(skip.id)
        self.skips[skip.id] = skip
        if last is not None and last.reason == skip.reason and last.source == skip.source:
            return  # the same verdict again (a retried error): one line is enough
        append_jsonl(self.root / SKIPPED, skip.to_json())

    def add(self, result: ItemResult) -> None:
        """Queue a finished item; every ``flush_every`` items the batch is written."""
        if result.record is None:
            raise ValueError("add() takes finished items; use skip() for skipped ones")
        self._pending.append(result)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the queued items: each group's shard first, then their manifest records."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        crop_sizes = {r.crop_size for r in pending}
        known = self.settings.get("crop_size")
        if known is None and len(crop_sizes) == 1:
            self.settings["crop_size"] = crop_sizes.pop()
            write_header(self.root, self.settings, {"status": "building"})
        elif crop_sizes - {known}:
            raise DatasetError(f"dataset '{self.root}' has crop_size {known} but the reconstructor now gives "
                               f"{sorted(crop_sizes)}; build into a new --out")
        groups: dict[str, list[ItemResult]] = {}
        for r in pending:
            groups.setdefault(r.record.group, []).append(r)
        for group, items in groups.items():
            tensors = self._shard_cache.get(group)
            if tensors is None:
                tensors = dict(read_shard(self.root, group))
            for r in items:
                tensors.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in r.tensors.items()})
            write_shard(self.root, group, tensors, metadata={"format_version": str(FORMAT_VERSION),
                                                             "group": group})
            # Items arrive group by group: only the current group's tensors are worth keeping.
            self._shard_cache = {group: tensors}
        for r in pending:
            append_jsonl(self.root / MANIFEST, r.record.to_json())
            self.records[r.record.id] = r.record
            self.skips.pop(r.record.id, None)

    def finish(self, summary: Mapping[str, Any]) -> Path:
        """Flush and write the header with the run's summary."""
        self.flush()
        return write_header(self.root, self.settings, summary)
