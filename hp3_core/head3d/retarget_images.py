"""Retarget one source head onto driving images and render the condition maps: the whole 3D job."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..render import RenderedMaps, blank_maps
from .params import FaceInfo, HeadParams
from .reconstructor import Reconstructor, reconstruct
from .render_head import render_heads
from .retarget import RetargetMode, retarget

log = logging.getLogger(__name__)


@dataclass
class RetargetResult:
    """Per driving frame: its maps (blank where no face was found) and what was found.

    Attributes:
        heads: retargeted heads of the frames that had a face (in ``found`` order).
        maps: one :class:`RenderedMaps` (batch 1, the frame's size) per driving frame.
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

    def report(self) -> str:
        """A few lines for users: backend, detector and confidence, frames without a face."""
        f = self.source_face
        conf = "n/a" if f is None or f.confidence is None else f"{f.confidence:.2f}"
        lines = [f"3D backend: {self.backend}" + ("" if self.full_head else " (face only: an approximation of "
                                                                           "HP3's full-head FLAME render)"),
                 f"source face: {f.detector if f else '?'}, confidence {conf}, face {f.face_index if f else 0} "
                 f"of {f.faces_found if f else 0}"]
        if f is not None and f.confidence is None:
            lines.append("warning: the face detector did not confirm the source face; check the preview")
        lines.append(f"driving frames: {len(self.maps)}, with a face: {len(self.found)}")
        for i, why in sorted(self.missing.items()):
            lines.append(f"frame {i}: blank maps ({why})")
        return "\n".join(lines)


def retarget_images(reconstructor: Reconstructor, source: np.ndarray, driving: Sequence[np.ndarray],
                    mode: str | RetargetMode = RetargetMode.FULL, face_index: int = 0,
                    driving_face_index: int | None = None, region: str = "head",
                    allow_missing: bool = False, source_name: str = "the source image",
                    on_frame: Callable[[int], None] | None = None) -> RetargetResult:
    """Reconstruct the source once, each driving frame, retarget and render into each frame.

    Args:
        source: RGB uint8 [H, W, 3].
        driving: RGB uint8 frames, any sizes.
        face_index: which source face (0 = largest).
        driving_face_index: which face in the driving frames (default: ``face_index``).
        allow_missing: frames without a face get blank maps and are listed (else an error names
            the frame).
        on_frame: called after each driving frame (progress, interruption).
    """
    src = reconstruct(reconstructor, [source], face_index, [source_name]).params
    names = [f"driving frame {i}" if len(driving) > 1 else "the driving image" for i in range(len(driving))]
    drv = reconstruct(reconstructor, driving, face_index if driving_face_index is None else driving_face_index,
                      names, allow_missing=allow_missing, on_item=on_frame)
    heads = retarget(src, drv.params, mode) if drv.params is not None else None
    rendered = render_heads(heads, reconstructor.head_model, region) if heads is not None else []
    maps = []
    by_frame = dict(zip(drv.found, rendered))
    for i, frame in enumerate(driving):
        maps.append(by_frame[i] if i in by_frame else blank_maps(frame.shape[0], frame.shape[1]))
    return RetargetResult(heads=heads, maps=maps, found=drv.found, missing=drv.missing,
                          source_face=src.faces[0] if src.faces else None, backend=reconstructor.name,
                          full_head=reconstructor.head_model.full_head, source=src)
