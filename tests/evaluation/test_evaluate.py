"""`evaluate`: sequential and parallel runs through the rollout engine, garbage output, resume, report files."""

import json

from riselm.evaluation.evaluate import EvalResult, evaluate, metrics_of_file, write_report
from riselm.generation.fake import ScriptedGenerator
from riselm.settings import EvalSettings, SamplingSettings
from riselm.tasks.base import Problem
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
    task = ToyTask()
    gen = ScriptedGenerator([f"attempt {k}: \\boxed{{{k}}}" for k in range(1, 6)])  # the k-th completion is turn k
    run(tmp_path, gen, EvalSettings(turns=5, window=3, parallel_samples=0), problems=toy_problems(1), task=task)
    retry = task.retry_message(toy_problems(1)[0])
    kept = [[m["content"] for m in call[0][0]] for call in gen.calls]
    question = kept[0][0]
    assert question.endswith("What is 0+0?")
    assert kept == [  # the question, then only the last window - 1 = 2 attempts with their retry messages
        [question],
        [question, "attempt 1: \\boxed{1}", retry],
        [question, "attempt 1: \\boxed{1}", retry, "attempt 2: \\boxed{2}", retry],
        [question, "attempt 2: \\boxed{2}", retry, "attempt 3: \\boxed{3}", retry],
        [question, "attempt 3: \\boxed{3}", retry, "attempt 4: \\boxed{4}", retry],
    ]


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
    assert turns[0]["feedback"] == "Using your review, answer the question again.\n\n" + ToyTask().prompt(toy_problems(2)[1])
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


class KeyedToy(ToyTask):
    """Answers have a canonical form (their value); `same_answer` must then never be needed."""

    def answer_key(self, answer):
        return float(answer)

    def same_answer(self, a, b):
        raise AssertionError("evaluation must vote by the task's answer_key")


def test_evaluation_votes_by_the_task_s_canonical_answer_key(tmp_path):
    answers = ["2", "1", "2.0", "3"]  # by value "2" and "2.0" win at turns 3 and 4; by text the latest answer would
    gen = ScriptedGenerator(lambda c, s: f"\\boxed{{{answers[attempt_number(c) - 1]}}}")
    problems = [Problem(id="two", question="What is 1+1?", answer="2")]
    result = run(tmp_path, gen, EvalSettings(turns=4, parallel_samples=0), problems=problems, task=KeyedToy())
    assert [result.sequential[f"m1@t{k}"] for k in range(1, 5)] == [100.0, 0.0, 100.0, 100.0]
    assert metrics_of_file(tmp_path / "eval" / "episodes.sequential.jsonl", task=KeyedToy())["m1@t4"] == 100.0


def test_report_says_when_problems_have_different_sample_counts(tmp_path):
    def sample(pid, i, pred, reward):
        turn = {"response": f"\\boxed{{{pred}}}", "pred": pred, "reward": reward}
        return {"id": pid, "task": "toy", "mode": "parallel", "sample": i, "prompt": "q", "turns": [turn]}

    rows = [sample("a", i, p, r) for i, (p, r) in enumerate([("1", 1.0), ("2", 0.0), ("2", 0.0)])]
    rows += [sample("b", 0, "5", 1.0), {"id": "c", "task": "toy", "mode": "parallel", "sample": 0, "prompt": "q", "turns": []}]
    path = tmp_path / "episodes.parallel.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parallel = metrics_of_file(path, task=ToyTask())
    assert (parallel["samples"], parallel["samples_max"], parallel["problems_without_samples"]) == (1, 3, 1)
    assert parallel["acc@t1"] == round(100 * (1 / 3 + 1) / 2, 2) and parallel["m3@t1"] == 0.0
    sequential = {"num_problems": 3, "turns": 1, "acc@t1": 0.0, "p1@t1": 0.0, "m1@t1": 0.0}
    out = tmp_path / "report"
    out.mkdir()
    write_report(
        EvalResult(out, sequential, parallel, 1.0, 0, 0.0), task="toy", model="m", settings=EvalSettings(turns=1, parallel_samples=3)
    )
    report = (out / "report.md").read_text()
    assert "different parallel sample counts (problems: 1 with 3, 1 with 1, 1 with 0)" in report
    assert "for k above 1 average only the problems with at least k samples" in report
    assert "1 problem(s) have no parallel sample" in report
    assert json.loads((out / "metrics.json").read_text())["parallel"]["sample_counts"] == {"0": 1, "1": 1, "3": 1}


def test_parallel_sample_zero_is_turn_one_copied_not_generated_again(tmp_path, tiny_model_dir):
    from riselm.generators import build
    from riselm.rollout.engine import Step, rollout
    from riselm.settings import GeneratorSettings
    from riselm.tasks import get_task

    task = get_task("arithmetic", digits=2, train_size=5, test_size=4)
    problems = task.load("test")
    settings = EvalSettings(turns=2, parallel_samples=3, sampling=SamplingSettings(max_new_tokens=6))
    generator = build(GeneratorSettings(backend="hf", batch_size=8), str(tiny_model_dir))
    evaluate(task, generator, tmp_path / "eval", settings, problems=problems, show_progress=False)
    assert generator.stats.completions == 4 * 2 + 4 * 2  # two sequential turns, parallel samples 1 and 2

    from riselm.evaluation.evaluate import parallel_spec

    generated = rollout(task, problems, [Step(generator)], parallel_spec(settings), tmp_path / "generated.jsonl", show_progress=False)
    copied = {(e["id"], e["sample"]): e for e in map(json.loads, (tmp_path / "eval" / "episodes.parallel.jsonl").read_text().splitlines())}
    assert len(copied) == 12 and all(copied[e.key] == e.to_dict() for e in generated)  # the copy is what sampling gives
