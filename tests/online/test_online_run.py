"""`method: online` end to end on a tiny model: summary stages, monitoring files, resume equals an uninterrupted run."""

import json

import pytest
import torch

from riselm.online import update
from riselm.run.demo import prepare_demo
from riselm.run.pipeline import run_pipeline

TINY = [
    "method=online",
    "threads=1",
    "task.train_limit=12",
    "task.eval_limit=3",
    "task.options.train_size=30",
    "task.options.test_size=5",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "boost.history_turns=1",
    "boost.train.batch_size=8",
    "online.steps=4",
    "online.problems_per_step=3",
    "online.episodes_per_problem=2",
    "online.turns=2",
    "online.candidates=[1, 2]",
    "online.sampling.max_new_tokens=10",
    "online.learning_rate=1e-3",
    "online.save_every=2",
    "online.eval_every=2",
    "eval.turns=2",
    "eval.parallel_samples=2",
    "eval.sampling.max_new_tokens=10",
    "learner.batch_size=64",
    "online.report_to=[tensorboard]",
]


def run(out, extra=()):
    return run_pipeline(prepare_demo(out, TINY + list(extra)), show_progress=False)


def final_weights(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out / "online" / "final").state_dict()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("online")
    return out, run(out)


def test_stages_monitoring_and_summary(finished):
    out, stages = finished
    assert [s.name for s in stages] == ["boost", "online@2", "online"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["keys"] == ["m1@t1", "m2@t1", "m1@t2", "p1@t2"]
    assert summary["stages"][-1]["name"] == "online" and len(summary["stages"][-1]["acc@tk"]) == 2
    rows = [json.loads(line) for line in (out / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "acc@t1",
        "reward@t1",
        "wrong->right",
        "right->wrong",
        "no_answer",
        "kl",
        "entropy",
        "tokens_per_s",
        "generate_s",
        "score_s",
        "update_s",
        "loss",
    ):
        assert key in rows[0], key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # the policy starts as its reference
    assert rows[0]["episodes"] == 3 * 2
    assert (out / "online" / "curves.png").exists() and (out / "online" / "eval-step2" / "metrics.json").exists()
    assert not list((out / "online").glob("checkpoint-*"))  # the final model is complete: resume points go
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "online" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("acc_at_t1")] == [1, 2, 3, 4]
    assert {"kl", "entropy", "no_answer", "wrong_to_right", "tokens_per_s"} <= set(events.Tags()["scalars"])


def test_a_killed_run_resumes_to_the_same_result(finished, tmp_path, monkeypatch):
    out, _ = finished
    original = update.PolicyUpdater.step

    def killed_at_step_3(self, rows, step):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return original(self, rows, step)

    monkeypatch.setattr(update.PolicyUpdater, "step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert (tmp_path / "online" / "checkpoint-2").is_dir() and not (tmp_path / "online" / "final").exists()
    monkeypatch.setattr(update.PolicyUpdater, "step", original)
    run(tmp_path)
    for (name, a), b in zip(final_weights(out).items(), final_weights(tmp_path).values()):
        assert torch.equal(a, b), name
    steps = lambda d: [json.loads(line) for line in (d / "online" / "metrics.jsonl").read_text().splitlines()]
    drop = ("generate_s", "score_s", "update_s", "step_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in steps(tmp_path)] == [
        {k: v for k, v in r.items() if k not in drop} for r in steps(out)
    ]
    assert (
        json.loads((tmp_path / "summary.json").read_text())["stages"][-1]["m1@t2"]
        == json.loads((out / "summary.json").read_text())["stages"][-1]["m1@t2"]
    )


def test_a_run_killed_during_an_evaluation_finishes_it_on_resume(tmp_path, monkeypatch):
    from riselm.run import online as loop

    original = loop._evaluate_live

    def killed(*args):
        raise KeyboardInterrupt("killed during the evaluation after step 2")

    monkeypatch.setattr(loop, "_evaluate_live", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert (tmp_path / "online" / "checkpoint-2").is_dir() and not (tmp_path / "online" / "eval-step2" / "metrics.json").exists()
    monkeypatch.setattr(loop, "_evaluate_live", original)
    stages = run(tmp_path)
    assert [s.name for s in stages] == ["boost", "online@2", "online"]


def test_the_curves_draw_a_moving_mean_that_skips_missing_values():
    from riselm.run.monitor import _moving_mean

    assert _moving_mean([10.0, None, 20.0, 30.0, 40.0], 3) == [10.0, 10.0, 15.0, 25.0, 30.0]
    assert _moving_mean([None, None], 10) == [None, None]


def test_fresh_context_samples_after_a_wrong_turn_from_the_question_and_trains_after_the_history(tmp_path, monkeypatch):
    """`online.context: fresh` reaches the rollout, and each fresh turn's rows hold its windowed history
    rendered by the run's tokenizer (not the question the candidates were sampled from)."""
    from transformers import AutoTokenizer

    from riselm.generation.base import prompt_ids
    from riselm.run import online as loop

    seen = []
    original = loop.action_rows

    def recording(groups, *args):
        rows = original(groups, *args)
        seen.append(([e for g in groups for e in g], rows))
        return rows

    monkeypatch.setattr(loop, "action_rows", recording)
    extra = ["online.context=fresh", "online.objective=awr", "online.turns=3", "online.window=2", "online.steps=2", "online.eval_every=0"]
    run(tmp_path, extra)
    tok = AutoTokenizer.from_pretrained(tmp_path / "online" / "final")
    fresh = 0
    for episodes, rows in seen:
        prompts = {(r.turn, r.prompt_ids) for r in rows}
        for e in episodes:
            for t, turn in enumerate(e.turns):
                if turn.context == "fresh":
                    fresh += 1
                    assert list(turn.prompt_ids) == prompt_ids(tok, e.messages(upto=0))
                    assert (t, tuple(prompt_ids(tok, e.messages(upto=t, window=2)))) in prompts
    assert fresh >= 4
