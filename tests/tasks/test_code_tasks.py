"""Code tasks: MBPP and HumanEval checked in the sandbox, CoNaLa by canonical match (riselm.tasks.code)."""

from __future__ import annotations

import json
import re

import pytest

from riselm.jsonl import DataError
from riselm.tasks import get_task, task_names
from riselm.tasks.base import DEFAULT_RETRY, Score
from riselm.tasks.code import (
    CODE_TASKS,
    CoNaLaTask,
    HumanEvalTask,
    MBPPTask,
    canonical_code,
    conala_bleu,
    extract_code,
)
from riselm.verify.sandbox import Limits

# MBPP reference solutions that fail their own tests. None do: all 974 (every split) and all 257
# sanitized ones pass in the sandbox (checked in full by the slow tests below). Were one to fail
# for a reason of the data (not of the sandbox), it would be listed here with that reason.
MBPP_KNOWN_FAILURES: dict[str, str] = {}


def fenced(code: str, prose: str = "Here is my solution:") -> str:
    return f"{prose}\n\n```python\n{code}\n```\n\nThis passes the tests."


def broken(code: str) -> str:
    """The reference with every `return` answering a constant no test expects."""
    return re.sub(r"\breturn\b[^\n]*", "return '__broken__'", code)


@pytest.fixture(scope="module")
def humaneval():
    return HumanEvalTask()


@pytest.fixture(scope="module")
def mbpp():
    return MBPPTask()


# ---- extraction and canonical form ---------------------------------------------------------------


@pytest.mark.parametrize(
    "response, expected",
    [
        (fenced("def f():\n    return 1"), "def f():\n    return 1"),
        ("```py\nx = 1\n```", "x = 1"),
        ("```Python3\nx = 2\n```", "x = 2"),
        ("Use\n```python\nf(1)\n```\nwith\n```python\ndef f(x):\n    return x\n```", "def f(x):\n    return x"),
        ("```\nuntagged = True\n```", "untagged = True"),
        ("```bash\npip install x\n```\n```python\ny = 3\n```", "y = 3"),
        ("1. Step:\n   ```python\n   def g():\n       return 2\n   ```", "def g():\n    return 2"),
        ("```python\ndef cut_off(x):\n    return", "def cut_off(x):\n    return"),  # truncated answer
        ("def plain(x):\n    return x\n", "def plain(x):\n    return x"),
        ("", None),
        ("   \n  ", None),
        ("```bash\nls -la\n```", None),
        (None, None),
    ],
)
def test_extract_code(response, expected):
    assert extract_code(response) == expected


def test_canonical_code_ignores_formatting_only():
    assert canonical_code("x = 'a'  # note") == canonical_code('x = "a"')
    assert canonical_code("f( a,b )") == canonical_code("f(a, b)")
    assert canonical_code("(a + b)") == canonical_code("a + b")
    assert canonical_code("x = 1") != canonical_code("x = 2")
    assert canonical_code("not python (") == canonical_code("not   python (")  # unparsable: whitespace only
    assert canonical_code("not python (") != canonical_code("not python [")


def test_registry_has_the_code_tasks():
    assert {"mbpp", "humaneval", "conala"} <= set(task_names())
    assert CODE_TASKS == (MBPPTask, HumanEvalTask, CoNaLaTask)
    assert isinstance(get_task("mbpp", feedback=True), MBPPTask)


# ---- HumanEval -----------------------------------------------------------------------------------


def test_humaneval_problems(humaneval):
    problems = humaneval.load()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0"
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in first.question
    assert "```python" in humaneval.prompt(first)
    assert "check(" not in humaneval.prompt(first)  # the tests stay hidden


def _check_humaneval(task, problems):
    references = [fenced(p.answer) for p in problems]
    assert [s.reward for s in task.score_many(problems, references)] == [1.0] * len(problems)
    wrong = task.score_many(problems, [fenced(broken(p.answer)) for p in problems])
    assert [p.id for p, s in zip(problems, wrong) if s.reward != 0.0] == []
    assert all(s.feedback for s in wrong)


def test_humaneval_canonical_solutions_pass_and_broken_copies_fail(humaneval):
    problems = humaneval.load()
    _check_humaneval(humaneval, problems[::8])  # 21 problems spread over the set


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes(humaneval):
    _check_humaneval(humaneval, humaneval.load())


