"""MATH (Hendrycks et al.): competition problems whose answers are LaTeX expressions.

Splits: `train` (7,500), `test` (the full 5,000; the default), `math500` (the MATH-500 subset most
papers report today) and `rise1000` (the 1,000-problem subset the RISE reference code evaluates on).
Rows hold `problem` and `solution`; the gold is the last `\\boxed{}` of the solution, or the row's
`answer` field where there is one (MATH-500). Answers are compared with `math_equivalent`
(Hendrycks normalisation, then math-verify), which also groups answers for majority voting.
"""

from __future__ import annotations

from riselm.tasks.base import Problem, Task
from riselm.verify.math import last_boxed, math_equivalent

# Errata of the original data: two train solutions end in an empty \boxed{}; both answers are 0
# ("there are \boxed{} primes in that range", "so the answer is \boxed{}").
_EMPTY_BOX_FIXES = {"train/number_theory/7115.json": "0", "train/number_theory/7117.json": "0"}


class MathTask(Task):
    name = "math"
    splits = ("train", "test", "math500", "rise1000")
    default_split = "test"
    row_fields = ("problem", "solution")
    files = {
        "train": "math/math_train.jsonl.gz",
        "test": "math/math_test.jsonl.gz",
        "math500": "math/math500_test.jsonl.gz",
        "rise1000": "math/rise1000_test.jsonl.gz",
    }

    def __init__(self, verify_timeout: float = 5.0, **options):
        """`verify_timeout`: seconds math-verify may spend on one comparison before it counts as wrong."""
        super().__init__(**options)
        self.verify_timeout = verify_timeout

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        problem_id = str(row.get("unique_id") or row.get("id") or default_id)
        solution = row["solution"]
        if problem_id in _EMPTY_BOX_FIXES:
            solution = solution.replace("\\boxed{}", f"\\boxed{{{_EMPTY_BOX_FIXES[problem_id]}}}")
        gold = row.get("answer") or last_boxed(solution)
        if not gold:
            raise ValueError("the solution has no \\boxed{} final answer and the row has no 'answer'")
        meta = {key: row[key] for key in ("level", "type", "subject") if key in row}
        return Problem(id=problem_id, question=row["problem"], answer=str(gold), solution=solution, meta=meta)

    def extract_answer(self, response: str) -> str | None:
        return last_boxed(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return math_equivalent(problem.answer, pred, timeout=self.verify_timeout)

    def same_answer(self, a: str, b: str) -> bool:
        return math_equivalent(a, b, timeout=self.verify_timeout)
