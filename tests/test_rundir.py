"""An output directory records what made it: the same command resumes, another one stops with one line."""

import json

import pytest
from typer.testing import CliRunner

from riselm.cli import app
from riselm.rundir import IDENTITY_FILE, RunDirError, claim, first_difference

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_claim_records_checks_and_moves_aside(tmp_path):
    out = tmp_path / "out"
    claim(out, {"task": "a", "sampling": {"temperature": 1.0}})
    (out / "episodes.jsonl").write_text("{}\n")
    claim(out, {"task": "a", "sampling": {"temperature": 1.0}})  # the same: resume
    with pytest.raises(RunDirError, match=r"sampling.temperature=1.0, not sampling.temperature=0.5.*--overwrite"):
        claim(out, {"task": "a", "sampling": {"temperature": 0.5}})
    claim(out, {"task": "b"}, overwrite=True)
    assert json.loads((out / IDENTITY_FILE).read_text()) == {"task": "b"} and not (out / "episodes.jsonl").exists()
    assert (tmp_path / "out.old-1" / "episodes.jsonl").read_text() == "{}\n"  # moved aside, never deleted
    claim(out, {"task": "c"}, overwrite=True)
    assert (tmp_path / "out.old-2" / IDENTITY_FILE).exists()


def test_a_directory_of_unknown_origin_is_not_taken_over(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="no record"):
        claim(tmp_path, {"task": "a"})


def test_first_difference_names_the_dotted_key():
    assert first_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}) == ("b.c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "z": None}) is None
    assert first_difference({"a": 1}, {"a": 1, "z": 5}) == ("z", None, 5)


EVAL = [
    "eval",
    "--task",
    "arithmetic",
    "--limit",
    2,
    "--turns",
    2,
    "--parallel",
    0,
    "--max-new-tokens",
    4,
    "--task-option",
    "test_size=5",
    "--task-option",
    "train_size=5",
]


def test_eval_resumes_only_its_own_work(tmp_path, tiny_model_dir):
    out = tmp_path / "e"
    assert invoke(*EVAL, "--model", tiny_model_dir, "--out", out).exit_code == 0
    before = (out / "episodes.sequential.jsonl").read_text()
    again = invoke(*EVAL, "--model", tiny_model_dir, "--out", out, "--chunk-size", 1, "--batch-size", 3)  # speed only
    assert again.exit_code == 0, again.output
    assert (out / "episodes.sequential.jsonl").read_text() == before
    one_error(invoke(*EVAL[:6], 3, *EVAL[7:], "--model", tiny_model_dir, "--out", out), "settings.turns=2", "settings.turns=3")
    one_error(invoke(*EVAL, "--model", tiny_model_dir, "--out", out, "--task-option", "digits=2"), "task_options")
    one_error(invoke(*EVAL, "--model", tmp_path / "nope", "--out", out), "model=")
    assert (out / "episodes.sequential.jsonl").read_text() == before  # nothing was mixed in
    moved = invoke(*EVAL[:6], 3, *EVAL[7:], "--model", tiny_model_dir, "--out", out, "--overwrite")
    assert moved.exit_code == 0, moved.output
    assert (tmp_path / "e.old-1" / "episodes.sequential.jsonl").read_text() == before
    assert all(len(json.loads(line)["turns"]) == 3 for line in (out / "episodes.sequential.jsonl").read_text().splitlines())


def test_backend_auto_is_recorded_as_the_backend_it_chose(tmp_path, tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    out = tmp_path / "e"
    assert invoke(*EVAL, "--model", tiny_model_dir, "--out", out, "--backend", "auto").exit_code == 0
    assert json.loads((out / "riselm.json").read_text())["backend"] == "hf"
    assert invoke(*EVAL, "--model", tiny_model_dir, "--out", out, "--backend", "hf").exit_code == 0  # the same run: resumes


def test_train_into_a_directory_of_other_data_stops(tmp_path, tiny_model_dir):
    from riselm.jsonl import write_jsonl
    from riselm.rollout.episode import Episode, Turn

    for name, answer in (("a", "4"), ("b", "5")):
        write_jsonl(
            tmp_path / f"{name}.jsonl", [Episode("p", "toy", "collect", "2+2?", [Turn(f"\\boxed{{{answer}}}", answer, 1.0)]).to_dict()]
        )
    args = ["--model", tiny_model_dir, "--out", tmp_path / "t", "--set", "max_steps=1", "--set", "save_steps=1"]
    assert invoke("train", tmp_path / "a.jsonl", *args).exit_code == 0
    final = (tmp_path / "t" / "final" / "model.safetensors").read_bytes()
    one_error(invoke("train", tmp_path / "b.jsonl", *args), "data=", "sha256:")
    assert (tmp_path / "t" / "final" / "model.safetensors").read_bytes() == final  # not replaced
    assert invoke("train", tmp_path / "a.jsonl", *args, "--set", "logging_steps=5").exit_code == 0  # bookkeeping only


def test_collect_into_a_directory_of_another_schedule_stops(tmp_path, tiny_model_dir):
    args = [
        "collect",
        "--model",
        tiny_model_dir,
        "--task",
        "arithmetic",
        "--limit",
        2,
        "--max-turns",
        2,
        "--max-new-tokens",
        4,
        "--task-option",
        "train_size=5",
        "--task-option",
        "test_size=5",
        "--out",
        tmp_path / "c",
    ]
    assert invoke(*args, "--schedule", "learner:1,learner:2").exit_code == 0
    one_error(invoke(*args, "--schedule", "learner:1,learner:3"), "settings.schedule")


def test_run_into_a_finished_run_of_another_task_stops(tmp_path, tiny_model_dir):
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path / 'run'}\nmodel: {tiny_model_dir}\ntask: {{name: arithmetic}}\n")
    from riselm.config import load_config
    from riselm.run.pipeline import run_identity

    claim(tmp_path / "run", run_identity(load_config(config)))
    (tmp_path / "run" / "summary.json").write_text("{}")
    one_error(invoke("run", config, "task.name=gsm8k"), 'task.name="arithmetic"', 'task.name="gsm8k"')
    assert (tmp_path / "run" / "summary.json").read_text() == "{}"
    # settings that only change the speed or which stages are evaluated may differ, and more iterations extend the run
    speed_and_stages = [
        "threads=1",
        "learner.batch_size=7",
        "iterations=5",
        "distributed.processes=1",
        "eval.boost=false",
        "eval.base=true",
    ]
    settings = load_config(config, speed_and_stages)
    claim(tmp_path / "run", run_identity(settings))


def _forget(out, *keys):
    """Make `out`'s record look written by an older riselm: one without the given (dotted) options."""
    from riselm.rundir import without

    record = out / IDENTITY_FILE
    record.write_text(json.dumps(without(json.loads(record.read_text()), keys)))


def test_a_run_of_an_older_riselm_resumes_when_new_options_keep_their_defaults(tmp_path, tiny_model_dir):
    from riselm.config import load_config
    from riselm.run.pipeline import claim_run

    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path / 'run'}\nmodel: {tiny_model_dir}\ntask: {{name: arithmetic}}\n")
    claim_run(tmp_path / "run", load_config(config))
    (tmp_path / "run" / "summary.json").write_text("{}")
    # before `boost.wrong_attempts`, `samples.normalize` and a schedule step's `context` existed
    record = json.loads((tmp_path / "run" / IDENTITY_FILE).read_text())
    for step in record["collect"]["schedule"]:
        del step["context"]
    (tmp_path / "run" / IDENTITY_FILE).write_text(json.dumps(record))
    _forget(tmp_path / "run", "boost.wrong_attempts", "samples.normalize")
    claim_run(tmp_path / "run", load_config(config))  # resumes
    with pytest.raises(RunDirError, match='boost.wrong_attempts="corrupt", not boost.wrong_attempts="own"'):
        claim_run(tmp_path / "run", load_config(config, ["boost.wrong_attempts=own"]))  # not what the old run did
    one_error(invoke("run", config, "samples.normalize=true"), "samples.normalize=false")


