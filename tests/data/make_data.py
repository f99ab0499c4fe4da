"""Rebuild ``tests/data`` from the original photos and clips (a maintainer's tool, not a test).

The tests read their photos from ``tests/data`` so a fresh clone runs them. The originals (see
NOTICE.md for where they come from) are larger than the tests need; this script makes the
shipped copies small while keeping what the tests assert:

* every photo keeps its pixel size (tests check 720x720 renders, a 1080x1439 error message, and
  crop the cat to 720x720); the few large JPEGs are re-encoded at quality 85;
* the two videos keep their resolution and frame rate but only their first frames (the tests
  read frames 0, 10, 20 of ``driving_d10.mp4`` and 0, 30, 60 of ``source_s18.mp4``);
* the HP3 ID group is copied byte for byte (it is the paper's published example).

Usage: ``python tests/data/make_data.py /path/to/original/assets``
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import cv2
from PIL import Image

log = logging.getLogger("make_data")
HERE = Path(__file__).resolve().parent
# JPEGs above this size are re-encoded; smaller ones are copied unchanged.
REENCODE_ABOVE_BYTES = 150_000
JPEG_QUALITY = 85
# Frames kept from each video: a little more than the last frame a test reads.
VIDEO_FRAMES = {"driving_d10.mp4": 30, "source_s18.mp4": 61}


def copy_photo(src: Path, dst: Path) -> None:
    """Copy a photo, re-encoding large JPEGs at the same pixel size."""
    if src.suffix.lower() == ".jpg" and src.stat().st_size > REENCODE_ABOVE_BYTES:
        with Image.open(src) as im:
            im.convert("RGB").save(dst, quality=JPEG_QUALITY, optimize=True)
    else:
        shutil.copyfile(src, dst)


def cut_video(src: Path, dst: Path, frames: int) -> None:
    """Write the first ``frames`` frames of ``src`` (same size and fps) as MPEG-4 video."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        for _ in range(frames):
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"{src} has fewer than {frames} frames")
            out.write(frame)
    finally:
        cap.release()
        out.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("originals", type=Path, help="folder with faces/ and id_group_hp3/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for group in ("faces", "id_group_hp3"):
        (HERE / group).mkdir(exist_ok=True)
        for src in sorted((args.originals / group).iterdir()):
            dst = HERE / group / src.name
            if src.name in VIDEO_FRAMES:
                cut_video(src, dst, VIDEO_FRAMES[src.name])
            else:
                copy_photo(src, dst)
            log.info("%-32s %8d -> %8d bytes", f"{group}/{src.name}", src.stat().st_size, dst.stat().st_size)


if __name__ == "__main__":
    main()
