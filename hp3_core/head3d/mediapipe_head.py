"""The embedded offline backend: MediaPipe's 478-point face mesh as a face-only head model.

**Face only, an approximation of HP3's 3D prior.** MediaPipe gives one face's surface (forehead
to chin, no hair, ears or back of the head) and no separation of identity from expression. So:

* *pose*: each face's own frame from its landmarks: x from many left/right symmetric landmark
  pairs, y from chin to forehead, z = x cross y (toward the camera); the rotation into the image
  is the head pose, the landmarks' RMS radius its scale;
* *shape*: the face's geometry in that frame (scale-normalised), 468 points;
* *retarget*: the source's geometry, with the driving face's geometry blended in over the
  regions that carry expression (lips and mouth, eyes and lids, brows, the jaw below the mouth),
  posed and placed like the driving face. The source keeps its outline and proportions; the
  driver's mouth and eye shapes come along with their expression.

Weights trained with the FLAME (SMIRK) backend expect full-head renders; the weight file records
the backend it was trained with (see :mod:`hp3_core.config`).
"""
from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict

import numpy as np
import torch

from ..optional import require
from .camera import project_to_image
from .face_landmarks import FaceLandmarks
from .params import FaceInfo, HeadParams
from .rotation import axis_angle_to_matrix, matrix_to_axis_angle

NUM_POINTS = 468  # the mesh; 468..477 are the iris points, not part of the tessellation
CROP_SIZE = 224
# Left/right symmetric landmark pairs (image-left index first on a frontal face): eye corners,
# lids, brows, mouth corners, nose wings and the face outline.
SYMMETRIC_PAIRS = [(33, 263), (133, 362), (159, 386), (145, 374), (70, 300), (105, 334), (107, 336),
                   (61, 291), (98, 327), (234, 454), (127, 356), (93, 323), (132, 361), (58, 288),
                   (172, 397), (136, 365), (150, 379), (149, 378), (176, 400), (148, 377),
                   (162, 389), (21, 251), (54, 284), (103, 332), (67, 297), (109, 338)]
FOREHEAD, CHIN = 10, 152
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14


@functools.lru_cache(maxsize=1)
def topology() -> dict[str, np.ndarray]:
    """Triangles [F, 3] of the face mesh and the vertex sets of its expressive regions.

    MediaPipe publishes the tessellation as edges; its triangles are the 3-cliques of that graph,
    less the two cliques that are not faces (all three edges already shared by three cliques).
    """
    require("mediapipe", "The MediaPipe face backend")
    from mediapipe.python.solutions import face_mesh_connections as conn
    edges = {tuple(sorted(e)) for e in conn.FACEMESH_TESSELATION}
    adj: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    cliques = {tuple(sorted((a, b, c))) for a, b in edges for c in adj[a] & adj[b]}
    uses = Counter(e for t in cliques for e in itertools.combinations(t, 2))
    faces = sorted(t for t in cliques if not all(uses[e] == 3 for e in itertools.combinations(t, 2)))

    def verts(*sets) -> np.ndarray:
        return np.array(sorted({i for s in sets for e in s for i in e}), dtype=np.int64)

    return {
        "faces": consistent_winding(np.array(faces, dtype=np.int64)),
        "lips": verts(conn.FACEMESH_LIPS),
        "eyes": verts(conn.FACEMESH_LEFT_EYE, conn.FACEMESH_RIGHT_EYE),
        "brows": verts(conn.FACEMESH_LEFT_EYEBROW, conn.FACEMESH_RIGHT_EYEBROW),
    }


def consistent_winding(faces: np.ndarray) -> np.ndarray:
    """Reorder each triangle's corners so neighbours traverse shared edges in opposite directions
    (smooth vertex normals need one winding). Breadth-first over edge neighbours from face 0."""
    faces = faces.copy()
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, f in enumerate(faces):
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            by_edge[(min(a, b), max(a, b))].append(i)
    done = np.zeros(len(faces), dtype=bool)
    for start in range(len(faces)):
        if done[start]:
            continue
        done[start] = True
        queue = [start]
        while queue:
            i = queue.pop()
            f = faces[i]
            for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
                for j in by_edge[(min(a, b), max(a, b))]:
                    if done[j]:
                        continue
                    g = faces[j]
                    directed = {(g[0], g[1]), (g[1], g[2]), (g[2], g[0])}
                    if (a, b) in directed:  # same direction as its neighbour: flip it
                        faces[j] = g[[0, 2, 1]]
                    done[j] = True
                    queue.append(j)
    return faces


