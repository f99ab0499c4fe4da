"""Face analysis with dlib's public-domain face recogniser: the identity backend ``dlib``.

Model files (never downloaded, never the 68-point landmark model, whose training data restricts
commercial use):

* ``dlib_face_recognition_resnet_model_v1.dat``: dlib's metric-learning ResNet (Davis King, public
  domain; 99.38% on LFW): a 150x150 face chip -> a 128-d descriptor, compared by Euclidean
  distance (same person below about 0.6).
* ``shape_predictor_5_face_landmarks.dat``: dlib's 5-point landmark model (the two corners of each
  eye and the base of the nose), which places the chip.

Both ship in the PyPI package ``face-recognition-models`` (CC0); the pack finds them in a user
folder first (ComfyUI's ``models/dlib``) and then in that package's ``models/`` folder, located
with ``importlib.util.find_spec`` **without importing it** (its ``__init__`` needs
``pkg_resources``). dlib itself is the ``dlib-bin`` wheel (imports as ``dlib``).

Pipeline per image: a face box (MediaPipe's face mesh box, or dlib's own HOG frontal detector),
dlib's 5-point shape predictor in that box, dlib's face chip (150x150, padding 0.25; its similarity
transform is :func:`chip_matrix`, which training's differentiable alignment reuses), dlib's
descriptor of the chip, L2-normalised like the ArcFace backend's (cosines compare them).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import HP3Error, MissingModelFileError
from ..optional import require
from .face_analysis import FaceAnalyzer, _as_folders, _Detection

log = logging.getLogger(__name__)

RECOGNIZER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
PACKAGE = "face_recognition_models"
DESCRIPTOR_DIM = 128
CHIP_SIZE = 150
CHIP_PADDING = 0.25      # dlib's default: the chip shows a quarter of the face width around it
DETECTIONS = ("mediapipe", "dlib")
FEATURE = "dlib face analysis (the public-domain identity backend)"
INSTALL = "pip install --no-deps dlib-bin face-recognition-models"
WHERE_TO_GET = (f"the PyPI package face-recognition-models (CC0; `{INSTALL}`), or copy the two .dat "
                f"files into ComfyUI/models/dlib/")
# dlib's HOG detector misses small faces at the image's own scale; upsampling once costs about 4x,
# so only images up to this side are upsampled.
UPSAMPLE_MAX_SIDE = 1000


def package_model_dir() -> Path | None:
    """``face_recognition_models/models`` of the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        d = Path(root) / "models"
        if d.is_dir():
            return d
    return None


def search_dirs(folders: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    """Where the .dat files are looked for, in order: each user folder, then the package's."""
    dirs = _as_folders(folders)
    pkg = package_model_dir()
    if pkg is not None and pkg not in dirs:
        dirs.append(pkg)
    return dirs


def find_dlib_files(folders: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> dict[str, Path]:
    """``{"recognizer": path, "landmarks": path}``: each the first found in :func:`search_dirs`.

    Raises:
        MissingModelFileError: a file is in none of the folders (lists them and where to get it).
    """
    dirs = search_dirs(folders)
    out: dict[str, Path] = {}
    for key, name in (("recognizer", RECOGNIZER_FILE), ("landmarks", LANDMARKS_FILE)):
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        if found is None:
            raise MissingModelFileError(f"dlib face model {name}", [name], dirs
                                        or ["(face-recognition-models is not installed)"], WHERE_TO_GET)
        out[key] = found
    return out


def dlib_available(folders=None) -> bool:
    """True when dlib imports and both .dat files are found (what identity ``auto`` asks)."""
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        find_dlib_files(folders)
    except MissingModelFileError:
        return False
    return True


# --------------------------------------------------------------------------- alignment


def chip_matrix(details) -> np.ndarray:
    """[2, 3] float64 image pixels -> chip pixels (cv2 convention) of a ``dlib.chip_details``.

    dlib maps the chip's pixel grid onto its ``rect`` turned by ``angle`` about the rect's centre,
    the chip's first and last pixel centres on the rect's first and last (so the scale is
    ``(width - 1) / (cols - 1)``); checked against ``dlib.get_face_chip`` (mean |difference| 0.5
    grey levels, the rounding of dlib's 8-bit chip).
    """
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    sx = (r.width() - 1.0) / (details.cols - 1.0)
    sy = (r.height() - 1.0) / (details.rows - 1.0)
    c, s = np.cos(details.angle), np.sin(details.angle)
    a = np.array([[c * sx, -s * sy], [s * sx, c * sy]])              # chip -> image, linear part
    t = np.array([cx, cy]) - a @ np.array([(details.cols - 1) / 2.0, (details.rows - 1) / 2.0])
    inv = np.linalg.inv(np.vstack([np.hstack([a, t[:, None]]), [0.0, 0.0, 1.0]]))
    return inv[:2]


def _shape(landmarks: np.ndarray, box: tuple[float, float, float, float]):
    import dlib
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])


