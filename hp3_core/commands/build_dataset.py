"""``build-dataset``: ID-group folders of images/videos with captions -> an HP3 training set.

See :mod:`hp3_core.dataset.builder` (the pipeline) and :mod:`hp3_core.dataset.manifest` (what the
output folder holds). Rerunning on the same ``--out`` resumes: finished items are not redone.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import checks, common_options

NAME = "build-dataset"
HELP = "build (or resume) an HP3 training set from one folder per identity (images, videos, captions)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..dataset.dedup import DEFAULT_THRESHOLD
    from ..dataset.frame_select import SECOND_FACE_RATIO
    p.add_argument("--input", required=True,
                   help="folder with one sub-folder per identity: images/videos + <stem>.txt or captions.json")
    p.add_argument("--out", required=True, help="dataset folder to write (an earlier one with the same settings "
                                                "is resumed)")
    p.add_argument("--size", type=int, default=512, help="side of the square training images, pixels")
    p.add_argument("--fps", type=float, default=2.0, help="video frames sampled per second of video")
    p.add_argument("--max-frames-per-video", type=int, default=None,
                   help="at most N frames sampled per video (default: no limit)")
    p.add_argument("--dedup-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="near-duplicate threshold: mean abs grey difference (0..255) of 32x32 thumbnails "
                        "against the group's earlier frames; 0 keeps all")
    p.add_argument("--second-face-ratio", type=float, default=SECOND_FACE_RATIO,
                   help="skip a frame whose second face is at least this fraction of the largest face's size")
    common_options.add_backend(p)
    p.add_argument("--smirk-dir", action="append", default=[], help="folder with SMIRK_em1.pt (repeatable)")
    p.add_argument("--flame-dir", action="append", default=[],
                   help="folder with the FLAME 2020 generic_model.pkl (repeatable)")
    common_options.add_models_dir(p)
    common_options.add_pack(p, "for ArcFace")
    common_options.add_detection(p, "of the identity analysis")
    common_options.add_identity(p)
    common_options.add_dlib_dir(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for the per-image work (1: everything in this process)")
    p.add_argument("--flush-every", type=int, default=8,
                   help="items written per shard rewrite (a killed run redoes at most these)")
    common_options.add_device(p, "of the SMIRK encoder")
    common_options.add_no_progress(p)


def check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before any work (one-line errors naming the option and the fix)."""
    checks.input_folder("--input", args.input)
    for option in ("--smirk-dir", "--flame-dir", "--models-dir", "--dlib-dir"):
        checks.search_folders(option, getattr(args, option[2:].replace("-", "_")))
    checks.whole("--size", args.size, 64, 4096, meaning="side of the square training images, pixels")
    checks.number("--fps", args.fps, 0.0, 240.0, low_open=True, meaning="video frames sampled per second")
    checks.whole("--max-frames-per-video", args.max_frames_per_video, 1, meaning="leave it out for no limit")
    checks.number("--dedup-threshold", args.dedup_threshold, 0.0, 255.0, meaning="0 keeps all frames")
    checks.number("--second-face-ratio", args.second_face_ratio, 0.0, 1.0, low_open=True,
                  meaning="fraction of the largest face's size")
    checks.whole("--workers", args.workers, 1, 256, meaning="processes; 1 = everything in this process")
    checks.whole("--flush-every", args.flush_every, 1, meaning="items per shard rewrite")
    checks.device("--device", args.device)
    checks.output_folder("--out", args.out)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from ..dataset.builder import BuildConfig, build_dataset
    config = BuildConfig(
        input=Path(args.input), out=Path(args.out), size=args.size, fps=args.fps,
        max_frames_per_video=args.max_frames_per_video, dedup_threshold=args.dedup_threshold,
        second_face_ratio=args.second_face_ratio, backend=args.backend, smirk_dirs=args.smirk_dir,
        flame_dirs=args.flame_dir, face_dirs=args.models_dir, pack=args.pack, detection=args.detection,
        identity=args.identity, dlib_dirs=args.dlib_dir, workers=args.workers, flush_every=args.flush_every,
        device=args.device,
        progress_bar=not args.no_progress)
    summary = build_dataset(config)
    sys.stdout.write("".join(line + "\n" for line in summary.lines()))
    return 0
