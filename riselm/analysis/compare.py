"""`compare_runs`: the paper's Table 1 across run directories, with what each row cost.

Each run contributes its final stage (or every stage): m1@t1, mP@t1, m1@tK, p1@tK at the run's own
K turns and P parallel samples (summary.json's `keys`). The columns are the union over runs, ordered
m1@t1, mP@t1 (by P), m1@tK (by K), p1@tK (by K); a run without a column shows "–". The budget
columns are cumulative from the start of the run to the row's stage (riselm.analysis.budget).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riselm.analysis.budget import (
    BUDGET_FILE,
    cumulative,
    read_budget_file,
    run_budgets,
)
from riselm.analysis.runs import RunDir, read_run
from riselm.files import write_json, write_text_atomic
from riselm.tables import markdown_table, pyplot, save_figure

_COLUMN_KINDS = [  # Table 1's column kinds, in the order they are shown
    re.compile(r"m1@t1$"),
    re.compile(r"m(\d+)@t1$"),  # parallel majority over P samples
    re.compile(r"m1@t(\d+)$"),  # sequential majority over K turns
    re.compile(r"p1@t(\d+)$"),  # sequential, with an oracle
]
_BUDGET_HEADER = ["generated", "trained samples", "trained tokens", "wall (s)"]


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, all_stages: bool = False, count_tokens: bool = True
) -> dict[str, Any]:
    """One table across runs; with `out_dir`, also compare.md, compare.json and compare.png there.

    Every run directory is read first, so one without summary.json fails before any work. With
    `count_tokens`, trained tokens are counted with each stage model's tokenizer (about a second per
    few thousand samples); without, they are known only from budget.json.
    """
    if not run_dirs:
        raise ValueError("compare: give at least one run directory")
    runs = [read_run(path) for path in run_dirs]
    columns = union_columns(runs)
    rows: list[dict[str, Any]] = []
    for run, label in zip(runs, run_labels(runs)):
        rows += _run_rows(run, label, columns, all_stages, count_tokens)
    result = {"columns": columns, "all_stages": all_stages, "rows": rows}
    if out_dir is not None:
        write_comparison(result, Path(out_dir))
    return result


def union_columns(runs: Sequence[RunDir]) -> list[str]:
    """Every run's Table 1 keys, once each, in Table 1 order."""
    seen = list(dict.fromkeys(key for run in runs for key in run.keys))
    return sorted(seen, key=_column_rank)


def _column_rank(key: str) -> tuple[int, int]:
    for kind, pattern in enumerate(_COLUMN_KINDS):
        match = pattern.match(key)
        if match:
            return kind, int(match.group(1)) if match.groups() else 0
    return len(_COLUMN_KINDS), 0  # unknown keys keep their first-seen order (sorted is stable)


def run_labels(runs: Sequence[RunDir]) -> list[str]:
    """Each run's folder name; runs whose names collide are told apart by their parent folder."""
    names = Counter(run.name for run in runs)
    labels = [f"{run.path.parent.name}/{run.name}" if names[run.name] > 1 else run.name for run in runs]
    counts = Counter(labels)
    return [f"{label}#{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]


def _run_rows(run: RunDir, label: str, columns: list[str], all_stages: bool, count_tokens: bool) -> list[dict[str, Any]]:
    own = run_budgets(run, count_tokens)
    totals = read_budget_file(run.path / BUDGET_FILE)
    spent = cumulative(own, {k: v for k, v in totals.items() if k != "stages"})
    chosen = range(len(run.stages)) if all_stages else [len(run.stages) - 1]
    rows = []
    for i in chosen:
        stage = run.stages[i]
        rows.append(
            {
                "run": label,
                "run_dir": str(run.path),
                "stage": stage["name"],
                "model": stage.get("model"),
                "metrics": {key: stage.get(key) if key in run.keys else None for key in columns},
                "parallel": _parallel_key(run.keys, stage),
                **{curve: stage.get(curve, []) for curve in ("acc@tk", "p1@tk", "m1@tk")},
                "budget": spent[i].values(),  # cumulative, from the start of the run
                "stage_budget": own[i].values(),  # this stage alone
                "budget_sources": {**own[i].sources, **spent[i].sources},
            }
        )
    return rows


def _parallel_key(keys: list[str], stage: dict[str, Any]) -> dict[str, Any] | None:
    """{samples: P, value: mP@t1} of the run's parallel column, None when it has none."""
    for key in keys:
        match = _COLUMN_KINDS[1].match(key)
        if match and int(match.group(1)) > 1:
            return {"samples": int(match.group(1)), "value": stage.get(key)}
    return None


# ---- outputs -----------------------------------------------------------------------------------


def comparison_table(result: dict[str, Any]) -> str:
    header = ["run", "stage", *result["columns"], *_BUDGET_HEADER]
    rows = []
    for row in result["rows"]:
        b = row["budget"]
        budget = [b["generated_responses"], b["trained_samples"], b["trained_tokens"], _whole(b["wall_s"])]
        rows.append([row["run"], row["stage"], *(row["metrics"][c] for c in result["columns"]), *budget])
    return markdown_table(header, rows)


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds)


def write_comparison(result: dict[str, Any], out: Path) -> None:
    """compare.md (the table and what its columns mean), compare.json and compare.png."""
    notes = [
        "# Runs compared",
        "",
        comparison_table(result),
        "",
        "Accuracies in %, each run at its own K turns and P parallel samples; – : the run has no such column.",
        "Budget columns are cumulative from the start of the run to the stage: generated = responses sampled",
        "for training data (collection, online rollouts; evaluation not counted), trained tokens = tokens the",
        "loss covered over all epochs, wall = summary.json's stage seconds (evaluation included).",
        "",
    ]
    write_text_atomic(out / "compare.md", "\n".join(notes))
    write_json(out / "compare.json", result)
    plot_comparison(result, out / "compare.png")


def plot_comparison(result: dict[str, Any], path: Path) -> Path:
    """m1@tk against k of each run's last listed stage, one line per run, with its mP@t1 as a marker at k=P."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    last = {row["run"]: row for row in result["rows"]}  # each run's final stage is its last row
    for i, (run, row) in enumerate(last.items()):
        color = f"C{i % 10}"
        ks = list(range(1, len(row["m1@tk"]) + 1))
        ax.plot(ks, row["m1@tk"], "o-", color=color, label=f"{run} ({row['stage']}) m1@tk")
        parallel = row["parallel"]
        if parallel and parallel["value"] is not None:
            p = parallel["samples"]
            ax.plot([p], [parallel["value"]], "^", color=color, markersize=9, label=f"{run} m{p}@t1")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # turns and samples are whole numbers
    ax.set_xlabel("turn k (marker: P parallel samples)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("m1@tk of each run's final stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
