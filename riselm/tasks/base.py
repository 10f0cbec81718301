"""The Task interface: a benchmark's data, its prompt, its answer checking and its reward.

One `Task.score` serves collection, training weights and evaluation, so the three can never disagree
about what counts as correct. A task knows nothing about models or backends.
"""

from __future__ import annotations

import importlib.resources
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from riselm.jsonl import DataError, read_json_or_jsonl

DEFAULT_INSTRUCTION = "Solve the following problem step by step. Put your final answer within \\boxed{}."
# RISE's generic feedback: says the answer was wrong, never what the right one is, and restates the
# question (as the reference code does) so that a sliding context window still shows it.
DEFAULT_RETRY = "Your answer is incorrect. Please try again. Here's the question: {question}"


@dataclass(frozen=True)
class Problem:
    id: str  # unique within the task's split, stable across runs (used to resume and to join results)
    question: str  # the problem as shown to the model, without the instruction
    answer: str  # the gold final answer (canonical text, e.g. "1600" or "\\frac{1}{2}")
    solution: str | None = None  # a worked gold solution ending in \boxed{answer}, for boosting
    meta: dict[str, Any] = field(default_factory=dict)  # task-specific extras (tests, level, subject…)


CORRECT_REWARD = 1.0  # a reward at or above this is a correct answer (tasks give 1.0 for correct)


def is_correct(reward: float) -> bool:
    """Whether a reward means a correct answer: the one definition of "correct"."""
    return reward >= CORRECT_REWARD


@dataclass(frozen=True)
class Score:
    pred: str | None  # the extracted final answer, None when the response has none
    reward: float  # 1.0 correct, 0.0 wrong, `unparsable_reward` when there is no final answer
    feedback: str | None = None  # task-specific detail on a failure (e.g. a failing test), never the gold

    @property
    def correct(self) -> bool:
        return is_correct(self.reward)


class Task(ABC):
    """A benchmark with verifiable answers.

    Subclasses set `name`, `splits` and `row_fields` and implement `problem_from_row`,
    `extract_answer` and `is_correct`; file-backed tasks also set `files`.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]
    default_split: ClassVar[str] = "test"
    row_fields: ClassVar[tuple[str, ...]]  # the fields of one row of the task's own files
    text_fields: ClassVar[tuple[str, ...] | None] = None  # those that must be strings (None: every row field)
    files: ClassVar[dict[str, str]] = {}  # split -> file shipped under riselm/data/
    instruction: str = DEFAULT_INSTRUCTION
    retry_template: str = DEFAULT_RETRY

    def __init__(self, unparsable_reward: float = 0.0, retry_template: str | None = None):
        self.unparsable_reward = unparsable_reward
        if retry_template is not None:
            self.retry_template = retry_template

    # ---- data -------------------------------------------------------------------------------
    def load(self, split: str | None = None, data: str | Path | None = None, limit: int | None = None) -> list[Problem]:
        """Problems of a shipped split, of a user's own JSON/JSONL file (`data`), or of a hub dataset id."""
        split = split or self.default_split
        if data is not None:
            rows, source = self._rows_from_user_source(data, split)
        else:
            rows, source = self._rows_from_shipped(split), f"riselm/data/{self.files.get(split, '')}"
        if not rows:
            raise DataError(f"{source}: no problems in it; expected {self.name} rows holding {', '.join(map(repr, self.row_fields))}")
        if limit is not None:
            rows = rows[:limit]
        return [self.problem_of_row(row, i, split, source) for i, row in enumerate(rows)]

    def problem_of_row(self, row: dict, index: int, split: str, source: str) -> Problem:
        """A Problem from row `index` (0-based) of `source`, with a DataError naming source:line when invalid."""
        missing = [k for k in self.row_fields if k not in row]
        if missing:
            raise DataError(
                f"{source}:{index + 1}: missing field(s) {', '.join(map(repr, missing))}; "
                f"a {self.name} row holds {', '.join(map(repr, self.row_fields))}"
            )
        for name in self.row_fields if self.text_fields is None else self.text_fields:
            if not isinstance(row[name], str):
                raise DataError(f"{source}:{index + 1}: field {name!r} must be a string, got {type(row[name]).__name__} {row[name]!r:.40}")
        try:
            return self.problem_from_row(row, default_id=f"{split}-{index}")
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}:{index + 1}: not a valid {self.name} row: {e}") from None

    def _rows_from_shipped(self, split: str) -> list[dict]:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; known splits: {', '.join(self.splits)}")
        resource = importlib.resources.files("riselm") / "data" / self.files[split]
        with importlib.resources.as_file(resource) as path:
            return read_json_or_jsonl(path)

    def _rows_from_user_source(self, data: str | Path, split: str) -> tuple[list[dict], str]:
        path = Path(data)
        if path.exists():
            return read_json_or_jsonl(path), str(path)
        if isinstance(data, str) and "/" in data and not data.startswith((".", "/")):
            return _rows_from_hub(data, split), f"hub:{data}[{split}]"
        raise DataError(f"{data}: no such file (and not a hub dataset id of the form 'owner/name')")

    @abstractmethod
    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        """Build a Problem from one row of the task's own file format."""

    # ---- prompting --------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        """The first user message."""
        return f"{self.instruction}\n\n{problem.question}"

    def retry_message(self, problem: Problem, last: Score | None = None) -> str:
        """The user message after an attempt. Generic: it never reveals the answer."""
        return self.retry_template.format(question=problem.question)

    # ---- checking ---------------------------------------------------------------------------
    @abstractmethod
    def extract_answer(self, response: str) -> str | None:
        """The final answer in a model response, or None when it has none. Never raises."""

    @abstractmethod
    def is_correct(self, pred: str, problem: Problem) -> bool:
        """Whether an extracted answer is right for the problem."""

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are equivalent (groups answers for majority voting).

        Voting treats it as symmetric (a and b vote together when either direction says so) and
        groups by connected components, so it need not be symmetric or transitive (math-verify is
        neither); see riselm.evaluation.metrics.vote_groups.
        """
        return a.strip() == b.strip()

    def answer_key(self, answer: str) -> Hashable | None:
        """A canonical form of an answer, where the task has one: two answers that both have a key are
        the same answer exactly when their keys are equal (voting then groups by key, without calling
        `same_answer`). None (the default): no canonical form, voting compares with `same_answer`.
        A subclass that overrides `answer_key` must keep `same_answer` agreeing with it."""
        return None

    def score(self, problem: Problem, response: str) -> Score:
        """Extract and check a response: the one reward used by collection, training and evaluation."""
        pred = self.extract_answer(response)
        if pred is None:
            return Score(pred=None, reward=self.unparsable_reward)
        return Score(pred=pred, reward=1.0 if self.is_correct(pred, problem) else 0.0)

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Score]:
        """The Score of each (problem, response) pair, in order. Tasks that can score in parallel
        (code tasks run programs concurrently) override this; the result must equal scoring one by one."""
        if len(problems) != len(responses):
            raise ValueError(f"score_many: {len(problems)} problems but {len(responses)} responses")
        return [self.score(p, r) for p, r in zip(problems, responses)]

    def reward(self, problem: Problem, response: str) -> float:
        return self.score(problem, response).reward


def _rows_from_hub(dataset_id: str, split: str) -> list[dict]:
    """Load a hub dataset through `datasets` (needs a reachable hub; `owner/name` or `owner/name:config`)."""
    import datasets

    name, _, config = dataset_id.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown id, no such split: say which and why
        raise DataError(f"hub dataset {dataset_id!r} split {split!r} could not be loaded: {e}") from e
    return [dict(row) for row in ds]
