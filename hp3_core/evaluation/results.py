"""``metrics.csv``: one row per sample, appended as samples finish (so a run can resume).

Columns: the sample (``identity``, ``prompt_index``, ``prompt``, ``driver``, ``condition``,
``image``), every metric of :data:`METRICS` (empty when the metric was skipped or cannot be
computed for the sample) and ``failure`` (why a metric failed for this sample, else empty).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import HP3Error

# column -> (title, unit, better): the order of the report's table
METRICS: dict[str, tuple[str, str, str]] = {
    "face_sim": ("face similarity", "cosine", "higher"),
    "face_sim_2": ("face similarity, second recognizer", "cosine", "higher"),
    "head_sim": ("head similarity (CLIP, head crop)", "cosine", "higher"),
    "yaw_err": ("yaw error", "degrees", "lower"),
    "pitch_err": ("pitch error", "degrees", "lower"),
    "roll_err": ("roll error", "degrees", "lower"),
    "pose_err": ("pose error (mean of yaw, pitch, roll)", "degrees", "lower"),
    "expr_rmse": ("expression error (RMSE)", "see note", "lower"),
    "clip_score": ("prompt alignment (CLIPScore)", "100 x cosine", "higher"),
}
SAMPLE_COLUMNS = ("identity", "prompt_index", "prompt", "driver", "condition", "image")
COLUMNS = (*SAMPLE_COLUMNS, *METRICS, "failure")
FILE = "metrics.csv"


@dataclass
class Row:
    """One sample's row; metric values are floats or None (skipped / not computable)."""

    identity: str
    prompt_index: int
    prompt: str
    driver: str
    condition: str
    image: str
    values: dict[str, float | None]
    failure: str = ""

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.identity, self.prompt_index, self.driver)

    def to_csv(self) -> dict[str, str]:
        out = {c: str(getattr(self, c)) for c in SAMPLE_COLUMNS}
        for m in METRICS:
            v = self.values.get(m)
            out[m] = "" if v is None or not math.isfinite(v) else f"{v:.6g}"
        out["failure"] = " ".join(self.failure.split())
        return out


def read_rows(path: str | Path) -> list[Row]:
    """The rows of an existing ``metrics.csv`` ([] when there is none).

    Raises:
        HP3Error: the file has other columns (written by another version or by hand).
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise HP3Error(f"'{path}' has columns {reader.fieldnames}, not this version's {list(COLUMNS)}; "
                           f"move it away or use another --out")
        rows = []
        for r in reader:
            rows.append(Row(identity=r["identity"], prompt_index=int(r["prompt_index"]), prompt=r["prompt"],
                            driver=r["driver"], condition=r["condition"], image=r["image"],
                            values={m: float(r[m]) if r[m] != "" else None for m in METRICS},
                            failure=r["failure"]))
    return rows


class RowWriter:
    """Appends rows to ``metrics.csv`` (the header is written once), flushed after each row."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=list(COLUMNS))
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self._writer.writerow(row.to_csv())
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
