"""Which face a frame is kept for, and the square training image cut around it.

A training frame must show exactly one clear face: the largest face found by MediaPipe, with no
second face of similar size (a second face at least ``second_face_ratio`` times the largest one's
size makes the identity ambiguous: whose head is the source?). Small background faces are fine,
and so are doubtful ones: MediaPipe's face mesh also "finds" faces in blurred backgrounds (frame
225 of ../shared/assets/faces/source_s18.mp4: a plant at detector confidence 0.58, 0.86x the
size of the real face), so a second face counts only at a detector confidence of at least
:data:`SECOND_FACE_CONFIDENCE` (real faces score about 0.9).

The training image is the largest square the frame allows (side ``min(H, W)``), centred on the
head as far as the frame allows and **never padded** (padding would teach the model borders that
real photos do not have), then resized to ``size``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..head3d.face_landmarks import FaceLandmarks
from ..head_encoder.head_crop import HeadCrop, head_crop, head_square
from .skips import MULTIPLE_FACES, NO_FACE

SECOND_FACE_RATIO = 0.5
SECOND_FACE_CONFIDENCE = 0.7


@dataclass(frozen=True)
class FaceVerdict:
    """The chosen face, or why the frame has no single clear face (``reason`` is a skip reason)."""

    face: FaceLandmarks | None
    reason: str = ""
    detail: str = ""


def single_clear_face(faces: list[FaceLandmarks], second_face_ratio: float = SECOND_FACE_RATIO) -> FaceVerdict:
    """The largest face when it is the only one of its size.

    Args:
        faces: MediaPipe's faces, largest first (:meth:`MediaPipeFaceLandmarker.detect`).
        second_face_ratio: a second face whose size (larger box side, pixels) is at least this
            fraction of the largest one's makes the frame ambiguous (when it is confidently a face).
    """
    if not faces:
        return FaceVerdict(None, NO_FACE, "no face found by MediaPipe's face detector")
    for other in faces[1:]:
        ratio = other.size / max(faces[0].size, 1e-6)
        confident = other.confidence is not None and other.confidence >= SECOND_FACE_CONFIDENCE
        if ratio >= second_face_ratio and confident:
            return FaceVerdict(None, MULTIPLE_FACES,
                               f"{len(faces)} faces, one {ratio:.2f}x the size of the largest (>= "
                               f"{second_face_ratio}, confidence {other.confidence:.2f}): no single clear face")
    return FaceVerdict(faces[0])


def square_box(image_shape: tuple[int, ...], face_box: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """``(x0, y0, side)``: the ``min(H, W)`` square centred on the head, shifted inside the frame.

    The head centre is :func:`~hp3_core.head_encoder.head_crop.head_square`'s (the face box centre
    lifted towards the crown), so hair is kept when the frame is taller or wider than the square.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    side = min(h, w)
    hx, hy, hside = head_square(face_box)
    cx, cy = hx + hside / 2.0, hy + hside / 2.0
    x0 = int(np.clip(np.floor(cx - side / 2.0 + 0.5), 0, w - side))
    y0 = int(np.clip(np.floor(cy - side / 2.0 + 0.5), 0, h - side))
    return x0, y0, side


def training_crop(image: np.ndarray, face_box: tuple[float, float, float, float], size: int) -> HeadCrop:
    """The square training image (RGB uint8 [size, size, 3]) and its map from input pixels.

    Reuses :func:`~hp3_core.head_encoder.head_crop.head_crop` for the cut and the resampling
    (area filter when shrinking, bicubic when enlarging): a "face box" equal to the square itself
    with ``scale=1, lift=0`` makes it cut exactly that square, which lies inside the frame, so no
    padding ever happens.
    """
    x0, y0, side = square_box(image.shape, face_box)
    return head_crop(image, (x0, y0, x0 + side, y0 + side), scale=1.0, size=size, lift=0.0)
