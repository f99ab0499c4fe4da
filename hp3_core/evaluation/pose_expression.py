"""Pose and expression error: does the generated head follow the driver's pose and expression?

Model: HP3's 3D module (:func:`~hp3_core.head3d.reconstructor.build_reconstructor`), the same
backend for the generated image and the driver: ``smirk`` (SMIRK encoder + FLAME 2020) when its
files are found, else the offline ``ict`` full head (ICT-FaceKit fitted to MediaPipe's landmarks).

Pose, per sample: the head rotation of each image as yaw, pitch and roll in degrees
(:func:`~hp3_core.head3d.rotation.yaw_pitch_roll`, ``R = Ry(yaw) Rx(pitch) Rz(roll)``), and

* ``yaw_err``, ``pitch_err``, ``roll_err`` = ``|wrap(angle_generated - angle_driver)|`` in degrees
  (``wrap`` to [-180, 180));
* ``pose_err`` = the mean of the three.

Expression, per sample: ``expr_rmse = sqrt(mean_k (x_g[k] - x_d[k])^2)`` over the concatenated
``expression`` and ``jaw`` parameters. Its meaning depends on the backend (the report says which):

* ``smirk``: FLAME expression coefficients (50) + jaw axis-angle (3, radians);
* ``ict``: the 55 ARKit-named expression weights of the ICT head (each in [0, 1]; eyelids, gaze
  and jaw are among them, ``jaw`` is zero), so the RMSE is in blendshape weight units;
* ``mediapipe``: there are no expression coefficients: ``expression`` is the face's whole canonical
  geometry (468 points x 3, pose removed, scaled to unit RMS radius) and ``jaw`` is zero, so the
  RMSE is a **geometry distance in face radii** that also counts identity shape differences
  between the two faces (a different person with the same expression is not 0). Compare it only
  between methods evaluated on the same drivers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..head3d.face_landmarks import FaceLandmarks
from ..head3d.params import HeadParams
from ..head3d.reconstructor import Reconstructor, build_reconstructor
from ..head3d.rotation import yaw_pitch_roll
from ..model_folders import cli_folders

COLUMNS = ("yaw_err", "pitch_err", "roll_err", "pose_err", "expr_rmse")


def expression_meaning(backend: str) -> str:
    """What ``expr_rmse`` measures for ``backend`` (one line for the report)."""
    if backend == "mediapipe":
        return ("mediapipe backend: RMSE of canonical face geometry (468x3 points, unit RMS radius, pose "
                "removed), in face radii; includes identity shape differences, not expression only")
    if backend == "ict":
        return "ict backend: RMSE of the 55 ARKit expression weights (0..1) of the ICT head"
    return f"{backend} backend: RMSE of FLAME expression (50) + jaw (3, radians) parameters"


def pose_errors(generated: HeadParams, driver: HeadParams) -> dict[str, float]:
    """Yaw/pitch/roll absolute errors and their mean, degrees (batch of 1 each)."""
    a = yaw_pitch_roll(generated.pose.float())[0]
    b = yaw_pitch_roll(driver.pose.float())[0]
    d = torch.remainder(a - b + 180.0, 360.0) - 180.0
    err = d.abs().tolist()
    return {"yaw_err": err[0], "pitch_err": err[1], "roll_err": err[2], "pose_err": float(np.mean(err))}


def expression_rmse(generated: HeadParams, driver: HeadParams) -> float:
    """RMSE of ``concat(expression, jaw)`` (see the module docstring for the units)."""
    x = torch.cat([generated.expression.float(), generated.jaw.float()], -1)
    y = torch.cat([driver.expression.float(), driver.jaw.float()], -1)
    return float((x - y).pow(2).mean().sqrt())


class PoseExpression:
    """Pose and expression errors of generated images against their drivers (module docstring)."""

    def __init__(self, backend: str = "auto", models_dir: Sequence[str | Path] = (), device: str = "cpu") -> None:
        self.reconstructor: Reconstructor = build_reconstructor(
            backend, cli_folders(models_dir, "smirk"), cli_folders(models_dir, "flame"), device=device)
        self.backend = self.reconstructor.name

    def params(self, image: np.ndarray, face: FaceLandmarks, faces_found: int = 1) -> HeadParams:
        """Head parameters of the (already detected) face."""
        return self.reconstructor.from_landmarks(image, face, 0, faces_found)

    def errors(self, generated: HeadParams, driver: HeadParams) -> dict[str, float]:
        return {**pose_errors(generated, driver), "expr_rmse": expression_rmse(generated, driver)}
