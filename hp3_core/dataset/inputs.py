"""What ``build-dataset`` reads: ID-group folders, their images and videos, captions, video frames.

Layout of ``--input``: one folder per identity (the folder name is the group name), each holding
images and/or videos (suffixes of :data:`hp3_core.image_io.IMAGE_SUFFIXES` / ``VIDEO_SUFFIXES``)
and their captions, either as a sidecar ``<stem>.txt`` beside the file or in a ``captions.json``
mapping a file name to its caption. A video's caption applies to every frame taken from it.
Files are taken in sorted name order so that item keys and near-duplicate decisions are the same
in every run (a resumed run relies on that).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HP3Error
from ..image_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_video_frames, load_image

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.json"


@dataclass
class MediaFile:
    """One image or video of a group.

    Attributes:
        path: the file on disk.
        source: the path relative to ``--input`` (what records and skips name).
        kind: ``image`` or ``video``.
        stem: the key of a still image; the prefix of a video's frame keys.
        caption: the caption ("" when none was given).
        caption_missing: True when no caption was found.
    """

    path: Path
    source: str
    kind: str
    stem: str
    caption: str = ""
    caption_missing: bool = True


@dataclass
class Group:
    """An ID group folder and its media files (sorted by name)."""

    name: str
    folder: Path
    files: list[MediaFile] = field(default_factory=list)


@dataclass
class Candidate:
    """A decoded frame waiting to be processed.

    Attributes:
        image: RGB uint8 [H, W, 3], the input frame at its own resolution.
        frame: the video frame index (None for a still image).
    """

    group: str
    key: str
    source: str
    frame: int | None
    image: np.ndarray
    caption: str
    caption_missing: bool


def frame_key(stem: str, frame: int) -> str:
    """The key of a video frame: ``<video stem>_f<frame, 6 digits>`` (sorts in frame order)."""
    return f"{stem}_f{frame:06d}"


def read_captions(folder: Path) -> dict[str, str]:
    """``captions.json`` of a group folder as {file name: caption} ({} when there is none).

    Raises:
        HP3Error: the file is not a JSON object of strings (names the file and the fix).
    """
    path = folder / CAPTIONS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HP3Error(f"captions file '{path}' is not valid JSON ({err}); fix it or remove it") from err
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise HP3Error(f"captions file '{path}' must be a JSON object {{\"<file name>\": \"<caption>\"}}; "
                       "fix its layout")
    return {str(k): v.strip() for k, v in data.items()}


def _caption_for(path: Path, captions: dict[str, str]) -> str | None:
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    if path.name in captions:
        return captions[path.name]
    return captions.get(path.stem)  # {"frame_0": ...} is a common variant of {"frame_0.png": ...}


def discover_groups(input_dir: str | Path) -> list[Group]:
    """The ID groups under ``input_dir`` (sorted by name) with their media files and captions.

    Raises:
        HP3Error: ``input_dir`` is not a folder or holds no group folders.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise HP3Error(f"--input '{root}' is not a folder; give the folder that holds one sub-folder per identity")
    media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in media]
    if loose:
        log.warning("%s: %d image/video file(s) directly in --input are ignored (e.g. %s): put each "
                    "identity's files in its own sub-folder", root, len(loose), sorted(loose)[0])
    groups = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        captions = read_captions(folder)
        group = Group(name=folder.name, folder=folder)
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            if suffix not in media:
                continue
            caption = _caption_for(path, captions)
            group.files.append(MediaFile(
                path=path, source=path.relative_to(root).as_posix(),
                kind="video" if suffix in VIDEO_SUFFIXES else "image", stem=path.stem,
                caption=caption or "", caption_missing=caption is None))
        _disambiguate_stems(group)
        groups.append(group)
    if not groups:
        raise HP3Error(f"--input '{root}' has no sub-folders; put each identity's images/videos in its own "
                       "folder (the folder name is the group name)")
    return groups


def _disambiguate_stems(group: Group) -> None:
    """``a.jpg`` and ``a.png`` in one folder would share the key ``a``: key them ``a_jpg``, ``a_png``."""
    count: dict[str, int] = {}
    for f in group.files:
        count[f.stem] = count.get(f.stem, 0) + 1
    for f in group.files:
        if count[f.stem] > 1:
            f.stem = f"{f.stem}_{f.path.suffix.lower().lstrip('.')}"


@dataclass(frozen=True)
class VideoSampling:
    """How a video is sampled.

    Attributes:
        every: keep one decoded frame in ``every`` (frame indices 0, every, 2 * every, ...).
        expected: how many frames will be taken (from the container's frame count; an estimate).
    """

    every: int
    expected: int


def video_sampling(path: str | Path, fps: float, max_frames: int | None) -> VideoSampling:
    """Frame step for ``fps`` samples per second of video (at least one frame in one)."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    try:
        native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    if not math.isfinite(native) or native <= 0:
        log.warning("%s reports no frame rate; assuming 30 frames/s for sampling", path)
        native = 30.0
    every = max(1, round(native / fps))
    expected = math.ceil(max(count, 0) / every)
    if max_frames is not None:
        expected = min(expected, max_frames)
    return VideoSampling(every=every, expected=expected)


def expected_items(groups: list[Group], fps: float, max_frames: int | None) -> int:
    """An estimate of how many frames ``iter_frames`` will give over all groups (progress bars)."""
    return sum(1 if f.kind == "image" else video_sampling(f.path, fps, max_frames).expected
               for g in groups for f in g.files)


def iter_frames(media: MediaFile, fps: float, max_frames: int | None) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """``(key, frame index or None, RGB uint8 [H, W, 3])`` for a still image or a video's samples.

    Raises:
        InputImageError: the image or the whole video cannot be read (before anything is yielded).
    """
    if media.kind == "image":
        yield media.stem, None, load_image(media.path)
        return
    sampling = video_sampling(media.path, fps, max_frames)
    for i, frame in enumerate(iter_video_frames(media.path, every=sampling.every, max_frames=max_frames)):
        index = i * sampling.every
        yield frame_key(media.stem, index), index, frame
