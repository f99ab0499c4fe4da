"""Template thumbnails: ``example_workflows/<name>.jpg`` beside each template, which the 2025
ComfyUI's Templates dialog shows (it asks for ``<name>.jpg``).

They are made from the browser tests' screenshots of each workflow in the graph editor
(``test-artifacts/screenshots/<name>.png``, copied to ``docs/screenshots/``):
``python tests/harness/thumbnails.py [SCREENSHOT_DIR]`` rewrites them.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "example_workflows"
THUMB_WIDTH = 512  # px; the dialog's cards are about 300 px wide, twice that for HiDPI screens
log = logging.getLogger(__name__)


def make_thumbnail(screenshot: Path, out: Path, width: int = THUMB_WIDTH) -> Path:
    """A JPEG of ``screenshot`` scaled to ``width`` (aspect kept), quality 85."""
    from PIL import Image
    with Image.open(screenshot) as image:
        rgb = image.convert("RGB")
        height = round(rgb.height * width / rgb.width)
        rgb.resize((width, height), Image.LANCZOS).save(out, "JPEG", quality=85, optimize=True)
    return out


def make_all(screenshots: Path, templates: Path = TEMPLATES) -> list[Path]:
    """One thumbnail per template JSON that has a screenshot; returns the files written."""
    written = []
    for workflow in sorted(templates.glob("*.json")):
        shot = screenshots / f"{workflow.stem}.png"
        if shot.is_file():
            written.append(make_thumbnail(shot, workflow.with_suffix(".jpg")))
        else:
            log.warning("no screenshot %s for %s", shot, workflow.name)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"
    for path in make_all(source):
        log.info("wrote %s", path)
