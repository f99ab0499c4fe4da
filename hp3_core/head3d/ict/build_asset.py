"""``build-head-asset``: turn an ICT-FaceKit checkout into the pack's compact head asset.

What is kept of the FaceKit's 26,719 vertices, and why:

* the face (0..9408) and the head and neck (9409..11247): the full head, skull, ears and neck;
  the neck is cut at ``NECK_CUT_CM`` below the origin, before the bust flares into shoulders
  (shoulders at a guessed orientation would fight the driver's real body in a ControlNet);
* the mouth socket and the twelve front teeth: an open mouth shows a mouth and teeth, not the
  inside of the skull;
* the eyeballs (sclera and iris): open eyes show eyes, and the irises carry the gaze.

Left out: the eye sockets (hidden behind the eyeballs), gums and tongue, the molars, lacrimal
fluid, eye blend/occlusion meshes and eyelashes (thin strips a grey render cannot show).

Quads are split into two triangles. Regions (``face`` = the FaceKit's narrow face area 0..6705;
``ears`` = the rest of the face part lying beside the head, ``EAR_BOX``; ``neck`` = below
``NECK_TOP_CM`` outside the narrow face; ``scalp`` = the rest of the head) are read off the mean
mesh, which is enough for a morphable model whose modes keep every vertex near its mean place.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .asset import REGIONS, ICTHeadAsset, save_asset
from .facekit import FRONT_TEETH, LANDMARKS_68, PARTS, FaceKit, read_facekit

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
NARROW_FACE_END = 6705           # the FaceKit README's "narrow face area" is vertices 0..6705
NECK_TOP_CM = -6.0               # neck_weight is 1 above this height (cm) ...
NECK_CUT_CM = -13.0              # ... falls to 0 here, where the mesh is cut
# |x| > 6.8 cm, -4.5 < y < 6 cm, z < 4 cm: the ears and the skin just in front of them.
EAR_BOX = (6.8, -4.5, 6.0, 4.0)
IRIS_HALF_ANGLE = np.radians(30.0)


def kept_vertices(num_vertices: int) -> np.ndarray:
    """[V_keep] sorted FaceKit indices of the parts kept (see the module docstring)."""
    keep = np.zeros(num_vertices, dtype=bool)
    for part in ("face", "head_and_neck", "mouth_socket", "sclera_left", "iris_left",
                 "sclera_right", "iris_right"):
        lo, hi = PARTS[part]
        keep[lo:hi + 1] = True
    for lo, hi in FRONT_TEETH:
        keep[lo:hi + 1] = True
    return np.nonzero(keep)[0]


def vertex_regions(neutral: np.ndarray) -> np.ndarray:
    """[V] uint8 region index (into :data:`REGIONS`) of every FaceKit vertex, from the mean mesh."""
    region = np.full(len(neutral), REGIONS.index("scalp"), dtype=np.uint8)
    x, y, z = neutral.T
    idx = np.arange(len(neutral))
    face_part = idx <= PARTS["face"][1]
    head_part = face_part | ((idx >= PARTS["head_and_neck"][0]) & (idx <= PARTS["head_and_neck"][1]))
    ear_x, ear_y0, ear_y1, ear_z = EAR_BOX
    ears = face_part & (idx > NARROW_FACE_END) & (np.abs(x) > ear_x) & (y > ear_y0) & (y < ear_y1) & (z < ear_z)
    region[head_part & (y < NECK_TOP_CM)] = REGIONS.index("neck")
    region[ears] = REGIONS.index("ears")
    region[idx <= NARROW_FACE_END] = REGIONS.index("face")
    for part, name in (("mouth_socket", "mouth"), ("teeth", "teeth"), ("sclera_left", "sclera"),
                       ("sclera_right", "sclera"), ("iris_left", "iris"), ("iris_right", "iris")):
        lo, hi = PARTS[part]
        region[lo:hi + 1] = REGIONS.index(name)
    for sclera, iris in (("sclera_left", "iris_left"), ("sclera_right", "iris_right")):
        region[cornea(neutral, PARTS[sclera], PARTS[iris])] = REGIONS.index("iris")
    return region


def cornea(neutral: np.ndarray, sclera: tuple[int, int], iris: tuple[int, int]) -> np.ndarray:
    """FaceKit indices of the sclera vertices in front of the iris. The FaceKit's eyeball is a
    closed sclera shell whose front (the cornea) covers the iris mesh, so a render shows a white
    eye unless that cap is labelled iris too: the vertices within ``IRIS_HALF_ANGLE`` of the
    eye's axis (eyeball centre -> iris centre); a human iris is about 12 mm wide on a 24 mm eye."""
    ball = np.arange(sclera[0], sclera[1] + 1)
    centre = neutral[ball].mean(0)
    axis = neutral[iris[0]:iris[1] + 1].mean(0) - centre
    axis /= np.linalg.norm(axis)
    d = neutral[ball] - centre
    cos = d @ axis / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
    return ball[cos >= np.cos(IRIS_HALF_ANGLE)]


