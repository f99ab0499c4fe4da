"""The head crop: a square around the face box, grown to hold the whole head (hair included).

HP3's local-appearance branch (docs/method.md section 1) runs CLIP vision on the *head*, not the tight
face: hair, ears and head shape are part of the identity the method preserves. The crop is

* **square**, side ``scale * max(face width, face height)`` (``scale`` 2.2 by default: DESIGN's
  "2.0-2.5x, square, keep hair");
* **lifted**: its centre is the face box's centre moved *up* by ``lift * face height``
  (:data:`HEAD_LIFT` = 0.2). A face detector's box (MediaPipe's landmarks: upper forehead to
  chin) sits low in the head: the skull and hair reach about 0.4-0.5 box heights above the box,
  while below the chin only the neck follows. Centring the head (crown to chin) rather than the
  face puts the centre about 0.2 box heights above the box centre. With the defaults the crop
  reaches ``(scale - 1) / 2 + lift`` = 0.8 face heights above the box (hair, crown) and 0.4 below
  the chin (neck);
* **padded, never shifted**, at the image borders: the face keeps the same place in the crop
  whether or not the photo cuts the head, so the encoder always sees the head at one scale and
  position. The padding is a constant fill, :data:`PAD_FILL` = the CLIP normalisation mean
  (123, 117, 104). After CLIP's ``(x - mean) / std`` those pixels are exactly 0, the "no signal"
  input of the ViT: like zero padding in the network's own input space, and what LLaVA's
  ``expand2square`` pads CLIP inputs with. Edge replication would invent streaks that read as
  hair or clothes texture (a CLIP appearance feature is exactly what must not be invented), and
  black or white borders (insightface ``norm_crop``'s black, PuLID's white background) are hard,
  high-contrast edges that CLIP encodes as content;
* **resampled** with the right filter: ``cv2.INTER_AREA`` when shrinking (box-filter
  antialiasing, no moire from hair), bicubic when enlarging.

Pixel convention: as OpenCV's ``resize`` and the face box / landmark coordinates (MediaPipe's
``x * width``), a pixel's centre has integer coordinates. The square is snapped to whole source
pixels (its corner ``floor(c - side / 2 + 0.5)``, its side ``round(side)``, so snapping commutes
with integer shifts of the image), then resized: crop pixel ``u`` covers source
``[x0 + u / k, x0 + (u + 1) / k)`` with ``k = size / side``, i.e. ``u = k * (x - x0 + 0.5) - 0.5``.
:attr:`HeadCrop.image_to_crop` is that exact map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputImageError

HEAD_SCALE = 2.2
HEAD_LIFT = 0.2
HEAD_CROP_SIZE = 224
# CLIP's normalisation mean (0.48145466, 0.4578275, 0.40821073) * 255, rounded: maps to 0.
PAD_FILL: tuple[int, int, int] = (123, 117, 104)


@dataclass(frozen=True)
class HeadCrop:
    """A head crop and where it came from.

    Attributes:
        image: [size, size, 3] uint8 RGB crop.
        image_to_crop: [3, 3] float64 affine matrix (last row 0, 0, 1): source-image pixel
            ``(x, y)`` -> crop pixel (pixel centres at integers in both; see the module docstring).
        box: ``(x0, y0, side)``: the square in source pixels (top-left corner and side, whole
            pixels); it may reach outside the image, where the crop is padded.
    """

    image: np.ndarray
    image_to_crop: np.ndarray
    box: tuple[int, int, int]

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def crop_to_image(self) -> np.ndarray:
        """The inverse map: crop pixel -> source-image pixel."""
        return np.linalg.inv(self.image_to_crop)


def head_square(face_box: tuple[float, float, float, float], scale: float = HEAD_SCALE,
                lift: float = HEAD_LIFT) -> tuple[int, int, int]:
    """The head square ``(x0, y0, side)`` in whole source pixels for a face box (see module doc)."""
    x0, y0, x1, y1 = (float(v) for v in face_box)
    fw, fh = x1 - x0, y1 - y0
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or fw <= 0 or fh <= 0:
        raise InputImageError(f"invalid face box {tuple(face_box)}: expected finite (x0, y0, x1, y1) "
                              f"with x1 > x0 and y1 > y0")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    side = max(1, round(scale * max(fw, fh)))
    cx = (x0 + x1) / 2.0
    cy = (y0 + y1) / 2.0 - lift * fh
    # floor(v + 0.5) rather than round(): commutes with integer shifts (no banker's rounding).
    return math.floor(cx - side / 2.0 + 0.5), math.floor(cy - side / 2.0 + 0.5), int(side)


def crop_transform(box: tuple[int, int, int], size: int) -> np.ndarray:
    """The [3, 3] map from source pixels to crop pixels for a square ``box`` resized to ``size``."""
    bx, by, side = box
    k = size / side
    return np.array([[k, 0.0, k * (0.5 - bx) - 0.5],
                     [0.0, k, k * (0.5 - by) - 0.5],
                     [0.0, 0.0, 1.0]], dtype=np.float64)


def head_crop(image: np.ndarray, face_box: tuple[float, float, float, float], scale: float = HEAD_SCALE,
              size: int = HEAD_CROP_SIZE, lift: float = HEAD_LIFT,
              fill: tuple[int, int, int] = PAD_FILL) -> HeadCrop:
    """Cut the square head crop around ``face_box`` from ``image``.

    Args:
        image: [H, W, 3] uint8 RGB.
        face_box: ``(x0, y0, x1, y1)`` of the face in image pixels (MediaPipe's landmark box).
        scale: the square's side over the face box's larger side.
        size: side of the output crop in pixels.
        lift: how far the square's centre moves up from the box centre, in face-box heights.
        fill: RGB of the padding where the square leaves the image (default: CLIP's mean colour,
            which CLIP's normalisation maps to 0; see the module docstring).

    Returns:
        :class:`HeadCrop` with the crop, the image->crop matrix and the square.

    Raises:
        InputImageError: the image is not [H, W, 3] uint8 or the face box is degenerate.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputImageError(f"head_crop expects an RGB uint8 image [H, W, 3], got {image.dtype} "
                              f"{list(image.shape)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape[:2]
    bx, by, side = head_square(face_box, scale, lift)
    region = np.empty((side, side, 3), dtype=np.uint8)
    region[...] = np.asarray(fill, dtype=np.uint8)
    sx0, sy0 = max(bx, 0), max(by, 0)
    sx1, sy1 = min(bx + side, w), min(by + side, h)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - by:sy1 - by, sx0 - bx:sx1 - bx] = image[sy0:sy1, sx0:sx1]
    if side == size:
        out = region
    else:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
        out = cv2.resize(region, (size, size), interpolation=interp)
    return HeadCrop(image=np.ascontiguousarray(out), image_to_crop=crop_transform((bx, by, side), size),
                    box=(bx, by, side))


def apply(image_to_crop: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points [N, 2] (extra columns such as z are ignored) through a [3, 3] affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"points must be [N, 2], got shape {pts.shape}")
    m = np.asarray(image_to_crop, dtype=np.float64)
    return pts[:, :2] @ m[:2, :2].T + m[:2, 2]


def draw_keypoints(crop: np.ndarray, points_in_crop: np.ndarray, radius: float = 2.0,
                   color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """A copy of ``crop`` with a filled, antialiased dot at each point (sub-pixel centres).

    Args:
        crop: [S, S, 3] uint8 image (a float image in 0..1 is accepted and returned as float).
        points_in_crop: [N, 2] crop pixels (pixel centres at integers, as :func:`apply` gives).
        radius: dot radius in pixels.
        color: RGB 0..255.
    """
    import cv2

    crop = np.asarray(crop)
    is_float = crop.dtype != np.uint8
    canvas = (np.clip(crop, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8) if is_float else crop.copy()
    canvas = np.ascontiguousarray(canvas)
    shift = 4
    f = 1 << shift
    for x, y in np.asarray(points_in_crop, dtype=np.float64)[:, :2]:
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        cv2.circle(canvas, (int(round(x * f)), int(round(y * f))), max(1, int(round(radius * f))),
                   tuple(int(c) for c in color), thickness=-1, lineType=cv2.LINE_AA, shift=shift)
    return canvas.astype(np.float32) / 255.0 if is_float else canvas


def suppress_background(crop: np.ndarray, mask: np.ndarray, fill: tuple[int, int, int] = PAD_FILL) -> np.ndarray:
    """Replace the background of a crop by ``fill``: ``crop * mask + fill * (1 - mask)``.

    Args:
        crop: [S, S, 3] uint8.
        mask: [S, S] (or [S, S, 1]) bool or float in 0..1, 1 on the head (keep), 0 on background.
        fill: RGB 0..255 (default: CLIP's mean colour, the same as the border padding).

    Returns:
        A new [S, S, 3] uint8 crop.
    """
    crop = np.asarray(crop)
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != crop.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the crop {crop.shape[:2]}")
    m = np.clip(m, 0.0, 1.0)[..., None]
    out = crop.astype(np.float32) * m + np.asarray(fill, dtype=np.float32) * (1.0 - m)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
