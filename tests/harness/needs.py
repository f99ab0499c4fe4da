"""Python packages that ``make test`` installs, asked for by tests.

A missing one skips the test with the reason on a developer's machine, but fails it under CI
(``CI=true``), where ``make test`` has installed everything and a skip would hide a broken setup.
Only hardware (CUDA) and packages without a wheel for this torch (pytorch3d) may skip under CI.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    """Whether this run is CI (the same test as ``require`` in conftest.py)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Skip when something ``make test`` provides is missing, but fail under CI (module level too)."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason} (make test installs it; CI must have it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def installed(module: str, why: str) -> ModuleType:
    """Import ``module``; if it is missing, skip (fail under CI) naming ``why`` the test needs it.

    Works at module level too (it then skips the whole file).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        require(False, f"{module} is not installed: {why} ({err})")
