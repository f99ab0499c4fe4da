"""Where MediaPipe's 478 landmarks lie on the ICT head: found by rendering it and asking MediaPipe.

Done once, when the asset is built. The mean head (and a few random identities) is rendered with
the pack's own rasterizer from a few views near frontal, skin-tinted with white eyes and dark
irises and the mouth a little open (MediaPipe on a plain grey render puts the eyelid points below the eye holes and the fit
then explains the error with extreme shapes). MediaPipe's face mesh runs on each render, and
each landmark is lifted back onto the mesh through the rasterizer's visible triangle: iris
points onto the iris, every other point onto the front-facing skin (a point inside an eye or
the mouth opening snaps to the nearest skin pixel: the lid or lip margin). Per landmark, the
lifts of all views are mapped onto the mean mesh, averaged (strays dropped) and put back on the
surface as a triangle and barycentrics.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ...errors import InputImageError
from ...render import rasterize
from ...render.maps import vertex_normals
from ..face_landmarks import shared_landmarker
from ..rotation import axis_angle_to_matrix
from .asset import REGIONS, ICTHeadAsset

log = logging.getLogger(__name__)

RENDER_SIZE = 512
PIXELS_PER_CM = RENDER_SIZE / 30.0
FACE_CENTRE_Y_CM = 2.0
IRIS_POINTS = range(468, 478)
SKIN = ("face", "scalp", "ears", "neck")
COLOURS = {"face": (0.87, 0.68, 0.58), "scalp": (0.80, 0.62, 0.53), "ears": (0.85, 0.64, 0.55),
           "neck": (0.82, 0.64, 0.55), "mouth": (0.45, 0.16, 0.16), "teeth": (0.93, 0.92, 0.86),
           "sclera": (0.95, 0.95, 0.95), "iris": (0.22, 0.14, 0.10)}
BACKGROUND = (0.55, 0.60, 0.66)
SNAP_RADIUS_PX = 8
# The views open the mouth a little: on closed lips MediaPipe's upper and lower inner-lip points
# coincide and would land on either lip; apart, each lands on its own lip's margin.
VIEW_JAW_OPEN = 0.3


def view_grid(count: int) -> list[tuple[float, float]]:
    """(yaw, pitch) in radians of ``count`` views: frontal first, then a ring near frontal."""
    out = [(0.0, 0.0)]
    for k in range(count - 1):
        angle = 2 * math.pi * k / max(count - 1, 1)
        out.append((math.radians(12) * math.cos(angle), math.radians(8) * math.sin(angle)))
    return out


def render_view(asset: ICTHeadAsset, vertices: np.ndarray, yaw: float, pitch: float
                ) -> tuple[np.ndarray, torch.Tensor]:
    """An RGB uint8 [S, S, 3] skin-tinted render and its screen vertices [V, 3] (pixels)."""
    rot = (axis_angle_to_matrix(torch.tensor([[0.0, yaw, 0.0]]))
           @ axis_angle_to_matrix(torch.tensor([[pitch, 0.0, 0.0]])))[0]
    x = torch.from_numpy(vertices).float() @ rot.T
    k, c = PIXELS_PER_CM, RENDER_SIZE / 2
    screen = torch.stack([x[:, 0] * k + c, -(x[:, 1] - FACE_CENTRE_Y_CM) * k + c, -x[:, 2] * k], -1)
    faces = torch.from_numpy(asset.triangles)
    frags = rasterize(screen[None], faces, RENDER_SIZE, RENDER_SIZE)
    colours = torch.tensor([COLOURS[r] for r in REGIONS])[torch.from_numpy(asset.region.astype(np.int64))]
    normals = vertex_normals(screen[None], faces)
    albedo = frags.interpolate(faces, colours[None])[0]
    n = frags.interpolate(faces, normals)[0]
    # Two-sided Lambert from the viewer and a light above-left, plus ambient.
    light = torch.nn.functional.normalize(torch.tensor([-0.3, -0.4, -1.0]), dim=0)
    shade = 0.35 + 0.5 * (n @ torch.tensor([0.0, 0.0, -1.0])).abs() + 0.25 * (n @ light).abs()
    image = torch.where(frags.mask[0, ..., None], albedo * shade[..., None], torch.tensor(BACKGROUND))
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), screen


def lift(asset: ICTHeadAsset, screen: torch.Tensor, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangle [478] and barycentrics [478, 3] under each landmark (x, y pixels) of one view."""
    faces = torch.from_numpy(asset.triangles)
    tri_region = torch.from_numpy(asset.triangle_region().astype(np.int64))
    v0, v1, v2 = (screen[faces[:, i]] for i in range(3))
    facing = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)[:, 2] < 0  # toward the camera (z away)
    facing = facing if facing.float().mean() > 0.5 else ~facing     # whichever winding faces us
    subsets = {
        "iris": torch.isin(tri_region, torch.tensor([REGIONS.index("iris"), REGIONS.index("sclera")])),
        "skin": torch.isin(tri_region, torch.tensor([REGIONS.index(r) for r in SKIN])) & facing,
    }
    frags = {k: rasterize(screen[None], faces, RENDER_SIZE, RENDER_SIZE, face_subset=s)
             for k, s in subsets.items()}
    tri_out = np.zeros(len(points), dtype=np.int64)
    bary_out = np.zeros((len(points), 3), dtype=np.float32)
    for i, (x, y) in enumerate(points[:, :2]):
        f = frags["iris" if i in IRIS_POINTS else "skin"]
        row, col = nearest_covered(f.mask[0], y, x)
        face = int(f.face_index[0, row, col])
        q = torch.tensor([x, y]) if (row, col) == (int(y), int(x)) else torch.tensor([col + 0.5, row + 0.5])
        tri_out[i] = face
        bary_out[i] = barycentric(screen[faces[face], :2], q)
    return tri_out, bary_out


