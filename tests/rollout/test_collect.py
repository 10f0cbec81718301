"""Collection with improvers: best-of-N, stop at first success, schedules, degenerate candidates, resume."""

import json

from riselm.rollout.collect import CollectSettings, ImproverStep, collect
from toy import Scripted, ToyTask, attempt_number, question_value, toy_problems

SETTINGS = CollectSettings(max_turns=3, chunk_size=2)


def test_wrong_turn_is_followed_by_best_of_n_and_stops_at_first_success(tmp_path):
    task = ToyTask()
    learner = Scripted(lambda c, s: "\\boxed{0}" if attempt_number(c) == 1 else f"\\boxed{{{2 * question_value(c) if s == 2 else -1}}}")
    episodes = collect(task, [ImproverStep(learner, 1), ImproverStep(learner, 4)], toy_problems(3), SETTINGS, tmp_path / "e.jsonl", False)
    by_id = {e.id: e for e in episodes}
    # p0: 0+0=0, turn 1 is already right: one turn
    assert [t.reward for t in by_id["p0"].turns] == [1.0]
    # p1, p2: turn 1 wrong; turn 2 best of 4 picks sample 2 (the only right one)
    for pid in ("p1", "p2"):
        turns = by_id[pid].turns
        assert [t.reward for t in turns] == [0.0, 1.0]
        assert turns[1].num_candidates == 4
        assert turns[0].feedback.startswith("Your answer is incorrect")
        assert turns[1].feedback is None
    # the improver saw the history: prompt, wrong answer, retry message
    convs, params = learner.calls[1]
    assert params.n == 4 and [m["role"] for m in convs[0]] == ["user", "assistant", "user"]


def test_expert_improver_from_schedule(tmp_path):
    task = ToyTask()
    learner = Scripted(lambda c, s: "\\boxed{-5}", name="learner")
    expert = Scripted(lambda c, s: f"\\boxed{{{2 * question_value(c)}}}", name="expert")
    episodes = collect(task, [ImproverStep(learner, 1), ImproverStep(expert, 2)], toy_problems(3)[1:], SETTINGS, tmp_path / "e.jsonl", False)
    assert all([t.source for t in e.turns] == ["learner", "expert"] for e in episodes)
    assert all(e.turns[-1].reward == 1.0 for e in episodes)


def test_never_right_runs_max_turns_and_ties_keep_first(tmp_path):
    task = ToyTask()
    learner = Scripted(lambda c, s: f"attempt {attempt_number(c)} sample {s} \\boxed{{-1}}")
    (episode,) = collect(task, [ImproverStep(learner, 3)], toy_problems(2)[1:], SETTINGS, tmp_path / "e.jsonl", False)
    assert len(episode.turns) == 3
    assert all("sample 0" in t.response for t in episode.turns)  # all tie at 0 reward: the first wins


def test_degenerate_candidates_are_dropped(tmp_path):
    task = ToyTask()
    # sample 0 is a right answer inside a runaway loop; sample 1 is a plain wrong answer
    learner = Scripted(lambda c, s: "\\boxed{2} " + "again " * 40 if s == 0 else "\\boxed{7}")
    (episode,) = collect(task, [ImproverStep(learner, 2)], toy_problems(2)[1:], SETTINGS, tmp_path / "e.jsonl", False)
    assert all(t.pred == "7" for t in episode.turns)


def test_resume_skips_finished_problems_and_survives_a_torn_last_line(tmp_path):
    task = ToyTask()
    path = tmp_path / "e.jsonl"
    learner = Scripted(lambda c, s: f"\\boxed{{{2 * question_value(c)}}}")
    collect(task, [ImproverStep(learner, 1)], toy_problems(4), SETTINGS, path, False)
    lines = path.read_text().splitlines()
    # simulate a kill while writing the 4th row: keep 3 rows and half of the 4th
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    learner.calls.clear()
    episodes = collect(task, [ImproverStep(learner, 1)], toy_problems(4), SETTINGS, path, False)
    assert sorted(e.id for e in episodes) == ["p0", "p1", "p2", "p3"]
    assert len(learner.calls) == 1 and len(learner.calls[0][0]) == 1  # only the lost problem was redone
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_context_window_limits_what_the_improver_sees(tmp_path):
    task = ToyTask()
    learner = Scripted(lambda c, s: "\\boxed{-1}")
    settings = CollectSettings(max_turns=4, window=2)
    collect(task, [ImproverStep(learner, 1)], toy_problems(2)[1:], settings, tmp_path / "e.jsonl", False)
    last_conversation = learner.calls[-1][0][0]  # turn 4: the question, the last attempt, its retry message
    assert [m["role"] for m in last_conversation] == ["user", "assistant", "user"]
