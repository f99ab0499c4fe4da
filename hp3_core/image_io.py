"""Reading images and video frames into one layout: RGB ``uint8`` arrays ``[H, W, 3]``.

Photos arrive as grayscale, RGBA, palette or 16-bit PNGs, and ComfyUI IMAGEs as float tensors;
everything the method sees is first converted here, so no later code has to care.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import InputImageError

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def to_rgb_uint8(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """Any single image as RGB uint8 [H, W, 3].

    Accepts [H, W], [H, W, 1|2|3|4] arrays of uint8, uint16 (16-bit PNG) or float in 0..1
    (ComfyUI IMAGE items). Alpha is composited on black.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
        raise InputImageError(f"{name}: expected an image [H, W, C] with 1-4 channels, got shape "
                              f"{list(arr.shape)}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
    if arr.shape[-1] in (2, 4):  # luminance/colour + alpha
        arr = arr[..., :-1] * arr[..., -1:]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def load_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (EXIF orientation applied)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.uint32)
                arr = (arr.astype(np.float32) / (65535.0 if arr.max() > 255 else 255.0))
                return to_rgb_uint8(arr, str(path))
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "P" else "RGB")
            return to_rgb_uint8(np.asarray(im), str(path))
    except FileNotFoundError:
        raise InputImageError(f"image '{path}' does not exist") from None
    except (OSError, ValueError) as err:
        raise InputImageError(f"image '{path}' cannot be read ({err}); use a JPEG or PNG") from None


def iter_video_frames(path: str | Path, every: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video, keeping one in ``every``."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputImageError(f"video '{path}' cannot be opened; use an MP4 (H.264) file")
    kept = index = 0
    try:
        while max_frames is None or kept < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                kept += 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()
    if kept == 0:
        raise InputImageError(f"video '{path}' has no readable frames")


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Write RGB uint8 [H, W, 3] or grey [H, W] as PNG/JPEG by the suffix."""
    Image.fromarray(image).save(path)


def comfy_to_numpy(images: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE [B, H, W, C] float 0..1 -> list of RGB uint8 [H, W, 3]."""
    return [to_rgb_uint8(images[i], f"image {i}") for i in range(images.shape[0])]
