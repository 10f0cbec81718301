"""GSM8K: gold parsing (thousands separators), boosting solutions, scoring."""

from __future__ import annotations

import json

import pytest

from riselm.jsonl import DataError
from riselm.tasks import get_task
from riselm.tasks.gsm8k import GSM8KTask, split_gsm8k_answer
from riselm.verify.math import parse_number


@pytest.fixture(scope="module")
def test_problems():
    return GSM8KTask().load("test")


def test_every_test_gold_is_a_number(test_problems):
    assert len(test_problems) == 1319
    assert all(parse_number(p.answer) is not None for p in test_problems)
    assert all("," not in p.answer for p in test_problems)
    assert len({p.id for p in test_problems}) == 1319


def test_every_train_gold_is_a_number():
    problems = GSM8KTask().load("train")
    assert len(problems) == 7473
    assert all(parse_number(p.answer) is not None and "," not in p.answer for p in problems)


def test_thousands_separators_are_removed_from_golds(test_problems):
    """14 test golds are written like "#### 1,600"; the reference parsed them as 1."""
    task = GSM8KTask()
    rows = task._rows_from_shipped("test")
    with_commas = [(row, p) for row, p in zip(rows, test_problems) if "," in row["answer"].rpartition("####")[2]]
    assert len(with_commas) == 14
    for row, problem in with_commas:
        written = row["answer"].rpartition("####")[2].strip()
        assert problem.answer == written.replace(",", "")
        assert task.score(problem, f"so \\boxed{{{written}}}").correct  # "1,600" and "1600" are both right


def test_solution_is_rewritten_for_boosting(test_problems):
    problem = test_problems[0]  # Janet's ducks: "... = <<16-3-4=9>>9 duck eggs ... #### 18"
    assert problem.answer == "18"
    assert "<<" not in problem.solution and "####" not in problem.solution
    assert "16 - 3 - 4 = 9 duck eggs" in problem.solution
    assert problem.solution.endswith("The final answer is \\boxed{18}.")
    task = GSM8KTask()
    assert all(task.score(p, p.solution).correct for p in test_problems)  # every gold solution scores 1


def test_scoring_is_numeric_and_on_the_last_box(test_problems):
    task = GSM8KTask()
    problem = test_problems[0]
    assert task.score(problem, "\\boxed{17} no wait \\boxed{18}").reward == 1.0
    assert task.score(problem, "\\boxed{18.00}").reward == 1.0
    assert task.score(problem, "\\boxed{\\$18}").reward == 1.0
    assert task.score(problem, "\\boxed{18} no wait \\boxed{17}").reward == 0.0
    assert task.score(problem, "\\boxed{eighteen}").reward == 0.0
    unboxed = task.score(problem, "The answer is 18.")
    assert unboxed.pred is None and unboxed.reward == 0.0


def test_unparsable_reward_option():
    """The reference gives -1 to a response without a final answer on GSM8K."""
    task = get_task("gsm8k", unparsable_reward=-1.0)
    problem = task.load("test", limit=1)[0]
    assert task.reward(problem, "I don't know") == -1.0
    assert task.reward(problem, "\\boxed{3}") == 0.0


def test_same_answer_groups_equal_numbers():
    task = GSM8KTask()
    assert task.same_answer("1,600", "1600.0")
    assert not task.same_answer("1600", "160")
    assert task.same_answer("x", " x")
    assert not task.same_answer("x", "18")


def test_large_golds_are_compared_exactly():
    """Relative 1e-6 made 1,000,001 right for a gold of 1,000,000 (2 test and 16 train golds are that large)."""
    task = GSM8KTask()
    problem = task.problem_from_row({"question": "q", "answer": "#### 1,000,000"}, "x")
    assert task.score(problem, "\\boxed{1,000,000}").correct and task.score(problem, "\\boxed{1000000.0}").correct
    for wrong in ("1000001", "999,999", "1000000.5"):
        assert not task.score(problem, f"\\boxed{{{wrong}}}").correct, wrong
        assert not task.same_answer(wrong, "1000000") and not task.same_answer("1000000", wrong)
    assert task.answer_key("1,000,001") != task.answer_key("1000000") == task.answer_key("1000000.00")


@pytest.mark.parametrize(
    "answers",
    [
        ["1,600", "1600.0", "$1600", "1601", "1600.5", "x", " x", "18", "3/4", "0.75", "0.750", "twelve"],
    ],
)
def test_answer_key_is_a_canonical_form_of_same_answer(answers):
    task = GSM8KTask()
    for a in answers:
        for b in answers:
            assert (task.answer_key(a) == task.answer_key(b)) == task.same_answer(a, b), (a, b)


def test_split_gsm8k_answer_rejects_rows_without_a_final_number():
    assert split_gsm8k_answer("2 + 2 = <<2+2=4>>4\n#### 4") == ("2 + 2 = 4", "4")
    with pytest.raises(ValueError, match="####"):
        split_gsm8k_answer("no final line")
    with pytest.raises(ValueError, match="not a number"):
        split_gsm8k_answer("work\n#### many")


def test_user_file_with_a_bad_row_names_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "four"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"mine\.jsonl:2: .*####"):
        GSM8KTask().load(data=path)
    path.write_text(json.dumps(rows[0]) + "\n")
    [problem] = GSM8KTask().load(data=path)
    assert problem.answer == "2"


def test_unicode_decimal_digits_are_the_number_they_write():
    """Decided and documented (parse_number): full-width and Arabic-Indic digits write the same value."""
    task = get_task("gsm8k")
    problem = task.problem_from_row({"question": "q", "answer": "#### 42"}, "x")
    for response in ("\\boxed{42}", "\\boxed{４２}", "\\boxed{٤٢}"):
        assert task.score(problem, response).correct, response
    assert task.same_answer("４２", "42") and not task.same_answer("４３", "42")
