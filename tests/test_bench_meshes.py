"""The benchmarks' generated stand-in mesh: as large as FLAME's, closed, framed like a portrait."""
from __future__ import annotations

import numpy as np

from hp3_core.benchmarks.meshes import flame_sized_head, uv_sphere
from hp3_core.render import render_maps


def test_uv_sphere_is_closed_and_wound_outward():
    verts, faces = uv_sphere(6, 10)
    assert verts.shape == (6 * 10 + 2, 3) and faces.shape == (2 * 6 * 10, 3)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all(), "every edge is shared by exactly two triangles"
    tri = verts[faces]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert abs(volume - 4 / 3 * np.pi) < 0.5  # outward winding: positive, near the unit ball's


def test_flame_sized_head_has_flames_size_and_fills_a_portrait():
    verts, faces = flame_sized_head(128)
    assert verts.shape == (1, 5024, 3) and faces.shape == (10044, 3)  # FLAME 2020: 5023, 9976
    maps = render_maps(verts, faces, 128, 128)
    mask = maps.mask[0].numpy()
    assert mask[64, 64] == 1 and mask[2, 2] == 0
    rows = np.nonzero(mask.any(axis=1))[0]
    assert 0.6 < (rows[-1] - rows[0] + 1) / 128 < 0.8  # the head is 70% of the image height
