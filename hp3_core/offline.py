"""Nothing leaves the machine: onnxruntime's telemetry is switched off before onnxruntime loads.

Official onnxruntime wheels (Linux, macOS and Windows alike, 1.2x and later) carry Microsoft's
1DS telemetry SDK. As soon as ``import onnxruntime`` creates the native environment, a background
thread of ``libonnxruntime`` resolves ``mobile.events.data.microsoft.com`` (about 10 s later, with
or without an ``InferenceSession``) and writes a device id under
``~/.cache/Microsoft/DeveloperTools/.onnxruntime``. ``onnxruntime.disable_telemetry_events()``
does not stop that: it only mutes later events, the uploader is already running.

The one switch the native library honours is the environment variable ``ORT_DISABLE_TELEMETRY=1``,
read **once, when onnxruntime is imported** (see onnxruntime's ``Privacy.md``, "Disabling
Telemetry"). So :func:`keep_onnxruntime_offline` runs when :mod:`hp3_core` is imported, before any
module of the pack (or insightface, which imports onnxruntime) can load it. It is set in
``os.environ``, so subprocesses (dataset workers, the ComfyUI server the CLI starts) inherit it.

If the host or another node pack imported onnxruntime first, it is too late for this process:
a warning says so and names the fix (set the variable in the environment that starts ComfyUI).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
TELEMETRY_HOST = "mobile.events.data.microsoft.com"


def keep_onnxruntime_offline(environ: MutableMapping[str, str] | None = None,
                             modules: Mapping[str, object] | None = None) -> bool:
    """Switch onnxruntime's telemetry off for this process and its children.

    Args:
        environ: the environment to change (``os.environ``; a dict in tests).
        modules: the loaded modules (``sys.modules``; a dict in tests).

    Returns:
        True when the switch is in time (onnxruntime not loaded yet, or loaded with the variable
        already set); False when onnxruntime was loaded earlier with telemetry on (logged).
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    already_off = environ.get(TELEMETRY_ENV) == "1"
    # Forced, not setdefault: a "0" inherited from a shell must not let the pack phone home.
    environ[TELEMETRY_ENV] = "1"
    if already_off or "onnxruntime" not in modules:
        return True
    log.warning("HP3: onnxruntime was imported before HP3 (by the host or another node pack) with its "
                "telemetry on, so it may contact %s; HP3 cannot switch it off in a running process. "
                "Set %s=1 in the environment that starts ComfyUI to keep everything on this machine.",
                TELEMETRY_HOST, TELEMETRY_ENV)
    return False
