"""Reading images and video frames into one layout: RGB ``uint8`` arrays ``[H, W, 3]``.

Photos arrive as grayscale, RGBA, palette or 16-bit PNGs, and ComfyUI IMAGEs as float tensors;
everything the method sees is first converted here, so no later code has to care.

Very large photos: face analysis never needs more than :data:`ANALYSIS_MAX_SIDE` pixels (MediaPipe
downsamples further inside), so :func:`load_for_analysis` and :func:`analysis_image` give an
:class:`AnalysisImage`, the reduced pixels plus the size of the frame they stand for. A 12000 x
12000 JPEG is then decoded at 1/4 or 1/8 scale by libjpeg (no full-size copy at all) and a float
IMAGE is reduced before any uint8 or float copy of it is made.
"""
from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import HP3Error, InputImageError


VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# Face analysis input bound (longer side, pixels); MediaPipe itself works at 2048 or less.
ANALYSIS_MAX_SIDE = 2048
# Rows converted at once when a float image becomes uint8 (bounds the float temporaries).
_ROWS_PER_CHUNK = 1024
# Above this many pixels PNGs are written with fast compression (level 6 takes ~7 s at 144 MP).
_FAST_PNG_PIXELS = 16_000_000


@dataclass(frozen=True)
class AnalysisImage:
    """An image reduced for face analysis, and the size of the full frame it stands for.

    Attributes:
        pixels: RGB uint8 [h, w, 3], at most :data:`ANALYSIS_MAX_SIDE` on the longer side.
        full_size: (H, W) of the original frame in pixels (>= the pixels' size).
    """

    pixels: np.ndarray
    full_size: tuple[int, int]

    @property
    def reduced(self) -> bool:
        return tuple(self.pixels.shape[:2]) != tuple(self.full_size)


def to_rgb_uint8(image: np.ndarray | torch.Tensor, name: str = "image") -> np.ndarray:
    """Any single image as RGB uint8 [H, W, 3].

    Accepts [H, W], [H, W, 1|2|3|4] arrays of uint8, uint16 (16-bit PNG) or float in 0..1
    (ComfyUI IMAGE items). Alpha is composited on black. Always a new array; RGB uint8 input is
    copied as it is, other input converted in row chunks, so no full-size float temporary is made.
    """
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
        raise InputImageError(f"{name}: expected an image [H, W, C] with 1-4 channels, got shape "
                              f"{list(arr.shape)}")
    if arr.dtype == np.uint8 and arr.shape[-1] == 3:
        return np.array(arr, order="C")  # a new, writable array, as for every other input
    out = np.empty((*arr.shape[:2], 3), dtype=np.uint8)
    for r in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        out[r:r + _ROWS_PER_CHUNK] = _rows_to_rgb_uint8(arr[r:r + _ROWS_PER_CHUNK])
    return out


def _rows_to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """A band of rows [h, W, C] (any supported dtype) as RGB uint8 [h, W, 3]."""
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
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _open(path: Path) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb limit turned into a clear error."""
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit Pillow only warns; big photos are handled (see module doc).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputImageError(
            f"image '{path}' is too large to open safely ({err}); Pillow refuses more than "
            f"{limit / 1e6:.0f} megapixels (a decompression-bomb guard): downscale it (e.g. to 8192 px "
            f"on the longer side) and use that file") from None


@contextmanager
def _reading_image(path: Path) -> Iterator[Image.Image]:
    """The file opened with Pillow (closed afterwards); any failure to open or decode it in the
    ``with`` block becomes an :class:`InputImageError` naming the file and the fix."""
    try:
        with _open(path) as im:
            yield im
    except FileNotFoundError:
        raise InputImageError(f"image '{path}' does not exist") from None
    except IsADirectoryError:
        raise InputImageError(f"image '{path}' is a folder; give an image file (JPEG or PNG)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputImageError(f"image '{path}' cannot be read ({err}); use a JPEG or PNG") from None


def load_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (EXIF orientation applied)."""
    path = Path(path)
    with _reading_image(path) as im:
        return _decode(im, path)


def _decode(im: Image.Image, path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.uint32)
        arr = (arr.astype(np.float32) / (65535.0 if arr.max() > 255 else 255.0))
        return to_rgb_uint8(arr, str(path))
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "P" else "RGB")
    return to_rgb_uint8(np.asarray(im), str(path))


def load_for_analysis(path: str | Path, max_side: int = ANALYSIS_MAX_SIDE) -> AnalysisImage:
    """An image file reduced for face analysis (see :class:`AnalysisImage`), EXIF orientation applied.

    JPEGs are decoded directly at a reduced scale (libjpeg's DCT scaling), so a very large photo
    costs about as much as a small one; other formats are decoded then reduced.
    """
    path = Path(path)
    with _reading_image(path) as im:
        width, height = im.size
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):  # transposed by exif_transpose below
            width, height = height, width
        scale = max_side / max(width, height)
        if scale < 1.0 and im.format == "JPEG":
            # draft keeps at least the requested size: the reduce below makes it exact.
            im.draft("RGB", (int(im.size[0] * scale) + 1, int(im.size[1] * scale) + 1))
        pixels = _decode(im, path)
    return AnalysisImage(_reduce(pixels, (height, width), max_side), (height, width))


