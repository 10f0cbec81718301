"""Scoring many responses at once: code tasks run their tests concurrently, other tasks one by one."""

from __future__ import annotations

from typing import Sequence

from riselm.tasks.base import Problem, Score, Task


def score_responses(task: Task, problems: Sequence[Problem], responses: Sequence[str]) -> list[Score]:
    """The task's Score for each (problem, response) pair, in order."""
    score_many = getattr(task, "score_many", None)
    if score_many is not None:
        return list(score_many(problems, responses))
    return [task.score(p, r) for p, r in zip(problems, responses)]
