"""Evaluation reports: a markdown table and a plot of accuracy against turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riselm.tables import markdown_table, pyplot, save_figure


def turn_table(sequential: dict[str, Any], parallel: dict[str, Any] | None = None) -> str:
    """A markdown table with one row per turn k: acc@tk, p1@tk, m1@tk, transitions, and mk@t1 / pass@k when run."""
    turns = int(sequential.get("turns", 0))
    parallel = parallel or {}
    has_parallel = parallel.get("samples", 0) > 0
    header = ["k", "acc@tk", "p1@tk", "m1@tk", "wrong→right", "right→wrong"]
    if has_parallel:
        header += ["mk@t1", "pass@k"]
    rows = []
    for k in range(1, turns + 1):
        row = [k, *(sequential.get(f"{metric}@t{k}") for metric in ("acc", "p1", "m1", "wrong->right", "right->wrong"))]
        if has_parallel:
            row += [parallel.get(f"m{k}@t1"), parallel.get(f"pass@{k}")]
        rows.append(row)
    return markdown_table(header, rows)


def parallel_note(parallel: dict[str, Any] | None) -> str | None:
    """A sentence for report.md when problems have different parallel sample counts, None when even."""
    if not parallel:
        return None
    parts = []
    counts = parallel.get("sample_counts")
    if counts:
        listed = ", ".join(f"{problems} with {n}" for n, problems in sorted(counts.items(), key=lambda kv: -int(kv[0])))
        parts.append(
            f"Problems have different parallel sample counts (problems: {listed}): each problem is counted with its own "
            f"samples, and mk@t1 and pass@k for k above {parallel.get('samples', 0)} average only the problems with at "
            "least k samples (problems_at_k in metrics.json)."
        )
    missing = parallel.get("problems_without_samples")
    if missing:
        parts.append(f"{missing} problem(s) have no parallel sample and are left out of the parallel columns.")
    return " ".join(parts) or None


def plot_turn_curves(
    curves: dict[str, dict[str, Any]],
    path: str | Path,
    title: str = "",
    parallel: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Plot p1@tk and m1@tk against k for each named run (and mk@t1 against k as a dashed baseline)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for i, (name, seq) in enumerate(curves.items()):
        color = f"C{i}"
        turns = list(range(1, int(seq.get("turns", 0)) + 1))
        label = f"{name} " if len(curves) > 1 else ""
        ax.plot(turns, [seq[f"m1@t{k}"] for k in turns], "o-", color=color, label=f"{label}m1@tk (no oracle)")
        ax.plot(turns, [seq[f"p1@t{k}"] for k in turns], "s:", color=color, alpha=0.7, label=f"{label}p1@tk (oracle)")
        par = (parallel or {}).get(name)
        if par and par.get("samples", 0) > 0:
            ks = [k for k in range(1, int(par.get("samples_max", par["samples"])) + 1)]
            ax.plot(ks, [par[f"m{k}@t1"] for k in ks], "^--", color=color, alpha=0.6, label=f"{label}mk@t1 (parallel)")
    ax.set_xlabel("turn k (or samples k for mk@t1)")
    ax.set_ylabel("accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
