"""Retarget one source head onto driving images and render the condition maps: the whole 3D job.

Scale. Driving frames are analysed reduced (:class:`~hp3_core.image_io.AnalysisImage`, at most
2048 px; the heads are then put back into the full frame's pixels) and rendered at most
:data:`RENDER_MAX_SIDE` px on the longer side, then upsampled to the frame's size only when a
full-size map is asked for (:meth:`FrameMaps.full`, :meth:`FrameMaps.uint8`). Frames are
processed one at a time (:meth:`Retargeter.frames` is a generator), so a caller that writes each
frame's maps and drops them (the ``retarget`` command) uses memory flat in the number of frames.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import HP3Error
from ..image_io import AnalysisImage, analysis_image, reduced_size
from ..render import RenderedMaps, blank_maps
from ..render.maps import NORMAL_BACKGROUND
from .params import FaceInfo, HeadParams
from .reconstructor import Reconstructor, reconstruct
from .render_head import render_heads
from .retarget import RetargetMode, retarget
from .smoothing import HeadSmoother

log = logging.getLogger(__name__)

# Maps are rasterized at most this size (longer side, pixels) and upsampled beyond: a condition
# for a diffusion model needs no more, and full-resolution rasterization of a 12000 px photo
# costs ~45 s and ~7 GB.
RENDER_MAX_SIDE = 4096
MAP_NAMES = ("shaded", "normal", "depth", "mask")
Frame = np.ndarray | torch.Tensor | AnalysisImage


def check_face_index(value: int, name: str = "face_index") -> int:
    """``value`` as a face index (0 = largest), or an :class:`HP3Error` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise HP3Error(f"{name} must be a whole number >= 0 (0 = the largest face, 1 = the next), got {value!r}")
    return int(value)