def nearest_covered(mask: torch.Tensor, y: float, x: float) -> tuple[int, int]:
    """(row, col) of the covered pixel nearest (x, y), within ``SNAP_RADIUS_PX``."""
    h, w = mask.shape
    r0, c0 = min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)
    if mask[r0, c0]:
        return r0, c0
    lo_r, lo_c = max(r0 - SNAP_RADIUS_PX, 0), max(c0 - SNAP_RADIUS_PX, 0)
    window = mask[lo_r:r0 + SNAP_RADIUS_PX + 1, lo_c:c0 + SNAP_RADIUS_PX + 1]
    rows, cols = torch.nonzero(window, as_tuple=True)
    if len(rows) == 0:
        raise InputImageError(f"landmark at ({x:.1f}, {y:.1f}) is not on the rendered head")
    d = (rows + lo_r - y + 0.5) ** 2 + (cols + lo_c - x + 0.5) ** 2
    k = int(d.argmin())
    return int(rows[k]) + lo_r, int(cols[k]) + lo_c


def barycentric(tri: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """[3] barycentrics of point q [2] in triangle tri [3, 2], clamped into the triangle."""
    a, b, c = tri.double()
    v0, v1, v2 = b - a, c - a, q.double() - a
    den = v0[0] * v1[1] - v1[0] * v0[1]
    u = (v2[0] * v1[1] - v1[0] * v2[1]) / den
    v = (v0[0] * v2[1] - v2[0] * v0[1]) / den
    w = torch.stack([1 - u - v, u, v]).clamp(min=0.0)
    return (w / w.sum()).float().numpy()


def mediapipe_correspondence(asset: ICTHeadAsset, views: int = 9, seed: int = 0
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangle [478], barycentrics [478, 3] and spread [478] (cm: median distance of the
    per-view lifts to their median) of MediaPipe's landmarks on the mean head."""
    rng = np.random.default_rng(seed)
    mean = asset.vertices.astype(np.float64)
    identity = asset.identity.astype(np.float64)
    landmarker = shared_landmarker()
    jaw_open = asset.expression[asset.expression_index("jawOpen")].astype(np.float64)
    lifted_tri, lifted_bary = [], []
    for k, (yaw, pitch) in enumerate(view_grid(views)):
        coeffs = np.zeros(len(identity)) if k == 0 else rng.normal(0.0, 0.7, len(identity))
        verts = mean + np.tensordot(coeffs, identity, axes=1) + VIEW_JAW_OPEN * jaw_open
        image, screen = render_view(asset, verts, yaw, pitch)
        faces = landmarker.detect(image)
        if not faces:
            log.warning("view %d (yaw %.1f, pitch %.1f): MediaPipe found no face; skipped", k,
                        math.degrees(yaw), math.degrees(pitch))
            continue
        tri, bary = lift(asset, screen, faces[0].points)
        lifted_tri.append(tri)
        lifted_bary.append(bary)
    if not lifted_tri:
        raise InputImageError("MediaPipe found no face in any render of the ICT head")
    tris, barys = np.stack(lifted_tri), np.stack(lifted_bary)                   # [N, 478], [N, 478, 3]
    points = (mean[asset.triangles[tris]] * barys[..., None]).sum(2)            # [N, 478, 3] on the mean
    median = np.median(points, axis=0)
    dist = np.linalg.norm(points - median, axis=-1)                             # [N, 478]
    # The mean of the lifts within twice the median distance (drops a view's stray detection),
    # put back on the surface: the closest point on any triangle a view lifted this landmark to.
    inlier = dist <= 2.0 * np.median(dist, axis=0, keepdims=True) + 1e-6
    target = (points * inlier[..., None]).sum(0) / inlier.sum(0)[:, None]
    tri_out = np.zeros(tris.shape[1], dtype=np.int64)
    bary_out = np.zeros((tris.shape[1], 3), dtype=np.float32)
    for i in range(tris.shape[1]):
        best = None
        for face in np.unique(tris[:, i]):
            bary = closest_barycentric(mean[asset.triangles[face]], target[i])
            d = float(np.linalg.norm(bary @ mean[asset.triangles[face]] - target[i]))
            if best is None or d < best[0]:
                best = (d, face, bary)
        tri_out[i], bary_out[i] = best[1], best[2]
    return tri_out, bary_out, np.median(dist, axis=0)


def closest_barycentric(tri: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[3] barycentrics of the point of triangle ``tri`` [3, 3] nearest ``q`` [3] (projection onto
    the plane, clamped into the triangle: exact inside, a close approximation just outside)."""
    a, b, c = tri
    v0, v1, v2 = b - a, c - a, q - a
    d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
    d20, d21 = v2 @ v0, v2 @ v1
    den = d00 * d11 - d01 * d01
    if abs(den) < 1e-18:
        return np.array([1.0, 0.0, 0.0], dtype=np.float32)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.array([1.0 - v - w, v, w]), 0.0, None)
    return (bary / bary.sum()).astype(np.float32)