def face_frame(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each face's own frame.

    Args:
        points: [B, 468+, 3] landmarks in image pixels (MediaPipe: y down, z smaller = nearer).

    Returns:
        rotation [B, 3, 3] (columns: the face's x, y, z axes in the model frame), centre [B, 3]
        (model frame, pixels) and scale [B] (RMS radius in pixels).
    """
    q = model_frame(points[:, :NUM_POINTS])
    a = torch.tensor([p[0] for p in SYMMETRIC_PAIRS])
    b = torch.tensor([p[1] for p in SYMMETRIC_PAIRS])
    x = torch.nn.functional.normalize((q[:, b] - q[:, a]).mean(1), dim=-1)
    y = q[:, FOREHEAD] - q[:, CHIN]
    y = torch.nn.functional.normalize(y - (y * x).sum(-1, keepdim=True) * x, dim=-1)
    z = torch.linalg.cross(x, y, dim=-1)
    rotation = torch.stack([x, y, z], dim=-1)
    centre = q.mean(1)
    scale = (q - centre[:, None]).pow(2).sum(-1).mean(1).sqrt()
    return rotation, centre, scale


def model_frame(points: torch.Tensor) -> torch.Tensor:
    """Image-pixel landmarks (y down, z away) -> model frame (y up, z toward the camera)."""
    return points * torch.tensor([1.0, -1.0, -1.0], dtype=points.dtype)


def expression_weights(canonical: torch.Tensor) -> torch.Tensor:
    """Per-point weight [B, 468] in 0..1 of the driver's geometry in a retarget.

    1 on the lips, eyes and brows, falling off smoothly with canonical distance (in units of
    the face's RMS radius), plus the jaw: points below the mouth corners, rising to 1 at the chin,
    so an opening mouth moves the chin with it.
    """
    topo = topology()
    core = torch.from_numpy(np.concatenate([topo["lips"], topo["eyes"], topo["brows"]]))
    d = torch.cdist(canonical, canonical[:, core]).amin(-1)
    w = torch.exp(-(d / 0.12) ** 2)
    mouth_y = canonical[:, [61, 291], 1].mean(1, keepdim=True)
    chin_y = canonical[:, CHIN, 1:2]
    jaw = ((mouth_y - canonical[..., 1]) / (mouth_y - chin_y).clamp_min(1e-6)).clamp(0, 1)
    return torch.maximum(w, jaw.sqrt())


class MediaPipeHeadModel:
    """Face mesh from mediapipe head parameters (see the module docstring)."""

    name = "mediapipe"
    full_head = False

    @property
    def faces(self) -> torch.Tensor:
        return torch.from_numpy(topology()["faces"])

    def face_subset(self) -> torch.Tensor:
        return torch.ones(len(topology()["faces"]), dtype=torch.bool)

    def canonical(self, params: HeadParams) -> torch.Tensor:
        """[B, 468, 3] retargeted geometry in the face's frame (unit RMS radius)."""
        shape = params.shape.view(len(params), NUM_POINTS, 3)
        expression = params.expression.view(len(params), NUM_POINTS, 3)
        w = expression_weights(shape)[..., None]
        return shape + w * (expression - shape)

    def vertices(self, params: HeadParams) -> torch.Tensor:
        """[B, 468, 3] posed vertices in the model frame."""
        rotation = axis_angle_to_matrix(params.pose)
        return self.canonical(params) @ rotation.transpose(1, 2)


def params_from_landmarks(faces: list[FaceLandmarks], image_sizes: list[tuple[int, int]],
                          face_indices: list[int], counts: list[int]) -> HeadParams:
    """HeadParams (backend ``mediapipe``) for one detected face per image."""
    from .smirk_crop import smirk_crop_transform
    pts = torch.from_numpy(np.stack([f.points for f in faces])).float()
    rotation, centre, scale = face_frame(pts)
    canonical = (model_frame(pts[:, :NUM_POINTS]) - centre[:, None]) @ rotation / scale[:, None, None]
    crops = torch.from_numpy(np.stack([smirk_crop_transform(f.points[:, :2], crop_size=CROP_SIZE)
                                       for f in faces])).float()
    a, off = crops[:, 0, 0], crops[:, :2, 2]
    s = a * scale * 2.0 / CROP_SIZE
    xc, yc = centre[:, 0], -centre[:, 1]  # image pixels of the centre
    tx = ((a * xc + off[:, 0]) * 2.0 / CROP_SIZE - 1.0) / s
    ty = -((a * yc + off[:, 1]) * 2.0 / CROP_SIZE - 1.0) / s
    b = len(faces)
    flat = canonical.reshape(b, -1)
    return HeadParams(
        backend="mediapipe", shape=flat, expression=flat.clone(), eyelids=torch.zeros(b, 2),
        jaw=torch.zeros(b, 3), pose=matrix_to_axis_angle(rotation), camera=torch.stack([s, tx, ty], -1),
        image_to_crop=crops, crop_size=CROP_SIZE, image_size=list(image_sizes),
        faces=[FaceInfo(f.detector, f.confidence, f.box, i, n) for f, i, n in zip(faces, face_indices, counts)])


def mouth_opening(vertices: torch.Tensor) -> torch.Tensor:
    """[B] inner-lip gap over the face's RMS radius, from [B, 468+, 3] vertices (any frame)."""
    v = vertices[:, :NUM_POINTS]
    gap = (v[:, UPPER_LIP_INNER] - v[:, LOWER_LIP_INNER]).norm(dim=-1)
    radius = (v - v.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()
    return gap / radius


__all__ = ["MediaPipeHeadModel", "params_from_landmarks", "topology", "face_frame", "mouth_opening",
           "project_to_image"]
