"""Arithmetic: a synthetic task generated from a seed, small enough for a character-level model on a CPU.

A problem is an expression such as `478+356=?`. Its solution works one operation at a time
(multiplications first, then left to right); each operation opens with a line naming it and is done
in short steps a small model can imitate:

    478+356:             472-356:              47*36:
    8+6=14, 4            12-6=6, 6             47*6=282
    7+5+1=13, 34         7-1-5=1, 16           47*30=1410
    4+3+1=8, 834         4-3=1, 116            282+1410=1692
    \\boxed{834}          \\boxed{116}           \\boxed{1692}

Addition and subtraction go column by column from the right (carries and borrows written out), with
the digits of the result so far after the comma; multiplication adds one partial product per digit.
A negative intermediate is rewritten first (`-333+789=789-333:`, `123-456=-(456-123):`).

Difficulty knobs: `digits` (operands have up to that many digits), `operands` and `ops` (a subset of
"+-*"). Train and test are drawn from one seeded stream, test first, with no problem in both.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path

from riselm.tasks.base import Problem, Task
from riselm.verify.math import last_boxed

_EXPRESSION = re.compile(r"\s*(\d+(?:\s*[-+*]\s*\d+)+)\s*(?:=\s*\?)?\s*")


@dataclass(frozen=True)
class Expression:
    numbers: tuple[int, ...]  # the operands, left to right (never negative)
    ops: tuple[str, ...]  # the operators between them, each "+", "-" or "*"

    def __str__(self) -> str:
        return "".join(f"{n}{op}" for n, op in zip(self.numbers, self.ops)) + str(self.numbers[-1])


class ArithmeticTask(Task):
    name = "arithmetic"
    splits = ("train", "test")
    row_fields = ("question", "answer")
    text_fields = ("question",)  # the answer may be written as a JSON integer
    instruction = "Compute. Answer in \\boxed{}."
    retry_template = "Incorrect. Try again: {question}"

    def __init__(
        self,
        digits: int = 3,
        operands: int = 2,
        ops: str = "+",
        seed: int = 0,
        train_size: int | None = None,
        test_size: int | None = None,
        **options,
    ):
        """Problems with `operands` numbers of up to `digits` digits joined by operators drawn from `ops`.

        Split sizes default to 1,000 test and 10,000 train problems, or fewer when the difficulty
        allows fewer distinct problems (a tenth of them for test, the rest for train).
        """
        super().__init__(**options)
        if digits < 1 or operands < 2 or (train_size or 0) < 0 or (test_size or 0) < 0:
            raise ValueError("arithmetic needs digits >= 1, operands >= 2 and non-negative split sizes")
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
        self.digits, self.operands, self.ops, self.seed = digits, operands, "".join(sorted(set(ops))), seed
        distinct = 10 ** (digits * operands) * len(self.ops) ** (operands - 1)
        test_size = min(1000, distinct // 10) if test_size is None else test_size
        train_size = min(10000, distinct - test_size) if train_size is None else train_size
        self.sizes = {"train": train_size, "test": test_size}
        if train_size + test_size > distinct:
            raise ValueError(
                f"digits={digits}, operands={operands}, ops={ops!r} give only {distinct} distinct problems; "
                f"ask for train_size + test_size <= {distinct}"
            )
        self._distinct = distinct
        self._generated: dict[str, list[Expression]] | None = None

    def load(self, split: str | None = None, data: str | Path | None = None, limit: int | None = None) -> list[Problem]:
        """Generated problems of `split`, or the problems of a JSON/JSONL file of question/answer rows."""
        if data is not None:
            return super().load(split, data, limit)
        split = split or self.default_split
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; known splits: {', '.join(self.splits)}")
        expressions = self._splits()[split][:limit]
        return [self._problem_from_expression(e, f"{split}-{i}") for i, e in enumerate(expressions)]

    def problem_from_row(self, row: dict, default_id: str) -> Problem:
        """A row of a user's file: `question`, an integer `answer` and optionally `solution`.

        Without a solution, one is written when the question is a plain expression ("12+7=?").
        """
        answer = int(str(row["answer"]).strip())  # ValueError for a non-integer answer
        solution = row.get("solution")
        expression = parse_expression(row["question"])
        if expression is not None and evaluate(expression) != answer:
            raise ValueError(f"answer {answer} is wrong: {expression} = {evaluate(expression)}")
        if solution is None and expression is not None:
            solution = solve(expression)
        problem_id = str(row.get("id", default_id))
        return Problem(id=problem_id, question=row["question"], answer=str(answer), solution=solution)

    def extract_answer(self, response: str) -> str | None:
        return last_boxed(response)

    def is_correct(self, pred: str, problem: Problem) -> bool:
        value = _integer(pred)
        return value is not None and value == int(problem.answer)

    def same_answer(self, a: str, b: str) -> bool:
        return self.answer_key(a) == self.answer_key(b)

    def answer_key(self, answer: str) -> tuple:
        """An integer answer's value ("834", " 834."), else the text."""
        value = _integer(answer)
        return ("integer", value) if value is not None else ("text", answer.strip())

    # ---- generation -----------------------------------------------------------------------------
    def _problem_from_expression(self, expression: Expression, problem_id: str) -> Problem:
        return Problem(
            id=problem_id,
            question=f"{expression}=?",
            answer=str(evaluate(expression)),
            solution=solve(expression),
        )

    def _splits(self) -> dict[str, list[Expression]]:
        """Test then train, drawn without repetition from one stream seeded by `seed` (cached)."""
        if self._generated is None:
            rng = random.Random(self.seed)
            wanted = self.sizes["test"] + self.sizes["train"]
            if 2 * wanted > self._distinct:  # most of the space: shuffle it whole rather than reject draws
                numbers = itertools.product(range(10**self.digits), repeat=self.operands)
                ops = list(itertools.product(self.ops, repeat=self.operands - 1))
                drawn = [Expression(n, o) for n, o in itertools.product(numbers, ops)]
                rng.shuffle(drawn)
                drawn = drawn[:wanted]
            else:
                unique: dict[Expression, None] = {}
                while len(unique) < wanted:
                    unique.setdefault(self._random_expression(rng))
                drawn = list(unique)
            test = self.sizes["test"]
            self._generated = {"test": drawn[:test], "train": drawn[test:]}
        return self._generated

    def _random_expression(self, rng: random.Random) -> Expression:
        top = 10**self.digits - 1
        numbers = tuple(rng.randint(0, top) for _ in range(self.operands))
        ops = tuple(rng.choice(self.ops) for _ in range(self.operands - 1))
        return Expression(numbers, ops)


