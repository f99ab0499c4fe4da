"""The plain-torch rasterizer and condition maps against independent (analytic or float64
brute-force) computations: planes, spheres, random triangles, occlusion, clipping, subsets,
batches and the ControlNet normalbae colour convention."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hp3_core.optional import available
from hp3_core.render import Fragments, RenderedMaps, blank_maps, rasterize, render_maps
from hp3_core.render.maps import DEFAULT_AMBIENT


# ----------------------------------------------------------------------------- helpers

def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y [H, W] float64 pixel centres (x right, y down, +0.5)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return xs, ys


def brute_force_inside(tri_xy: np.ndarray, height: int, width: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Point-in-triangle of every pixel centre in float64, and each centre's distance (px) to
    the nearest edge line (to excuse centres that sit on an edge)."""
    xs, ys = pixel_centres(height, width)
    p = tri_xy.astype(np.float64)
    signed = []
    for a, b in ((p[0], p[1]), (p[1], p[2]), (p[2], p[0])):
        ex, ey = b - a
        signed.append((ex * (ys - a[1]) - ey * (xs - a[0])) / math.hypot(ex, ey))
    signed = np.stack(signed)
    area2 = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])
    inside = (np.sign(area2) * signed >= 0).all(axis=0)
    return inside, np.abs(signed).min(axis=0)


def shoelace_area(tri_xy: np.ndarray) -> float:
    (x0, y0), (x1, y1), (x2, y2) = tri_xy
    return abs((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)) / 2.0


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: vertices [V, 3] float64, faces [F, 3] int64 (consistent outward winding
    in a right-handed frame)."""
    t = (1.0 + 5 ** 0.5) / 2.0
    verts = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                      [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
                     dtype=np.float64)
    faces = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9],
                      [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2],
                      [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
                      [8, 6, 7], [9, 8, 1]], dtype=np.int64)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    for _ in range(level):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                        axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mids = verts[unique[:, 0]] + verts[unique[:, 1]]
        mids /= np.linalg.norm(mids, axis=1, keepdims=True)
        m = inverse.reshape(3, -1).T + len(verts)             # midpoints of edges 01, 12, 20
        a, b, c = faces.T
        faces = np.concatenate([np.stack([a, m[:, 0], m[:, 2]], 1),
                                np.stack([b, m[:, 1], m[:, 0]], 1),
                                np.stack([c, m[:, 2], m[:, 1]], 1), m])
        verts = np.concatenate([verts, mids])
    return verts, faces


def sphere_screen(centre: tuple[float, float, float], radius: float, level: int = 4
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthographically projected sphere as screen vertices [1, V, 3] and faces [F, 3]."""
    unit, faces = icosphere(level)
    verts = unit * radius + np.asarray(centre)
    return torch.tensor(verts, dtype=torch.float32)[None], torch.tensor(faces)


def quad(x0: float, x1: float, y0: float, y1: float, z_of) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectangle [x0, x1] x [y0, y1] as two consistently wound triangles, z = z_of(x, y)."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    verts = torch.tensor([[x, y, z_of(x, y)] for x, y in corners], dtype=torch.float32)[None]
    return verts, torch.tensor([[0, 1, 2], [0, 2, 3]])


def decode_normalbae(rgb: np.ndarray) -> np.ndarray:
    """Camera-space normals (x right, y up, z toward viewer) from ControlNet normalbae colours,
    per its README: blue is front, red is left, green is top, each channel = (n + 1) / 2."""
    left, up, front = (2.0 * rgb.astype(np.float64) - 1.0).transpose(2, 0, 1)
    return np.stack([-left, up, front], axis=-1)


# ------------------------------------------------------------------------------ rasterizer

