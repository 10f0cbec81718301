"""GSM8K: grade-school math word problems with a numeric final answer.

Rows hold `question` and `answer`, where `answer` is a worked solution with calculator marks
(`<<48/2=24>>`) ending in a line `#### N`. The gold is N with its thousands separators removed (the RISE
reference parsed "#### 1,600" as 1 and could never score those 93 problems). A response is scored on its
last `\\boxed{}`, compared by exact value (`numbers_equal`: no tolerance, so 1000001 is not 1000000).
"""

from __future__ import annotations

import re

from riselm.tasks.base import Problem, Task
from riselm.verify.math import last_boxed, numbers_equal, parse_number, written_value

_CALCULATOR_MARK = re.compile(r"<<[^<>]*>>")


class GSM8KTask(Task):
    name = "gsm8k"
    splits = ("train", "test")
    row_fields = ("question", "answer")
    files = {"train": "gsm8k/train.jsonl.gz", "test": "gsm8k/test.jsonl.gz"}

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        work, gold = split_gsm8k_answer(row["answer"])
        return Problem(
            id=str(row.get("id", default_id)),
            question=row["question"],
            answer=gold,
            solution=f"{work}\nThe final answer is \\boxed{{{gold}}}.",
        )

    def extract_answer(self, response: str) -> str | None:
        return last_boxed(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        return numbers_equal(pred, problem.answer)

    def same_answer(self, a: str, b: str) -> bool:
        """Numerically equal answers ("1,600" and "1600.00") vote together; others by their text."""
        return self.answer_key(a) == self.answer_key(b)

    def answer_key(self, answer: str) -> tuple:
        """The canonical form: a number's exact value ("1,600", "1600.00", "$1600" -> 1600), else the text."""
        value = written_value(answer)
        return ("number", value) if value is not None else ("text", answer.strip())


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """(the worked solution without calculator marks, the gold number without separators).

    Raises ValueError when there is no `#### N` line or N is not a number.
    """
    if not isinstance(answer, str) or "####" not in answer:
        raise ValueError("'answer' must end with a '#### N' line giving the final number")
    work, _, final = answer.rpartition("####")
    gold = final.strip().replace(",", "")
    if parse_number(gold) is None:
        raise ValueError(f"the final answer after '####' is not a number: {final.strip()!r}")
    return _CALCULATOR_MARK.sub("", work).strip(), gold
