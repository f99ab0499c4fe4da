"""SMIRK's face crop: a square around the MediaPipe landmarks, scaled by 1.4, resampled to 224x224.

Same geometry as ``crop_face`` in SMIRK's ``demo.py`` (and ``datasets/base_dataset.py``), which
estimates a similarity transform from three corners of the square to the crop's corners
``(0, 0), (0, crop_size - 1), (crop_size - 1, 0)``. Those three pairs define the transform
exactly (scale and translation, no rotation), so it is computed here in closed form:

* ``left, right, top, bottom``: min / max of the landmarks' x and y (image pixels);
* ``center = ((left + right) / 2, (top + bottom) / 2)``;
* ``size = int(scale * ((right - left) + (bottom - top)) / 2)`` (mean of the box's width and
  height, times ``scale``, truncated to an integer as SMIRK does);
* ``k = (crop_size - 1) / size``; ``crop = k * (image - center + size / 2)``.

Pixel convention: as in SMIRK (skimage's ``warp``), a pixel's centre is at integer coordinates
in both the image and the crop, so the box centre maps to ``(crop_size - 1) / 2`` (111.5 for 224)
and the square's edges to 0 and ``crop_size - 1``. SMIRK applies this matrix directly to
MediaPipe's ``x * width, y * height`` landmarks and trains its camera against
``crop / crop_size * 2 - 1``, which is what :func:`hp3_core.head3d.camera.project_to_image`
inverts; keep the matrix as is for geometry to match the network.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputImageError
from ..optional import require

SMIRK_CROP_SCALE = 1.4
SMIRK_CROP_SIZE = 224


def smirk_crop_transform(landmarks_px: np.ndarray, scale: float = SMIRK_CROP_SCALE,
                         crop_size: int = SMIRK_CROP_SIZE) -> np.ndarray:
    """Similarity transform from image pixels to crop pixels, as SMIRK's ``crop_face``.

    Args:
        landmarks_px: [N, 2] (or [N, >=2]; extra columns such as MediaPipe's z are ignored)
            face landmarks in image pixels, x right, y down (MediaPipe's 468/478 points times
            the image width/height).
        scale: side of the square crop relative to the mean of the landmark box's width and height.
        crop_size: side of the output crop in pixels.

    Returns:
        [3, 3] float64 matrix ``A`` with last row ``(0, 0, 1)``: ``A @ (x, y, 1)`` is the point in
        crop pixels (pixel centres at integers, see the module docstring).

    Raises:
        InputImageError: the landmarks are not finite, or span less than one pixel after scaling.
    """
    pts = np.asarray(landmarks_px, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] < 2:
        raise ValueError(f"landmarks_px must be [N, 2] with N >= 2, got shape {pts.shape}")
    pts = pts[:, :2]
    if not np.isfinite(pts).all():
        raise InputImageError("the face landmarks contain NaN or infinite values; cannot crop the face")
    left, top = pts.min(axis=0)
    right, bottom = pts.max(axis=0)
    center_x = right - (right - left) / 2.0
    center_y = bottom - (bottom - top) / 2.0
    size = int((right - left + bottom - top) / 2.0 * scale)
    if size < 1:
        raise InputImageError(f"the face is too small to crop (landmarks span {right - left:.2f} x "
                              f"{bottom - top:.2f} px); use a larger photo of the face")
    k = (crop_size - 1) / size
    return np.array([[k, 0.0, k * (size / 2.0 - center_x)],
                     [0.0, k, k * (size / 2.0 - center_y)],
                     [0.0, 0.0, 1.0]], dtype=np.float64)


def apply_transform(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map [N, 2] points through a [3, 3] affine matrix: [N, 2] in the target pixels."""
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    return pts @ np.asarray(transform, dtype=np.float64)[:2, :2].T + np.asarray(transform)[:2, 2]


def warp_crop(image: np.ndarray, transform: np.ndarray, crop_size: int = SMIRK_CROP_SIZE) -> np.ndarray:
    """Resample the crop: ``out[v, u] = image[A^-1 (u, v)]``, bilinear.

    Args:
        image: [H, W, 3] (or [H, W, C]) uint8 or float image, any channel order (the order is kept).
        transform: [3, 3] image -> crop matrix from :func:`smirk_crop_transform`.
        crop_size: side of the output in pixels.

    Returns:
        [crop_size, crop_size, C] array of the input's dtype (float16 comes back as float32).
        Pixels whose source falls outside the image are **constant black (0)**, like SMIRK's
        ``skimage.transform.warp`` defaults (``mode='constant', cval=0``, order 1). Differences from
        SMIRK's pixels: OpenCV rounds uint8 results (SMIRK truncates with ``astype(np.uint8)``) and
        interpolates on a 1/32-pixel grid, so values differ by at most a few levels.
    """
    cv2 = require("cv2", "SMIRK face crop")
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"warp_crop expects [H, W, C], got shape {img.shape}")
    if img.dtype == np.float16 or img.dtype == np.bool_:
        img = img.astype(np.float32)
    matrix = np.asarray(transform, dtype=np.float64)[:2]
    out = cv2.warpAffine(np.ascontiguousarray(img), matrix, (int(crop_size), int(crop_size)),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2:  # OpenCV drops a single channel axis
        out = out[:, :, None]
    return out
