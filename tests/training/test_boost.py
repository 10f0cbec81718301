"""Boost data: gold solutions as the only trained span, after 0..k wrong attempts with the task's retry message."""

from __future__ import annotations

import random

import pytest

from riselm.rollout.episode import Episode, Turn
from riselm.tasks.base import Problem
from riselm.training.boost import boost_samples, corrupt_numbers, last_boxed_span, wrong_attempts_from_episodes
from riselm.training.tokenize import IGNORE_INDEX, tokenize_sample
from tests.toy import ToyTask

PROBLEMS = [
    Problem("p0", "Ann has 3 apples and buys 15 more. How many?", "18", "3 + 15 = 18 apples.\n\\boxed{18}"),
    Problem("p1", "Half of 7?", "3.5", "7 / 2 = 3.5, so the answer is \\boxed{3.5}"),
    Problem("p2", "What is 0 times 9?", "0", "Anything times 0 is 0. \\boxed{0}"),
    Problem("p3", "Simplify 2/4.", "\\frac{1}{2}", "Divide both by 2: \\boxed{\\frac{1}{2}}"),
    Problem("p4", "No solution here.", "1", None),
]


def trained_text(tokenizer, row) -> str:
    ids = [i for i, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_single_turn_boost_trains_on_the_gold_solution(char_tokenizer):
    task = ToyTask()
    samples = boost_samples(task, PROBLEMS)
    assert [s.episode_id for s in samples] == ["p0", "p1", "p2", "p3"]  # p4 has no solution
    for sample, problem in zip(samples, PROBLEMS):
        assert sample.messages == [
            {"role": "user", "content": task.prompt(problem)},
            {"role": "assistant", "content": problem.solution},
        ]
        assert (sample.weight, sample.reward, sample.turn) == (1.0, 1.0, 0)
        assert task.score(problem, sample.response).correct


def test_multi_turn_boost_puts_wrong_attempts_and_retry_messages_before_the_solution(char_tokenizer):
    task = ToyTask()
    samples = boost_samples(task, PROBLEMS, with_history_turns=2, seed=3)
    by_problem = {p.id: p for p in PROBLEMS}
    assert {s.episode_id: s.turn for s in samples if s.turn == 2}.keys() == {"p0", "p1", "p2", "p3"}
    for sample in samples:
        problem = by_problem[sample.episode_id]
        messages = sample.messages
        assert len(messages) == 2 + 2 * sample.turn
        assert messages[0] == {"role": "user", "content": task.prompt(problem)}
        attempts = [m["content"] for m in messages[1:-1:2]]
        assert len(set(attempts)) == len(attempts) == sample.turn
        for attempt, retry in zip(attempts, messages[2:-1:2]):
            score = task.score(problem, attempt)
            assert score.pred is not None and not score.correct
            assert retry == {"role": "user", "content": task.retry_message(problem, score)}
        # THE property: whatever the history, only the gold solution (and its end of turn) is trained
        row = tokenize_sample(char_tokenizer, messages, max_length=4096)
        assert trained_text(char_tokenizer, row) == problem.solution + "<|im_end|>"


def test_conversations_share_their_history_and_do_not_depend_on_problem_order():
    task = ToyTask()
    forward = boost_samples(task, PROBLEMS, with_history_turns=2, seed=1)
    backward = boost_samples(task, PROBLEMS[::-1], with_history_turns=2, seed=1)
    key = lambda s: (s.episode_id, s.turn)  # noqa: E731
    assert sorted(forward, key=key) == sorted(backward, key=key)
    p0 = {s.turn: s.messages for s in forward if s.episode_id == "p0"}
    assert p0[2][:3] == p0[1][:3]  # the 2-attempt conversation extends the 1-attempt one
    other_seed = boost_samples(task, PROBLEMS, with_history_turns=2, seed=2)
    assert [s.messages for s in other_seed] != [s.messages for s in forward]


def test_corrupt_numbers_changes_the_boxed_answer_and_its_last_mention():
    rng = random.Random(0)
    wrong = corrupt_numbers("3 + 15 = 18 apples.\n\\boxed{18}", rng)
    start, end = last_boxed_span(wrong)
    answer = wrong[start:end]
    assert answer != "18" and answer.isdigit()
    assert wrong == f"3 + 15 = {answer} apples.\n\\boxed{{{answer}}}"
    decimal = corrupt_numbers("so \\boxed{3.5}", rng)
    assert decimal != "so \\boxed{3.5}" and len(decimal) == len("so \\boxed{3.5}")  # one decimal place kept
    nested = corrupt_numbers("\\boxed{\\frac{1}{2}}", random.Random(0))
    assert nested.startswith("\\boxed{\\frac{") and nested != "\\boxed{\\frac{1}{2}}"
    assert corrupt_numbers("\\boxed{x}", rng) is None  # nothing numeric to change
    assert corrupt_numbers("no box 12", rng) is None


def test_wrong_attempts_from_episodes_use_the_models_wrong_responses():
    task = ToyTask()
    recorded = Episode(
        "p0",
        "toy",
        "collect",
        task.prompt(PROBLEMS[0]),
        [Turn("I get \\boxed{20}", "20", 0.0, feedback="retry"), Turn("I get \\boxed{18}", "18", 1.0)],
    )
    draw = wrong_attempts_from_episodes([recorded], fallback=None)
    samples = boost_samples(task, PROBLEMS[:2], with_history_turns=1, wrong_attempt=draw)
    assert [(s.episode_id, s.turn) for s in samples] == [("p0", 0), ("p0", 1), ("p1", 0)]  # p1: no recorded attempt
    assert samples[1].messages[1] == {"role": "assistant", "content": "I get \\boxed{20}"}


def test_a_task_without_solutions_is_an_error():
    with pytest.raises(ValueError, match="has a gold solution"):
        boost_samples(ToyTask(), PROBLEMS[4:])
    with pytest.raises(ValueError, match="with_history_turns"):
        boost_samples(ToyTask(), PROBLEMS, with_history_turns=-1)


def test_one_random_depth_per_problem_covers_every_depth():
    from riselm.tasks import get_task

    task = get_task("arithmetic", train_size=200, test_size=10)
    problems = task.load("train")
    solution = {p.id: p.solution for p in problems}
    samples = boost_samples(task, problems, with_history_turns=3, every_depth=False, seed=1)
    assert len(samples) == len(problems)
    depths = {s.turn for s in samples}
    assert depths == {0, 1, 2, 3}
    for s in samples:  # j attempts -> 1 + 2j messages before the trained solution
        assert len(s.messages) == 2 + 2 * s.turn
        assert s.messages[-1]["content"] == solution[s.episode_id]