def test_plane_depth_coverage_and_normal_match_the_analytic_plane():
    a, b, c = 0.3, -0.2, 50.0
    x0, x1, y0, y1 = 20.3, 100.7, 15.2, 80.9
    height, width = 96, 128
    verts, faces = quad(x0, x1, y0, y1, lambda x, y: a * x + b * y + c)
    frags = rasterize(verts, faces, height, width)

    xs, ys = pixel_centres(height, width)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert int(frags.mask.sum()) == int(inside.sum()) == 81 * 66
    assert np.array_equal(frags.mask[0].numpy(), inside)
    zbuf = frags.zbuf[0].numpy()
    np.testing.assert_allclose(zbuf[inside], (a * xs + b * ys + c)[inside], atol=1e-3)
    assert np.isinf(zbuf[~inside]).all()
    assert (frags.face_index[0].numpy()[~inside] == -1).all()

    maps = render_maps(verts, faces, height, width)
    # Screen normal facing the camera (z away -> negative z): (a, b, -1); camera flips y and z.
    n_cam = np.array([a, -b, 1.0]) / math.sqrt(a * a + b * b + 1.0)
    got = decode_normalbae(maps.normal[0].numpy())
    np.testing.assert_allclose(got[inside], np.broadcast_to(n_cam, got[inside].shape), atol=1e-5)
    np.testing.assert_allclose(maps.normal[0].numpy()[~inside], [[0.5, 0.5, 1.0]] * (~inside).sum())


def test_normal_colours_follow_red_left_green_up_blue_front():
    height, width = 40, 40
    # z decreasing to the right -> the right side is nearer -> the surface faces image-left.
    left_facing = quad(5.2, 35.3, 5.1, 35.4, lambda x, y: 100.0 - 2.0 * x)
    # z decreasing downward -> the bottom is nearer -> the surface faces up (image top).
    up_facing = quad(5.2, 35.3, 5.1, 35.4, lambda x, y: 100.0 - 2.0 * y)
    frontal = quad(5.2, 35.3, 5.1, 35.4, lambda x, y: 7.0)
    for (verts, faces), (r, g, b) in ((left_facing, (">", "=", "<")),
                                      (up_facing, ("=", ">", "<")), (frontal, ("=", "=", "1"))):
        maps = render_maps(verts, faces, height, width)
        rgb = maps.normal[0][maps.mask[0] > 0].mean(dim=0).tolist()
        for value, rule in zip(rgb, (r, g, b)):
            expected = {">": value > 0.8, "<": 0.5 < value < 0.8, "=": abs(value - 0.5) < 1e-5,
                        "1": abs(value - 1.0) < 1e-5}[rule]
            assert expected, (rgb, (r, g, b))


def test_sphere_depth_normals_and_area():
    cx, cy, cz, radius = 100.3, 90.7, 400.0, 70.0
    height, width = 180, 200
    verts, faces = sphere_screen((cx, cy, cz), radius)
    frags = rasterize(verts, faces, height, width)
    maps = render_maps(verts, faces, height, width)

    xs, ys = pixel_centres(height, width)
    rho2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / radius ** 2
    mask = frags.mask[0].numpy()
    assert abs(mask.sum() / (math.pi * radius ** 2) - 1.0) < 0.01
    assert not mask[rho2 > 1.0 + 3.0 / radius].any()
    assert mask[rho2 < 1.0 - 3.0 / radius].all()

    interior = mask & (rho2 < 0.8)
    front_z = cz - radius * np.sqrt(np.clip(1.0 - rho2, 0.0, None))
    # Flat facets lie inside the sphere, so they are slightly farther, by well under a pixel.
    dz = frags.zbuf[0].numpy()[interior] - front_z[interior]
    assert dz.min() > -1e-3 and dz.max() < 0.25

    analytic = np.stack([(xs - cx) / radius, -(ys - cy) / radius,
                         np.sqrt(np.clip(1.0 - rho2, 0.0, None))], axis=-1)
    got = decode_normalbae(maps.normal[0].numpy())
    cos = (got[interior] * analytic[interior]).sum(-1) / np.linalg.norm(got[interior], axis=-1)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    assert angle.mean() < 1.0 and angle.max() < 3.0
    # Every visible normal faces the camera (blue >= 0.5), even where smoothing tilts it.
    assert (maps.normal[0].numpy()[mask][:, 2] >= 0.5).all()
    # Up to the silhouette, normals stay within a few degrees on average.
    rim = mask & (rho2 < 0.98)
    cos = (got[rim] * analytic[rim]).sum(-1) / np.linalg.norm(got[rim], axis=-1)
    assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean() < 3.0


def test_inward_winding_gives_the_same_normals():
    verts, faces = sphere_screen((60.0, 60.0, 200.0), 40.0, level=3)
    out = render_maps(verts, faces, 120, 120)
    inward = render_maps(verts, faces[:, [0, 2, 1]], 120, 120)
    torch.testing.assert_close(inward.normal, out.normal, atol=1e-5, rtol=0)
    torch.testing.assert_close(inward.shaded, out.shaded, atol=1e-5, rtol=0)


