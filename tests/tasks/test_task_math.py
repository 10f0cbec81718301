"""MATH: gold extraction on every shipped split, ids, and equivalence-based scoring."""

from __future__ import annotations

import pytest

from riselm.tasks import get_task
from riselm.tasks.math import MathTask
from riselm.verify.math import last_boxed

SPLIT_SIZES = {"train": 7500, "test": 5000, "math500": 500, "rise1000": 1000}


@pytest.fixture(scope="module")
def task():
    return MathTask()


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_every_gold_extracts_and_every_gold_solution_scores(task, split):
    problems = task.load(split)
    assert len(problems) == SPLIT_SIZES[split]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.answer for p in problems)
    assert all(task.score(p, p.solution).correct for p in problems)  # solution's own box vs the gold


def test_empty_boxes_of_the_original_train_data_are_fixed(task):
    """Two train solutions end in `\\boxed{}` (errata of MATH); both answers are 0."""
    ids = ("train/number_theory/7115.json", "train/number_theory/7117.json")
    fixed = {p.id: p for p in task.load("train") if p.id in ids}
    assert len(fixed) == 2
    for problem in fixed.values():
        assert problem.answer == "0"
        assert "\\boxed{}" not in problem.solution and last_boxed(problem.solution) == "0"


def test_ids_and_meta(task):
    first = task.load("test", limit=1)[0]
    assert first.id == "test/algebra/1.json" and first.meta == {"level": "Level 3", "type": "Algebra"}
    first500 = task.load("math500", limit=1)[0]
    assert first500.id == "test/precalculus/807.json"
    assert first500.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"  # the row's `answer` field
    assert task.load("rise1000", limit=2)[1].id == "rise1000-1"  # no id in those rows
    assert MathTask.default_split == "test"


def test_scoring_uses_math_equivalence(task):
    problem = task.load("math500", limit=1)[0]  # (3, pi/2)
    assert task.score(problem, "so $\\boxed{(3,\\frac{\\pi}{2})}$").correct
    assert task.score(problem, "\\boxed{\\left(3, \\dfrac{\\pi}{2}\\right)}").correct
    assert not task.score(problem, "\\boxed{(3, \\pi)}").correct
    assert task.score(problem, "I give up").pred is None
    half = problem.__class__(id="x", question="?", answer="\\frac{1}{2}")
    assert task.is_correct("0.5", half) and not task.is_correct("0.25", half)


def test_same_answer_groups_equivalent_answers(task):
    assert task.same_answer("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}")
    assert task.same_answer("\\frac12", "0.5")
    assert not task.same_answer("\\frac12", "\\frac13")


def test_options_through_the_registry():
    task = get_task("math", unparsable_reward=-1.0, verify_timeout=2.0)
    assert task.verify_timeout == 2.0 and task.unparsable_reward == -1.0
