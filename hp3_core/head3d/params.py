"""Head parameters: what a reconstructor reads off an image and a head model turns into a mesh."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class FaceInfo:
    """How a face was found: reported in outputs so users can judge doubtful detections."""

    detector: str
    confidence: float | None
    box: tuple[float, float, float, float]
    face_index: int
    faces_found: int

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "confidence": self.confidence,
                "box": [round(v, 1) for v in self.box], "face_index": self.face_index,
                "faces_found": self.faces_found}


@dataclass
class HeadParams:
    """A batch of B heads, in the conventions of :mod:`hp3_core.head3d`.

    Attributes:
        backend: ``smirk``, ``ict`` or ``mediapipe``: which head model reads these.
            (ict: shape = 100 identity coefficients, expression = 55 ARKit weights in [0, 1].)
        shape: [B, S] identity (FLAME: shape coefficients; mediapipe: canonical face geometry).
        expression: [B, E] (FLAME: expression coefficients; mediapipe: canonical geometry whose
            mouth, eye and brow regions carry the expression).
        eyelids: [B, 2] closure of the left/right eyelid (FLAME backends; zeros for mediapipe).
        jaw: [B, 3] jaw rotation, axis-angle radians (FLAME backends; zeros for mediapipe).
        pose: [B, 3] global head rotation, axis-angle radians, model frame.
        camera: [B, 3] orthographic ``(s, tx, ty)`` (see :mod:`hp3_core.head3d.camera`).
        image_to_crop: [B, 3, 3] affine matrix from image pixels to crop pixels.
        crop_size: side of the crop in pixels.
        image_size: (height, width) of each item's image, in pixels.
        faces: how each item's face was found (None for synthetic parameters).
    """

    backend: str
    shape: torch.Tensor
    expression: torch.Tensor
    eyelids: torch.Tensor
    jaw: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    image_to_crop: torch.Tensor
    crop_size: int
    image_size: list[tuple[int, int]]
    faces: list[FaceInfo | None] = field(default_factory=list)

    TENSORS = ("shape", "expression", "eyelids", "jaw", "pose", "camera", "image_to_crop")

    def __len__(self) -> int:
        return self.pose.shape[0]

    def __getitem__(self, index: int | slice) -> HeadParams:
        idx = slice(index, index + 1) if isinstance(index, int) else index
        faces = self.faces[idx] if self.faces else []
        return replace(self, image_size=self.image_size[idx], faces=faces,
                       **{k: getattr(self, k)[idx] for k in self.TENSORS})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HeadParams:
        return replace(self, **{k: getattr(self, k).to(device=device, dtype=dtype) for k in self.TENSORS})

    def repeat(self, n: int) -> HeadParams:
        """This single head repeated n times (a source paired with n driving frames)."""
        if len(self) != 1:
            raise ValueError("repeat() needs a batch of one")
        return replace(self, image_size=self.image_size * n, faces=(self.faces or [None]) * n,
                       **{k: getattr(self, k).expand(n, *getattr(self, k).shape[1:]).clone()
                          for k in self.TENSORS})

    @staticmethod
    def cat(items: list[HeadParams]) -> HeadParams:
        first = items[0]
        if any(i.backend != first.backend or i.crop_size != first.crop_size for i in items):
            raise ValueError("cannot batch head parameters of different backends or crop sizes")
        return replace(first, image_size=[s for i in items for s in i.image_size],
                       faces=[f for i in items for f in (i.faces or [None] * len(i))],
                       **{k: torch.cat([getattr(i, k) for i in items]) for k in first.TENSORS})

    def to_dict(self, index: int = 0) -> dict[str, Any]:
        """One item as plain JSON-able values (``params.json``)."""
        item = self[index]
        out: dict[str, Any] = {"backend": self.backend, "crop_size": self.crop_size,
                               "image_size": list(item.image_size[0])}
        for k in self.TENSORS:
            out[k] = [round(float(v), 6) for v in getattr(item, k)[0].flatten().tolist()]
        out["face"] = item.faces[0].to_dict() if item.faces and item.faces[0] else None
        return out
