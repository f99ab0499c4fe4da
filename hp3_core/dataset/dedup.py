"""Near-duplicate frames: a talking head that holds still gives many almost identical frames.

A frame is compared by a small grayscale thumbnail (:data:`THUMB` x :data:`THUMB`, area-filtered,
so noise and re-encoding barely change it) with every frame kept so far in its group; the mean
absolute difference, in 0..255 grey levels, below ``threshold`` makes it a near-duplicate. For
scale: an exact copy gives 0, a JPEG re-encode about 1, and two frames of a talking-head video
half a second apart about 4-9 (../shared/assets/faces/source_s18.mp4).
"""
from __future__ import annotations

import numpy as np

THUMB = 32
DEFAULT_THRESHOLD = 2.0


def thumbnail(image: np.ndarray) -> np.ndarray:
    """[THUMB, THUMB] float32 grey levels 0..255 of an RGB uint8 [H, W, 3] image."""
    import cv2
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


class NearDuplicates:
    """The thumbnails kept so far in one group, and the test against them."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = float(threshold)
        self._thumbs: list[np.ndarray] = []
        self._names: list[str] = []

    def match(self, thumb: np.ndarray) -> tuple[str, float] | None:
        """``(name, difference)`` of the closest kept frame when it is a near-duplicate, else None."""
        if not self._thumbs or self.threshold <= 0:
            return None
        diffs = np.abs(np.stack(self._thumbs) - thumb[None]).mean(axis=(1, 2))
        best = int(np.argmin(diffs))
        return (self._names[best], float(diffs[best])) if diffs[best] < self.threshold else None

    def add(self, thumb: np.ndarray, name: str) -> None:
        self._thumbs.append(thumb)
        self._names.append(name)
