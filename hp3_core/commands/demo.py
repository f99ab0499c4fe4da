"""``demo``: start the bundled 2024 ComfyUI with this pack loaded and say where to open it.

The main job on offline defaults. It never downloads anything: the host is the ComfyUI carried
by the dev venv (``make venv``) and it listens on 127.0.0.1 only. With ``--check`` it verifies
that the pack's nodes loaded and exits (used by the tests).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys

from ..comfy_server import PACK_DIR, PACK_LINK_NAME, ComfyServer, ComfyServerError, free_port, prepare_host

NAME = "demo"
HELP = "start ComfyUI (the bundled 2024 host) with the HP3 nodes loaded, on 127.0.0.1"
log = logging.getLogger(__name__)
DEFAULT_PORT = 8188
# Model folders the pack uses, created empty in the demo host so users see where files go.
MODEL_FOLDERS = ("checkpoints", "clip_vision", "controlnet", "hp3", "insightface", "smirk", "flame")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-dir", default=str(PACK_DIR / ".comfy-host"),
                   help="where the demo ComfyUI lives (made on first use; default: .comfy-host)")
    p.add_argument("--port", type=int, default=None,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}, or a free one if taken)")
    p.add_argument("--check", action="store_true",
                   help="start, verify that the HP3 nodes loaded, stop, and exit")


def hp3_nodes(object_info: dict) -> list[str]:
    """Node types of this pack in a server's /object_info (its categories start with HP3)."""
    return sorted(k for k, v in object_info.items() if str(v.get("category", "")).startswith("HP3"))


def run(args: argparse.Namespace) -> int:
    host = prepare_host(args.host_dir)
    for name in MODEL_FOLDERS:
        (host / "models" / name).mkdir(parents=True, exist_ok=True)
    port = args.port or (DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_port())
    server = ComfyServer(host, port=port)
    with server:
        log_text = server.log_path.read_text(errors="replace")
        failed = re.search(rf"Cannot import .*{PACK_LINK_NAME}.*", log_text)
        if failed:
            raise ComfyServerError(f"ComfyUI could not import the HP3 pack: {failed.group(0)} "
                                   f"(see {server.log_path})")
        names = hp3_nodes(server.object_info())
        if not names:
            raise ComfyServerError(f"ComfyUI started but lists no HP3 nodes (see {server.log_path})")
        log.info("HP3 nodes loaded: %s", ", ".join(names))
        log.info("models go in %s/models/<folder> (%s)", host, ", ".join(MODEL_FOLDERS))
        if args.check:
            sys.stdout.write(f"ok: {len(names)} HP3 nodes loaded in ComfyUI at {server.url}\n")
            return 0
        sys.stdout.write(f"ComfyUI with HP3 is running: open {server.url} in a browser "
                         f"(Ctrl-C stops it; log: {server.log_path})\n")
        sys.stdout.flush()
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            log.info("stopping ComfyUI")
    return 0


def _port_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