def check_smoothing(value: float, name: str = "smoothing") -> float:
    """``value`` as a smoothing strength in [0, 1), or an :class:`HP3Error` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v < 1.0:
        raise HP3Error(f"{name} must be in [0, 1) (0 = off, 0.5 = a frame keeps half its own weight, "
                       f"0.9 = very smooth), got {value!r}")
    return v


def rescale_frame(params: HeadParams, from_size: tuple[int, int], to_size: tuple[int, int]) -> HeadParams:
    """Heads of images of ``from_size`` (H, W) put into the pixels of the same frame at ``to_size``.

    Image pixels scale by ``to / from`` per axis, so the image->crop matrix is composed with the
    inverse scale, and face boxes are scaled; shape, expression, pose and camera are unchanged.
    """
    if tuple(from_size) == tuple(to_size):
        return params
    sy, sx = from_size[0] / to_size[0], from_size[1] / to_size[1]  # to-pixels -> from-pixels
    back = torch.diag(torch.tensor([sx, sy, 1.0], dtype=params.image_to_crop.dtype,
                                   device=params.image_to_crop.device))
    faces = [None if f is None else replace(f, box=(f.box[0] / sx, f.box[1] / sy, f.box[2] / sx, f.box[3] / sy))
             for f in params.faces]
    return replace(params, image_to_crop=params.image_to_crop @ back,
                   image_size=[tuple(int(v) for v in to_size)] * len(params), faces=faces)


def render_size(size: tuple[int, int], max_side: int | None = None) -> tuple[int, int]:
    """(h, w) the maps of a frame of ``size`` are rasterized at (the size itself up to ``max_side``,
    default :data:`RENDER_MAX_SIDE`)."""
    return reduced_size(size, max_side or RENDER_MAX_SIDE)


def in_common_crop(head: HeadParams, reference: torch.Tensor) -> HeadParams:
    """``head`` (batch 1) with its camera re-expressed for the crop ``reference`` [1, 3, 3].

    The same screen vertices result; only the split between crop and camera changes. Crops are
    made from each frame's own landmarks, so without this a smoothed camera would still jitter
    with its frame's crop. Crops are axis-aligned similarities (``p_crop = a p + o``); anything
    else is returned unchanged.
    """
    m1, m2 = head.image_to_crop[0].double(), reference[0].to(head.image_to_crop.device).double()
    if abs(float(m1[0, 1])) + abs(float(m1[1, 0])) + abs(float(m2[0, 1])) + abs(float(m2[1, 0])) > 1e-6:
        return head
    a1, a2 = (float(m1[0, 0]) + float(m1[1, 1])) / 2, (float(m2[0, 0]) + float(m2[1, 1])) / 2
    r, c = a2 / a1, float(head.crop_size)
    s, tx, ty = (float(v) for v in head.camera[0].double())
    s2 = r * s
    shift_x = r - 1.0 + 2.0 * (float(m2[0, 2]) - r * float(m1[0, 2])) / c
    shift_y = r - 1.0 + 2.0 * (float(m2[1, 2]) - r * float(m1[1, 2])) / c
    camera = head.camera.new_tensor([[s2, tx + shift_x / s2, ty - shift_y / s2]])
    return replace(head, camera=camera, image_to_crop=reference.to(head.image_to_crop).clone())


@dataclass
class FrameMaps:
    """One driving frame's result.

    Attributes:
        index: the frame's position in the driving sequence.
        size: (H, W) of the full frame, pixels.
        maps: the maps at :func:`render_size` of ``size`` (batch 1, float32 0..1), or None for a
            frame without a face.
        head: the retargeted head (batch 1, full-frame pixels), or None.
        driving: the driving frame's own head (batch 1, full-frame pixels), or None.
        missing: why the frame has no head (None when it has one).
    """

    index: int
    size: tuple[int, int]
    maps: RenderedMaps | None
    head: HeadParams | None
    driving: HeadParams | None = None
    missing: str | None = None

    def full(self, into: RenderedMaps | None = None) -> RenderedMaps:
        """The four maps at the frame's full size (float32, batch 1): upsampled when rendered smaller.

        Args:
            into: CPU float32 maps of that size (e.g. views of a batch) to write into, so no
                second full-size copy is made; returned filled.
        """
        if self.maps is None:
            maps = blank_maps(*self.size)
        elif tuple(self.maps.mask.shape[1:]) == tuple(self.size):
            maps = self.maps
        else:
            return RenderedMaps(**{k: _upsample_float(getattr(self.maps, k), self.size, k == "mask",
                                                      None if into is None else getattr(into, k))
                                   for k in MAP_NAMES})
        if into is None:
            return maps
        for k in MAP_NAMES:
            getattr(into, k).copy_(getattr(maps, k))
        return into

    def uint8(self, name: str) -> np.ndarray:
        """One map at full size as uint8: [H, W, 3] (``mask``: [H, W]), made without a full-size float copy."""
        h, w = self.size
        if self.maps is None:
            if name == "normal":
                return np.broadcast_to(np.array([round(v * 255) for v in NORMAL_BACKGROUND], np.uint8),
                                       (h, w, 3)).copy()
            return np.zeros((h, w) if name == "mask" else (h, w, 3), np.uint8)
        small = getattr(self.maps, name)[0].detach().cpu().numpy()
        small = (np.clip(small, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if small.shape[:2] == (h, w):
            return small
        import cv2
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if name == "mask":  # keep it binary: the upsampled edge is cut at half coverage
            cv2.threshold(big, 127, 255, cv2.THRESH_BINARY, dst=big)
        return big


def _upsample_float(t: torch.Tensor, size: tuple[int, int], binary: bool,
                    into: torch.Tensor | None = None) -> torch.Tensor:
    """[1, h, w(, C)] float map -> [1, H, W(, C)] bilinear (``binary``: cut at 0.5), written into
    ``into`` (a contiguous CPU float32 tensor of that shape) when given."""
    import cv2
    arr = np.ascontiguousarray(t[0].detach().cpu().numpy())
    if into is not None and into.is_contiguous() and into.device.type == "cpu" and into.dtype == torch.float32:
        out = into[0].numpy()
        cv2.resize(arr, (size[1], size[0]), dst=out, interpolation=cv2.INTER_LINEAR)
        result = into
    else:
        out = cv2.resize(arr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        result = torch.from_numpy(out)[None]
        if into is not None:
            into.copy_(result)
            result, out = into, None
    if binary:
        if out is not None:
            cv2.threshold(out, 0.5, 1.0, cv2.THRESH_BINARY, dst=out)
        else:
            result.copy_((result >= 0.5).float())
    return result


class Retargeter:
    """The source head, reconstructed once, retargeted onto driving frames one at a time.

    Args:
        source: RGB uint8 [H, W, 3], a ComfyUI IMAGE item, or an :class:`AnalysisImage`.
        face_index: which source face (0 = largest).
        mode: see :class:`RetargetMode`.
        region: ``head`` or ``face``.
        more_sources: other photos of the same person: the head shape becomes the mean of the
            shapes of all source photos (one photo's angle or expression weighs less); pose and
            expression (``pose``/``expression`` modes) stay those of ``source``.
    """

    def __init__(self, reconstructor: Reconstructor, source: Frame, mode: str | RetargetMode = RetargetMode.FULL,
                 face_index: int = 0, region: str = "head", source_name: str = "the source image",
                 more_sources: Sequence[Frame] = ()) -> None:
        if region not in ("head", "face"):
            raise HP3Error(f"region must be 'head' or 'face', got {region!r}")
        try:
            self.mode = RetargetMode.parse(mode)
        except ValueError as err:
            raise HP3Error(str(err)) from None
        self.reconstructor = reconstructor
        self.region = region
        src = _as_analysis(source, source_name)
        params = reconstruct(reconstructor, [src.pixels], check_face_index(face_index), [source_name]).params
        self.source = rescale_frame(params, src.pixels.shape[:2], src.full_size)
        self.source_face: FaceInfo | None = self.source.faces[0] if self.source.faces else None
        if more_sources:
            shapes = [self.source.shape]
            for k, extra in enumerate(more_sources, start=1):
                name = f"source image {k}"
                item = _as_analysis(extra, name)
                shapes.append(reconstruct(reconstructor, [item.pixels], check_face_index(face_index), [name]).params.shape)
            self.source = replace(self.source, shape=torch.stack(shapes).mean(0))

    def frames(self, driving: Iterable[Frame], driving_face_index: int = 0, allow_missing: bool = False,
               smoothing: float = 0.0, names: Sequence[str] | None = None,
               on_frame: Callable[[int], None] | None = None) -> Iterator[FrameMaps]:
        """Reconstruct, smooth, retarget and render each driving frame, yielding it at once.

        Args:
            driving: frames in order (RGB uint8 arrays, IMAGE items or AnalysisImages), any sizes.
            driving_face_index: which face in the driving frames (0 = largest).
            allow_missing: frames without a face come back with ``missing`` set (else an
                :class:`~hp3_core.errors.InputImageError` names the frame).
            smoothing: temporal smoothing strength in [0, 1) of the driving heads (in order;
                see :class:`~hp3_core.head3d.smoothing.HeadSmoother`).
            names: how errors name each frame (default ``driving frame k``).
            on_frame: called with the index after each frame (progress, interruption).
        """
        face_index = check_face_index(driving_face_index, "driving_face_index")
        strength = check_smoothing(smoothing)
        smoother = HeadSmoother(strength)
        reference_crop = None
        for i, frame in enumerate(driving):
            name = names[i] if names is not None else f"driving frame {i}"
            item = _as_analysis(frame, name)
            rec = reconstruct(self.reconstructor, [item.pixels], face_index, [name], allow_missing=allow_missing)
            if rec.params is None:
                yield FrameMaps(i, item.full_size, None, None, missing=rec.missing.get(0, "no face"))
            else:
                drv = rescale_frame(rec.params, item.pixels.shape[:2], item.full_size)
                if strength > 0.0:
                    reference_crop = drv.image_to_crop if reference_crop is None else reference_crop
                    drv = smoother(in_common_crop(drv, reference_crop))
                head = retarget(self.source, drv, self.mode)
                yield FrameMaps(i, item.full_size, self._render(head, item.full_size), head, drv)
            if on_frame is not None:
                on_frame(i)

    def _render(self, head: HeadParams, size: tuple[int, int]) -> RenderedMaps:
        small = render_size(size)
        return render_heads(rescale_frame(head, size, small), self.reconstructor.head_model, self.region)[0]


def _as_analysis(frame: Frame, name: str) -> AnalysisImage:
    return frame if isinstance(frame, AnalysisImage) else analysis_image(frame, name)


def retarget_report(backend: str, full_head: bool, source_face: FaceInfo | None, frames: int,
                    found: int, missing: dict[int, str]) -> str:
    """A few lines for users: backend, detector and confidence, frames without a face."""
    f = source_face
    conf = "n/a" if f is None or f.confidence is None else f"{f.confidence:.2f}"
    lines = [f"3D backend: {backend}" + ("" if full_head else " (face only: an approximation of "
                                                             "HP3's full-head FLAME render)"),
             f"source face: {f.detector if f else '?'}, confidence {conf}, face {f.face_index if f else 0} "
             f"of {f.faces_found if f else 0}"]
    if f is not None and f.confidence is None:
        lines.append("warning: the face detector did not confirm the source face; check the preview")
    lines.append(f"driving frames: {frames}, with a face: {found}")
    for i, why in sorted(missing.items()):
        lines.append(f"frame {i}: blank maps ({why})")
    return "\n".join(lines)


@dataclass
class RetargetResult:
    """Per driving frame: its maps (blank where no face was found) and what was found.

    Attributes:
        heads: retargeted heads of the frames that had a face (in ``found`` order).
        maps: one :class:`RenderedMaps` (batch 1, the frame's size) per driving frame; when all
            frames have one size these are views into one batch (see :meth:`stacked`).
        found: indices of the driving frames in ``heads``.
        missing: driving frame index -> why it has no head.
        source_face: how the source face was found.
        backend: the reconstructor's name.
        full_head: False for face-only backends (mediapipe).
    """

    heads: HeadParams | None
    maps: list[RenderedMaps]
    found: list[int]
    missing: dict[int, str]
    source_face: FaceInfo | None
    backend: str
    full_head: bool
    source: HeadParams | None = field(default=None, repr=False)
    batch: RenderedMaps | None = field(default=None, repr=False)

    def report(self) -> str:
        """A few lines for users: backend, detector and confidence, frames without a face."""
        return retarget_report(self.backend, self.full_head, self.source_face, len(self.maps), len(self.found),
                               self.missing)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shaded, normal, depth, mask) of all frames as [B, H, W, 3] x 3 and [B, H, W], CPU float32.

        No copy when the frames share one size (the maps are views of these tensors).
        """
        if self.batch is not None:
            return tuple(getattr(self.batch, k) for k in MAP_NAMES)  # type: ignore[return-value]
        return tuple(torch.cat([getattr(m, k) for m in self.maps]).cpu().float()  # type: ignore[return-value]
                     for k in MAP_NAMES)


def retarget_images(reconstructor: Reconstructor, source: Frame, driving: Sequence[Frame],
                    mode: str | RetargetMode = RetargetMode.FULL, face_index: int = 0,
                    driving_face_index: int = 0, region: str = "head",
                    allow_missing: bool = False, source_name: str = "the source image",
                    on_frame: Callable[[int], None] | None = None, smoothing: float = 0.0,
                    more_sources: Sequence[Frame] = ()) -> RetargetResult:
    """Reconstruct the source once, each driving frame, retarget and render into each frame.

    Every frame's full-size maps are kept (ComfyUI needs the whole batch); to stream frames, use
    :meth:`Retargeter.frames`.

    Args:
        source: RGB uint8 [H, W, 3] (or a ComfyUI IMAGE item, or an AnalysisImage).
        driving: frames, any sizes.
        face_index: which source face (0 = largest).
        driving_face_index: which face in the driving frames (0 = largest).
        allow_missing: frames without a face get blank maps and are listed (else an error names
            the frame).
        on_frame: called after each driving frame (progress, interruption).
        smoothing: temporal smoothing of the driving heads, in [0, 1) (0 = off).
        more_sources: other photos of the source person, pooled into one head shape.
    """
    retargeter = Retargeter(reconstructor, source, mode, face_index, region, source_name, more_sources)
    names = [f"driving frame {i}" if len(driving) > 1 else "the driving image" for i in range(len(driving))]
    maps: list[RenderedMaps] = []
    heads, found, missing = [], [], {}
    batch = None
    for item in retargeter.frames(driving, driving_face_index, allow_missing, smoothing, names, on_frame):
        if item.index == 0 and all(_frame_size(f) == item.size for f in driving):
            batch = _allocate(len(driving), item.size)
        if batch is not None:  # filled in place: each frame's maps are views of the batch
            maps.append(item.full(RenderedMaps(**{k: getattr(batch, k)[item.index:item.index + 1]
                                                  for k in MAP_NAMES})))
        else:
            maps.append(item.full())
        if item.head is None:
            missing[item.index] = item.missing or "no face"
        else:
            heads.append(item.head)
            found.append(item.index)
    return RetargetResult(heads=HeadParams.cat(heads) if heads else None, maps=maps, found=found, missing=missing,
                          source_face=retargeter.source_face, backend=reconstructor.name,
                          full_head=reconstructor.head_model.full_head, source=retargeter.source, batch=batch)


def _frame_size(frame: Frame) -> tuple[int, int]:
    if isinstance(frame, AnalysisImage):
        return tuple(frame.full_size)
    return int(frame.shape[0]), int(frame.shape[1])


def _allocate(batch: int, size: tuple[int, int]) -> RenderedMaps:
    """Empty CPU float32 maps for ``batch`` frames of ``size`` (filled frame by frame)."""
    h, w = size
    return RenderedMaps(shaded=torch.empty(batch, h, w, 3), normal=torch.empty(batch, h, w, 3),
                        depth=torch.empty(batch, h, w, 3), mask=torch.empty(batch, h, w))