def test_commands_of_an_older_riselm_resume_when_new_options_keep_their_defaults(tmp_path, tiny_model_dir):
    from riselm.jsonl import write_jsonl
    from riselm.rollout.episode import Episode, Turn

    out = tmp_path / "e"
    assert invoke(*EVAL, "--model", tiny_model_dir, "--out", out).exit_code == 0
    _forget(out, "settings.feedback", "settings.system")
    assert invoke(*EVAL, "--model", tiny_model_dir, "--out", out).exit_code == 0
    one_error(invoke(*EVAL, "--model", tiny_model_dir, "--out", out, "--feedback", "self_refine"), "settings.feedback")

    write_jsonl(tmp_path / "a.jsonl", [Episode("p", "toy", "collect", "2+2?", [Turn("\\boxed{4}", "4", 1.0)]).to_dict()])
    args = ["train", tmp_path / "a.jsonl", "--model", tiny_model_dir, "--out", tmp_path / "t", "--set", "max_steps=1"]
    assert invoke(*args).exit_code == 0
    _forget(tmp_path / "t", "samples.normalize", "samples.wrong_weight", "settings.precision")
    assert invoke(*args).exit_code == 0, invoke(*args).output
    one_error(invoke(*args, "--set", "precision=bf16"), "settings.precision")


def test_the_demo_claims_its_directory_before_writing_its_model(tmp_path):
    from riselm.run.demo import prepare_demo

    prepare_demo(tmp_path / "d", ["iterations=1"])
    assert (tmp_path / "d" / IDENTITY_FILE).exists() and (tmp_path / "d" / "init" / "config.json").exists()
    prepare_demo(tmp_path / "d", ["iterations=1"])  # resumes
    with pytest.raises(RunDirError, match="collect.max_turns"):
        prepare_demo(tmp_path / "d", ["collect.max_turns=2"])