def dlib_alignment_matrix(landmarks: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """[2, 3] float64: image pixels -> dlib's ``size`` x ``size`` face chip, from dlib's five
    landmarks [5, 2] (as :class:`DlibFaceAnalyzer` reports them). dlib places the chip from the
    landmarks alone, so no face box is needed."""
    import dlib
    pts = np.asarray(landmarks, np.float64).reshape(5, 2)
    box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
    return chip_matrix(dlib.get_face_chip_details(_shape(pts, box), size, padding))


# --------------------------------------------------------------------------- analyzer


class DlibFaceAnalyzer(FaceAnalyzer):
    """dlib's 128-d identity descriptors (see the module docstring); thread-safe like the base.

    Args:
        folders: folders holding the two .dat files (ComfyUI's ``models/dlib``); the installed
            face-recognition-models package is searched after them.
        detection: ``mediapipe`` (the pack's face mesh; finds turned and small faces) or ``dlib``
            (dlib's HOG frontal-face detector: frontal faces only, no extra dependency).
    """

    identity = "dlib"
    embedding_dim = DESCRIPTOR_DIM
    input_size = CHIP_SIZE
    no_face_found_by = {"dlib": "dlib's frontal face detector (it finds frontal faces of about 80 px or more); "
                                "use detection 'mediapipe' or a clearer frontal photo"}

    def __init__(self, folders=None, detection: str = "mediapipe") -> None:
        super().__init__()
        if detection not in DETECTIONS:
            raise HP3Error(f"unknown face detection '{detection}' for dlib; use one of {', '.join(DETECTIONS)}")
        dlib = require("dlib", FEATURE)
        self.files = find_dlib_files(folders)
        self.detection = detection
        self.recognizer = self.files["recognizer"].name
        self._predictor = dlib.shape_predictor(str(self.files["landmarks"]))
        self._net = dlib.face_recognition_model_v1(str(self.files["recognizer"]))
        if detection == "dlib":
            self._hog = dlib.get_frontal_face_detector()
            self.detector = "dlib HOG frontal face detector + 5-point landmarks"
        else:
            from ..head3d.face_landmarks import DETECTOR_NAME, shared_landmarker
            self._landmarker = shared_landmarker()
            self.detector = f"{DETECTOR_NAME} + dlib 5-point landmarks"

    def _detect(self, image: np.ndarray, name: str) -> list[_Detection]:
        none = np.zeros((5, 2), np.float32)  # landmarks come in _align, for the chosen face only
        if self.detection == "mediapipe":
            return [_Detection(box=f.box, keypoints=none, score=f.confidence) for f in self._landmarker.detect(image)]
        upsample = 1 if max(image.shape[:2]) <= UPSAMPLE_MAX_SIDE else 0
        rects, scores, _ = self._hog.run(image, upsample, 0.0)
        return [_Detection(box=(float(r.left()), float(r.top()), float(r.right()), float(r.bottom())),
                           keypoints=none, score=float(sc)) for r, sc in zip(rects, scores)]

    def _align(self, image: np.ndarray, face: _Detection) -> tuple[_Detection, np.ndarray]:
        import dlib
        x0, y0, x1, y1 = face.box
        shape = self._predictor(image, dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))))
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        chip = dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return _Detection(box=face.box, keypoints=points, score=face.score), np.ascontiguousarray(chip)

    def _embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        return np.asarray(self._net.compute_face_descriptor(aligned_rgb), dtype=np.float32)
