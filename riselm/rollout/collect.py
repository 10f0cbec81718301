"""RISE data collection (spec section 2): on-policy rollouts whose wrong turns are followed by an improver.

For each problem: turn 1 comes from the learner. While the chosen action is wrong and turns remain,
the task's retry message is appended and the next action is the best of N candidates from the turn's
improver, conditioned on the history: the learner itself (self-distillation) or an expert (any
backend). A per-turn schedule of (model name, N) covers both. The episode stops at the first correct
action. Two departures from the paper, both options: `context: fresh` in a schedule step samples the
candidates from the question alone (new attempts from scratch, placed after the history, so the
model learns to re-solve instead of repeating its failed attempt), and the `reference` improver
answers with the task's gold solution (the paper's expert role, DAgger-style on the learner's own
wrong turns); `continue_after_correct: K` goes on for K turns after the first correct action, so
that the data also show right answers kept after the retry message. Degenerate candidates are never
chosen, and no action is worse than the one before it (the paper's collection never degrades): when
every candidate of a turn scores below the last action (possible with `unparsable_reward: -1`), the
episode ends after the last action instead. It is one call of the rollout engine.

Iterations differ: the iteration is folded into every conversation seed, and with `limit` below the
number of training problems iteration k takes the k-th slice of `limit` problems (wrapping around),
unless `limit_slices: first` asks for the first `limit` problems every time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from riselm.generation.base import Generator
from riselm.rollout.engine import RolloutSpec, Step
from riselm.rollout.episode import Episode
from riselm.rollout.shards import sharded_rollout
from riselm.rundir import iteration_stage
from riselm.settings import REFERENCE, CollectSettings, ScheduleStep, check_schedule
from riselm.tasks.base import Problem, Task


def resolve_schedule(schedule: Sequence[ScheduleStep], generators: Mapping[str, Generator]) -> list[Step]:
    """The schedule's model names resolved against `generators` ("learner" and the experts, by name;
    "reference" is the task's gold solution)."""
    check_schedule(list(schedule), list(generators), "the schedule")
    return [Step(None if s.model == REFERENCE else generators[s.model], s.n, source=s.model, context=s.context) for s in schedule]


def check_reference(task: Task, problems: Sequence[Problem], schedule: Sequence[ScheduleStep]) -> None:
    """The `reference` improver needs gold solutions: ValueError naming the task when its problems have none."""
    if any(s.model == REFERENCE for s in schedule) and problems and not any(p.solution for p in problems):
        raise ValueError(
            f"collect.schedule uses the reference improver, but task {task.name!r} has no gold solutions for its "
            "training problems; use the learner or an expert instead"
        )


def collect_spec(settings: CollectSettings, seed: int = 0, iteration: int = 1) -> RolloutSpec:
    return RolloutSpec(
        stage=iteration_stage(iteration),
        no_degrade=True,
        mode="collect",
        turns=settings.max_turns,
        stop_when_correct=True,
        window=settings.window,
        sampling=settings.sampling,
        seed=seed,
        chunk_size=settings.chunk_size,
        drop_degenerate=True,
        episodes_per_problem=settings.episodes_per_problem,
        turns_after_correct=settings.continue_after_correct,
    )


def collect(
    task: Task,
    generators: Generator | Mapping[str, Generator],
    problems: Sequence[Problem],
    out_path: str | Path,
    settings: CollectSettings = CollectSettings(),
    seed: int = 0,
    show_progress: bool = True,
    iteration: int = 1,
) -> list[Episode]:
    """Collect RISE episodes of `problems` (iteration's slice of `settings.limit`) into `out_path`; resumes there.

    `generators`: the learner, or a mapping from the names in `settings.schedule` ("learner" and any
    expert) to generators. Returns the file's episodes of those problems. Run in every process of a
    distributed run, each rolls out its share (riselm.rollout.shards).
    """
    if not isinstance(generators, Mapping):
        generators = {"learner": generators}
    schedule = resolve_schedule(settings.schedule, generators)
    chosen = iteration_problems(problems, settings, iteration)
    check_reference(task, chosen, settings.schedule)
    return sharded_rollout(task, chosen, schedule, collect_spec(settings, seed, iteration), out_path, show_progress)


def iteration_problems(problems: Sequence[Problem], settings: CollectSettings, iteration: int = 1) -> list[Problem]:
    """The problems collected in 1-based `iteration`: all, or a slice of `settings.limit` (see the module docstring)."""
    problems = list(problems)
    limit = settings.limit
    if not limit or limit >= len(problems):
        return problems
    start = 0 if settings.limit_slices == "first" else (iteration - 1) * limit % len(problems)
    return (problems[start:] + problems[:start])[:limit]
