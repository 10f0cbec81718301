"""Per-turn transition matrices of a sequential episodes file: how correctness moves from turn k-1 to k.

For every k >= 2, over the episodes that reached turn k: right→right, right→wrong (an answer made
wrong), wrong→right (an answer fixed) and wrong→wrong, as counts and as shares of those episodes,
plus the two conditional rates a reader wants: the share of wrong answers fixed and of right answers
broken. RISE should fix more than it breaks at every turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from riselm.files import write_json, write_text_atomic
from riselm.jsonl import DataError
from riselm.rollout.episode import Episode, read_episodes
from riselm.rundir import RunLayout
from riselm.tables import markdown_table, pct, pyplot, save_figure

KINDS = ("right_right", "right_wrong", "wrong_right", "wrong_wrong")
_LABELS = {"right_right": "right→right", "right_wrong": "right→wrong", "wrong_right": "wrong→right", "wrong_wrong": "wrong→wrong"}
_COLORS = {"right_right": "#4c9a2a", "right_wrong": "#d62728", "wrong_right": "#98df8a", "wrong_wrong": "#7f7f7f"}


@dataclass
class TurnTransitions:
    turn: int  # k: the transitions from turn k-1 to turn k
    right_right: int  # correct at both turns
    right_wrong: int  # correct at k-1, wrong at k (a right answer broken)
    wrong_right: int  # wrong at k-1, correct at k (a wrong answer fixed)
    wrong_wrong: int  # wrong at both turns

    @property
    def total(self) -> int:
        return self.right_right + self.right_wrong + self.wrong_right + self.wrong_wrong

    def shares(self) -> dict[str, float | None]:
        """Each kind as a % of the episodes that reached turn k."""
        return {kind: pct(getattr(self, kind), self.total) for kind in KINDS}

    @property
    def fixed(self) -> float | None:
        """% of the wrong answers at turn k-1 that are right at turn k."""
        return pct(self.wrong_right, self.wrong_right + self.wrong_wrong)

    @property
    def broken(self) -> float | None:
        """% of the right answers at turn k-1 that are wrong at turn k."""
        return pct(self.right_wrong, self.right_right + self.right_wrong)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "shares": self.shares(), "fixed": self.fixed, "broken": self.broken}


def transitions(episodes: Sequence[Episode]) -> list[TurnTransitions]:
    """One TurnTransitions per turn k >= 2 that any episode reached."""
    max_turns = max((len(e.turns) for e in episodes), default=0)
    rows = []
    for k in range(2, max_turns + 1):
        counts = dict.fromkeys(KINDS, 0)
        for e in episodes:
            if len(e.turns) >= k:  # an episode that stopped early has no turn k to move to
                before, after = e.turns[k - 2].correct, e.turns[k - 1].correct
                counts[f"{'right' if before else 'wrong'}_{'right' if after else 'wrong'}"] += 1
        rows.append(TurnTransitions(turn=k, **counts))
    return rows


def transitions_of_file(path: str | Path, out_dir: str | Path | None = None, title: str | None = None) -> dict[str, Any]:
    """Transitions of a sequential (or collection) episodes file; with `out_dir`, transitions.md/json/png there.

    `title` names the plot (default: the stage folder of a run's eval/episodes.sequential.jsonl).
    """
    path = Path(path)
    episodes = read_episodes(path)
    if not episodes:
        raise DataError(f"{path}: no episodes")
    if any(e.mode == "parallel" for e in episodes):
        raise DataError(f"{path}: holds parallel (one-turn) episodes; transitions need a sequential episodes file")
    rows = transitions(episodes)
    if not rows:
        raise DataError(f"{path}: no episode has a second turn; transitions need at least two turns")
    result = {"file": str(path), "episodes": len(episodes), "turns": [r.to_dict() for r in rows]}
    if out_dir is not None:
        out = Path(out_dir)
        heading = f"Turn-to-turn transitions: {path}"
        write_text_atomic(out / "transitions.md", f"# {heading}\n\n{len(episodes)} episodes.\n\n{transition_table(rows)}\n")
        write_json(out / "transitions.json", result)
        plot_transitions(rows, out / "transitions.png", title=title or _stage_of(path))
    return result


def _stage_of(path: Path) -> str:
    """'boost' for out/boost/eval/episodes.sequential.jsonl (RunLayout.stage_of), else the file's name."""
    return RunLayout.stage_of(path) or path.name


def transition_table(rows: Sequence[TurnTransitions]) -> str:
    """k, episodes, each kind as `count (share%)`, and the fixed / broken rates."""
    header = ["k", "episodes", *(_LABELS[k] for k in KINDS), "fixed (% of wrong)", "broken (% of right)"]
    body = []
    for r in rows:
        shares = r.shares()
        cells = [f"{getattr(r, kind)} ({_share(shares[kind])})" for kind in KINDS]
        body.append([r.turn, r.total, *cells, r.fixed, r.broken])
    return markdown_table(header, body)


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def plot_transitions(rows: Sequence[TurnTransitions], path: Path, title: str = "") -> Path:
    """Stacked bars per turn k: the shares of the four kinds (right→right at the bottom)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ks = [r.turn for r in rows]
    bottom = [0.0] * len(rows)
    for kind in KINDS:
        heights = [r.shares()[kind] or 0.0 for r in rows]
        ax.bar(ks, heights, bottom=bottom, color=_COLORS[kind], label=_LABELS[kind])
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(ks, [f"{k - 1}→{k}" for k in ks])
    ax.set_xlabel("turn")
    ax.set_ylabel("episodes (%)")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(f"transitions: {title}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)
