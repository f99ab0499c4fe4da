"""``demo``: the main job on offline defaults, on the bundled 2024 ComfyUI.

Starts ComfyUI (carried by the dev venv, ``make venv``) on 127.0.0.1 with this pack loaded, runs
the example workflow ``example_workflows/hp3_retarget.json`` on the two bundled sample images (the source
keeps her head; the driver gives pose and expression) and writes the four condition maps. Then it
keeps ComfyUI running for you to open, unless ``--no-serve``. It never downloads anything: with
no SMIRK/FLAME files the 3D backend is the built-in MediaPipe one.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import sys
from pathlib import Path

from ..comfy_server import PACK_DIR, PACK_LINK_NAME, ComfyServer, ComfyServerError, free_port, prepare_host
from ..comfy_workflow import ui_to_api
from ..model_folders import MODEL_FOLDERS
from . import checks

NAME = "demo"
HELP = "run the 3D retarget workflow on sample images in ComfyUI (bundled 2024 host, 127.0.0.1), then serve it"
log = logging.getLogger(__name__)
DEFAULT_PORT = 8188
WORKFLOW = PACK_DIR / "example_workflows" / "hp3_retarget.json"
SAMPLE_INPUTS = PACK_DIR / "workflows" / "inputs"
# Model folders the workflows use (ComfyUI's own, then the pack's), created empty in the demo host
# so users see where files go.
DEMO_FOLDERS = ("checkpoints", "clip_vision", "controlnet", *(f.sub for f in MODEL_FOLDERS.values()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-dir", default=str(PACK_DIR / ".comfy-host"),
                   help="where the demo ComfyUI lives (made on first use; default: .comfy-host)")
    p.add_argument("--out", default=str(PACK_DIR / "out" / "demo"), help="ComfyUI's output folder")
    p.add_argument("--port", type=int, default=None,
                   help=f"port on 127.0.0.1 (default {DEFAULT_PORT}, or a free one if taken)")
    p.add_argument("--no-serve", action="store_true", help="stop ComfyUI once the maps are written")
    p.add_argument("--check", action="store_true",
                   help="only start ComfyUI, verify that the HP3 nodes loaded, and stop")


def hp3_nodes(object_info: dict) -> list[str]:
    """Node types of this pack in a server's /object_info (its categories start with HP3)."""
    return sorted(k for k, v in object_info.items() if str(v.get("category", "")).startswith("HP3"))


def run(args: argparse.Namespace) -> int:
    checks.whole("--port", args.port, 1, 65535, meaning="a TCP port on 127.0.0.1; leave it out for 8188")
    checks.output_folder("--host-dir", args.host_dir)
    checks.output_folder("--out", args.out)
    host = prepare_host(args.host_dir)
    for name in DEMO_FOLDERS:
        (host / "models" / name).mkdir(parents=True, exist_ok=True)
    (host / "input").mkdir(exist_ok=True)
    for image in SAMPLE_INPUTS.glob("*.jpg"):
        shutil.copyfile(image, host / "input" / image.name)
    port = args.port or (DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port())
    out = Path(args.out).resolve()
    with ComfyServer(host, port=port, output_dir=out) as server:
        info = server.object_info()
        names = hp3_nodes(info)
        if not names:
            raise ComfyServerError(f"ComfyUI started but could not load the HP3 pack ({PACK_LINK_NAME}); "
                                   f"see {server.log_path}")
        log.info("HP3 nodes loaded: %s", ", ".join(names))
        if args.check:
            sys.stdout.write(f"ok: {len(names)} HP3 nodes loaded in ComfyUI at {server.url}\n")
            return 0
        log.info("running %s on %s", WORKFLOW.name, ", ".join(p.name for p in SAMPLE_INPUTS.glob("*.jpg")))
        entry = server.run(ui_to_api(json.loads(WORKFLOW.read_text()), info))
        for output in entry["outputs"].values():
            for text in output.get("text", []):
                for line in text.splitlines():
                    log.info("%s", line)
        files = [out / i["subfolder"] / i["filename"] for o in entry["outputs"].values()
                 for i in o.get("images", []) if i.get("type") == "output"]
        for f in files:
            sys.stdout.write(f"wrote {f}\n")
        log.info("models go in %s/models/<folder> (%s)", host, ", ".join(DEMO_FOLDERS))
        if args.no_serve:
            return 0
        sys.stdout.write(f"ComfyUI with HP3 is running: open {server.url} and drag in {WORKFLOW} "
                         f"(Ctrl-C stops it; log: {server.log_path})\n")
        sys.stdout.flush()
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            log.info("stopping ComfyUI")
    return 0


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
