"""``info``: check an HP3 weight file and describe it (family, config, 3D backend)."""
from __future__ import annotations

import argparse
import json
import sys

from ..weights import load_hp3_weights
from . import checks

NAME = "info"
HELP = "check an HP3 weight file and print what it holds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="an HP3 .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metadata and config as JSON")


def run(args: argparse.Namespace) -> int:
    checks.input_file("weights file", args.weights)
    weights = load_hp3_weights(args.weights)
    if args.json:
        out = {"metadata": {k: v for k, v in weights.metadata.items() if k != "hp3.config"},
               "config": weights.config.to_dict(), "parameters": weights.num_parameters()}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(weights.summary() + "\n")
    return 0
