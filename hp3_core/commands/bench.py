"""``bench``: speed and memory measured side by side in one process (never asserted in tests)."""
from __future__ import annotations

import argparse

NAME = "bench"
HELP = "benchmarks: 'retarget' (3D reconstruction + rendering per image at 512x512)"
TARGETS = ("retarget",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGETS, help="what to measure")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median reported)")


def run(args: argparse.Namespace) -> int:
    if args.target == "retarget":
        from ..benchmarks import retarget_bench
        return retarget_bench.main(repeats=args.repeats)
    raise AssertionError(args.target)
