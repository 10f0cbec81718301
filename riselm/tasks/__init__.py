"""Benchmarks with verifiable answers. `get_task(name)` builds one by name."""

from __future__ import annotations

from riselm.tasks.base import Problem, Score, Task


def _registry() -> dict[str, type[Task]]:
    # Imported here so that `import riselm.tasks` stays cheap and a task module can import base.
    from riselm.tasks.arithmetic import ArithmeticTask
    from riselm.tasks.code import CODE_TASKS
    from riselm.tasks.gsm8k import GSM8KTask
    from riselm.tasks.math import MathTask

    return {t.name: t for t in (GSM8KTask, MathTask, ArithmeticTask, *CODE_TASKS)}


def task_names() -> list[str]:
    return sorted(_registry())


def get_task(name: str, **options) -> Task:
    """The task called `name`, built with `options` (e.g. unparsable_reward=-1.0)."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(registry))}")
    try:
        return registry[name](**options)
    except TypeError as e:  # an option the task does not take
        raise ValueError(f"task {name!r}: {e}") from None


__all__ = ["Problem", "Score", "Task", "get_task", "task_names"]
