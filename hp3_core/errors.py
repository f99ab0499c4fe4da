"""User-facing errors.

Every error a user can cause (a wrong file, a missing model, a missing package, a bad input
image) is an :class:`HP3Error` whose message is one line that names the thing at fault and the
fix. The CLI prints that line without a traceback; ComfyUI shows it in the node's error box and
the queue goes on. Anything that is not an ``HP3Error`` is a bug in the pack.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class HP3Error(Exception):
    """An error the user can fix; ``str(err)`` is the whole, single-line message."""


class WeightFileError(HP3Error):
    """An HP3 weight file that cannot be used: ``path`` names it, the message says why and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"HP3 weights '{self.path}': {problem}. Fix: {fix}")


class MissingModelFileError(HP3Error):
    """A model file that is not on disk: lists every folder searched and the file names expected."""

    def __init__(self, what: str, expected: Iterable[str], searched: Iterable[str | Path],
                 where_to_get: str = "") -> None:
        self.expected = list(expected)
        self.searched = [str(p) for p in searched]
        folders = ", ".join(self.searched) or "(no folder is configured)"
        msg = f"{what} not found: expected {' or '.join(self.expected)} in one of: {folders}"
        if where_to_get:
            msg += f". Get it from {where_to_get}"
        super().__init__(msg)


class MissingDependencyError(HP3Error):
    """An optional Python package that a feature needs is not installed."""

    def __init__(self, package: str, feature: str, install: str | None = None) -> None:
        self.package = package
        install = install or f"pip install {package}"
        super().__init__(f"{feature} needs the Python package '{package}', which is not installed. "
                         f"Fix: {install} (in the Python that runs ComfyUI), then restart")


class InputImageError(HP3Error):
    """An input image the method cannot use (no face, unreadable, wrong shape)."""
