"""``bench head3d``: how well the ``ict`` backend's fitted head matches MediaPipe on real photos.

Per photo (default: the pack's own sample photos, ``workflows/inputs``; ``--photos DIR`` for
another folder):

* ``nme``: median 2D distance between the fitted ICT head's landmark points (the asset's
  correspondence, projected with the fitted camera) and MediaPipe's own 478 landmarks, over the
  inter-ocular distance (iris centres 468 and 473);
* ``face_iou``: IoU, in the image, of the polygon of the fitted head's face-oval points and the
  polygon of MediaPipe's face-oval landmarks;
* ``pose_diff``: yaw/pitch/roll differences (degrees) to the ``mediapipe`` backend's pose;
* ``fit_ms``: the fit alone (landmarks given).

The last two lines are machine-readable: ``ict_landmark_nme: <median>`` and
``ict_face_iou: <median>``.
"""
from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..head3d.face_landmarks import shared_landmarker
from ..head3d.ict import ICTReconstructor
from ..head3d.ict.fit import fit_landmarks
from .report import write_report
from ..head3d.mediapipe_head import params_from_landmarks
from ..head3d.rotation import matrix_to_axis_angle, yaw_pitch_roll
from ..image_io import load_image

log = logging.getLogger(__name__)
SAMPLES = Path(__file__).resolve().parents[2] / "workflows" / "inputs"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def face_oval_polygon() -> list[int]:
    """MediaPipe's face-oval landmark indices in order around the face."""
    from mediapipe.python.solutions import face_mesh_connections as conn
    nxt = dict(conn.FACEMESH_FACE_OVAL)
    start = next(iter(nxt))
    order, i = [start], nxt[start]
    while i != start and len(order) < len(nxt):
        order.append(i)
        i = nxt[i]
    return order


def polygon_iou(a: np.ndarray, b: np.ndarray, size: tuple[int, int]) -> float:
    """IoU of two pixel polygons [N, 2] rasterised in an image of ``size`` (h, w)."""
    import cv2
    ma, mb = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    cv2.fillPoly(ma, [np.round(a).astype(np.int32)], 1)
    cv2.fillPoly(mb, [np.round(b).astype(np.int32)], 1)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 0.0


def measure(image: np.ndarray, rec: ICTReconstructor, oval: list[int]) -> dict[str, float] | None:
    """The metrics of one photo (None when MediaPipe finds no face)."""
    faces = shared_landmarker().detect(image)
    if not faces:
        return None
    face = faces[0]
    t0 = time.perf_counter()
    fit = fit_landmarks(rec.bases, [face.points])[0]
    fit_ms = (time.perf_counter() - t0) * 1000.0
    proj = fit.scale * rec.bases.points(fit.identity, fit.expression) @ fit.rotation.T + fit.translation
    proj[:, 1] *= -1.0
    mp = face.points[:, :2]
    iod = float(np.linalg.norm(mp[468] - mp[473]))
    nme = float(np.median(np.linalg.norm(proj[:, :2] - mp, axis=1)) / iod)
    iou = polygon_iou(proj[oval, :2], mp[oval], image.shape[:2])
    ict_pose = matrix_to_axis_angle(torch.from_numpy(fit.rotation).float()[None])  # the fit above, not a second one
    mp_pose = params_from_landmarks([face], [image.shape[:2]], [0], [len(faces)]).pose
    d = torch.remainder(yaw_pitch_roll(ict_pose)[0] - yaw_pitch_roll(mp_pose)[0] + 180.0, 360.0) - 180.0
    return {"nme": nme, "face_iou": iou, "yaw_diff": abs(float(d[0])), "pitch_diff": abs(float(d[1])),
            "roll_diff": abs(float(d[2])), "fit_ms": fit_ms}


def main(photos: Path | None = None) -> int:
    folder = photos or SAMPLES
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    rec, oval = ICTReconstructor(), face_oval_polygon()
    rows: dict[str, dict[str, float]] = {}
    for path in files:
        result = measure(load_image(path), rec, oval)
        if result is None:
            log.info("%s: no face found, skipped", path.name)
            continue
        rows[path.name] = result
    if not rows:
        sys.stderr.write(f"error: no photo with a face in {folder}\n")
        return 1
    keys = ("nme", "face_iou", "yaw_diff", "pitch_diff", "roll_diff", "fit_ms")
    width = max(len(n) for n in rows)
    lines = [f"bench head3d: ict fit vs MediaPipe on {len(rows)} photos of {folder}",
             f"  {'photo':<{width}}  nme(%IOD)  face_iou  yaw/pitch/roll diff (deg)  fit ms"]
    for name, r in rows.items():
        lines.append(f"  {name:<{width}}  {100 * r['nme']:8.2f}  {r['face_iou']:8.3f}  "
                     f"{r['yaw_diff']:6.1f} {r['pitch_diff']:6.1f} {r['roll_diff']:6.1f}        {r['fit_ms']:6.1f}")
    med = {k: statistics.median(r[k] for r in rows.values()) for k in keys}
    lines.append(f"  {'median':<{width}}  {100 * med['nme']:8.2f}  {med['face_iou']:8.3f}  "
                 f"{med['yaw_diff']:6.1f} {med['pitch_diff']:6.1f} {med['roll_diff']:6.1f}        {med['fit_ms']:6.1f}")
    write_report(lines, {"ict_landmark_nme": med["nme"], "ict_face_iou": med["face_iou"]}, digits=4)
    return 0
