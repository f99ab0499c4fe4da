"""``bench``: speed and memory measured side by side in one process (never asserted in tests)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import checks, common_options

NAME = "bench"
HELP = ("benchmarks: 'retarget' (3D reconstruction + rendering per 512x512 image), 'head3d' (the "
        "built-in ict head's fit against MediaPipe's landmarks on real photos), "
        "'patch' (HP3's cost per sampling step next to an InstantID-like stack), "
        "'train' (one HP3 training step next to a ControlNet training step)")
TARGETS = ("retarget", "head3d", "patch", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="what to measure")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement, median reported (default: retarget 20, patch 3)")
    common_options.add_device(p, "of patch and train")
    p.add_argument("--precision", choices=("no", "fp16", "bf16"), default=None,
                   help="train: the frozen UNet's dtype / autocast (default: bf16 on CUDA, no on the CPU)")
    p.add_argument("--steps", type=int, default=3, help="train: timed training steps per stack (median)")
    p.add_argument("--photos", type=Path, default=None,
                   help="head3d: a folder of photos (default: the pack's sample photos)")


def run(args: argparse.Namespace) -> int:
    checks.whole("--repeats", args.repeats, 1, 10000, meaning="timed runs per measurement")
    checks.whole("--steps", args.steps, 1, 10000, meaning="timed training steps")
    if args.photos is not None:
        checks.input_folder("--photos", args.photos)
    checks.device("--device", args.device)
    if args.target == "retarget":
        from ..benchmarks import retarget_bench
        return retarget_bench.main(repeats=args.repeats or 20)
    if args.target == "head3d":
        from ..benchmarks import head3d_bench
        return head3d_bench.main(args.photos)
    if args.target == "patch":
        from ..benchmarks import patch_bench
        return patch_bench.main(repeats=args.repeats or 3, device=args.device)
    if args.target == "train":
        from ..benchmarks import train_bench
        return train_bench.main(steps=args.steps, device=args.device, precision=args.precision)
    raise AssertionError(args.target)
