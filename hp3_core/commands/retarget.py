"""``retarget``: the source's head with the driving image's pose and expression, rendered into
the driving image's frame as shaded, normal, depth and mask maps (plus params.json)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ..errors import HP3Error
from ..head3d.reconstructor import BACKENDS, build_reconstructor
from ..head3d.retarget import RetargetMode
from ..head3d.retarget_images import RetargetResult, retarget_images
from ..image_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_video_frames, load_image, save_image

NAME = "retarget"
HELP = "retarget a source head to driving images and write the condition maps"
log = logging.getLogger(__name__)
MAP_NAMES = ("shaded", "normal", "depth", "mask")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="source portrait (whose head is kept)")
    p.add_argument("--driving", required=True,
                   help="driving image, a folder of images, or a video (one set of maps per frame)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="3D backend (auto: smirk when its files are found, else ict, the built-in full head)")
    p.add_argument("--mode", choices=[m.value for m in RetargetMode], default="full",
                   help="full: expression + pose; pose: pose only; expression: expression only")
    p.add_argument("--region", choices=("head", "face"), default="head", help="render the full head or the face")
    p.add_argument("--face-index", type=int, default=0, help="which face when several (0 = largest)")
    p.add_argument("--models-dir", action="append", default=[],
                   help="folder with SMIRK_em1.pt and generic_model.pkl (repeatable; also <dir>/smirk, <dir>/flame)")
    p.add_argument("--every", type=int, default=1, help="video: keep one frame in N")
    p.add_argument("--max-frames", type=int, default=None, help="video/folder: at most N frames")
    p.add_argument("--skip-missing", action="store_true",
                   help="frames without a face get blank maps instead of stopping with an error")
    p.add_argument("--device", default="cpu", help="torch device for the SMIRK encoder")


def read_driving(path: Path, every: int = 1, max_frames: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Driving frames and their names from an image, a folder of images or a video."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
        if not files:
            raise HP3Error(f"driving folder '{path}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [load_image(p) for p in files], [p.stem for p in files]
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = list(iter_video_frames(path, every=every, max_frames=max_frames))
        return frames, [f"frame_{i * every:05d}" for i in range(len(frames))]
    return [load_image(path)], [path.stem]


def model_folders(dirs: list[str], kind: str) -> list[Path]:
    return [q for d in dirs for q in (Path(d), Path(d) / kind)]


def write_maps(result: RetargetResult, names: list[str], out: Path) -> list[Path]:
    """One folder per frame (or ``out`` itself for a single image) with the four maps and params."""
    written = []
    for i, maps in enumerate(result.maps):
        folder = out if len(result.maps) == 1 else out / names[i]
        folder.mkdir(parents=True, exist_ok=True)
        for name in MAP_NAMES:
            arr = getattr(maps, name)[0].cpu().numpy()
            save_image(folder / f"{name}.png", (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
        info = {"frame": names[i], "backend": result.backend, "full_head": result.full_head,
                "source_face": result.source_face.to_dict() if result.source_face else None}
        if i in result.found:
            info["head"] = result.heads.to_dict(result.found.index(i))
        else:
            info["missing"] = result.missing.get(i)
        (folder / "params.json").write_text(json.dumps(info, indent=2))
        written.append(folder)
    return written


def run(args: argparse.Namespace) -> int:
    source = load_image(args.source)
    frames, names = read_driving(Path(args.driving), args.every, args.max_frames)
    reconstructor = build_reconstructor(args.backend, model_folders(args.models_dir, "smirk"),
                                        model_folders(args.models_dir, "flame"), device=args.device)
    result = retarget_images(reconstructor, source, frames, mode=args.mode, face_index=args.face_index,
                             region=args.region, allow_missing=args.skip_missing,
                             source_name=f"source '{args.source}'")
    folders = write_maps(result, names, Path(args.out))
    for line in result.report().splitlines():
        log.info("%s", line)
    log.info("wrote %d set(s) of maps to %s", len(folders), args.out)
    return 0
