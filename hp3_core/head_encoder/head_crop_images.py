"""Head crops of a batch of images with the built-in face detector: what the Head Crop node does.

The crop is HP3's own (:mod:`.head_crop`: square, 2.2x the face box, lifted toward the crown,
padded at the borders), found with MediaPipe's face mesh (the largest face, or ``face_index``).
Besides the crops it returns, per image, where the crop shows the photo (1) and where it is
padding (0), so a padded border can be masked out downstream (IP-Adapter attention masks,
inpainting), and the square in source pixels.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputImageError
from ..head3d.face_landmarks import choose_face, shared_landmarker
from .head_crop import HEAD_LIFT, HEAD_SCALE, PAD_FILL, HeadCrop, head_crop

NO_FACE = ("error", "center")


@dataclass
class HeadCrops:
    """Per image: crop [S, S, 3] uint8, coverage [S, S] float32 (1 = photo, 0 = padding),
    square ``(x0, y0, side)`` in source pixels, and whether a face was found."""

    crops: list[np.ndarray]
    coverage: list[np.ndarray]
    boxes: list[tuple[int, int, int]]
    found: list[bool]


def coverage_mask(crop: HeadCrop, image_shape: tuple[int, ...]) -> np.ndarray:
    """[S, S] float32: 1 where a crop pixel's centre falls inside the source image."""
    s = crop.size
    back = crop.crop_to_image
    u = np.arange(s, dtype=np.float64)
    x = back[0, 0] * u + back[0, 2]
    y = back[1, 1] * u + back[1, 2]
    h, w = image_shape[:2]
    inside_x = (x > -0.5) & (x < w - 0.5)
    inside_y = (y > -0.5) & (y < h - 0.5)
    return (inside_y[:, None] & inside_x[None, :]).astype(np.float32)


def centre_square(image_shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """A face box whose head square (default scale and lift) is the image's centred square, so an
    image without a face still gives a crop of the same kind (the user asked for it)."""
    h, w = image_shape[:2]
    side = min(h, w) / HEAD_SCALE
    cx, cy = w / 2.0, h / 2.0 + HEAD_LIFT * side
    return cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0


def head_crops(images: list[np.ndarray], size: int = 512, scale: float = HEAD_SCALE,
               lift: float = HEAD_LIFT, face_index: int = 0, no_face: str = "error",
               on_item: Callable[[int], None] | None = None) -> HeadCrops:
    """HP3's head crop of each RGB uint8 image [H, W, 3].

    Args:
        size: side of every crop, pixels.
        scale: the square's side over the face box's larger side (HP3's encoder: 2.2).
        lift: the square's centre above the face box centre, in face-box heights (HP3: 0.2).
        face_index: which face when several (0 = largest).
        no_face: ``error`` (an error naming the image) or ``center`` (a centred square).
        on_item: called after each image (progress bars, interruption).

    Raises:
        InputImageError: an image without a face (with ``no_face="error"``) or a bad option.
    """
    if no_face not in NO_FACE:
        raise InputImageError(f"no_face must be one of {NO_FACE}, got {no_face!r}")
    if not 16 <= size <= 4096:
        raise InputImageError(f"size must be between 16 and 4096 pixels, got {size}")
    if not 1.0 <= scale <= 5.0:
        raise InputImageError(f"scale must be between 1.0 and 5.0 face boxes, got {scale}")
    landmarker = shared_landmarker()
    out = HeadCrops([], [], [], [])
    for i, image in enumerate(images):
        name = f"image {i}" if len(images) > 1 else "the image"
        faces = landmarker.detect(image)
        if face_index >= len(faces) and no_face == "center":
            box, found = centre_square(image.shape), False
        else:  # choose_face raises the detector's clear error when the face is missing
            box, found = choose_face(faces, face_index, image.shape, name).box, True
        crop = head_crop(image, box, scale=scale, size=size, lift=lift, fill=PAD_FILL)
        out.crops.append(crop.image)
        out.coverage.append(coverage_mask(crop, image.shape))
        out.boxes.append(crop.box)
        out.found.append(found)
        if on_item is not None:
            on_item(i)
    return out

