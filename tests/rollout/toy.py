"""A toy task and a scripted generator for rollout tests that need no model."""

from __future__ import annotations

import re

from riselm.generation.base import Completion
from riselm.tasks.base import Problem, Task


class ToyTask(Task):
    """Gold answers are integers; a response answers with the last `\\boxed{N}`."""

    name = "toy"
    splits = ("test",)
    row_fields = ("question", "answer")

    def problem_from_row(self, row, default_id):
        return Problem(id=row.get("id", default_id), question=row["question"], answer=str(row["answer"]))

    def extract_answer(self, response):
        found = re.findall(r"\\boxed\{(-?\d+)\}", response)
        return found[-1] if found else None

    def is_correct(self, pred, problem):
        return int(pred) == int(problem.answer)


def toy_problems(n):
    return [Problem(id=f"p{i}", question=f"What is {i}+{i}?", answer=str(2 * i)) for i in range(n)]


class Scripted:
    """Answers by a function of (conversation, sample index); records every call."""

    def __init__(self, respond, name="scripted"):
        self.respond = respond
        self.name = name
        self.calls = []

    def generate(self, conversations, params):
        self.calls.append(([list(c) for c in conversations], params))
        return [[Completion(self.respond(c, s), num_tokens=3) for s in range(params.n)] for c in conversations]


def attempt_number(conversation):
    """1 for the first turn, 2 after one retry message, ..."""
    return sum(1 for m in conversation if m["role"] == "assistant") + 1


def question_value(conversation):
    return int(re.search(r"What is (\d+)\+", conversation[0]["content"]).group(1))
