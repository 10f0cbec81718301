"""The paper's Fig. 2: does a later model solve, over turns, the problems an earlier one never solves in B tries?

Input: an earlier stage's parallel episodes (P independent first-turn samples per problem) and a later
stage's sequential episodes (K turns per problem) on the same problems. For B = 1..P: take the
problems whose first B parallel samples are all wrong, and report the share of them the later model
solves at its first turn, within K turns with an oracle (p1@tK), and by the majority answer over its K
turns (m1@tK, no oracle). Problems are matched by id, and a shared id must hold the same prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from riselm.evaluation.metrics import AnswerKey, majority_correct
from riselm.files import write_json, write_text_atomic
from riselm.jsonl import DataError
from riselm.rollout.episode import Episode, Turn, read_episodes
from riselm.tables import markdown_table, pct, pyplot, save_figure

SameAnswer = Callable[[str, str], bool]


@dataclass
class FixRow:
    samples: int  # B: the first B parallel samples of the earlier stage are all wrong
    unsolved: int  # problems (held by both files) whose first B samples are all wrong
    first_turn: float | None  # % of those the later model answers right at turn 1
    p1: float | None  # % solved at any of the later model's K turns (an oracle says when to stop)
    m1: float | None  # % whose majority answer over the K turns is right (no oracle)


@dataclass
class FixesResult:
    rows: list[FixRow]  # one per B = 1..P
    problems: int  # problems held by both files
    turns: int  # K: the later model's turns counted
    parallel_only: int  # problems of the parallel file the sequential file lacks (left out)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}


def fixes(
    parallel: Sequence[Episode],
    sequential: Sequence[Episode],
    same: SameAnswer,
    turns: int | None = None,
    key: AnswerKey | None = None,
) -> FixesResult:
    """The Fig. 2 table from episodes (parallel: one-turn samples sharing a problem id); `key` is the
    task's canonical answer form, when it has one (riselm.evaluation.metrics.vote_groups)."""
    samples = _samples_by_problem(parallel)
    later: dict[str, Episode] = {}
    for e in sorted(sequential, key=lambda e: e.sample):
        later.setdefault(e.id, e)  # one sequential episode per problem: the first sample
    common = [pid for pid in samples if pid in later]
    k = turns or max((len(later[pid].turns) for pid in common), default=0)
    size = min((len(samples[pid]) for pid in common), default=0)  # P: samples every problem has
    rows = []
    for b in range(1, size + 1):
        unsolved = [pid for pid in common if not any(t.correct for t in samples[pid][:b])]
        answered = [later[pid].turns[:k] for pid in unsolved]
        rows.append(
            FixRow(
                samples=b,
                unsolved=len(unsolved),
                first_turn=pct(sum(bool(t) and t[0].correct for t in answered), len(unsolved)),
                p1=pct(sum(any(x.correct for x in t) for t in answered), len(unsolved)),
                m1=pct(sum(bool(t) and majority_correct(t, same, key) for t in answered), len(unsolved)),
            )
        )
    return FixesResult(rows=rows, problems=len(common), turns=k, parallel_only=len(samples) - len(common))


def _samples_by_problem(parallel: Sequence[Episode]) -> dict[str, list[Turn]]:
    """Each problem's first-turn samples in sample order."""
    grouped: dict[str, list[Episode]] = defaultdict(list)
    for e in parallel:
        if e.turns:
            grouped[e.id].append(e)
    return {pid: [e.turns[0] for e in sorted(eps, key=lambda e: e.sample)] for pid, eps in grouped.items()}


