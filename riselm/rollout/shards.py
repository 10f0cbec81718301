"""A rollout shared by the processes of a run: each rolls out its share into its own shard file.

Every process first finds what is already done (the stage's episodes file, after the main process
folded in the shards a killed run left behind, from any number of processes), takes every
`size`-th of the problems still to do starting at its rank, and appends its episodes to
`<file>.rank<r>.jsonl`. The main process then merges the shards into the episodes file, each
(problem id, sample) exactly once. Seeds depend on the problem, never on the process
(riselm.rollout.engine), so a run with 1, 2 or 8 processes, resumed or not, gives the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from riselm.distributed import World, world
from riselm.jsonl import drop_torn_tail, iter_jsonl, write_jsonl
from riselm.rollout.engine import RolloutSpec, Step, rollout
from riselm.rollout.episode import Episode, finished_keys, read_episodes
from riselm.tasks.base import Problem, Task


def shard_path(out_path: Path, rank: int) -> Path:
    return out_path.with_name(f"{out_path.stem}.rank{rank}{out_path.suffix}")


def shard_files(out_path: Path) -> list[Path]:
    return sorted(out_path.parent.glob(f"{out_path.stem}.rank*{out_path.suffix}"))


def merge_shards(out_path: Path) -> None:
    """Fold every shard file into `out_path` (each episode key once, the file's own rows first), then remove them."""
    shards = shard_files(out_path)
    if not shards:
        return
    rows, seen = [], set()
    for path in ([out_path] if out_path.exists() else []) + shards:
        drop_torn_tail(path)  # the row a killed process was writing
        for _, row in iter_jsonl(path):
            key = (str(row["id"]), int(row.get("sample", 0)))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    write_jsonl(out_path, rows)
    for path in shards:
        path.unlink()


def sharded_rollout(
    task: Task,
    problems: Sequence[Problem],
    schedule: Sequence[Step],
    spec: RolloutSpec,
    out_path: str | Path,
    show_progress: bool = True,
    current: World | None = None,
) -> list[Episode]:
    """`rollout` into `out_path`, shared by the run's processes; every process returns the episodes of `problems`."""
    out_path = Path(out_path)
    current = current or world()
    if current.main:
        merge_shards(out_path)
    current.barrier()
    if current.size == 1:
        return rollout(task, problems, schedule, spec, out_path, show_progress)
    done = finished_keys(out_path)
    todo = [p for p in problems if any((p.id, s) not in done for s in range(spec.episodes_per_problem))]
    mine = todo[current.rank :: current.size]
    if mine:
        rollout(task, mine, schedule, spec, shard_path(out_path, current.rank), show_progress and current.main, skip=done)
    current.barrier()
    if current.main:
        merge_shards(out_path)
    current.barrier()
    wanted = {(p.id, s) for p in problems for s in range(spec.episodes_per_problem)}
    order = {p.id: i for i, p in enumerate(problems)}
    return sorted((e for e in read_episodes(out_path) if e.key in wanted), key=lambda e: (order[e.id], e.sample))
