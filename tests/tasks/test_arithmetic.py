"""Arithmetic: deterministic, disjoint splits; short, true step-by-step solutions; integer scoring."""

from __future__ import annotations

import json
import random
import re

import pytest

from riselm.jsonl import DataError
from riselm.tasks import get_task
from riselm.tasks.arithmetic import ArithmeticTask, Expression, evaluate, parse_expression, solve


def test_splits_are_deterministic_sized_and_disjoint():
    task = ArithmeticTask(train_size=3000, test_size=300)
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (3000, 300)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 3000
    again = ArithmeticTask(train_size=3000, test_size=300)
    assert again.load("test") == test and again.load("train") == train
    assert ArithmeticTask(seed=1, train_size=3000, test_size=300).load("test") != test
    assert ArithmeticTask(train_size=10, test_size=300).load("test") == test  # test does not depend on train_size
    assert task.load("test", limit=5) == test[:5]


def test_default_problems_are_short_and_their_solutions_score():
    task = ArithmeticTask()
    problems = task.load("train", limit=2000)
    assert all(re.fullmatch(r"\d{1,3}\+\d{1,3}=\?", p.question) for p in problems)
    assert max(len(p.solution) for p in problems) < 80  # a tiny character-level model learns these
    assert len(task.prompt(problems[0])) < 50
    assert all(task.score(p, p.solution).correct for p in problems)


def test_solution_format():
    assert solve(parse_expression("478+356=?")) == "478+356:\n8+6=14, 4\n7+5+1=13, 34\n4+3+1=8, 834\n\\boxed{834}"
    assert solve(parse_expression("472-356")) == "472-356:\n12-6=6, 6\n7-1-5=1, 16\n4-3=1, 116\n\\boxed{116}"
    assert solve(parse_expression("47*36")) == "47*36:\n47*6=282\n47*30=1410\n282+1410=1692\n\\boxed{1692}"
    assert solve(parse_expression("12-60")) == "12-60=-(60-12):\n10-2=8, 8\n6-1-1=4, 48\n\\boxed{-48}"
    assert solve(parse_expression("500-499")).splitlines()[-2] == "5-1-4=0, 1"  # leading zeros dropped at the end
    assert solve(parse_expression("978+356")).splitlines()[-2] == "9+3+1=13, 1334"  # the last carry


def test_every_step_of_every_solution_is_true():
    """Random mixed problems: each `lhs=rhs` step holds and the box holds the value."""
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(2, 4)
        numbers = tuple(rng.randint(0, 999) for _ in range(n))
        expression = Expression(numbers, tuple(rng.choice("+-*") for _ in range(n - 1)))
        value = evaluate(expression)
        assert value == eval(str(expression))
        lines = solve(expression).splitlines()
        assert lines[-1] == f"\\boxed{{{value}}}"
        for line in lines[:-1]:
            for equation in re.findall(r"[-\d+*()]+=[-\d+*()]+", line):
                lhs, rhs = equation.split("=")
                assert eval(lhs) == eval(rhs), (str(expression), line)


def test_difficulty_knobs():
    task = ArithmeticTask(digits=2, operands=3, ops="+-*", train_size=500, test_size=50)
    problems = task.load("train")
    assert all(re.fullmatch(r"\d{1,2}[-+*]\d{1,2}[-+*]\d{1,2}=\?", p.question) for p in problems)
    assert {op for p in problems for op in re.findall(r"[-+*]", p.question)} == set("+-*")
    assert all(task.score(p, p.solution).correct for p in problems)


def test_small_spaces_are_enumerated_and_overfull_requests_refused():
    task = ArithmeticTask(digits=1, train_size=90, test_size=10)
    problems = task.load("train") + task.load("test")
    assert len({p.question for p in problems}) == 100  # every 1-digit sum exactly once
    with pytest.raises(ValueError, match="only 100 distinct problems"):
        ArithmeticTask(digits=1, train_size=100)
    # without sizes, a small space is split a tenth for test, the rest for train
    assert ArithmeticTask(digits=1).sizes == {"test": 10, "train": 90}
    assert ArithmeticTask(digits=2).sizes == {"test": 1000, "train": 9000}
    assert ArithmeticTask().sizes == {"test": 1000, "train": 10000}
    with pytest.raises(ValueError, match="subset"):
        ArithmeticTask(ops="/")


def test_integer_scoring():
    task = ArithmeticTask()
    problem = task.load("test", limit=1)[0]
    answer = problem.answer
    assert task.score(problem, f"\\boxed{{{answer}}}").correct
    assert task.score(problem, f"\\boxed{{ {answer}. }}").correct
    assert not task.score(problem, f"\\boxed{{{int(answer) + 1}}}").correct
    assert not task.score(problem, f"\\boxed{{{answer}.5}}").correct
    assert task.score(problem, f"{answer}").pred is None
    assert task.same_answer("12", "012") and not task.same_answer("12", "13")


def test_answer_key_is_a_canonical_form_of_same_answer():
    """Voting groups by the key (riselm.evaluation.metrics.vote_groups): it must agree with same_answer."""
    task = ArithmeticTask()
    answers = ["12", "012", " 12.", "13", "-12", "12.5", "x", " x", "twelve"]
    for a in answers:
        for b in answers:
            assert (task.answer_key(a) == task.answer_key(b)) == task.same_answer(a, b), (a, b)
    assert task.answer_key("012") == task.answer_key("12") != task.answer_key("13")


def test_retry_restates_the_question_without_the_answer():
    task = ArithmeticTask()
    problem = task.load("test", limit=1)[0]
    message = task.retry_message(problem)
    assert problem.question in message and problem.answer not in message.replace(problem.question, "")
    assert len(message) < 40


def test_user_rows(tmp_path):
    path = tmp_path / "sums.jsonl"
    rows = [{"question": "12+7=?", "answer": 19}, {"question": "What is six?", "answer": "6"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = ArithmeticTask().load(data=path)
    assert first.answer == "19" and first.solution.endswith("\\boxed{19}")  # written from the expression
    assert second.solution is None
    path.write_text(json.dumps({"question": "12+7", "answer": "20"}) + "\n")
    with pytest.raises(DataError, match=r"sums\.jsonl:1: .*wrong"):
        ArithmeticTask().load(data=path)
    path.write_text(json.dumps({"question": "x", "answer": "1.5"}) + "\n")
    with pytest.raises(DataError, match=r"sums\.jsonl:1"):
        ArithmeticTask().load(data=path)


def test_registry_options():
    task = get_task("arithmetic", digits=2, ops="-", train_size=100, test_size=10)
    assert len(task.load("train")) == 100
    assert all("-" in p.question for p in task.load("test"))