def test_inside_of_an_open_mesh_is_shaded_two_sided():
    # A sphere with its front cap cut away (face_subset): through the hole the camera sees the
    # inside of the back wall, whose normal must face the camera, i.e. point to the centre.
    cx, cy, cz, radius = 64.3, 60.7, 300.0, 50.0
    verts, faces = sphere_screen((cx, cy, cz), radius)
    centroid_z = verts[0, faces, 2].mean(dim=1)
    subset = centroid_z > cz - 0.8 * radius                            # hole of radius 0.6 r
    maps = render_maps(verts, faces, 128, 128, face_subset=subset)

    xs, ys = pixel_centres(128, 128)
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    rho2 = dx ** 2 + dy ** 2
    depth = np.sqrt(np.clip(1.0 - rho2, 0.0, None))
    got = decode_normalbae(maps.normal[0].numpy())
    hole, ring = rho2 < 0.5 ** 2, (rho2 > 0.7 ** 2) & (rho2 < 0.9 ** 2)
    inward = np.stack([-dx, dy, depth], axis=-1)                       # camera frame, back wall
    outward = np.stack([dx, -dy, depth], axis=-1)                      # front surface
    for region, expected in ((hole, inward), (ring, outward)):
        cos = (got[region] * expected[region]).sum(-1)
        assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean() < 2.0


@pytest.mark.parametrize("seed", range(6))
def test_random_triangle_coverage_matches_area_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    height, width = 200, 240
    while True:
        tri = rng.uniform([-20, -20], [width + 20, height + 20], size=(3, 2))
        if shoelace_area(tri) > 3000:
            break
    z = rng.uniform(1, 100, size=(3, 1))
    verts = torch.tensor(np.concatenate([tri, z], 1), dtype=torch.float32)[None]
    faces = torch.tensor([[0, 1, 2]])
    frags = rasterize(verts, faces, height, width)

    inside, dist = brute_force_inside(tri, height, width)
    differ = frags.mask[0].numpy() != inside
    assert not (differ & (dist > 5e-3)).any()   # inside slack: 1e-5 of the height
    # Fully inside the image, the count is the area up to edge discretisation.
    if (tri >= 0).all() and (tri[:, 0] <= width).all() and (tri[:, 1] <= height).all():
        assert abs(frags.mask.sum().item() / shoelace_area(tri) - 1.0) < 0.02

    # Barycentrics reproduce the pixel centre and the depth.
    xyz = frags.interpolate(faces, verts)[0].numpy()
    xs, ys = pixel_centres(height, width)
    m = frags.mask[0].numpy()
    np.testing.assert_allclose(xyz[m][:, 0], xs[m], atol=2e-3)
    np.testing.assert_allclose(xyz[m][:, 1], ys[m], atol=2e-3)
    np.testing.assert_allclose(xyz[m][:, 2], frags.zbuf[0].numpy()[m], atol=2e-3)
    bary = frags.bary[0].numpy()[m]
    assert (bary >= 0).all() and np.allclose(bary.sum(-1), 1.0, atol=1e-5)


def test_large_triangles_cover_their_area():
    rng = np.random.default_rng(7)
    counts, areas = [], []
    for _ in range(20):
        tri = rng.uniform([0, 0], [256, 256], size=(3, 2))
        if shoelace_area(tri) < 2000:
            continue
        v = torch.tensor(np.concatenate([tri, np.ones((3, 1))], 1), dtype=torch.float32)[None]
        counts.append(rasterize(v, torch.tensor([[0, 1, 2]]), 256, 256).mask.sum().item())
        areas.append(shoelace_area(tri))
    assert len(areas) >= 5
    for count, area in zip(counts, areas):
        assert abs(count / area - 1.0) < 0.02


