"""`evaluate`: sequential and parallel runs through the rollout engine, garbage output, resume, report files."""

import json

from riselm.evaluation.evaluate import evaluate, metrics_of_file
from riselm.generation.fake import ScriptedGenerator
from riselm.settings import EvalSettings, SamplingSettings
from tests.toy import ToyTask, attempt_number, question_value, toy_problems


def improving(conversation, sample):
    """Wrong on turn 1, right from turn 2 on."""
    value = 2 * question_value(conversation)
    return f"\\boxed{{{value if attempt_number(conversation) >= 2 else value + 1}}}"


def run(tmp_path, generator, settings, problems=None, task=None):
    return evaluate(task or ToyTask(), generator, tmp_path / "eval", settings, problems=problems or toy_problems(3), show_progress=False)


def episodes(tmp_path, name="sequential"):
    return [json.loads(line) for line in (tmp_path / "eval" / f"episodes.{name}.jsonl").read_text().splitlines()]


def test_the_retry_message_follows_every_turn_even_a_right_one(tmp_path):
    gen = ScriptedGenerator(improving)
    result = run(tmp_path, gen, EvalSettings(turns=3, parallel_samples=0, chunk_size=2))
    assert result.sequential["acc@t1"] == 0.0 and result.sequential["acc@t3"] == 100.0
    for e in episodes(tmp_path):
        assert e["mode"] == "sequential" and [t["reward"] for t in e["turns"]] == [0.0, 1.0, 1.0]
        assert e["turns"][1]["feedback"] is not None and e["turns"][-1]["feedback"] is None
    last_conversation = gen.calls[-1][0][0]
    assert [m["role"] for m in last_conversation] == ["user", "assistant", "user", "assistant", "user"]


def test_window_keeps_the_question_and_the_last_attempts(tmp_path):
    gen = ScriptedGenerator(improving)
    run(tmp_path, gen, EvalSettings(turns=4, window=2, parallel_samples=0), problems=toy_problems(1))
    conversation = gen.calls[-1][0][0]
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert conversation[0]["content"].endswith("What is 0+0?")


def test_greedy_settings_reach_the_backend(tmp_path):
    gen = ScriptedGenerator(improving)
    run(tmp_path, gen, EvalSettings(turns=2, parallel_samples=0, sampling=SamplingSettings(temperature=0, max_new_tokens=7)))
    params = gen.calls[0][1]
    assert params.greedy and params.max_new_tokens == 7 and params.n == 1


def test_garbage_output_scores_the_unparsable_reward_and_never_crashes(tmp_path):
    garbage = ["", "\\boxed{", "}}}{{{", "\x00\ufffd", "\\boxed{abc}", "no answer here"]
    gen = ScriptedGenerator(lambda c, s: garbage[attempt_number(c) - 1])
    run(tmp_path, gen, EvalSettings(turns=6, parallel_samples=0), problems=toy_problems(1), task=ToyTask(unparsable_reward=-1.0))
    (episode,) = episodes(tmp_path)
    assert [(t["pred"], t["reward"]) for t in episode["turns"]] == [(None, -1.0)] * 6


def test_parallel_samples_are_one_turn_episodes_sharing_the_id(tmp_path):
    gen = ScriptedGenerator(lambda c, s, seed: f"\\boxed{{{seed % 3}}}")
    result = run(tmp_path, gen, EvalSettings(turns=1, parallel_samples=3), problems=toy_problems(2))
    rows = episodes(tmp_path, "parallel")
    assert sorted((e["id"], e["sample"]) for e in rows) == [(p, s) for p in ("p0", "p1") for s in range(3)]
    assert all(e["mode"] == "parallel" and len(e["turns"]) == 1 for e in rows)
    assert result.parallel["samples"] == 3 and "m3@t1" in result.parallel


def test_resume_does_not_redo_or_duplicate(tmp_path):
    gen = ScriptedGenerator(improving)
    run(tmp_path, gen, EvalSettings(turns=2, parallel_samples=0), problems=toy_problems(2))
    gen.calls.clear()
    run(tmp_path, gen, EvalSettings(turns=2, parallel_samples=0), problems=toy_problems(3))
    assert sorted(e["id"] for e in episodes(tmp_path)) == ["p0", "p1", "p2"]
    assert all(len(call[0]) == 1 for call in gen.calls)  # only p2 was generated


def test_evaluate_writes_episodes_metrics_table_and_plot(tmp_path):
    result = run(tmp_path, ScriptedGenerator(improving), EvalSettings(turns=3, parallel_samples=2), problems=toy_problems(4))
    out = tmp_path / "eval"
    assert result.sequential["m1@t3"] == 100.0 and result.sequential["p1@t2"] == 100.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sequential"]["m1@t3"] == 100.0 and saved["parallel"]["m2@t1"] == result.parallel["m2@t1"]
    assert saved["settings"]["turns"] == 3 and saved["settings"]["sampling"]["temperature"] == 1.0
    assert "| 3 |" in (out / "report.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics_of_file(out / "episodes.sequential.jsonl", task=ToyTask())["m1@t3"] == 100.0


def test_self_refine_asks_for_a_review_then_for_an_improved_answer(tmp_path):
    from riselm.rollout.engine import CRITIQUE_REQUEST

    def respond(conversation, sample):
        if conversation[-1]["content"] == CRITIQUE_REQUEST:
            return f"review of attempt {sum(m['content'] == CRITIQUE_REQUEST for m in conversation)}"
        return improving(conversation, sample)

    gen = ScriptedGenerator(respond)
    run(tmp_path, gen, EvalSettings(turns=3, parallel_samples=0, feedback="self_refine"), problems=toy_problems(2)[1:])
    (episode,) = episodes(tmp_path)
    turns = episode["turns"]
    assert [t["reward"] for t in turns] == [0.0, 1.0, 1.0]
    assert [t["critique"] for t in turns] == ["review of attempt 1", "review of attempt 2", None]
    assert turns[0]["feedback"].startswith("Using your review, answer the question again: What is 1+1?")
    # the calls alternate: answer, review, answer, review, answer; each sees the whole exchange so far
    roles = [[m["role"] for m in call.conversations[0]] for call in gen.calls]
    assert roles == [
        ["user"],
        ["user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user", "assistant", "user", "assistant", "user"],
    ]
    review_request = gen.calls[1].conversations[0]
    assert review_request[1]["content"] == turns[0]["response"] and review_request[2]["content"] == CRITIQUE_REQUEST
    final = gen.calls[4].conversations[0]
    assert [m["content"] for m in final[3:5]] == ["review of attempt 1", turns[0]["feedback"]]
