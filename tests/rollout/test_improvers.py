"""The improvers that do not copy (fresh candidates, the reference solution) and collection that goes on
after a right answer (issue 22's levers), through `collect`."""

import dataclasses

import pytest

from riselm.config import ConfigError, parse_schedule
from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.collect import collect
from riselm.rollout.episode import read_episodes
from riselm.settings import CollectSettings, ScheduleStep
from tests.toy import ToyTask, attempt_number, question_value, toy_problems


def settings(*steps: ScheduleStep, **update) -> CollectSettings:
    return CollectSettings(max_turns=3, chunk_size=4, schedule=list(steps), **update)


LEARNER_1 = ScheduleStep(model="learner", n=1)


def right(conversation) -> str:
    return f"\\boxed{{{2 * question_value(conversation)}}}"


def test_fresh_candidates_are_sampled_from_the_question_alone_and_placed_after_the_history(tmp_path):
    # Right only when the context holds no earlier attempt: a model that copies its failed attempt.
    learner = ScriptedGenerator(lambda c, s: right(c) if attempt_number(c) == 1 and s == 1 else "\\boxed{-1}")
    fresh = settings(LEARNER_1, ScheduleStep(model="learner", n=2, context="fresh"))
    (episode,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", fresh, show_progress=False)
    assert [t.reward for t in episode.turns] == [0.0, 1.0]
    assert [t.context for t in episode.turns] == [None, "fresh"]
    assert episode.turns[0].feedback is not None  # the right answer follows the wrong one and the retry message
    conversations, params, seeds = learner.calls[1]
    assert params.n == 2 and [m["role"] for m in conversations[0]] == ["user"]
    assert seeds != learner.calls[0].seeds  # new samples, not turn 1's again
    stored = read_episodes(tmp_path / "e.jsonl")[0]
    assert stored.turns[1].context == "fresh" and stored.messages(upto=1)[-1]["role"] == "user"
    # the same schedule from the history finds nothing: every candidate copies the failure
    history = settings(LEARNER_1, ScheduleStep(model="learner", n=2))
    (copying,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "h.jsonl", history, show_progress=False)
    assert [t.reward for t in copying.turns] == [0.0, 0.0, 0.0]


def test_the_reference_improver_answers_with_the_gold_solution(tmp_path):
    problems = [dataclasses.replace(p, solution=f"{p.id}: add them. \\boxed{{{p.answer}}}") for p in toy_problems(3)]
    problems[2] = dataclasses.replace(problems[2], solution=None)  # no solution: the episode ends
    learner = ScriptedGenerator(["\\boxed{-1}"])
    reference = settings(LEARNER_1, ScheduleStep(model="reference"))
    episodes = collect(ToyTask(), learner, problems, tmp_path / "e.jsonl", reference, show_progress=False)
    by_id = {e.id: e for e in episodes}
    assert [t.source for t in by_id["p1"].turns] == ["learner", "reference"]
    assert by_id["p1"].turns[1].response == "p1: add them. \\boxed{2}" and by_id["p1"].turns[1].num_tokens == 0
    assert [t.reward for t in by_id["p2"].turns] == [0.0]
    assert len(learner.calls) == 1  # nothing generated after turn 1


def test_the_reference_improver_needs_gold_solutions(tmp_path):
    reference = settings(LEARNER_1, ScheduleStep(model="reference"))
    with pytest.raises(ValueError, match="task 'toy' has no gold solutions"):
        collect(ToyTask(), ScriptedGenerator(["x"]), toy_problems(2), tmp_path / "e.jsonl", reference, show_progress=False)


def test_the_reference_gives_one_answer():
    with pytest.raises(ValueError, match="reference improver gives one answer"):
        ScheduleStep(model="reference", n=4)


@pytest.mark.parametrize("after, turns", [(0, ["wrong", "right"]), (1, ["wrong", "right", "right"]), (2, ["wrong", "right", "right"])])
def test_collection_goes_on_after_a_right_answer_when_asked(tmp_path, after, turns):
    learner = ScriptedGenerator(lambda c, s: "\\boxed{-1}" if attempt_number(c) == 1 else right(c))
    (episode,) = collect(
        ToyTask(),
        learner,
        toy_problems(2)[1:],
        tmp_path / "e.jsonl",
        settings(LEARNER_1, continue_after_correct=after),
        show_progress=False,
    )
    assert ["right" if t.correct else "wrong" for t in episode.turns] == turns  # max_turns 3 bounds it
    assert episode.turns[-1].feedback is None and all(t.feedback for t in episode.turns[:-1])


def test_a_right_first_answer_is_followed_by_k_more_turns(tmp_path):
    learner = ScriptedGenerator(lambda c, s: right(c))
    two_more = settings(LEARNER_1, continue_after_correct=2).model_copy(update={"max_turns": 5})
    (episode,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", two_more, show_progress=False)
    assert [t.correct for t in episode.turns] == [True, True, True]


def test_after_a_right_answer_a_wrong_one_is_never_taken(tmp_path):
    # no_degrade: every candidate after the right turn is wrong, so the episode ends at the right one
    learner = ScriptedGenerator(lambda c, s: right(c) if attempt_number(c) == 1 else "\\boxed{-1}")
    (episode,) = collect(
        ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", settings(LEARNER_1, continue_after_correct=2), show_progress=False
    )
    assert [t.correct for t in episode.turns] == [True] and episode.turns[0].feedback is None


def test_schedule_entries_on_the_command_line():
    assert parse_schedule("learner:1,learner:4:fresh,reference") == [
        LEARNER_1,
        ScheduleStep(model="learner", n=4, context="fresh"),
        ScheduleStep(model="reference"),
    ]
    for bad in ("learner:4:again", "reference:2", "learner:1:fresh:x"):
        with pytest.raises(ConfigError, match="MODEL\\[:N\\[:CONTEXT\\]\\]"):
            parse_schedule(bad)


def test_after_a_right_turn_fresh_candidates_see_the_history(tmp_path):
    # what keeping a right answer looks like: the candidates after a right turn are conditioned on it
    learner = ScriptedGenerator(lambda c, s: right(c) if attempt_number(c) < 3 else "\\boxed{-1}")
    fresh = settings(LEARNER_1, ScheduleStep(model="learner", n=2, context="fresh"), continue_after_correct=1)
    (episode,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", fresh, show_progress=False)
    assert [(t.correct, t.context) for t in episode.turns] == [(True, None), (True, None)]
    assert [m["role"] for m in learner.calls[1].conversations[0]] == ["user", "assistant", "user"]
