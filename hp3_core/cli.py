"""The command line: ``python -m hp3_core <command> [--help]``.

Each command lives in :mod:`hp3_core.commands` as a module with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. A failing command exits non-zero with one
line on stderr, the last line printed; ``--debug`` shows the traceback and debug logging.

Native libraries (MediaPipe's absl/glog, TensorFlow Lite) write to file descriptor 2 from their
own threads, sometimes after Python has printed its error; environment switches do not silence
them. So while a command runs, fd 2 is a pipe drained by a thread that drops their known noise
lines (kept with ``--debug``) and forwards the rest; at the end the pipe is drained and closed
before the ``error:`` line is written, and later native writes go nowhere.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence

from .commands import COMMANDS
from .errors import HP3Error

# Lines native libraries print on every MediaPipe run: glog/absl ("W0000 00:00:17.. 123 file.cc:114] ..."),
# TFLite's delegate note and absl's "before InitializeLog" banner.
NATIVE_NOISE = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] |INFO: Created TensorFlow Lite|"
                          rb"WARNING: All log messages before absl::InitializeLog)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit 2) that names the option."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class NativeStderr:
    """fd 2 through a filtering pipe while a command runs (see the module docstring)."""

    def __init__(self, keep_noise: bool = False) -> None:
        self.keep_noise = keep_noise
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> NativeStderr:
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            read, write = os.pipe()
            os.dup2(write, 2)
            os.close(write)
        except OSError:  # no usable fd 2 (embedded interpreter): leave stderr as it is
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._pump, args=(read,), name="hp3-stderr", daemon=True)
        self._thread.start()
        return self

    def _pump(self, read: int) -> None:
        pending = b""
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                self._forward(lines)
        if pending:
            self._forward([pending])

    def _forward(self, lines: list[bytes]) -> None:
        out = b"".join(line + b"\n" for line in lines if self.keep_noise or not NATIVE_NOISE.match(line))
        if out and self._saved is not None:
            os.write(self._saved, out)

    def finish(self, last_line: str | None = None, restore: bool = False) -> None:
        """Drain the pipe, send fd 2 to /dev/null, then write ``last_line`` to the real stderr.

        ``restore``: afterwards point fd 2 back at the real stderr (for callers that run several
        commands in one process; late native lines may then follow).
        """
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if self._saved is None:
            if last_line:
                sys.stderr.write(last_line)
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # closes our end of the pipe: the pump sees EOF once children let go
        os.close(devnull)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if restore:  # through sys.stderr, so in-process callers (pytest's capsys) see it
            os.dup2(self._saved, 2)
            if last_line:
                sys.stderr.write(last_line)
                sys.stderr.flush()
        elif last_line:
            os.write(self._saved, last_line.encode("utf-8", "backslashreplace"))
        os.close(self._saved)
        self._saved = None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m hp3_core",
        description="HP3: head-preserving portrait personalization with 3D-controlled diffusion.")
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True,
                                parser_class=OneLineParser)
    for module in COMMANDS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None, restore_stderr: bool | None = None) -> int:
    """Run one command; returns the exit status.

    ``restore_stderr`` (see :meth:`NativeStderr.finish`): by default True when ``argv`` is given
    (a caller running commands in its own process), False for the command line itself.
    """
    if restore_stderr is None:
        restore_stderr = argv is not None
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stderr = NativeStderr(keep_noise=debug).start()
    try:
        code = int(args._run(args) or 0)
    except KeyboardInterrupt:
        stderr.finish("error: interrupted\n", restore_stderr)
        return 130
    except Exception as err:  # one clear line, the traceback only on request
        if debug:
            import traceback
            stderr.finish(traceback.format_exc(), restore_stderr)
            return 1
        if isinstance(err, HP3Error):
            line = str(err)
        elif isinstance(err, MemoryError):
            line = "out of memory: use smaller inputs (fewer or smaller images) or a machine with more memory"
        else:
            line = f"{type(err).__name__}: {err} (an internal error; rerun with --debug and report it)"
        stderr.finish("error: " + " ".join(line.split()) + "\n", restore_stderr)
        return 1
    stderr.finish(restore=restore_stderr)
    return code
