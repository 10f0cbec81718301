"""What every stage of a run needs (`Run`): the settings, the task and its problems, the run directory.

Its own module so that the pipeline and the stages it calls (riselm.run.online) both take it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from riselm import distributed
from riselm.methods import METHODS, Method
from riselm.rundir import RunLayout
from riselm.settings import RunSettings
from riselm.tasks.base import Problem, Task


@dataclass
class Run:
    """What every stage of a run needs."""

    settings: RunSettings
    task: Task
    train_problems: list[Problem]
    eval_problems: list[Problem]
    out: Path  # the run directory
    show_progress: bool = True
    world: distributed.World = distributed.World()  # this process among the run's processes

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)

    @property
    def method(self) -> Method:
        return METHODS[self.settings.method]

    def stage(self, name: str) -> None:
        """Record the stage this process is in (a failed worker is reported with it)."""
        distributed.set_stage(self.out, self.world, name)
