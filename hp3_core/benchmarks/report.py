"""How a benchmark prints its result: its table, then the machine-readable ``name: value`` lines.

The result goes to stdout (it is the command's output, which scripts parse); progress and notes
go through logging.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence


def write_report(lines: Sequence[str], metrics: Mapping[str, float], digits: int) -> None:
    """Print ``lines`` (the human-readable table), then one ``name: value`` line per metric, with
    ``digits`` decimals, in ``metrics``' order."""
    out = [*lines, *(f"{name}: {value:.{digits}f}" for name, value in metrics.items())]
    sys.stdout.write("\n".join(out) + "\n")
