"""The `riselm` command: each subcommand end to end, and clean errors for bad input."""

import json

from typer.testing import CliRunner

from riselm.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_tasks_lists_every_task():
    result = invoke("tasks")
    assert result.exit_code == 0
    for name in ("gsm8k", "math", "arithmetic", "mbpp", "humaneval", "conala"):
        assert name in result.output


def test_score_adds_pred_and_reward_to_every_row(tmp_path):
    rows = [
        {"question": "q1", "answer": "work\n#### 1,600", "response": "so \\boxed{1600}"},
        {"question": "q2", "answer": "#### 7", "response": "I think \\boxed{8}", "extra": 1},
        {"question": "q3", "answer": "#### 7", "response": "no idea"},
    ]
    src = tmp_path / "r.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("score", "--task", "gsm8k", src, "--unparsable-reward", "-1")
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["pred"], r["reward"]) for r in out] == [("1600", 1.0), ("8", 0.0), (None, -1.0)]
    assert out[1]["extra"] == 1


def test_score_malformed_row_names_file_and_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "q", "answer": "#### 1", "response": "x"}\n{"question": "q", "response": "x"}\n')
    result = invoke("score", "--task", "gsm8k", src)
    assert result.exit_code == 2
    assert f"{src}:2" in result.output and "answer" in result.output


def test_unknown_task_lists_known_ones(tmp_path):
    result = invoke("eval", "--task", "chess", "--model", tmp_path)
    assert result.exit_code == 2 and "known tasks" in result.output and "gsm8k" in result.output


def test_eval_then_metrics_json(tmp_path, tiny_model_dir):
    out = tmp_path / "eval"
    result = invoke(
        "eval",
        "--model",
        tiny_model_dir,
        "--task",
        "arithmetic",
        "--limit",
        3,
        "--turns",
        2,
        "--parallel",
        2,
        "--max-new-tokens",
        8,
        "--out",
        out,
        "--task-option",
        "test_size=20",
        "--task-option",
        "train_size=20",
    )
    assert result.exit_code == 0, result.output
    assert (out / "accuracy.png").exists() and "| 2 |" in (out / "report.md").read_text()
    seq = invoke("metrics", out / "episodes.sequential.jsonl", "--json")
    metrics = json.loads(seq.output)
    assert metrics["num_problems"] == 3 and {"acc@t2", "p1@t2", "m1@t2"} <= set(metrics)
    par = json.loads(invoke("metrics", out / "episodes.parallel.jsonl", "--json").output)
    assert {"m2@t1", "pass@2"} <= set(par)


def test_bad_task_option_is_a_clean_error(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text('{"question": "q", "answer": "#### 1", "response": "x"}\n')
    result = invoke("score", "--task", "gsm8k", src, "--task-option", "colour=blue")
    assert result.exit_code == 2 and "colour" in result.output


def test_run_with_bad_config_key_fails_with_its_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iterations: 1\ntrain:\n  lr: 3\n")
    result = invoke("run", cfg)
    assert result.exit_code == 2 and "train.lr" in result.output


def test_collect_then_train(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "c"
    result = invoke(  # the untrained model rarely stops early: a long limit leaves finished (trainable) turns
        "collect",
        "--model",
        tiny_model_dir,
        "--task",
        "arithmetic",
        "--limit",
        3,
        "--max-turns",
        2,
        "--schedule",
        "learner:1,learner:2",
        "--max-new-tokens",
        400,
        "--out",
        out,
        "--task-option",
        "train_size=20",
        "--task-option",
        "test_size=5",
    )
    assert result.exit_code == 0, result.output
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 3 and all(e["mode"] == "collect" for e in episodes)
    assert any(not t["truncated"] for e in episodes for t in e["turns"])
    trained = invoke(
        "train",
        out / "episodes.jsonl",
        "--model",
        tiny_model_dir,
        "--out",
        tmp_path / "t",
        "--set",
        "epochs=1",
        "--set",
        "batch_size=2",
        "--set",
        "grad_accum=1",
        "--set",
        "warmup_ratio=0",
        "--set",
        "learning_rate=1e-2",
    )
    assert trained.exit_code == 0, trained.output
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "t" / "final").state_dict()
    assert max((after[k] - before[k]).abs().max() for k in before) > 1e-4  # the collected turns were trained


def test_collect_schedule_naming_an_undefined_model_fails(tmp_path, tiny_model_dir):
    result = invoke("collect", "--model", tiny_model_dir, "--task", "arithmetic", "--schedule", "learner:1,teacher:4", "--out", tmp_path)
    assert result.exit_code == 2 and "teacher" in result.output


def test_eval_with_self_refine_records_the_reviews(tmp_path, tiny_model_dir):
    out = tmp_path / "sr"
    result = invoke(
        "eval",
        "--model",
        tiny_model_dir,
        "--task",
        "arithmetic",
        "--limit",
        2,
        "--turns",
        2,
        "--parallel",
        0,
        "--feedback",
        "self_refine",
        "--max-new-tokens",
        6,
        "--out",
        out,
        "--task-option",
        "test_size=4",
        "--task-option",
        "train_size=4",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "episodes.sequential.jsonl").read_text().splitlines()]
    assert all(r["turns"][0]["critique_request"] and r["turns"][0]["feedback"].startswith("Using your review") for r in rows)
