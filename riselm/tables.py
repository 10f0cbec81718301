"""Output helpers every report uses (evaluation, summary, online monitor, analyses): number cells,
markdown tables, percentages, matplotlib without a display."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riselm import files

MISSING = "–"  # the cell of a value a run or stage does not have


def cell(value: Any, digits: int = 1) -> str:
    """A table cell: floats rounded, integers with thousands separators, None as MISSING."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 1) -> str:
    """A GitHub markdown table; every cell goes through `cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(hits: int, total: int) -> float | None:
    """hits / total in percent (2 decimals), None for an empty denominator (not 0: nothing was measured)."""
    return round(100.0 * hits / total, 2) if total else None


def pyplot():
    """matplotlib's pyplot on the Agg backend: the analyses write files and never need a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save small (the plots go into the repository's results) and free the figure."""
    plt = pyplot()
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