def neck_weights(neutral: np.ndarray) -> np.ndarray:
    """[V] float32: 1 above ``NECK_TOP_CM``, linear to 0 at ``NECK_CUT_CM`` (see head_model)."""
    t = (neutral[:, 1] - NECK_CUT_CM) / (NECK_TOP_CM - NECK_CUT_CM)
    return np.clip(t, 0.0, 1.0).astype(np.float32)


def triangulate(polygons: list[list[int]], keep: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """[F, 3] triangles (new vertex indices) of the polygons whose corners are all kept and lie
    above the neck cut; quads split along their 0-2 diagonal."""
    new_index = np.full(len(neutral), -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    out = []
    for poly in polygons:
        idx = new_index[poly]
        if (idx < 0).any() or (neutral[poly, 1] < NECK_CUT_CM).any():
            continue
        for k in range(1, len(idx) - 1):
            out.append((idx[0], idx[k], idx[k + 1]))
    return np.array(out, dtype=np.int64)


def drop_unused(tri: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove kept vertices no triangle uses (below the neck cut); returns (triangles, keep)."""
    used = np.zeros(len(keep), dtype=bool)
    used[tri.ravel()] = True
    remap = np.cumsum(used) - 1
    return remap[tri], keep[used]


def build_asset(kit: FaceKit, correspondence_views: int = 9) -> ICTHeadAsset:
    """The head asset from a read FaceKit (renders the mean head to place MediaPipe's landmarks)."""
    from .correspondence import mediapipe_correspondence
    keep = kept_vertices(len(kit.neutral))
    tri, keep = drop_unused(triangulate(kit.polygons, keep, kit.neutral), keep)
    tri = orient_outward(kit.neutral[keep], tri)
    identity = kit.identity[:, keep].astype(np.float16)
    expression = kit.expression[:, keep].astype(np.float16)
    err = max(float(np.abs(identity.astype(np.float64) - kit.identity[:, keep]).max()),
              float(np.abs(expression.astype(np.float64) - kit.expression[:, keep]).max()))
    new_index = np.full(len(kit.neutral), -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    landmarks68 = new_index[list(LANDMARKS_68)]
    if (landmarks68 < 0).any():
        raise ValueError("a Multi-PIE landmark vertex was not kept")
    regions = vertex_regions(kit.neutral)[keep]
    draft = ICTHeadAsset(
        vertices=kit.neutral[keep].astype(np.float32), triangles=tri, identity=identity,
        expression=expression, expression_names=tuple(kit.expression_names), region=regions,
        neck_weight=neck_weights(kit.neutral)[keep],
        mediapipe_triangle=np.zeros(478, dtype=np.int64), mediapipe_barycentric=np.full((478, 3), 1 / 3, np.float32),
        landmarks68=landmarks68, source_index=keep.astype(np.int32), provenance={})
    tri_mp, bary_mp, spread = mediapipe_correspondence(draft, views=correspondence_views)
    provenance = {
        "source": "ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit), ICT Face Model Light",
        "licence": "MIT, Copyright (c) 2020 USC Institute for Creative Technologies",
        "facekit_commit": kit.commit, "builder_version": BUILDER_VERSION,
        "kept": "face, head and neck (cut at %.1f cm), mouth socket, 12 front teeth, eyeballs" % NECK_CUT_CM,
        "units": "centimetres", "float16_max_error_cm": round(err, 6),
        "correspondence": {"views": correspondence_views, "median_spread_cm": round(float(np.median(spread)), 4),
                           "max_spread_cm": round(float(spread.max()), 4)},
    }
    log.info("ICT asset: %d vertices, %d triangles, %d identity modes, %d expressions; float16 error "
             "%.5f cm; correspondence spread median %.3f cm", len(keep), len(tri), identity.shape[0],
             expression.shape[0], err, float(np.median(spread)))
    return ICTHeadAsset(**{**draft.__dict__, "mediapipe_triangle": tri_mp,
                           "mediapipe_barycentric": bary_mp, "provenance": provenance})


def orient_outward(vertices: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Flip the winding if most triangle normals point toward the centroid (the FaceKit's OBJs
    are wound counter-clockwise seen from outside; this only guards that assumption)."""
    v0, v1, v2 = (vertices[tri[:, k]] for k in range(3))
    normal = np.cross(v1 - v0, v2 - v0)
    outward = np.einsum("ij,ij->i", normal, (v0 + v1 + v2) / 3 - vertices.mean(0))
    return tri if (outward > 0).mean() >= 0.5 else tri[:, [0, 2, 1]]


def build_head_asset(facekit_root: Path | str, out: Path | str, views: int = 9,
                     commit: str | None = None) -> ICTHeadAsset:
    """Read a FaceKit checkout, build the asset, write it to ``out`` (npz) and return it."""
    asset = build_asset(read_facekit(facekit_root, commit), correspondence_views=views)
    save_asset(asset, out)
    log.info("wrote %s (%.1f MB)", out, Path(out).stat().st_size / 1e6)
    return asset


def describe(asset: ICTHeadAsset) -> str:
    """One JSON line: sizes and provenance (for the command's output)."""
    return json.dumps({"vertices": int(asset.vertices.shape[0]), "triangles": int(asset.triangles.shape[0]),
                       "identity_modes": asset.num_identity, "expressions": asset.num_expression,
                       **asset.provenance})