def test_humaneval_accepts_a_bare_body_and_keeps_prompt_helpers(humaneval):
    problems = {p.id: p for p in humaneval.load()}
    zero = problems["HumanEval/0"]
    body = zero.answer[len(zero.meta["prompt"]) :]
    assert humaneval.score(zero, body).reward == 1.0  # base-model style completion of the prompt
    # HumanEval/10's prompt defines is_palindrome, which its solution uses without redefining.
    ten = problems["HumanEval/10"]
    solution_only = ten.answer[ten.answer.index("def make_palindrome") :]
    assert "def is_palindrome" not in solution_only
    assert humaneval.score(ten, fenced(solution_only)).reward == 1.0


# ---- MBPP ----------------------------------------------------------------------------------------


def test_mbpp_splits(mbpp):
    sizes = {split: len(mbpp.load(split)) for split in mbpp.splits}
    assert sizes == {"test": 500, "train": 374, "validation": 90, "prompt": 10, "sanitized": 257}
    test = mbpp.load()
    assert [p.id for p in test[:2]] == ["11", "12"] and test[-1].id == "510"
    assert {int(p.id) for p in mbpp.load("sanitized")} <= set(range(11, 511))


def test_mbpp_question_shows_the_tests(mbpp):
    problem = mbpp.load(limit=1)[0]
    assert problem.question.startswith("Write a python function to remove first and last occurrence")
    for test in problem.meta["tests"]:
        assert test in problem.question
    assert "```python" in mbpp.prompt(problem)


def _check_mbpp(task, problems):
    results = task.run([p.answer for p in problems], problems)
    failures = {p.id: r.reason for p, r in zip(problems, results) if not r.passed}
    assert failures == {pid: reason for pid, reason in failures.items() if pid in MBPP_KNOWN_FAILURES}
    wrong = task.score_many(problems, [fenced(broken(p.answer)) for p in problems])
    assert [p.id for p, s in zip(problems, wrong) if s.reward != 0.0] == []


def test_mbpp_reference_solutions_pass_and_broken_copies_fail(mbpp):
    # A spread of the test split, both setup-code problems (367, 927: setup builds the classes the
    # solution defines) and sanitized ones (whose tests need their test_imports).
    problems = mbpp.load("test")[::20] + [p for p in mbpp.load("train") if p.id == "927"]
    problems += [p for p in mbpp.load("test") if p.id == "367"] + mbpp.load("sanitized")[::40]
    _check_mbpp(mbpp, problems)


@pytest.mark.slow
@pytest.mark.parametrize("split", MBPPTask.splits)
def test_every_mbpp_reference_solution_passes(split):
    # The check is of the data and the harness, not of speed: problem 123's reference (the sum of the
    # amicable numbers below 9999) takes 4 s of CPU on a 2.8 GHz Xeon and went over the default 5 s on
    # a slower CI machine, so the references run with a generous CPU limit.
    mbpp = MBPPTask(limits=Limits(cpu_seconds=30, wall_seconds=120))
    _check_mbpp(mbpp, mbpp.load(split))


def test_scores_and_feedback(mbpp):
    problem = mbpp.load(limit=1)[0]  # remove_Occ(s, ch)
    good, wrong, crash = (
        fenced(problem.answer),
        fenced("def remove_Occ(s, ch):\n    return s"),
        "```python\ndef remove_Occ(s, ch):\n    return s.missing()\n```",
    )
    scores = mbpp.score_many([problem] * 4, [good, wrong, crash, "   "])
    assert [s.reward for s in scores] == [1.0, 0.0, 0.0, 0.0]
    assert scores[0].feedback is None and scores[0].pred == extract_code(good)
    assert scores[1].feedback.startswith("failed: AssertionError")
    assert 'assert remove_Occ("hello","l") == "heo"' in scores[1].feedback
    assert scores[2].feedback.startswith("error: AttributeError")
    assert scores[3] == Score(pred=None, reward=0.0)
    assert MBPPTask(unparsable_reward=-1.0).score(problem, "").reward == -1.0
    assert mbpp.score(problem, wrong) == scores[1]  # score is score_many of one
    assert mbpp.is_correct(problem.answer, problem) and not mbpp.is_correct("def remove_Occ(s, ch): return s", problem)


def test_timeouts_score_zero():
    task = MBPPTask(limits=Limits(cpu_seconds=1, wall_seconds=5))
    problem = task.load(limit=1)[0]
    score = task.score(problem, fenced("def remove_Occ(s, ch):\n    while True:\n        pass"))
    assert score.reward == 0.0 and score.feedback.startswith("timeout:")


