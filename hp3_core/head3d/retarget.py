"""Retargeting: the source's head shape with the driving image's expression, pose and camera."""
from __future__ import annotations

from dataclasses import replace
from enum import Enum

from .params import HeadParams


class RetargetMode(str, Enum):
    """What the driving image contributes."""

    FULL = "full"              # expression, eyelids, jaw, pose and camera
    POSE = "pose"              # pose and camera only: the source's expression, moved rigidly
    EXPRESSION = "expression"  # expression, eyelids and jaw only: the source's head rotation

    @classmethod
    def parse(cls, value: str | RetargetMode) -> RetargetMode:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"retarget mode must be one of {[m.value for m in cls]}, got {value!r}") from None


def retarget(source: HeadParams, driving: HeadParams, mode: str | RetargetMode = RetargetMode.FULL) -> HeadParams:
    """Heads for the driving frames, with the source's shape.

    Args:
        source: one head (batch of 1), or as many as ``driving``.
        driving: B driving frames.
        mode: see :class:`RetargetMode`. The camera and crop always come from the driving frame,
            so the result is placed in the driving image's pixel frame.

    Returns:
        B heads (backend of the inputs), image sizes and face reports of the driving frames.
    """
    mode = RetargetMode.parse(mode)
    if source.backend != driving.backend:
        raise ValueError(f"source ({source.backend}) and driving ({driving.backend}) heads come from "
                         f"different backends; reconstruct both with the same one")
    src = source.repeat(len(driving)) if len(source) == 1 and len(driving) > 1 else source
    if len(src) != len(driving):
        raise ValueError(f"{len(source)} source heads for {len(driving)} driving frames; give 1 or {len(driving)}")
    from_driver = {"camera", "image_to_crop"}
    if mode in (RetargetMode.FULL, RetargetMode.EXPRESSION):
        from_driver |= {"expression", "eyelids", "jaw"}
    if mode in (RetargetMode.FULL, RetargetMode.POSE):
        from_driver.add("pose")
    values = {k: getattr(driving if k in from_driver else src, k).clone() for k in HeadParams.TENSORS}
    return replace(driving, **values)
