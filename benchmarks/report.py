"""Printing side-by-side benchmark tables with ratios.

Every benchmark module measures hpcgate and the alternative a user would pick instead
in the same run, then hands its rows to :func:`table`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format a table; floats get three significant decimals. Returns and prints it."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(str(col)), *(len(r[i]) for r in text_rows)) if text_rows else len(str(col))
        for i, col in enumerate(columns)
    ]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n## {title}", "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in text_rows]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def ratio(ours: float, theirs: float) -> str:
    """``ours / theirs`` as ``"1.23x"``; ``"n/a"`` when ``theirs`` is zero."""
    return f"{ours / theirs:.2f}x" if theirs else "n/a"
