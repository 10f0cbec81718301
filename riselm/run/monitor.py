"""Watching an online run: per-step metrics to the console, `metrics.jsonl`, TensorBoard and a plot.

Per step: the reward and accuracy of each turn (over the episodes that reached it), the rates of
wrong→right and right→wrong transitions (of the turns following a wrong, resp. right, turn), the
share of actions with no final answer (a policy collapsing stops answering), the KL to the starting
model, the entropy of the sampled tokens, the loss, and where the time went (generation, scoring,
update) with generated tokens per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riselm.jsonl import JsonlAppender, iter_jsonl, write_jsonl
from riselm.rollout.episode import Episode
from riselm.rundir import RunLayout
from riselm.tables import pyplot, save_figure


def rollout_stats(episodes: Sequence[Episode], turns: int) -> dict[str, float]:
    """Reward and accuracy per turn, transition rates and the no-answer share of a step's episodes."""
    stats: dict[str, float] = {}
    for t in range(turns):
        reached = [e.turns[t] for e in episodes if len(e.turns) > t]
        if reached:
            stats[f"reward@t{t + 1}"] = sum(turn.reward for turn in reached) / len(reached)
            stats[f"acc@t{t + 1}"] = 100.0 * sum(turn.correct for turn in reached) / len(reached)
    pairs = [(e.turns[t - 1].correct, e.turns[t].correct) for e in episodes for t in range(1, len(e.turns))]
    from_wrong = [b for a, b in pairs if not a]
    from_right = [b for a, b in pairs if a]
    stats["wrong->right"] = 100.0 * sum(from_wrong) / len(from_wrong) if from_wrong else 0.0
    stats["right->wrong"] = 100.0 * sum(not b for b in from_right) / len(from_right) if from_right else 0.0
    actions = [turn for e in episodes for turn in e.turns]
    stats["no_answer"] = 100.0 * sum(turn.pred is None for turn in actions) / len(actions) if actions else 0.0
    stats["episodes"] = float(len(episodes))
    return stats


class Monitor:
    """Writes one row of metrics per step; resumes by keeping the rows of the steps already done."""

    def __init__(self, layout: RunLayout, report_to: Sequence[str], done_steps: int, show_progress: bool, total_steps: int):
        self.layout = layout
        self.path = layout.online_metrics
        kept = [row for _, row in iter_jsonl(self.path) if row["step"] <= done_steps] if self.path.exists() else []
        write_jsonl(self.path, kept)  # steps after the checkpoint are redone, so their rows go
        self.rows: list[dict[str, Any]] = kept
        self._sink = JsonlAppender(self.path)
        self._writer = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(layout.online_tensorboard))
        self._bar = None
        if show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=done_steps, desc="online", unit="step", dynamic_ncols=True)

    def log(self, step: int, row: dict[str, Any]) -> None:
        row = {"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}}
        self.rows.append(row)
        self._sink.write(row)
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key.replace("@", "_at_").replace("->", "_to_"), value, step)
        if self._bar is not None:
            self._bar.update(1)
            shown: dict[str, Any] = {k: row[k] for k in ("acc@t1", "kl", "no_answer") if k in row}
            last = max((k for k in row if k.startswith("acc@t")), key=lambda k: int(k[5:]), default=None)
            if last:
                shown[last] = row[last]
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()})

    def close(self) -> None:
        self._sink.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
        plot_curves(self.rows, self.layout.online_curves)


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy of each turn against the step, with the no-answer share, into `path`."""
    if not rows:
        return None
    steps = [row["step"] for row in rows]
    turns = sorted({int(k[5:]) for row in rows for k in row if k.startswith("acc@t")})
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    for i, t in enumerate(turns):  # a step holds few episodes: each step faint, a moving mean over 10 drawn
        values = [row.get(f"acc@t{t}") for row in rows]
        ax.plot(steps, _gaps(values), color=f"C{i}", linewidth=0.5, alpha=0.3)
        ax.plot(steps, _gaps(_moving_mean(values, 10)), color=f"C{i}", linewidth=1.5, label=f"turn {t}")
    ax.plot(steps, _gaps(_moving_mean([row.get("no_answer") for row in rows], 10)), "k:", label="no answer", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("% of the step's episodes")
    ax.set_title("online RL: accuracy of each turn during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _moving_mean(values: Sequence[float | None], window: int) -> list[float | None]:
    """The mean of each value with up to `window - 1` before it (missing values skipped)."""
    out: list[float | None] = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(recent) / len(recent) if recent else None)
    return out


def _gaps(values: Sequence[float | None]) -> list[float]:
    """`values` to plot, a missing one as NaN: a gap in the line (as matplotlib draws None)."""
    return [math.nan if v is None else v for v in values]