def test_retry_message_quotes_feedback_only_when_asked(mbpp):
    problem = mbpp.load(limit=1)[0]
    last = mbpp.score(problem, fenced("def remove_Occ(s, ch):\n    return s"))
    plain = mbpp.retry_message(problem, last)
    assert plain == DEFAULT_RETRY.format(question=problem.question)
    assert "AssertionError" not in plain
    with_feedback = MBPPTask(feedback=True).retry_message(problem, last)
    assert "AssertionError" in with_feedback and problem.question in with_feedback
    assert MBPPTask(feedback=True).retry_message(problem, None) == plain


def test_same_answer_is_canonical_code_equality(mbpp):
    assert mbpp.same_answer("def f(x):\n    return x+1", "def f(x):  # comment\n    return (x + 1)")
    assert not mbpp.same_answer("def f(x):\n    return x+1", "def f(x):\n    return x+2")


def test_answer_key_is_a_canonical_form_of_same_answer(mbpp):
    answers = [
        "def f(x):\n    return x+1",
        "def f(x):  # comment\n    return (x + 1)",
        "def f(x):\n    return x+2",
        "  def broken(:",
        "def broken(:",
        "a[ 1 ]",
        "a[1]",
    ]
    for task in (mbpp, CoNaLaTask()):
        for a in answers:
            for b in answers:
                assert (task.answer_key(a) == task.answer_key(b)) == task.same_answer(a, b), (a, b)
        assert task.answer_key(answers[0]) == task.answer_key(answers[1]) != task.answer_key(answers[2])


def test_mbpp_rows_from_a_user_file(mbpp, tmp_path):
    path = tmp_path / "mine.jsonl"
    row = {
        "task_id": 7,
        "text": "Double a number.",
        "code": "def double(x):\n    return 2 * x",
        "test_list": ["assert double(2) == 4"],
    }
    path.write_text(json.dumps(row) + "\n" + json.dumps({"task_id": 8, "text": "No tests."}) + "\n")
    with pytest.raises(DataError, match=r"mine.jsonl:2: missing field\(s\) 'code', 'test_list'"):
        mbpp.load(data=path)
    path.write_text(json.dumps(row) + "\n")
    (problem,) = mbpp.load(data=path)
    assert problem.id == "7" and mbpp.score(problem, fenced(row["code"])).reward == 1.0


# ---- CoNaLa --------------------------------------------------------------------------------------


def test_conala_problems():
    task = CoNaLaTask()
    test, train = task.load("test"), task.load("train")
    assert (len(test), len(train)) == (500, 2378)
    assert len({p.id for p in train}) == len(train)  # question_id repeats; ids do not
    assert test[0].question == "send a signal `signal.SIGUSR1` to the current process"  # rewritten_intent
    assert test[0].answer == "os.kill(os.getpid(), signal.SIGUSR1)"


def test_conala_reward_is_exact_after_canonicalisation():
    task = CoNaLaTask()
    problem = task.load("test", limit=2)[1]  # bytes.fromhex('4a4b4c').decode('utf-8')
    assert task.score(problem, fenced('bytes.fromhex( "4a4b4c" ).decode("utf-8")')).reward == 1.0
    assert task.score(problem, "bytes.fromhex('4a4b4c').decode('utf-8')").reward == 1.0
    assert task.score(problem, fenced("bytes.fromhex('4a4b4c').decode('ascii')")).reward == 0.0
    assert task.score(problem, "").reward == 0.0
    assert task.same_answer("a[ 1 ]", "a[1]") and not task.same_answer("a[1]", "a[2]")


def test_conala_bleu():
    refs = ["os.kill(os.getpid(), signal.SIGUSR1)", "bytes.fromhex('4a4b4c').decode('utf-8')"]
    assert conala_bleu(refs, refs) == pytest.approx(100.0)
    assert conala_bleu(['bytes.fromhex("4a4b4c").decode("utf-8")'], refs[1:]) == pytest.approx(100.0)  # quotes
    partial = conala_bleu(["os.kill(os.getpid(), signal.SIGTERM)", None], refs)
    assert 0.0 < partial < 100.0
    assert conala_bleu(["x", "y"], refs) < partial
    with pytest.raises(ValueError):
        conala_bleu(refs, refs[:1])