# ---- expressions ----------------------------------------------------------------------------------
def parse_expression(text: str) -> Expression | None:
    """The expression in a question such as "478+356=?", or None when it is not a plain expression."""
    match = _EXPRESSION.fullmatch(text) if isinstance(text, str) else None
    if not match:
        return None
    tokens = re.findall(r"\d+|[-+*]", match.group(1))
    return Expression(tuple(int(t) for t in tokens[::2]), tuple(tokens[1::2]))


def evaluate(expression: Expression) -> int:
    """The value, multiplications first, then additions and subtractions from left to right."""
    return _reduce(expression, lambda x, op, y, value: None)


def solve(expression: Expression) -> str:
    """The step-by-step solution, ending in `\\boxed{value}` (see the module docstring)."""
    lines: list[str] = []
    value = _reduce(expression, lambda x, op, y, result: lines.extend(_operation_steps(x, op, y)))
    return "\n".join(lines + [f"\\boxed{{{value}}}"])


def _reduce(expression: Expression, on_operation) -> int:
    """Evaluate one operation at a time in solving order, calling `on_operation(x, op, y, result)`."""
    numbers, ops = list(expression.numbers), list(expression.ops)
    while ops:
        i = ops.index("*") if "*" in ops else 0
        x, op, y = numbers[i], ops[i], numbers[i + 1]
        result = x * y if op == "*" else x + y if op == "+" else x - y
        on_operation(x, op, y, result)
        numbers[i : i + 2] = [result]
        del ops[i]
    return numbers[0]


def _operation_steps(x: int, op: str, y: int) -> list[str]:
    """The lines of one operation; `y` is never negative, `x` may be (an earlier result)."""
    if op == "*":  # multiplications come first, so both operands are non-negative
        return [f"{x}*{y}:", *_multiplication(x, y)]
    head = f"{x}{op}{y}"
    if op == "+" and x >= 0:
        return [f"{head}:", *_column_addition(x, y)]
    if op == "-" and x >= 0:
        if x >= y:
            return [f"{head}:", *_column_subtraction(x, y)]
        return [f"{head}=-({y}-{x}):", *_column_subtraction(y, x)]
    a = -x  # x < 0
    if op == "-":
        return [f"{head}=-({a}+{y}):", *_column_addition(a, y)]
    if y >= a:
        return [f"{head}={y}-{a}:", *_column_subtraction(y, a)]
    return [f"{head}=-({a}-{y}):", *_column_subtraction(a, y)]


def _columns(x: int, y: int) -> list[tuple[int, int]]:
    """Digit pairs of x and y from the right, the shorter number padded with zeros."""
    width = max(len(str(x)), len(str(y)))
    return list(zip(map(int, reversed(str(x).zfill(width))), map(int, reversed(str(y).zfill(width)))))


def _column_addition(x: int, y: int) -> list[str]:
    lines, digits, carry = [], "", 0
    columns = _columns(x, y)
    for i, (dx, dy) in enumerate(columns):
        total = dx + dy + carry
        last = i == len(columns) - 1
        digits = (str(total) if last else str(total % 10)) + digits
        lines.append(f"{dx}+{dy}{'+1' if carry else ''}={total}, {digits}")
        carry = total // 10
    return lines


def _column_subtraction(x: int, y: int) -> list[str]:
    """x - y for x >= y >= 0; a borrowed ten shows as a leading 1 on the top digit."""
    lines, digits, borrow = [], "", 0
    columns = _columns(x, y)
    for i, (dx, dy) in enumerate(columns):
        top = dx + 10 if dx - borrow < dy else dx
        diff = top - borrow - dy
        digits = str(diff) + digits
        shown = str(int(digits)) if i == len(columns) - 1 else digits  # the last line ends in the value
        lines.append(f"{top}{'-1' if borrow else ''}-{dy}={diff}, {shown}")
        borrow = 1 if top > dx else 0
    return lines


def _multiplication(x: int, y: int) -> list[str]:
    """One partial product per non-zero digit of y, then their sum."""
    partials = [(f"{d}{'0' * place}", x * d * 10**place) for place, d in enumerate(map(int, reversed(str(y)))) if d]
    if not partials:
        return [f"{x}*0=0"]
    lines = [f"{x}*{factor}={product}" for factor, product in partials]
    if len(partials) > 1:
        lines.append("+".join(str(p) for _, p in partials) + f"={x * y}")
    return lines


def _integer(text: str) -> int | None:
    """An integer answer written plainly ("834", "-12", " 834."), or None."""
    match = re.fullmatch(r"\s*(-?\d{1,100})\.?\s*", text) if isinstance(text, str) else None
    return int(match.group(1)) if match else None