def analysis_image(image: np.ndarray | torch.Tensor, name: str = "image",
                   max_side: int = ANALYSIS_MAX_SIDE) -> AnalysisImage:
    """An in-memory image ([H, W, C] as in :func:`to_rgb_uint8`) reduced for face analysis.

    A float ComfyUI IMAGE item is resized as it is (a view, no copy) before the uint8 conversion.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        arr = (image if image.dtype in (torch.float32, torch.float64, torch.uint8) else image.float()).numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim not in (2, 3) or min(arr.shape[:2], default=0) < 1:
        raise InputImageError(f"{name}: expected an image [H, W, C] with 1-4 channels, got shape "
                              f"{list(arr.shape)}")
    full = (int(arr.shape[0]), int(arr.shape[1]))
    if max(full) > max_side and arr.dtype in (np.float32, np.float64, np.uint8, np.uint16) \
            and (arr.ndim == 2 or arr.shape[-1] in (1, 2, 3, 4)):
        arr = _resize_any(arr, reduced_size(full, max_side))
    return AnalysisImage(_reduce(to_rgb_uint8(arr, name), full, max_side), full)


def reduced_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(h, w) of ``size`` scaled so the longer side is at most ``max_side`` (at least 1 px)."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _resize_any(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``arr`` [H, W(, C)] to ``size`` (h, w); keeps the channel layout."""
    import cv2
    squeeze = arr.ndim == 3 and arr.shape[-1] == 1
    src = arr[..., 0] if squeeze else arr
    if src.dtype == np.float64:
        src = src.astype(np.float32)
    out = cv2.resize(np.ascontiguousarray(src), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return out[..., None] if squeeze or out.ndim == 2 and arr.ndim == 3 else out


def _reduce(pixels: np.ndarray, full: tuple[int, int], max_side: int) -> np.ndarray:
    """RGB uint8 ``pixels`` resized to the reduced size of ``full`` (no copy when it already is)."""
    target = reduced_size(full, max_side)
    if tuple(pixels.shape[:2]) == target:
        return pixels
    return np.ascontiguousarray(_resize_any(pixels, target))


def iter_video_frames(path: str | Path, every: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video, keeping one in ``every`` (>= 1), at most ``max_frames`` (>= 1)."""
    if int(every) < 1:
        raise HP3Error(f"every must be at least 1 (keep one frame in N), got {every}")
    if max_frames is not None and int(max_frames) < 1:
        raise HP3Error(f"max_frames must be at least 1 (or unset for all frames), got {max_frames}")
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
    """Write RGB uint8 [H, W, 3] or grey [H, W] as PNG/JPEG by the suffix.

    Raises:
        HP3Error: the file cannot be written (disk full, read-only, not a folder), naming it.
    """
    path = Path(path)
    options = {"compress_level": 1} if path.suffix.lower() == ".png" and image.shape[0] * image.shape[1] \
        > _FAST_PNG_PIXELS else {}
    try:
        Image.fromarray(image).save(path, **options)
    except OSError as err:
        _remove_partial(path)
        raise write_error(path, err) from None
    except ValueError:  # Pillow: no writer for this suffix
        raise HP3Error(f"cannot write '{path}': unknown image type '{path.suffix}'; use .png or .jpg") from None


def write_error(path: str | Path, err: OSError) -> HP3Error:
    """An OSError from writing ``path`` as a one-line error with the fix."""
    return HP3Error(f"cannot write '{path}': {write_reason(err)}")


_WRITE_REASONS = {errno.ENOSPC: "the disk is full: free some space or write to another disk",
                  errno.EDQUOT: "the disk quota is used up: free some space or write to another disk",
                  errno.EROFS: "the file system is read-only: choose a writable folder",
                  errno.EACCES: "permission denied: choose a folder you can write to",
                  errno.EPERM: "permission denied: choose a folder you can write to",
                  errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
                  errno.EISDIR: "it is a folder: give a file name"}


def write_reason(err: OSError) -> str:
    """Why a write failed and what to do, in a few words (disk full, read-only, permission...)."""
    return _WRITE_REASONS.get(err.errno, f"{err.strerror or err}: choose another path")


def _remove_partial(path: Path) -> None:
    try:
        if path.is_file():  # never a device such as /dev/full
            path.unlink()
    except OSError:  # nothing more to do: the write error is what the user needs to see
        pass


def comfy_to_numpy(images: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE [B, H, W, C] float 0..1 -> list of RGB uint8 [H, W, 3]."""
    return [to_rgb_uint8(images[i], f"image {i}") for i in range(images.shape[0])]
