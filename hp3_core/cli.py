"""The command line: ``python -m hp3_core <command> [--help]``.

Each command lives in :mod:`hp3_core.commands` as a module with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. A failing command exits non-zero with one
line on stderr; ``--debug`` shows the traceback and debug logging.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import HP3Error

log = logging.getLogger("hp3_core")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hp3_core",
        description="HP3: head-preserving portrait personalization with 3D-controlled diffusion.")
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in COMMANDS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as err:  # one clear line, the traceback only on request
        if debug:
            raise
        if isinstance(err, HP3Error):
            line = str(err)
        else:
            line = f"{type(err).__name__}: {err} (an internal error; rerun with --debug and report it)"
        sys.stderr.write("error: " + " ".join(line.split("\n")) + "\n")
        return 1
