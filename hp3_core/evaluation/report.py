"""``report.md``: per metric mean, 95% CI (percentile bootstrap, :mod:`.stats`), n and failures,
then FID, the notes (models used, skipped metrics, what the expression error means) and the list
of failed samples; plus one PNG per metric (:mod:`.plots`) in ``plots/``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .plots import plot_metric
from .results import METRICS, Row
from .scorer import TAGS
from .stats import RESAMPLES, Summary, summarize

FILE = "report.md"
PLOTS = "plots"


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.4g}"


def metric_failures(rows: Sequence[Row], column: str) -> int:
    """Rows whose failure concerns ``column``'s metric (its group's tag, or a missing image)."""
    tag = f"[{TAGS[column]}]"
    return sum(1 for r in rows if tag in r.failure or "[image]" in r.failure)


def write_report(out: Path, rows: Sequence[Row], header: Sequence[str], notes: dict[str, str],
                 labels: dict[str, str], fid: dict | None = None) -> tuple[Path, list[Path]]:
    """Write ``report.md`` and the plots from ``rows``; returns their paths.

    Args:
        header: lines about the run (protocol, mode, sample counts).
        notes: metric column -> why it was skipped.
        labels: metric column -> the model it used.
        fid: ``{"value": float, "generated": n, "reference": n, "weights": path}`` or
            ``{"note": str}`` or None (not asked for).
    """
    lines = ["# HP3 evaluation", "", *[f"- {h}" for h in header], "",
             "| metric | column | better | mean | 95% CI | n | failures |",
             "|---|---|---|---|---|---|---|"]
    plots = []
    for col, (title, unit, better) in METRICS.items():
        values = [r.values.get(col) for r in rows]
        s: Summary = summarize([v for v in values if v is not None])
        if col in notes and s.n == 0:
            lines.append(f"| {title} | `{col}` | {better} | skipped | | 0 | |")
            continue
        ci = f"[{_fmt(s.low)}, {_fmt(s.high)}]"
        lines.append(f"| {title} ({unit}) | `{col}` | {better} | {_fmt(s.mean)} | {ci} | {s.n} | "
                     f"{metric_failures(rows, col)} |")
        plots.append(plot_metric(out / PLOTS / f"{col}.png", [v for v in values if v is not None],
                                 f"{title} [{col}]", s))
    lines.append("")
    if fid is not None:
        if "value" in fid:
            lines.append(f"**FID** (set-level, lower is better): {fid['value']:.4g} "
                         f"({fid['generated']} generated vs {fid['reference']} reference images; "
                         f"Inception weights {fid['weights']})")
        else:
            lines.append(f"**FID**: {fid['note']}")
        lines.append("")
    lines += ["## Notes", "",
              f"- 95% CI: percentile bootstrap of the mean ({RESAMPLES} resamples, seed 0). Means use every "
              "sample with a value: a generated image without a face counts as 0 in face and head "
              "similarity; pose and expression errors have no value for it (counted in failures).",
              "- CLIPScore = 100 * max(cos(image, prompt), 0) (torchmetrics' scale; Hessel et al.'s "
              "CLIP-S = CLIPScore / 40)."]
    for col in METRICS:
        if col in labels:
            lines.append(f"- `{col}`: {labels[col]}")
    for col in METRICS:
        if col in notes:
            lines.append(f"- `{col}` {notes[col]}")
    failed = [r for r in rows if r.failure]
    lines += ["", f"## Failures ({len(failed)} of {len(rows)} samples)", ""]
    lines += [f"- {r.identity} / prompt {r.prompt_index} / {r.driver}: {r.failure}" for r in failed] or ["none"]
    path = out / FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, plots
