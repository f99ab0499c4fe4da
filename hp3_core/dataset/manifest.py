"""The HP3 training-set format: what ``build-dataset`` writes and ``train`` and ``evaluate`` read.

A dataset folder holds::

    dataset.json                  header: format version, the builder's settings, the last summary
    manifest.jsonl                one JSON record per finished image (appended as items finish)
    shards/<group>.safetensors    the group's cached features: ``<key>.arcface`` [E] (the identity
                                  embedding: ArcFace E = 512, dlib E = 128, as the header's
                                  ``settings.identity`` says; the key keeps its first name) and
                                  ``<key>.head.<name>`` (HeadParams tensors, batch of 1)
    images/<group>/<key>.png      the training image: square, ``size`` x ``size``, RGB
    renders/<group>/<key>.png     the shaded 3D render of that image's own head, same frame
    skipped.jsonl                 one record per input skipped, with the reason

Everything in a record is in **training-image pixels** (the square image above): the face box,
the five ArcFace keypoints, the head parameters' camera. A group's shard is rewritten (atomically)
before the item's record is appended, so a record in the manifest always has its features on disk;
a run killed in between redoes only that item.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import HP3Error
from ..head3d.params import HeadParams

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER = "dataset.json"
MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
SHARDS = "shards"
IMAGES = "images"
RENDERS = "renders"
ARCFACE_KEY = "arcface"
HEAD_PREFIX = "head."


class DatasetError(HP3Error):
    """A dataset folder that cannot be used; the message names the folder and the fix."""


@dataclass
class DatasetRecord:
    """One image of an ID group (JSON fields; tensors live in the group's shard).

    Attributes:
        group: the identity (the input folder's name).
        key: unique within the group (file stem, or ``<video stem>_f<frame>`` for video frames).
        source: the input file, relative to the builder's ``--input``.
        frame: the video frame index, or None for a still image.
        image, render: paths relative to the dataset folder.
        caption: the text; empty when none was given (``caption_missing`` then True).
        face_box: (x0, y0, x1, y1) of the face, training-image pixels.
        keypoints: 5 x (x, y), ArcFace order (see :class:`~hp3_core.head_encoder.face_analysis.AnalyzedFace`).
        det_score: the face detector's confidence (None when it gives none).
        crop_box: (x0, y0, side) of the square taken from the input frame, input pixels.
    """

    group: str
    key: str
    source: str
    image: str
    render: str
    caption: str
    face_box: list[float]
    keypoints: list[list[float]]
    frame: int | None = None
    caption_missing: bool = False
    det_score: float | None = None
    crop_box: list[float] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.group}/{self.key}"

    @property
    def shard(self) -> str:
        return shard_path(self.group)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def shard_path(group: str) -> str:
    return f"{SHARDS}/{group}.safetensors"


def image_path(group: str, key: str) -> str:
    return f"{IMAGES}/{group}/{key}.png"


def render_path(group: str, key: str) -> str:
    return f"{RENDERS}/{group}/{key}.png"


# --------------------------------------------------------------------------- writing


def head_tensors(key: str, head: HeadParams) -> dict[str, torch.Tensor]:
    """Shard entries of one item's head parameters (a batch of 1)."""
    if len(head) != 1:
        raise ValueError("one item's head parameters must be a batch of 1")
    return {f"{key}.{HEAD_PREFIX}{name}": getattr(head, name).detach().float().cpu().contiguous()
            for name in HeadParams.TENSORS}


def write_shard(root: str | Path, group: str, tensors: Mapping[str, torch.Tensor],
                metadata: Mapping[str, str] | None = None) -> Path:
    """(Re)write a group's shard atomically: a kill leaves the old or the new file, never half."""
    from safetensors.torch import save_file
    path = Path(root) / shard_path(group)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
    os.replace(tmp, path)
    return path


def read_shard(root: str | Path, group: str) -> dict[str, torch.Tensor]:
    """A group's shard tensors ({} when the group has none yet)."""
    from safetensors.torch import load_file
    path = Path(root) / shard_path(group)
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad files
        raise DatasetError(f"dataset shard '{path}' is unreadable ({err}); delete it and rerun build-dataset "
                           "(it resumes and redoes that group)") from err


def append_jsonl(path: str | Path, record: Mapping[str, Any] | str) -> None:
    """Append one line and flush it to disk (the manifest is the builder's journal)."""
    line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file; a torn last line (a killed run) is dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if n == len(lines) - 1:
                log.warning("%s: ignoring a torn last line (an interrupted run)", path)
                continue
            raise DatasetError(f"'{path}' line {n + 1} is not JSON ({err}); the file was edited or damaged") from err
    return out


def write_header(root: str | Path, settings: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> Path:
    path = Path(root) / HEADER
    data = {"format_version": FORMAT_VERSION, "settings": dict(settings), "summary": dict(summary or {})}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_header(root: str | Path) -> dict[str, Any]:
    """``dataset.json``, its format version checked.

    Raises:
        DatasetError: no header (not a dataset folder), a newer format, or an older one (names the
            rebuild command: build-dataset resumes, so only what changed is redone).
    """
    root = Path(root)
    path = root / HEADER
    if not path.is_file():
        raise DatasetError(f"'{root}' is not an HP3 dataset (no {HEADER}); make one with "
                           f"`python -m hp3_core build-dataset --input <folders> --out {root}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = int(data["format_version"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"'{path}' is damaged ({err}); rebuild with build-dataset") from err
    if version > FORMAT_VERSION:
        raise DatasetError(f"dataset '{root}' has format {version}, newer than this pack's {FORMAT_VERSION}; "
                           "update the pack")
    if version < FORMAT_VERSION:
        raise DatasetError(f"dataset '{root}' was written by an older version (format {version}, this pack "
                           f"reads {FORMAT_VERSION}); rebuild it into a new folder with build-dataset")
    return data


# --------------------------------------------------------------------------- reading


@dataclass
class DatasetItem:
    """A record with its cached features loaded (what a training sample is made from)."""

    record: DatasetRecord
    root: Path
    arcface: torch.Tensor                 # [E] float32, L2-normalised identity embedding (512 or 128)
    head: dict[str, torch.Tensor]         # HeadParams tensors, each [1, ...]

    @property
    def image_file(self) -> Path:
        return self.root / self.record.image

    @property
    def render_file(self) -> Path:
        return self.root / self.record.render

    def head_params(self, backend: str, crop_size: int, size: int) -> HeadParams:
        """The item's :class:`HeadParams` (a batch of 1) in its ``size`` x ``size`` training image."""
        return HeadParams(backend=backend, crop_size=crop_size, image_size=[(size, size)], faces=[None],
                          **{k: self.head[k] for k in HeadParams.TENSORS})


@dataclass
class HP3Dataset:
    """A loaded dataset folder: items, groups and the builder's settings.

    Attributes:
        items: every record with its features, manifest order.
        groups: group name -> indices into ``items``.
        settings: the builder's settings (``size``, ``backend``, ``crop_size``, ...).
    """

    root: Path
    items: list[DatasetItem]
    groups: dict[str, list[int]]
    settings: dict[str, Any]
    summary: dict[str, Any]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def identity(self) -> str:
        """The identity backend of the cached embeddings (datasets from before it was recorded:
        insightface)."""
        return str(self.settings.get("identity") or "insightface")

    def pairable_groups(self) -> dict[str, list[int]]:
        """Groups with at least two images (a source and a different target)."""
        return {g: idx for g, idx in self.groups.items() if len(idx) >= 2}

    @classmethod
    def load(cls, root: str | Path) -> HP3Dataset:
        """Read a dataset folder (header, manifest, shards).

        Raises:
            DatasetError: not a dataset, wrong format, a record without its features or image.
        """
        root = Path(root)
        header = read_header(root)
        records = [DatasetRecord.from_dict(r) for r in read_jsonl(root / MANIFEST)]
        by_id: dict[str, DatasetRecord] = {}
        for r in records:  # a resumed run may re-append an item: the last record wins
            by_id[r.id] = r
        shards: dict[str, dict[str, torch.Tensor]] = {}
        items, groups = [], {}
        for r in by_id.values():
            if r.group not in shards:
                shards[r.group] = read_shard(root, r.group)
            tensors = shards[r.group]
            name = f"{r.key}.{ARCFACE_KEY}"
            if name not in tensors:
                raise DatasetError(f"dataset '{root}': item '{r.id}' has no features in {r.shard}; "
                                   "rerun build-dataset on the same --out to repair it")
            head = {k: tensors[f"{r.key}.{HEAD_PREFIX}{k}"] for k in HeadParams.TENSORS
                    if f"{r.key}.{HEAD_PREFIX}{k}" in tensors}
            groups.setdefault(r.group, []).append(len(items))
            items.append(DatasetItem(record=r, root=root, arcface=tensors[name].float(), head=head))
        if not items:
            raise DatasetError(f"dataset '{root}' has no images (its manifest is empty); "
                               "see skipped.jsonl for why inputs were skipped")
        return cls(root=root, items=items, groups=groups, settings=dict(header.get("settings", {})),
                   summary=dict(header.get("summary", {})))


def keypoints_array(record: DatasetRecord) -> np.ndarray:
    """[5, 2] float32 keypoints of a record."""
    return np.asarray(record.keypoints, dtype=np.float32).reshape(5, 2)
