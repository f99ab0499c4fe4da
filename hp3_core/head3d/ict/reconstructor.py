"""The ``ict`` backend: MediaPipe landmarks -> ICT full-head parameters (:mod:`.fit`).

Head parameters (backend ``ict``): ``shape`` [B, 100] identity coefficients, ``expression``
[B, 55] ARKit-named weights in [0, 1] (eyelids, gaze and jaw are among them, so ``eyelids`` and
``jaw`` stay zero), ``pose`` the head's axis-angle, and the same crop + orthographic camera as
the other backends (SMIRK's crop from the landmarks, ``(s, tx, ty)`` for it).
"""
from __future__ import annotations

import numpy as np
import torch

from ..face_landmarks import FaceLandmarks
from ..params import FaceInfo, HeadParams
from ..rotation import matrix_to_axis_angle
from ..smirk_crop import smirk_crop_transform
from .fit import FitResult, LandmarkBases, fit_landmarks
from .head_model import ICTHeadModel

CROP_SIZE = 224


class ICTReconstructor:
    """The embedded offline default: the ICT full head fitted to MediaPipe's landmarks."""

    name = "ict"

    def __init__(self, head_model: ICTHeadModel | None = None) -> None:
        self.head_model = head_model if head_model is not None else ICTHeadModel()
        self.bases = LandmarkBases(self.head_model.asset)

    def from_landmarks(self, image: np.ndarray, face: FaceLandmarks, face_index: int,
                       faces_found: int) -> HeadParams:
        fit = fit_landmarks(self.bases, [face.points])[0]
        return params_from_fit(fit, face, image.shape[:2], face_index, faces_found)

    def pooled(self, faces: list[FaceLandmarks], image_sizes: list[tuple[int, int]]) -> HeadParams:
        """Heads of several photos of one person sharing one identity (pooled fit)."""
        fits = fit_landmarks(self.bases, [f.points for f in faces])
        return HeadParams.cat([params_from_fit(fit, f, size, 0, 1)
                               for fit, f, size in zip(fits, faces, image_sizes)])


def params_from_fit(fit: FitResult, face: FaceLandmarks, image_size: tuple[int, int],
                    face_index: int, faces_found: int) -> HeadParams:
    """One :class:`HeadParams` (batch 1) whose projection reproduces the fitted camera.

    The fit's image projection is ``x = k (R X)_x + t_x``, ``y = -(k (R X)_y + t_y)``; the
    renderer's is the crop camera of :func:`~hp3_core.head3d.camera.project_to_image`. With the
    crop's scale ``a`` and offset ``o`` (image -> crop pixels) and crop size C:
    ``s = 2 a k / C``, ``tx = ((a t_x + o_x) 2 / C - 1) / s``, ``ty = -((a (-t_y) + o_y) 2 / C - 1) / s``.
    """
    crop = smirk_crop_transform(face.points[:, :2], crop_size=CROP_SIZE).astype(np.float64)
    a, off = crop[0, 0], crop[:2, 2]
    s = 2.0 * a * fit.scale / CROP_SIZE
    x_centre, y_centre = fit.translation[0], -fit.translation[1]
    tx = ((a * x_centre + off[0]) * 2.0 / CROP_SIZE - 1.0) / s
    ty = -((a * y_centre + off[1]) * 2.0 / CROP_SIZE - 1.0) / s
    rot = torch.from_numpy(fit.rotation).float()[None]
    return HeadParams(
        backend="ict", shape=torch.from_numpy(fit.identity).float()[None],
        expression=torch.from_numpy(fit.expression).float()[None], eyelids=torch.zeros(1, 2),
        jaw=torch.zeros(1, 3), pose=matrix_to_axis_angle(rot),
        camera=torch.tensor([[s, tx, ty]], dtype=torch.float32),
        image_to_crop=torch.from_numpy(crop).float()[None], crop_size=CROP_SIZE,
        image_size=[tuple(int(v) for v in image_size)],
        faces=[FaceInfo(face.detector, face.confidence, face.box, face_index, faces_found)])
