"""Progress bars and interruption for per-frame loops (ComfyUI's own, so the UI shows them)."""
from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.utils


def frame_callback(total: int) -> Callable[[int], None]:
    """A callback for each finished frame: advances the node's progress bar and stops the loop
    (by raising the host's interrupt exception) when the user presses Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def on_frame(_index: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update(1)

    return on_frame
