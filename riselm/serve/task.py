"""What a served request is to the rollout engine: a Problem, and a Task that knows when to stop.

A served question has no gold answer, so nothing is ever "correct". The engine's one early stop is
`RolloutSpec.stop_when_correct`; serving drives it with `ServedTask`, a wrapper around the real task
whose score says *stop here* instead of *right*: a turn scores 1 when its request has had its own
number of turns, when its last N answers agree (`stop_when_stable`, grouped by `vote_groups` with the
task's equivalence), or when the request was given up (timed out, client gone) so that it leaves the
batch at the next turn boundary. Everything else (the prompt, the retry message, the answer
extractor, `same_answer`, `answer_key`) is the wrapped task's. One `ServedTask` serves one `rollout`
call (it keeps the answers of that call's requests), so requests of one batch may ask for different
numbers of turns: the batch runs the largest, each episode ending at its own.

Rewards in the episodes it makes therefore mean "stopped", not "right": the server reports answers and
the vote only, never rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from riselm.evaluation.metrics import vote_groups
from riselm.tasks.base import Problem, Score, Task
from riselm.verify.math import last_boxed


class GenericTask(Task):
    """The task of a server started without `--task`: the user's message is the prompt as it is, the
    final answer is the last `\\boxed{}`, and the retry message is RISE's generic one."""

    name = "generic"
    splits = ()
    row_fields = ("question",)

    def prompt(self, problem: Problem) -> str:
        return problem.question  # no instruction added: the client writes its own prompt

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        return Problem(id=str(row.get("id", default_id)), question=row["question"], answer=str(row.get("answer", "")))

    def extract_answer(self, response: str) -> str | None:
        return last_boxed(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return False  # a served question has no gold answer


# meta keys of a served Problem
TURNS, STABLE, KEY = "riselm_turns", "riselm_stable", "riselm_key"


def served_problem(question: str, key: str, problem_id: str, turns: int, stable: int) -> Problem:
    """A request as a Problem: `key` is unique among the requests of a batch, `problem_id` seeds the
    conversations (riselm.rollout.engine.conversation_seed), `turns` is the request's K and `stable`
    its stop-when-stable N (0: never)."""
    return Problem(id=problem_id, question=question, answer="", meta={TURNS: turns, STABLE: stable, KEY: key})


TurnCallback = Callable[[str, int, str, "str | None"], None]  # (request key, 0-based turn, text, answer)


class ServedTask(Task):
    """`task` with a score that ends each served episode at the right turn (module docstring).

    on_turn(key, turn, text, answer) is called as each turn of each request is scored (for streaming);
    given_up(key) tells whether a request no longer wants its answer.
    """

    name = "served"  # the episodes' task name; the answers, retry and vote are the wrapped task's
    splits = ()
    row_fields = ()

    def __init__(self, task: Task, on_turn: TurnCallback | None = None, given_up: Callable[[str], bool] | None = None):
        super().__init__()
        self.task = task
        self.on_turn = on_turn
        self.given_up = given_up
        self.answers: dict[str, list[str | None]] = {}  # request key -> its answers so far

    # the wrapped task's own behaviour
    def prompt(self, problem: Problem) -> str:
        return self.task.prompt(problem)

    def retry_message(self, problem: Problem, last: Score | None = None) -> str:
        return self.task.retry_message(problem, last)

    def extract_answer(self, response: str) -> str | None:
        return self.task.extract_answer(response)

    def same_answer(self, a: str, b: str) -> bool:
        return self.task.same_answer(a, b)

    def answer_key(self, answer: str) -> Hashable | None:
        return self.task.answer_key(answer)

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        return self.task.problem_from_row(row, default_id)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return False

    # the stopping score
    def score(self, problem: Problem, response: str) -> Score:
        key = problem.meta[KEY]
        pred = self.task.extract_answer(response)
        answers = self.answers.setdefault(key, [])
        answers.append(pred)
        if self.on_turn is not None:
            self.on_turn(key, len(answers) - 1, response, pred)
        stop = (
            len(answers) >= problem.meta[TURNS]
            or stable(answers, problem.meta[STABLE], self.task)
            or (self.given_up is not None and self.given_up(key))
        )
        return Score(pred=pred, reward=1.0 if stop else 0.0)

    def score_many(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Score]:
        return [self.score(p, r) for p, r in zip(problems, responses, strict=True)]


def stable(answers: Sequence[str | None], n: int, task: Task) -> bool:
    """Whether the last `n` answers (n >= 2) are all there and all the same answer for the task."""
    if n < 2 or len(answers) < n:
        return False
    last = answers[-n:]
    return None not in last and len(vote_groups(last, task.same_answer, task.answer_key)) == 1