def fixes_of_files(
    parallel_path: str | Path, sequential_path: str | Path, out_dir: str | Path | None = None, turns: int | None = None
) -> dict[str, Any]:
    """Fig. 2 from an earlier stage's parallel file and a later stage's sequential file; with `out_dir`,
    fixes.md, fixes.json and fixes.png there."""
    parallel_path, sequential_path = Path(parallel_path), Path(sequential_path)
    parallel, sequential = read_episodes(parallel_path), read_episodes(sequential_path)
    for path, episodes, wanted in [(parallel_path, parallel, True), (sequential_path, sequential, False)]:
        if not episodes:
            raise DataError(f"{path}: no episodes")
        if any((e.mode == "parallel") != wanted for e in episodes):
            kind = "parallel" if wanted else "sequential"
            raise DataError(f"{path}: expected {kind} episodes, found mode(s) {sorted({e.mode for e in episodes})}")
    _check_prompts(parallel, sequential, parallel_path, sequential_path)
    tasks = {e.task for e in [*parallel, *sequential]}
    if len(tasks) > 1:
        raise DataError(f"{parallel_path}, {sequential_path}: episodes of different tasks {sorted(tasks)}")
    task_name = tasks.pop()
    result = fixes(parallel, sequential, same_answer_of(task_name), turns, answer_key_of(task_name))
    if result.problems == 0:
        raise DataError(f"{parallel_path}, {sequential_path}: no problem id is in both files")
    out = result.to_dict() | {"parallel_file": str(parallel_path), "sequential_file": str(sequential_path)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        text = [
            f"# Problems unsolved in B first-turn samples, solved by the later model over {result.turns} turns",
            "",
            f"Earlier stage (parallel): {parallel_path}  ",
            f"Later stage (sequential): {sequential_path}  ",
            f"{result.problems} problems in both files"
            + (f" ({result.parallel_only} parallel-only left out)" if result.parallel_only else "")
            + ".",
            "",
            fixes_table(result),
            "",
        ]
        write_text_atomic(out_dir / "fixes.md", "\n".join(text))
        write_json(out_dir / "fixes.json", out)
        plot_fixes(result, out_dir / "fixes.png")
    return out


def _check_prompts(parallel: Sequence[Episode], sequential: Sequence[Episode], a: Path, b: Path) -> None:
    """A shared id must be the same problem: ids restart at test-0 for every task and difficulty."""
    prompts = {e.id: e.prompt for e in parallel if e.prompt is not None}
    for e in sequential:
        if e.prompt is not None and prompts.get(e.id, e.prompt) != e.prompt:
            raise DataError(f"{a}, {b}: problem {e.id!r} has different prompts in the two files; are they of the same task and options?")


def same_answer_of(task_name: str) -> SameAnswer:
    """The task's own answer equivalence; exact strings for a task riselm does not know."""
    from riselm.tasks import get_task, task_names

    if task_name in task_names():
        return get_task(task_name).same_answer
    return lambda x, y: x.strip() == y.strip()


def answer_key_of(task_name: str) -> AnswerKey:
    """The task's canonical answer form (None where it has none); the stripped text for a task riselm does not know."""
    from riselm.tasks import get_task, task_names

    return get_task(task_name).answer_key if task_name in task_names() else str.strip


def fixes_table(result: FixesResult) -> str:
    k = result.turns
    header = ["B", "unsolved in B samples", "later: right at t1 (%)", f"later: p1@t{k} (%)", f"later: m1@t{k} (%)"]
    rows = [[r.samples, f"{r.unsolved} of {result.problems}", r.first_turn, r.p1, r.m1] for r in result.rows]
    return markdown_table(header, rows)


def plot_fixes(result: FixesResult, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bs = [r.samples for r in result.rows]
    k = result.turns
    for attr, style, label in [
        ("p1", "s:", f"p1@t{k} (oracle)"),
        ("m1", "o-", f"m1@t{k} (no oracle)"),
        ("first_turn", "^--", "turn 1 alone"),
    ]:
        ax.plot(bs, [getattr(r, attr) for r in result.rows], style, label=label)
    ax.set_xticks(bs)
    ax.set_xlabel("B: first-turn samples of the earlier model, all wrong")
    ax.set_ylabel("% of those solved by the later model")
    ax.set_title("problems the earlier model misses, solved over turns")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
