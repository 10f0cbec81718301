"""RISE collection through the rollout engine: best-of-N, stop at first success, schedules, junk, resume."""

import json

import pytest

from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.collect import collect
from riselm.settings import CollectSettings, ScheduleStep
from tests.toy import ToyTask, attempt_number, question_value, toy_problems


def schedule(*steps):
    return [ScheduleStep(model=m, n=n) for m, n in steps]


SETTINGS = CollectSettings(max_turns=3, chunk_size=2, schedule=schedule(("learner", 1), ("learner", 4)))


def test_wrong_turn_is_followed_by_best_of_n_and_stops_at_first_success(tmp_path):
    learner = ScriptedGenerator(
        lambda c, s: "\\boxed{0}" if attempt_number(c) == 1 else f"\\boxed{{{2 * question_value(c) if s == 2 else -1}}}"
    )
    episodes = collect(ToyTask(), learner, toy_problems(3), tmp_path / "e.jsonl", SETTINGS, show_progress=False)
    by_id = {e.id: e for e in episodes}
    assert [t.reward for t in by_id["p0"].turns] == [1.0]  # 0+0=0: turn 1 is already right
    for pid in ("p1", "p2"):  # turn 1 wrong; turn 2 best of 4 picks sample 2, the only right one
        turns = by_id[pid].turns
        assert [t.reward for t in turns] == [0.0, 1.0]
        assert turns[1].num_candidates == 4 and turns[1].source == "learner"
        assert turns[0].feedback.startswith("Your answer is incorrect") and turns[1].feedback is None
    conversations, params, _ = learner.calls[1]  # the improver saw the history: prompt, wrong answer, retry
    assert params.n == 4 and [m["role"] for m in conversations[0]] == ["user", "assistant", "user"]


def test_expert_improver_named_in_the_schedule(tmp_path):
    learner = ScriptedGenerator(lambda c, s: "\\boxed{-5}", name="learner-model")
    expert = ScriptedGenerator(lambda c, s: f"\\boxed{{{2 * question_value(c)}}}", name="expert-model")
    settings = SETTINGS.model_copy(update={"schedule": schedule(("learner", 1), ("teacher", 2))})
    episodes = collect(
        ToyTask(), {"learner": learner, "teacher": expert}, toy_problems(3)[1:], tmp_path / "e.jsonl", settings, show_progress=False
    )
    assert all([t.source for t in e.turns] == ["learner", "teacher"] for e in episodes)
    assert all(e.turns[-1].correct for e in episodes)


def test_a_schedule_naming_a_missing_model_is_an_error(tmp_path):
    settings = SETTINGS.model_copy(update={"schedule": schedule(("learner", 1), ("teacher", 2))})
    with pytest.raises(ValueError, match="teacher"):
        collect(ToyTask(), ScriptedGenerator(["x"]), toy_problems(1), tmp_path / "e.jsonl", settings)


def test_never_right_runs_max_turns_and_ties_keep_the_first(tmp_path):
    learner = ScriptedGenerator(lambda c, s: f"attempt {attempt_number(c)} sample {s} \\boxed{{-1}}")
    settings = SETTINGS.model_copy(update={"schedule": schedule(("learner", 3))})
    (episode,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", settings, show_progress=False)
    assert len(episode.turns) == 3
    assert all("sample 0" in t.response for t in episode.turns)


def test_degenerate_candidates_are_never_chosen(tmp_path):
    # sample 0 is a right answer inside a runaway loop; sample 1 is a plain wrong answer
    learner = ScriptedGenerator(lambda c, s: "\\boxed{2} " + "again " * 40 if s == 0 else "\\boxed{7}")
    settings = SETTINGS.model_copy(update={"schedule": schedule(("learner", 2))})
    (episode,) = collect(ToyTask(), learner, toy_problems(2)[1:], tmp_path / "e.jsonl", settings, show_progress=False)
    assert all(t.pred == "7" for t in episode.turns)


def test_resume_skips_finished_problems_and_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "e.jsonl"
    learner = ScriptedGenerator(lambda c, s: f"\\boxed{{{2 * question_value(c)}}}")
    collect(ToyTask(), learner, toy_problems(4), path, SETTINGS, show_progress=False)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])  # killed while writing row 4
    learner.calls.clear()
    episodes = collect(ToyTask(), learner, toy_problems(4), path, SETTINGS, show_progress=False)
    assert [e.id for e in episodes] == ["p0", "p1", "p2", "p3"]
    assert len(learner.calls) == 1 and len(learner.calls[0][0]) == 1  # only the lost problem was redone
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_limit_and_window(tmp_path):
    learner = ScriptedGenerator([f"attempt {k}: \\boxed{{-{k}}}" for k in range(1, 5)])  # the k-th completion is turn k
    settings = CollectSettings(max_turns=4, window=2, limit=1, schedule=schedule(("learner", 1)))
    task, problems = ToyTask(), toy_problems(3)[1:]
    episodes = collect(task, learner, problems, tmp_path / "e.jsonl", settings, show_progress=False)
    assert [e.id for e in episodes] == ["p1"]
    assert episodes[0].window == 2
    assert [t.response for t in episodes[0].turns] == [f"attempt {k}: \\boxed{{-{k}}}" for k in range(1, 5)]
    question, retry = task.prompt(problems[0]), task.retry_message(problems[0])
    kept = [[m["content"] for m in call[0][0]] for call in learner.calls]
    assert kept == [  # the question, then only the last window - 1 = 1 attempt with its retry message
        [question],
        [question, "attempt 1: \\boxed{-1}", retry],
        [question, "attempt 2: \\boxed{-2}", retry],
        [question, "attempt 3: \\boxed{-3}", retry],
    ]
