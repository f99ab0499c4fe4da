"""``retarget``: the source's head with the driving image's pose and expression, rendered into
the driving image's frame as shaded, normal, depth and mask maps (plus params.json).

Frames stream: each driving frame is read, analysed (reduced, see :mod:`hp3_core.image_io`),
rendered and written before the next is read, so memory stays flat however long the video.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import HP3Error
from ..head3d.reconstructor import build_reconstructor
from ..head3d.retarget import RetargetMode
from ..head3d.retarget_images import MAP_NAMES, FrameMaps, Retargeter, retarget_report
from ..image_io import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, AnalysisImage, analysis_image, iter_video_frames,
                        load_for_analysis, save_image, write_error)
from ..model_folders import cli_folders
from . import checks, common_options

NAME = "retarget"
HELP = "retarget a source head to driving images and write the condition maps"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="source portrait (whose head is kept)")
    p.add_argument("--driving", required=True,
                   help="driving image, a folder of images, or a video (one set of maps per frame)")
    p.add_argument("--out", required=True, help="output folder")
    common_options.add_backend(p)
    p.add_argument("--mode", choices=[m.value for m in RetargetMode], default="full",
                   help="full: expression + pose; pose: pose only; expression: expression only")
    p.add_argument("--region", choices=("head", "face"), default="head", help="render the full head or the face")
    common_options.add_face_index(p, of="of the source")
    common_options.add_face_index(p, "--driving-face-index", of="of the driving image(s)")
    common_options.add_models_dir(p, (common_options.SMIRK_FLAME_FILES,))
    p.add_argument("--every", type=int, default=1, help="video: keep one frame in N (1 = every frame)")
    p.add_argument("--max-frames", type=int, default=None, help="video/folder: at most N frames")
    p.add_argument("--smoothing", type=float, default=0.0,
                   help="video/folder: temporal smoothing of the driving heads in [0, 1) (0 = off; 0.5 "
                        "halves each frame's own weight; frames of one shot only)")
    p.add_argument("--skip-missing", action="store_true",
                   help="frames without a face get blank maps instead of stopping with an error")
    common_options.add_device(p, "for the SMIRK encoder")


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before any model loads (one-line errors naming the option and the fix)."""
    checks.input_file("--source", args.source)
    driving = checks.input_path("--driving", args.driving)
    if driving.is_file() and driving.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        raise HP3Error(f"--driving '{driving}' is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a "
                       f"video ({', '.join(sorted(VIDEO_SUFFIXES))}); give one of those or a folder of images")
    checks.whole("--face-index", args.face_index, 0, meaning="0 = the largest face")
    checks.whole("--driving-face-index", args.driving_face_index, 0, meaning="0 = the largest face")
    checks.whole("--every", args.every, 1, meaning="keep one frame in N; 1 = every frame")
    checks.whole("--max-frames", args.max_frames, 1, meaning="leave it out for all frames")
    checks.number("--smoothing", args.smoothing, 0.0, 1.0, high_open=True,
                  meaning="0 = off, 0.5 = a frame keeps half its own weight, 0.9 = very smooth")
    checks.device("--device", args.device)
    checks.output_folder("--out", args.out)


class Names:
    """Frame names computed on demand (a video's length is not known up front), indexable like a list."""

    def __init__(self, name: Callable[[int], str]) -> None:
        self._name = name

    def __getitem__(self, index: int) -> str:
        return self._name(index)


def driving_frames(path: Path, every: int = 1, max_frames: int | None = None
                   ) -> tuple[Iterator[AnalysisImage], Names, Names, bool]:
    """(frames, folder names, names for errors, single) of an image, a folder of images or a video.

    Frames are read lazily. Folder names: the image's stem, or ``frame_00010`` (the video frame's
    number). ``single`` is True for one image (its maps go straight into ``--out``).
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:max_frames]
        if not files:
            raise HP3Error(f"driving folder '{path}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ((load_for_analysis(p) for p in files), Names(lambda i: files[i].stem),
                Names(lambda i: f"driving image '{files[i]}'"), False)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = (analysis_image(f, f"frame {i * every} of '{path}'")
                  for i, f in enumerate(iter_video_frames(path, every=every, max_frames=max_frames)))
        return (frames, Names(lambda i: f"frame_{i * every:05d}"),
                Names(lambda i: f"frame {i * every} of '{path}'"), False)
    return iter([load_for_analysis(path)]), Names(lambda i: path.stem), Names(lambda i: f"driving image '{path}'"), True


def write_frame(item: FrameMaps, folder: Path, name: str, info: dict) -> None:
    """The frame's four maps (full size, uint8 PNG, one at a time) and its params.json."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(folder, err) from None
    for map_name in MAP_NAMES:
        save_image(folder / f"{map_name}.png", item.uint8(map_name))
    info = dict(info, frame=name)
    if item.head is not None:
        info["head"] = item.head.to_dict(0)
    else:
        info["missing"] = item.missing
    try:
        (folder / "params.json").write_text(json.dumps(info, indent=2))
    except OSError as err:
        raise write_error(folder / "params.json", err) from None


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    out = Path(args.out)
    driving = Path(args.driving)
    frames, names, error_names, single = driving_frames(driving, args.every, args.max_frames)
    reconstructor = build_reconstructor(args.backend, cli_folders(args.models_dir, "smirk"),
                                        cli_folders(args.models_dir, "flame"), device=args.device)
    source = Retargeter(reconstructor, load_for_analysis(args.source), args.mode, args.face_index, args.region,
                        source_name=f"source '{args.source}'")
    info = {"backend": reconstructor.name, "full_head": reconstructor.head_model.full_head,
            "source_face": source.source_face.to_dict() if source.source_face else None}
    count, found, missing = 0, 0, {}
    for item in source.frames(frames, args.driving_face_index, args.skip_missing, args.smoothing, error_names):
        write_frame(item, out if single else out / names[item.index], names[item.index], info)
        count += 1
        if item.head is None:
            missing[item.index] = item.missing or "no face"
        else:
            found += 1
    for line in retarget_report(reconstructor.name, reconstructor.head_model.full_head, source.source_face,
                                count, found, missing).splitlines():
        log.info("%s", line)
    log.info("wrote %d set(s) of maps to %s", count, out)
    return 0

