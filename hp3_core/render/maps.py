"""Condition maps from screen-space head meshes: grey shading, normals, depth, mask.

All maps are float32 in [0, 1], channels-last like ComfyUI IMAGE tensors ([B, H, W, C]).

Frames. Screen space (what :func:`render_maps` takes, see :mod:`hp3_core.head3d`) has x right,
y down, z away from the camera (smaller = nearer); it is right-handed. **Camera space** here has
x right, y up, z toward the viewer (the head model's axes for a frontal camera); a screen vector
``(x, y, z)`` is ``(x, -y, -z)`` in camera space. Lights are given in camera space.

Normal orientation. Normals are area-weighted vertex normals of the screen-space triangles
(cross product ``(v1 - v0) x (v2 - v0)``, so they follow the mesh winding), interpolated with the
pixel's barycentrics; the mesh must be consistently wound, either way. Each pixel is oriented by
its visible face: the side the camera sees faces it (negative screen z, positive camera z), so
where that face's winding normal points away (a mesh wound inward, or the back of an open
surface such as the inside of the mouth) the normal is flipped, i.e. lighting is two-sided.
Smoothing that tilts a silhouette normal past 90 degrees is clamped to sideways.

Normal map convention: ControlNet v1.1 ``control_v11p_sd15_normalbae``. Its README
(lllyasviel/ControlNet-v1-1-nightly, "ControlNet 1.1 Normal") says the model accepts rendered
normal maps that follow ScanNet's protocol as used by Bae et al.'s estimator, "as long as the
colors are correct (blue is front, red is left, green is top)", and its annotator
(``annotator/normalbae/__init__.py``) writes the estimator's unit normal as
``rgb = (n + 1) / 2`` with no channel swap. So, in camera space (x right, y up, z toward viewer):

    R = (1 - n_x) / 2,   G = (1 + n_y) / 2,   B = (1 + n_z) / 2

(a surface facing the camera is (0.5, 0.5, 1.0), one facing image-left is red, one facing up is
green). Equivalently, in screen space, ``rgb = (1 - n_screen) / 2``. Background: the model was
trained on the annotator's output, which is a normal at every pixel and never black (black is
what Bae's training loader treats as "no ground truth"); a plain backdrop behind a portrait faces
the camera, so the background is (0.5, 0.5, 1.0) by default (``normal_background``).

Depth convention: like the MiDaS/Zoe maps that ControlNet depth models are trained on, near is
bright and far is dark: per image, covered pixels are mapped linearly from the nearest (1.0) to
the farthest (0.2) covered depth, leaving a gap above the 0.0 background so the silhouette stays
visible. Grey in all three channels.

Shading: Diff-PC/DECA style grey render: constant albedo (DECA uses 180/255 ~ 0.7), Lambertian
from five directional lights (DECA's ``(+-1, +-1, 1)`` and ``(0, 0, 1)``, intensity 1.7,
averaged) plus a small ambient term, ``albedo * (ambient + mean_l I_l max(0, n . l_l))``,
clipped to 1, on a uniform background.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .rasterizer import Fragments, rasterize

# DECA's render_shape lights (camera space, toward the lights), |l| = intensity 1.7.
DEFAULT_LIGHTS = tuple((x * 1.7 / 3 ** 0.5, y * 1.7 / 3 ** 0.5, 1.7 / 3 ** 0.5)
                       for x, y in ((-1, 1), (1, 1), (-1, -1), (1, -1))) + ((0.0, 0.0, 1.7),)
DEFAULT_AMBIENT = 0.1
DEPTH_NEAR, DEPTH_FAR = 1.0, 0.2
NORMAL_BACKGROUND = (0.5, 0.5, 1.0)
# Screen (x right, y down, z away) -> camera (x right, y up, z toward the viewer).
_SCREEN_TO_CAMERA = (1.0, -1.0, -1.0)


@dataclass
class RenderedMaps:
    """Condition maps, float32 in [0, 1].

    Attributes:
        shaded: [B, H, W, 3] grey Lambertian render on ``background``.
        normal: [B, H, W, 3] camera-space normals in ControlNet normalbae colours.
        depth: [B, H, W, 3] grey, near = 1.0 .. far = 0.2 per image, background 0.
        mask: [B, H, W] 1 where the mesh covers the pixel centre, else 0.
    """

    shaded: Tensor
    normal: Tensor
    depth: Tensor
    mask: Tensor


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """[B, F, 3] un-normalised face normals ``(v1 - v0) x (v2 - v0)``; length = 2 * area."""
    v0, v1, v2 = verts[:, faces].unbind(dim=2)
    return torch.cross(v1 - v0, v2 - v0, dim=-1)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """[B, V, 3] unit area-weighted vertex normals (same frame and winding as ``verts``)."""
    return _accumulate_normals(face_normals(verts, faces), faces, verts.shape[1])


def _accumulate_normals(fn: Tensor, faces: Tensor, nverts: int) -> Tensor:
    """[B, V, 3] unit sum of the un-normalised face normals ``fn`` [B, F, 3] at each vertex."""
    batch = fn.shape[0]
    # One index_add_ over all (item, corner) pairs: faster on the CPU than three calls for a 30k-
    # triangle head, and deterministic (index_put_(accumulate=True) sums in a thread-dependent
    # order there, so the same head rendered twice differed in the last bit, and then at pixels).
    corners = faces.t().reshape(1, -1) + (torch.arange(batch, device=faces.device) * nverts)[:, None]
    out = fn.new_zeros(batch * nverts, 3).index_add_(0, corners.reshape(-1), fn.repeat(1, 3, 1).reshape(-1, 3))
    return F.normalize(out.view(batch, nverts, 3), dim=-1, eps=1e-12)


def render_maps(verts: Tensor, faces: Tensor, height: int, width: int,
                face_subset: Tensor | None = None, cullable: Tensor | None = None, albedo: float = 0.7,
                lights: Tensor | None = None, ambient: float = DEFAULT_AMBIENT,
                background: float = 0.0,
                normal_background: tuple[float, float, float] = NORMAL_BACKGROUND
                ) -> RenderedMaps:
    """Render the shaded, normal, depth and mask maps of screen-space meshes.

    Args:
        verts: [B, V, 3] screen vertices (x, y pixels, y down; z pixel units, smaller = nearer).
        faces: [F, 3] int64 vertex indices, consistently wound (either way).
        height: image height H in pixels.
        width: image width W in pixels.
        face_subset: optional [F] bool; only these triangles are drawn (e.g. face only). Vertex
            normals still use every face, so shading at the subset's border matches the full head.
        cullable: optional [F] bool; skipped where they face away (see :func:`.rasterizer.rasterize`).
        albedo: grey level of the surface.
        lights: [L, 3] camera-space directions toward the lights; their lengths are the
            intensities. Default: DECA's five lights (:data:`DEFAULT_LIGHTS`).
        ambient: ambient light added to the averaged Lambertian term (before the albedo).
        background: grey level of ``shaded`` outside the mesh.
        normal_background: RGB of ``normal`` outside the mesh.

    Returns:
        :class:`RenderedMaps`.
    """
    verts = verts.to(torch.float32)
    faces = faces.to(device=verts.device, dtype=torch.int64)
    batch = verts.shape[0]
    frags = rasterize(verts, faces, height, width, face_subset=face_subset, cullable=cullable)
    # Work on the covered pixels only ([N] arrays), then scatter into the dense maps once.
    image, row, col = frags.mask.nonzero(as_tuple=True)                  # [N] each
    flat = (image * height + row) * width + col
    normal_screen = _pixel_normals(verts, faces, frags, flat, image)     # [N, 3]

    if lights is None:
        lights = torch.tensor(DEFAULT_LIGHTS)
    lights = lights.to(device=verts.device, dtype=torch.float32).reshape(-1, 3)
    intensity = lights.norm(dim=-1)
    direction = lights / intensity.clamp(min=1e-12)[:, None]
    normal_cam = normal_screen * normal_screen.new_tensor(_SCREEN_TO_CAMERA)
    # A loop over the few lights: elementwise dots beat a [N, 3] x [3, L] matmul on CPU.
    lambert = normal_cam.new_zeros(len(normal_cam))
    for d, strength in zip(direction.tolist(), intensity.tolist()):
        dot = normal_cam[:, 0] * d[0] + normal_cam[:, 1] * d[1] + normal_cam[:, 2] * d[2]
        lambert += dot.clamp(0.0, 1.0) * strength
    grey = (albedo * (ambient + lambert / max(len(direction), 1))).clamp(0.0, 1.0)  # [N]

    def scatter(values: Tensor, fill: Tensor | float, channels: int) -> Tensor:
        dense = torch.empty(batch * height * width, channels, dtype=torch.float32,
                            device=verts.device)
        dense[:] = fill
        dense.index_copy_(0, flat, values.reshape(-1, channels))
        return dense.view(batch, height, width, channels)

    shaded = scatter(grey, background, 1).expand(-1, -1, -1, 3)
    encoded = ((1.0 - normal_screen) * 0.5).clamp(0.0, 1.0)              # normalbae colours
    normal = scatter(encoded, normal_screen.new_tensor(normal_background), 3)
    depth = scatter(_depth_values(frags, flat, image, batch), 0.0, 1).expand(-1, -1, -1, 3)
    return RenderedMaps(shaded=shaded.clamp(0.0, 1.0).contiguous(), normal=normal,
                        depth=depth.contiguous(), mask=frags.mask.to(torch.float32))


def blank_maps(height: int, width: int, batch: int = 1, background: float = 0.0,
               normal_background: tuple[float, float, float] = NORMAL_BACKGROUND,
               device: torch.device | str | None = None) -> RenderedMaps:
    """The maps of an empty scene (e.g. a frame without a face): exactly what
    :func:`render_maps` gives where nothing is covered. Shapes as in :class:`RenderedMaps`."""
    shape = (batch, height, width)
    return RenderedMaps(
        shaded=torch.full((*shape, 3), background, dtype=torch.float32, device=device),
        normal=torch.tensor(normal_background, dtype=torch.float32, device=device)
        .expand(*shape, 3).contiguous(),
        depth=torch.zeros((*shape, 3), dtype=torch.float32, device=device),
        mask=torch.zeros(shape, dtype=torch.float32, device=device))


def _pixel_normals(verts: Tensor, faces: Tensor, frags: Fragments, flat: Tensor,
                   image: Tensor) -> Tensor:
    """[N, 3] unit screen-space normals facing the camera (z <= 0) at the covered pixels.

    Args:
        flat: [N] flat indices of the covered pixels in [B, H, W]; image: [N] their batch item.
    """
    nverts, nfaces = verts.shape[1], faces.shape[0]
    face = frags.face_index.view(-1).index_select(0, flat)               # [N]
    bary = frags.bary.view(-1, 3).index_select(0, flat)                  # [N, 3]
    corners = faces.index_select(0, face) + (image * nverts)[:, None]    # [N, 3] into B*V
    fn = face_normals(verts, faces)                                      # [B, F, 3]
    vn = _accumulate_normals(fn, faces, nverts).reshape(-1, 3).index_select(0, corners.view(-1))
    vn = vn.view(-1, 3, 3)
    normal = bary[:, 0:1] * vn[:, 0] + bary[:, 1:2] * vn[:, 1] + bary[:, 2:3] * vn[:, 2]
    unit_fn = F.normalize(fn, dim=-1, eps=1e-12).reshape(-1, 3)           # per face: cheap
    pixel_fn = unit_fn.index_select(0, image * nfaces + face)            # [N, 3]

    # Orient by the visible face: if its winding normal points away from the camera (screen
    # z > 0), the mesh is wound inward or we see the back of an open surface; either way the
    # side we see faces the camera, so flip both normals.
    flip = torch.where(pixel_fn[:, 2:] > 0, -1.0, 1.0)
    normal, pixel_fn = normal * flip, pixel_fn * flip
    # Smoothing can tilt a silhouette normal slightly away from the camera: make it sideways.
    normal[:, 2].clamp_(max=0.0)
    length = normal.norm(dim=-1, keepdim=True)
    return torch.where(length > 1e-6, normal / length.clamp(min=1e-12), pixel_fn)


def _depth_values(frags: Fragments, flat: Tensor, image: Tensor, batch: int) -> Tensor:
    """[N] near = 1.0 .. far = 0.2 over each image's covered pixels."""
    z = frags.zbuf.view(-1).index_select(0, flat)
    near = torch.full((batch,), float("inf"), device=z.device).scatter_reduce(
        0, image, z, reduce="amin").index_select(0, image)
    far = torch.full((batch,), float("-inf"), device=z.device).scatter_reduce(
        0, image, z, reduce="amax").index_select(0, image)
    # A flat frontal surface (zero depth range) is all "near".
    t = ((z - near) / (far - near).clamp(min=1e-6)).clamp(0.0, 1.0)
    return DEPTH_NEAR + (DEPTH_FAR - DEPTH_NEAR) * t
