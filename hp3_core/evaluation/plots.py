"""One PNG per metric, drawn with Pillow (matplotlib is not a dependency of the pack): a
histogram of the per-sample values with the mean (solid) and the 95% CI (dashed) marked, and a
box plot (quartiles, whiskers at the 1.5 IQR rule, median) beneath it, on one shared value axis.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .stats import Summary

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP = 56, 24, 40
HIST_BOTTOM, BOX_TOP, BOX_BOTTOM, AXIS_Y = 270, 292, 332, 350
BINS = 20
BAR, MEAN, CI, INK, GRID = (90, 130, 200), (200, 40, 40), (200, 120, 40), (30, 30, 30), (220, 220, 220)


def plot_metric(path: str | Path, values: Sequence[float], title: str, summary: Summary) -> Path:
    """Write the histogram + box plot of ``values`` (NaNs dropped) to ``path`` (PNG)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    d = ImageDraw.Draw(img)
    d.text((LEFT, 12), f"{title}   n={x.size}" + (f"   mean={summary.mean:.4g}" if x.size else "   (no values)"),
           fill=INK)
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < 1e-12:  # one value: a small window around it
            pad = max(abs(lo) * 0.05, 1e-3)
            lo, hi = lo - pad, hi + pad
        span = hi - lo

        def px(v: float) -> float:
            return LEFT + (v - lo) / span * (WIDTH - LEFT - RIGHT)

        counts, edges = np.histogram(x, bins=BINS, range=(lo, hi))
        top = max(1, int(counts.max()))
        for k in range(1, 5):  # horizontal grid at quarters of the tallest bar
            y = HIST_BOTTOM - k / 4 * (HIST_BOTTOM - TOP)
            d.line([(LEFT, y), (WIDTH - RIGHT, y)], fill=GRID)
            d.text((8, y - 6), f"{top * k / 4:g}", fill=INK)
        for c, a, b in zip(counts, edges[:-1], edges[1:]):
            if c:
                d.rectangle([px(a) + 1, HIST_BOTTOM - c / top * (HIST_BOTTOM - TOP), px(b) - 1, HIST_BOTTOM],
                            fill=BAR)
        q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])
        iqr = q3 - q1
        w_lo = float(x[x >= q1 - 1.5 * iqr].min())
        w_hi = float(x[x <= q3 + 1.5 * iqr].max())
        mid = (BOX_TOP + BOX_BOTTOM) / 2
        d.line([(px(w_lo), mid), (px(q1), mid)], fill=INK)
        d.line([(px(q3), mid), (px(w_hi), mid)], fill=INK)
        d.rectangle([px(q1), BOX_TOP, px(q3), BOX_BOTTOM], outline=INK, fill=(235, 240, 250))
        d.line([(px(med), BOX_TOP), (px(med), BOX_BOTTOM)], fill=INK, width=2)
        for v in x[(x < w_lo) | (x > w_hi)]:  # outliers
            d.ellipse([px(v) - 2, mid - 2, px(v) + 2, mid + 2], outline=INK)
        d.line([(px(summary.mean), TOP), (px(summary.mean), BOX_BOTTOM)], fill=MEAN, width=2)
        for v in (summary.low, summary.high):
            if math.isfinite(v):
                for y in range(TOP, BOX_BOTTOM, 8):  # dashed
                    d.line([(px(v), y), (px(v), y + 4)], fill=CI)
        d.line([(LEFT, AXIS_Y), (WIDTH - RIGHT, AXIS_Y)], fill=INK)
        for k in range(5):
            v = lo + k / 4 * span
            d.line([(px(v), AXIS_Y), (px(v), AXIS_Y + 4)], fill=INK)
            d.text((px(v) - 14, AXIS_Y + 8), f"{v:.3g}", fill=INK)
    d.text((LEFT, HEIGHT - 18), "red: mean   orange dashed: 95% CI   box: quartiles, median", fill=INK)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
