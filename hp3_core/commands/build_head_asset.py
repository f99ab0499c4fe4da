"""``build-head-asset``: convert an ICT-FaceKit checkout into the pack's ICT head asset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HP3Error
from ..head3d.ict.asset import ASSET_PATH

NAME = "build-head-asset"
HELP = "convert an ICT-FaceKit checkout (MIT) into the built-in full-head asset of the ict 3D backend"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ict", required=True, type=Path,
                   help="the ICT-FaceKit checkout (the folder holding FaceXModel/)")
    p.add_argument("--out", type=Path, default=ASSET_PATH,
                   help=f"where to write the asset (default: the one the pack ships, {ASSET_PATH.name})")
    p.add_argument("--views", type=int, default=9,
                   help="renders of the head used to place MediaPipe's landmarks (default 9)")
    p.add_argument("--facekit-commit", default=None,
                   help="the FaceKit commit to record (default: read from the checkout's git)")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.views <= 64:
        raise HP3Error(f"--views must be between 1 and 64, got {args.views}")
    if args.out.exists() and args.out.is_dir():
        raise HP3Error(f"--out {args.out} is a folder; give a file name ending in .npz")
    from ..head3d.ict.build_asset import build_head_asset, describe
    asset = build_head_asset(args.ict, args.out, views=args.views, commit=args.facekit_commit)
    sys.stdout.write(describe(asset) + "\n")
    return 0
