"""Generated meshes for benchmarks: stand-ins as large as the real head models, which are
licensed files a benchmark cannot assume (FLAME 2020: 5023 vertices, 9976 triangles)."""
from __future__ import annotations

import numpy as np
import torch

# A UV sphere of 62 rings x 81 segments + 2 poles: 5024 vertices, 10044 triangles, FLAME's size.
FLAME_SIZED_RINGS, FLAME_SIZED_SEGMENTS = 62, 81
# Head proportions in metres (half of width, height, depth: 0.15 x 0.23 x 0.19 m).
HEAD_RADII = (0.075, 0.115, 0.095)


def uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere with y as the polar axis: ``n_lat`` rings of ``n_lon`` vertices and two poles.

    Returns vertices [n_lat * n_lon + 2, 3] (top pole first, bottom pole last) and outward,
    counter-clockwise faces [2 * n_lat * n_lon, 3].
    """
    theta = np.pi * np.arange(1, n_lat + 1) / (n_lat + 1)
    phi = 2.0 * np.pi * np.arange(n_lon) / n_lon
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    ring = np.stack([st * np.sin(phi), np.broadcast_to(ct, (n_lat, n_lon)), st * np.cos(phi)], -1)
    verts = np.concatenate([[[0.0, 1.0, 0.0]], ring.reshape(-1, 3), [[0.0, -1.0, 0.0]]])
    idx = 1 + np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    top, bottom = 0, n_lat * n_lon + 1
    faces = [np.stack([np.full(n_lon, top), idx[0], nxt[0]], -1)]
    for i in range(n_lat - 1):
        a, b, c, d = idx[i], nxt[i], idx[i + 1], nxt[i + 1]
        faces += [np.stack([a, c, b], -1), np.stack([b, c, d], -1)]
    faces.append(np.stack([np.full(n_lon, bottom), nxt[-1], idx[-1]], -1))
    faces_arr = np.concatenate(faces).astype(np.int64)
    # Make the winding outward (positive signed volume).
    tri = verts[faces_arr]
    if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
        faces_arr = faces_arr[:, ::-1].copy()
    return verts, faces_arr


def flame_sized_head(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed head-shaped ellipsoid with FLAME's vertex and triangle counts, framed like a
    portrait in a ``size`` x ``size`` image: screen vertices [1, V, 3] (float32) and faces [F, 3]."""
    unit, faces = uv_sphere(FLAME_SIZED_RINGS, FLAME_SIZED_SEGMENTS)
    head = unit * np.asarray(HEAD_RADII)  # y up, z toward the camera
    scale = 0.7 * size / (2 * HEAD_RADII[1])
    xy = head[:, :2] * scale * np.array([1.0, -1.0]) + size / 2  # screen: y down
    z = -head[:, 2:] * scale  # smaller = nearer
    verts = torch.from_numpy(np.concatenate([xy, z], -1)).float()[None]
    return verts, torch.from_numpy(faces)
