"""Summary statistics of one metric over samples: mean and a 95% confidence interval.

The interval is the **percentile bootstrap** (Efron): resample the n values with replacement
``B = 10000`` times (numpy ``default_rng(0)``, so reports are reproducible), take each resample's
mean, and report the 2.5th and 97.5th percentiles of those means. It makes no normality
assumption, which matters for bounded, skewed metrics such as cosines near 1 or errors near 0.
With n < 2 there is no interval (NaN).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean, 95% CI ``(low, high)`` and the number of values of one metric (NaN when n is 0)."""

    mean: float
    low: float
    high: float
    n: int


def summarize(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Summary:
    """Mean and percentile-bootstrap 95% CI of the finite ``values``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    if x.size < 2:
        return Summary(float(x.mean()), math.nan, math.nan, int(x.size))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # chunks keep memory at ~8 MB for any n
    chunk = max(1, 1_000_000 // x.size)
    for s in range(0, resamples, chunk):
        k = min(chunk, resamples - s)
        means[s:s + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(1)
    alpha = (1.0 - LEVEL) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Summary(float(x.mean()), float(low), float(high), int(x.size))
