"""A run's summary: the paper's Table 1 across stages (m1@t1, mP@t1, m1@tK, p1@tK) with per-turn curves.

K is the number of sequential turns and P the number of parallel samples the stages were evaluated
with (5 and 5 in the paper), so a run evaluated with 3 turns shows m1@t3, not an empty m1@t5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riselm.evaluation.report import plot_turn_curves
from riselm.files import write_json, write_text_atomic
from riselm.rundir import RunLayout
from riselm.tables import markdown_table


@dataclass
class StageResult:
    name: str  # "base", "boost", "iter1", ...
    model: str  # the model evaluated (a checkpoint directory or a model spec)
    sequential: dict[str, Any]  # sequential metrics of the stage's evaluation
    parallel: dict[str, Any] | None  # parallel metrics (for mP@t1), when run
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step run this time

    @classmethod
    def from_metrics(cls, path: Path, name: str) -> StageResult:
        """The result of an evaluation from the metrics.json it wrote."""
        saved = json.loads(Path(path).read_text())
        return cls(name, saved.get("model", ""), saved["sequential"], saved.get("parallel"))

    def row(self, keys: Sequence[str]) -> dict[str, Any]:
        metrics = {**(self.parallel or {}), **self.sequential}
        row: dict[str, Any] = {"name": self.name, "model": self.model}
        row.update({key: metrics.get(key) for key in keys})
        turns = int(self.sequential.get("turns", 0))
        for curve in ("acc", "p1", "m1"):
            row[f"{curve}@tk"] = [self.sequential.get(f"{curve}@t{k}") for k in range(1, turns + 1)]
        row["seconds"] = {step: round(value, 1) for step, value in self.seconds.items()}
        return row


def table_keys(stages: Sequence[StageResult]) -> list[str]:
    """m1@t1, mP@t1, m1@tK, p1@tK for the most turns K and parallel samples P any stage was evaluated with."""
    turns = max((int(s.sequential.get("turns", 0)) for s in stages), default=0) or 1
    samples = max((int((s.parallel or {}).get("samples", 0)) for s in stages), default=0)
    keys = ["m1@t1"] + ([f"m{samples}@t1"] if samples > 1 else [])
    keys += [f"m1@t{turns}", f"p1@t{turns}"] if turns > 1 else ["p1@t1"]
    return keys


def write_summary(layout: RunLayout, stages: Sequence[StageResult], title: str = "RISE") -> dict[str, Any]:
    """summary.json, summary.md and summary.png of the run."""
    keys = table_keys(stages)
    summary: dict[str, Any] = {"keys": keys, "stages": [s.row(keys) for s in stages]}
    write_json(layout.summary("json"), summary)
    rows = [
        [row["name"], *(row[k] for k in keys), " → ".join(f"{v:.1f}" for v in row["acc@tk"] if v is not None)] for row in summary["stages"]
    ]
    write_text_atomic(layout.summary("md"), f"# {title}\n\n" + markdown_table(["stage", *keys, "acc@tk"], rows) + "\n")
    if stages:
        plot_turn_curves(
            {s.name: s.sequential for s in stages},
            layout.summary("png"),
            title=title,
            parallel={s.name: s.parallel for s in stages if s.parallel},
        )
    return summary
