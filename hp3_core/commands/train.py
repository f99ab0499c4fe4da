"""``train``: train HP3 on a dataset from ``build-dataset`` (HuggingFace accelerate).

One GPU: ``python -m hp3_core train --config train.yaml``; several GPUs or nodes:
``accelerate launch [--config_file accelerate.yaml] -m hp3_core train --config train.yaml``.
Examples: ``hp3_core/training/examples/``. The config's fields: :class:`hp3_core.training.config.TrainConfig`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import HP3Error
from . import checks

NAME = "train"
HELP = ("train HP3 (token decoder, controller, connector) on a build-dataset folder; "
        "exports the nodes' weight file (accelerate: one GPU, several, several nodes)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config, YAML or JSON (see hp3_core/training/examples)")
    p.add_argument("--resume", default=None,
                   help="'latest' or a checkpoint folder (overrides the config's resume field)")
    p.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")


def run(args: argparse.Namespace) -> int:
    checks.input_file("--config", args.config, (".yaml", ".yml", ".json"))
    checks.whole("--max-steps", args.max_steps, 1, meaning="training steps")
    if args.resume not in (None, "latest") and not Path(args.resume).is_dir():
        raise HP3Error(f"--resume must be 'latest' or a checkpoint folder; '{args.resume}' is not a folder")
    from ..training.config import TrainConfig
    from ..training.trainer import train
    config = TrainConfig.load(args.config)
    if args.resume is not None:
        config.resume = args.resume
    if args.max_steps is not None:
        config.max_steps = args.max_steps
        config.validate()
    result = train(config)
    if result.export is not None:
        sys.stdout.write(f"trained {result.step} steps; weights: {result.export}\n")
    return 0
