"""Sequential and parallel evaluation runs: retry after every turn, windows, garbage output, resume, report files."""

import json

from riselm.evaluation.evaluate import evaluate, metrics_of_file
from riselm.evaluation.runner import EvalSettings, run_parallel, run_sequential
from toy import Scripted, ToyTask, attempt_number, question_value, toy_problems


def improving(conversation, sample):
    """Wrong on turn 1, right from turn 2 on."""
    value = 2 * question_value(conversation)
    return f"\\boxed{{{value if attempt_number(conversation) >= 2 else value + 1}}}"


def test_sequential_appends_retry_after_every_turn_even_when_right(tmp_path):
    gen = Scripted(improving)
    episodes = run_sequential(ToyTask(), gen, toy_problems(3), EvalSettings(turns=3, chunk_size=2), tmp_path / "s.jsonl", False)
    assert len(episodes) == 3
    for e in episodes:
        assert e.mode == "sequential"
        assert [t.reward for t in e.turns] == [0.0, 1.0, 1.0]
        assert e.turns[1].feedback is not None and e.turns[-1].feedback is None
    # turn 3 saw two earlier attempts, each followed by the retry message
    last_call_conversation = gen.calls[-1][0][0]
    assert [m["role"] for m in last_call_conversation] == ["user", "assistant", "user", "assistant", "user"]


def test_window_keeps_question_and_last_attempts(tmp_path):
    gen = Scripted(improving)
    run_sequential(ToyTask(), gen, toy_problems(1), EvalSettings(turns=4, window=2), tmp_path / "s.jsonl", False)
    conv = gen.calls[-1][0][0]  # turn 4 with window 2: question + the last attempt only
    assert [m["role"] for m in conv] == ["user", "assistant", "user"]
    assert conv[0]["content"].endswith("What is 0+0?")


def test_greedy_and_sampling_settings_reach_the_backend(tmp_path):
    gen = Scripted(improving)
    run_sequential(ToyTask(), gen, toy_problems(1), EvalSettings(turns=2, temperature=0.0, max_new_tokens=7), tmp_path / "s.jsonl", False)
    params = gen.calls[0][1]
    assert params.greedy and params.max_new_tokens == 7 and params.n == 1


def test_garbage_output_scores_zero_and_never_crashes(tmp_path):
    garbage = ["", "\\boxed{", "}}}{{{", "\x00\ufffd", "\\boxed{abc}", "no answer here"]
    gen = Scripted(lambda c, s: garbage[attempt_number(c) - 1])
    unparsable = ToyTask(unparsable_reward=-1.0)
    (episode,) = run_sequential(unparsable, gen, toy_problems(1), EvalSettings(turns=6), tmp_path / "s.jsonl", False)
    assert [t.pred for t in episode.turns] == [None] * 6
    assert [t.reward for t in episode.turns] == [-1.0] * 6


def test_parallel_samples_are_one_turn_episodes_sharing_the_id(tmp_path):
    gen = Scripted(lambda c, s: f"\\boxed{{{s}}}")
    episodes = run_parallel(ToyTask(), gen, toy_problems(2), EvalSettings(parallel_samples=3), tmp_path / "p.jsonl", False)
    assert sorted((e.id, e.sample) for e in episodes) == [("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0), ("p1", 1), ("p1", 2)]
    assert all(e.mode == "parallel" and len(e.turns) == 1 for e in episodes)
    assert gen.calls[0][1].n == 3


def test_sequential_resume_does_not_redo_or_duplicate(tmp_path):
    path = tmp_path / "s.jsonl"
    gen = Scripted(improving)
    run_sequential(ToyTask(), gen, toy_problems(2), EvalSettings(turns=2), path, False)
    gen.calls.clear()
    episodes = run_sequential(ToyTask(), gen, toy_problems(3), EvalSettings(turns=2), path, False)
    assert sorted(e.id for e in episodes) == ["p0", "p1", "p2"]
    assert all(len(call[0]) == 1 for call in gen.calls)  # only p2 generated


def test_evaluate_writes_episodes_metrics_table_and_plot(tmp_path):
    out = tmp_path / "eval"
    result = evaluate(ToyTask(), Scripted(improving), out, EvalSettings(turns=3, parallel_samples=2), problems=toy_problems(4), show_progress=False)
    assert result.sequential["acc@t1"] == 0.0 and result.sequential["acc@t2"] == 100.0
    assert result.sequential["m1@t3"] == 100.0 and result.sequential["p1@t2"] == 100.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sequential"]["m1@t3"] == 100.0 and saved["parallel"]["m2@t1"] == result.parallel["m2@t1"]
    assert "| 3 |" in (out / "report.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics_of_file(out / "episodes.sequential.jsonl", task=ToyTask())["m1@t3"] == 100.0