@pytest.mark.parametrize("near_first", [True, False])
@pytest.mark.parametrize("z_near, z_far", [(5.0, 10.0), (-10.0, -5.0), (-3.0, 2.0), (0.0, 1e-3)])
def test_nearer_triangle_wins_regardless_of_order(near_first, z_near, z_far):
    far = [[5.0, 5.0, z_far], [60.0, 8.0, z_far], [20.0, 55.0, z_far]]
    near = [[15.0, 10.0, z_near], [55.0, 30.0, z_near], [10.0, 45.0, z_near]]
    verts = torch.tensor([near + far if near_first else far + near])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    near_id = 0 if near_first else 1
    frags = rasterize(verts, faces, 64, 64)

    near_inside, _ = brute_force_inside(np.array(near)[:, :2], 64, 64)
    far_inside, _ = brute_force_inside(np.array(far)[:, :2], 64, 64)
    face = frags.face_index[0].numpy()
    assert (face[near_inside] == near_id).all()
    assert (face[far_inside & ~near_inside] == 1 - near_id).all()
    assert np.allclose(frags.zbuf[0].numpy()[near_inside], z_near)


def test_intersecting_triangles_keep_the_nearer_surface_per_pixel():
    # Two slanted planes crossing at x = 50: each pixel must show min(z_a, z_b).
    verts = torch.tensor([[[0.0, 0.0, 0.0], [100.0, 0.0, 10.0], [0.0, 100.0, 0.0],
                           [0.0, 0.0, 10.0], [100.0, 0.0, 0.0], [100.0, 100.0, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, faces, 100, 100)
    xs, ys = pixel_centres(100, 100)
    z_a, z_b = 0.1 * xs, 10.0 - 0.1 * xs
    in_a, _ = brute_force_inside(verts[0, :3, :2].numpy(), 100, 100)
    in_b, _ = brute_force_inside(verts[0, 3:, :2].numpy(), 100, 100)
    both = in_a & in_b
    expected = np.where(z_a < z_b, 0, 1)
    assert (frags.face_index[0].numpy()[both] == expected[both]).all()
    np.testing.assert_allclose(frags.zbuf[0].numpy()[both], np.minimum(z_a, z_b)[both],
                               atol=1e-4)


def test_triangles_outside_the_image_and_degenerate_ones():
    height, width = 60, 80
    verts = torch.tensor([[[-50.0, -30.0, 1.0], [100.0, 20.0, 2.0], [30.0, 200.0, 3.0],  # partly
                           [-90.0, -90.0, 1.0], [-10.0, -80.0, 1.0], [-50.0, -5.0, 1.0],  # outside
                           [10.0, 10.0, 0.0], [20.0, 20.0, 0.0], [30.0, 30.0, 0.0],   # collinear
                           [40.0, 40.0, 0.0], [40.0, 40.0, 0.0], [50.0, 10.0, 0.0],   # repeated
                           [1e7, -1e7, 5.0], [-1e7, -1e7, 5.0], [0.0, 1e7, 5.0]]])    # huge
    faces = torch.arange(15).view(5, 3)
    frags = rasterize(verts, faces, height, width, face_subset=torch.tensor([1, 1, 1, 1, 0]) > 0)
    inside, dist = brute_force_inside(verts[0, :3, :2].numpy(), height, width)
    differ = frags.mask[0].numpy() != inside
    assert not (differ & (dist > 5e-3)).any()   # inside slack: 1e-5 of the height
    assert set(frags.face_index.unique().tolist()) == {-1, 0}

    # The huge triangle covers the whole image, in front of everything else.
    frags = rasterize(verts, faces, height, width)
    assert frags.mask.all()
    assert frags.face_index.eq(4).sum() > 0
    np.testing.assert_allclose(frags.zbuf[frags.face_index == 4].numpy(), 5.0, atol=1e-2)

    # Only degenerate triangles: nothing drawn, no NaN.
    maps = render_maps(verts[:, 6:12], torch.arange(6).view(2, 3), height, width)
    assert maps.mask.sum() == 0 and torch.isfinite(maps.depth).all()


def test_face_subset_excludes_triangles():
    far = [[5.0, 5.0, 10.0], [60.0, 8.0, 10.0], [20.0, 55.0, 10.0]]
    near = [[15.0, 10.0, 5.0], [55.0, 30.0, 5.0], [10.0, 45.0, 5.0]]
    verts = torch.tensor([near + far])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, faces, 64, 64, face_subset=torch.tensor([False, True]))
    far_inside, _ = brute_force_inside(np.array(far)[:, :2], 64, 64)
    assert np.array_equal(frags.mask[0].numpy(), far_inside)
    assert (frags.face_index[0].numpy()[far_inside] == 1).all()
    maps = render_maps(verts, faces, 64, 64, face_subset=torch.tensor([False, False]))
    assert maps.mask.sum() == 0 and maps.depth.max() == 0 and maps.shaded.max() == 0
    # An empty scene renders exactly the blank maps.
    blank = blank_maps(64, 64)
    for field in ("shaded", "normal", "depth", "mask"):
        assert torch.equal(getattr(blank, field), getattr(maps, field)), field


def test_chunked_rasterization_is_identical():
    verts, faces = sphere_screen((50.0, 45.0, 100.0), 35.0, level=3)
    whole = rasterize(verts, faces, 96, 100)
    chunked = rasterize(verts, faces, 96, 100, max_candidates=997)
    assert torch.equal(whole.face_index, chunked.face_index)
    assert torch.equal(whole.zbuf, chunked.zbuf)


def test_unknown_backend_and_bad_shapes_are_refused():
    verts, faces = quad(1, 5, 1, 5, lambda x, y: 0.0)
    with pytest.raises(ValueError, match="backend"):
        rasterize(verts, faces, 8, 8, backend="opengl")
    with pytest.raises(ValueError, match="verts"):
        rasterize(verts[0], faces, 8, 8)


# ---------------------------------------------------------------------------------- maps

def test_depth_map_is_bright_near_dark_far_and_black_outside():
    a, c = 0.5, 20.0
    verts, faces = quad(10.2, 90.6, 10.3, 50.8, lambda x, y: a * x + c)
    maps = render_maps(verts, faces, 64, 100)
    assert isinstance(maps, RenderedMaps)
    depth, mask = maps.depth[0].numpy(), maps.mask[0].numpy() > 0
    assert np.array_equal(depth[..., 0], depth[..., 1]) and np.array_equal(depth[..., 0],
                                                                            depth[..., 2])
    assert (depth[~mask] == 0).all()
    xs, _ = pixel_centres(64, 100)
    z = a * xs[mask] + c
    expected = 1.0 - 0.8 * (z - z.min()) / (z.max() - z.min())
    np.testing.assert_allclose(depth[mask][:, 0], expected, atol=1e-5)
    assert depth[mask].max() == pytest.approx(1.0) and depth[mask].min() == pytest.approx(0.2)


def test_shading_follows_lambert_and_the_light_direction():
    height, width = 40, 90
    facing = quad(2.2, 40.3, 2.1, 38.4, lambda x, y: 10.0)            # faces the camera
    tilted = quad(50.2, 88.3, 2.1, 38.4, lambda x, y: 2.0 * x)         # faces image-right
    verts = torch.cat([facing[0], tilted[0]], dim=1)
    faces = torch.cat([facing[1], tilted[1] + 4])
    albedo, ambient = 0.7, 0.1

    from_camera = torch.tensor([[0.0, 0.0, 1.0]])
    maps = render_maps(verts, faces, height, width, lights=from_camera, albedo=albedo,
                       ambient=ambient, background=0.25)
    shaded = maps.shaded[0, ..., 0].numpy()
    assert shaded[20, 20] == pytest.approx(albedo * (ambient + 1.0), abs=1e-5)
    assert shaded[20, 70] == pytest.approx(albedo * (ambient + 1.0 / math.sqrt(5.0)), abs=1e-5)
    assert shaded[20, 45] == 0.25                                       # background
    assert torch.equal(maps.shaded[..., 0], maps.shaded[..., 2])

    from_right = torch.tensor([[1.0, 0.0, 0.0]])
    maps = render_maps(verts, faces, height, width, lights=from_right, albedo=albedo,
                       ambient=ambient)
    shaded = maps.shaded[0, ..., 0].numpy()
    assert shaded[20, 70] == pytest.approx(albedo * (ambient + 2.0 / math.sqrt(5.0)), abs=1e-5)
    assert shaded[20, 20] == pytest.approx(albedo * ambient, abs=1e-5)

    maps = render_maps(verts, faces, height, width)                     # default lights
    assert maps.shaded[0, 20, 20, 0] > maps.shaded[0, 20, 70, 0] > albedo * DEFAULT_AMBIENT
    for image in (maps.shaded, maps.normal, maps.depth, maps.mask):
        assert image.dtype == torch.float32 and image.min() >= 0.0 and image.max() <= 1.0


def test_sphere_shading_is_brightest_toward_the_light():
    verts, faces = sphere_screen((60.0, 60.0, 300.0), 50.0, level=3)
    light = torch.tensor([[-1.0, 1.0, 1.0]]) / math.sqrt(3.0)          # upper left, in front
    maps = render_maps(verts, faces, 120, 120, lights=light, albedo=1.0, ambient=0.0)
    shaded = maps.shaded[0, ..., 0]
    i, j = divmod(int(shaded.argmax()), 120)
    # The brightest point has its normal along the light: up-left of the centre, at r / sqrt(3).
    x, y = j + 0.5 - 60.0, 60.0 - (i + 0.5)
    assert abs(x + 50.0 / math.sqrt(3.0)) < 2.0 and abs(y - 50.0 / math.sqrt(3.0)) < 2.0
    assert shaded.max() == pytest.approx(1.0, abs=2e-3)
    # The lower right, facing away from the light, gets nothing.
    assert shaded[85, 85] == 0.0 and maps.mask[0, 85, 85] == 1.0


def test_batch_items_match_single_calls():
    v1, faces = sphere_screen((50.0, 40.0, 100.0), 30.0, level=3)
    v2, _ = sphere_screen((70.0, 60.0, 50.0), 20.0, level=3)
    v2 = v2 * torch.tensor([1.3, 0.8, 1.0])                             # an ellipsoid
    subset = torch.arange(len(faces)) % 3 != 0
    verts = torch.cat([v1, v2])
    both = rasterize(verts, faces, 90, 110, face_subset=subset)
    both_maps = render_maps(verts, faces, 90, 110, face_subset=subset)
    for k, single_verts in enumerate((v1, v2)):
        single = rasterize(single_verts, faces, 90, 110, face_subset=subset)
        for field in ("face_index", "mask", "bary", "zbuf"):
            assert torch.equal(getattr(both, field)[k], getattr(single, field)[0]), field
        maps = render_maps(single_verts, faces, 90, 110, face_subset=subset)
        for field in ("shaded", "normal", "depth", "mask"):
            torch.testing.assert_close(getattr(both_maps, field)[k], getattr(maps, field)[0],
                                       atol=1e-6, rtol=0)
    assert not torch.equal(both.mask[0], both.mask[1])


# ------------------------------------------------------------------------- other devices

def _compare_fragments(a: Fragments, b: Fragments) -> None:
    agree = a.face_index == b.face_index
    # Pixel centres exactly on a shared edge may go either way under different rounding.
    assert agree.float().mean() > 0.999
    torch.testing.assert_close(a.zbuf[agree & a.mask], b.zbuf[agree & b.mask], atol=1e-3,
                               rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this environment")
def test_cuda_matches_cpu():
    verts, faces = sphere_screen((120.3, 100.7, 300.0), 90.0, level=4)
    subset = torch.arange(len(faces)) % 5 != 0
    cpu = rasterize(verts, faces, 240, 256, face_subset=subset)
    gpu = rasterize(verts.cuda(), faces.cuda(), 240, 256, face_subset=subset.cuda())
    assert gpu.zbuf.is_cuda
    _compare_fragments(cpu, Fragments(*(t.cpu() for t in (gpu.face_index, gpu.bary, gpu.zbuf,
                                                            gpu.mask))))
    cpu_maps = render_maps(verts, faces, 240, 256)
    gpu_maps = render_maps(verts.cuda(), faces.cuda(), 240, 256)
    same = (cpu_maps.mask == gpu_maps.mask.cpu())
    assert same.float().mean() > 0.999
    torch.testing.assert_close(gpu_maps.normal.cpu()[same], cpu_maps.normal[same], atol=1e-3,
                               rtol=0)


@pytest.mark.skipif(not available("pytorch3d"), reason="pytorch3d is not installed (optional)")
def test_pytorch3d_backend_agrees():
    verts, faces = sphere_screen((120.3, 100.7, 300.0), 90.0, level=4)
    ours = rasterize(verts, faces, 200, 256)
    theirs = rasterize(verts, faces, 200, 256, backend="pytorch3d")
    _compare_fragments(ours, theirs)
