"""The program ``tests/test_offline.py`` runs under ``strace``: every way the pack creates an
onnxruntime session, then a wait long enough for onnxruntime's telemetry to fire, then a canary.

Run as ``python -m harness.offline_probe <insightface folder> <dynamic recognizer.onnx> <wait s>``
with ``tests/`` on ``PYTHONPATH``. The folder holds a tiny buffalo_l pack with its SCRFD detector
(``write_tiny_pack(..., detector=True)``); the second file is a recognizer insightface's router
cannot route, so it goes through the pack's own ``onnxruntime.InferenceSession``.

The canary is a UDP ``connect()`` to TEST-NET-1 (192.0.2.1, RFC 5737) from a second thread: UDP
connect sends no packet, but the trace records it, which proves the trace follows threads and
still runs at the end. The test expects exactly that one non-loopback record.
"""
from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

CANARY = ("192.0.2.1", 9)


def create_every_session(pack_root: Path, dynamic_recognizer: Path) -> None:
    """Load the pack's sessions the way the nodes and the CLI do, and run each once."""
    from hp3_core.head_encoder import face_analysis as fa

    analyzer = fa.InsightFaceAnalyzer([pack_root], detection="insightface")  # insightface's SCRFD + ArcFace
    image = np.zeros((640, 640, 3), np.uint8)
    image[160:192, 160:192] = 255  # the tiny SCRFD "detects" a bright 32 px cell
    face = analyzer.analyze(image)
    if face.embedding.shape != (512,):
        raise SystemExit(f"unexpected embedding shape {face.embedding.shape}")
    fallback = fa.load_recognizer(dynamic_recognizer, ["CPUExecutionProvider"])  # plain InferenceSession
    if type(fallback).__name__ != "_OrtRecognizer":
        raise SystemExit(f"the dynamic recognizer was loaded by {type(fallback).__name__}, not onnxruntime")
    fallback.embed(np.zeros((112, 112, 3), np.uint8))


def canary() -> None:
    """A traced, harmless connect() from another thread (see the module docstring)."""
    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(CANARY)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def main(argv: list[str]) -> int:
    pack_root, dynamic_recognizer, wait = Path(argv[0]), Path(argv[1]), float(argv[2])
    import hp3_core  # noqa: F401 - what every entry point of the pack imports first

    create_every_session(pack_root, dynamic_recognizer)
    time.sleep(wait)  # onnxruntime's uploader resolves its host about 10 s after the import
    canary()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
