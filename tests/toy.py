"""The one toy task of the tests: integer (or fraction) answers in the last \\boxed{}, no data files.

The one fake model is riselm.generation.fake.ScriptedGenerator; the helpers below read a
conversation the way scripted responses need to (which attempt this is, which question).
"""

from __future__ import annotations

import re

from riselm.tasks.base import Problem, Task
from riselm.verify.math import last_boxed


class ToyTask(Task):
    """A response answers with its last `\\boxed{...}`; an answer without a digit counts as none."""

    name = "toy"
    splits = ("test",)
    row_fields = ("question", "answer")

    def problem_from_row(self, row, default_id):
        return Problem(id=row.get("id", default_id), question=row["question"], answer=str(row["answer"]))

    def extract_answer(self, response):
        answer = last_boxed(response)
        return answer.strip() if answer and re.search(r"\d", answer) else None

    def is_correct(self, pred, problem):
        try:
            return float(pred) == float(problem.answer)
        except ValueError:
            return pred == problem.answer


def toy_problems(n: int) -> list[Problem]:
    """p0..p{n-1}: 'What is i+i?' with answer 2i."""
    return [Problem(id=f"p{i}", question=f"What is {i}+{i}?", answer=str(2 * i)) for i in range(n)]


def attempt_number(conversation) -> int:
    """1 for the first turn, 2 after one retry message, ..."""
    return sum(1 for m in conversation if m["role"] == "assistant") + 1


def question_value(conversation) -> int:
    """i of the toy question 'What is i+i?'."""
    first_question = next(m["content"] for m in conversation if m["role"] == "user")
    return int(re.search(r"What is (\d+)\+", first_question).group(1))
