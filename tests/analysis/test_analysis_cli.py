"""`riselm compare` and `riselm analyze …` on a fresh Typer app: each command once, and clean one-line errors."""

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from riselm.analysis.cli import register
from tests.analysis.helpers import (
    episode,
    one_clean_error,
    stage_row,
    write_jsonl,
    write_summary,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def app():
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command("version")  # a second command, so that typer keeps command names (as riselm's app does)
    def version() -> None:
        typer.echo("0")

    register(app)
    return app


def invoke(app, *args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    from riselm.tasks import get_task

    task = get_task("arithmetic", digits=1)
    problem = task.load(limit=1)[0]
    run = write_summary(tmp_path / "run", ["m1@t1"], [stage_row("boost", tiny_model_dir, ["m1@t1"], [0.0], 1)])
    config = {"eval": {"turns": 1, "parallel_samples": 0, "sampling": {"max_new_tokens": 4}}, "learner": {"backend": "hf"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_jsonl(run / "boost" / "eval" / "episodes.sequential.jsonl", [episode("test-0", [0], prompt=task.prompt(problem))])
    return run


def test_compare(app, tmp_path, rise_run, online_run):
    result = invoke(app, "compare", rise_run, online_run, "--out", tmp_path / "c", "--all-stages", "--no-count-tokens")
    assert result.exit_code == 0, result.output
    assert "| runs2/rise | online@2 |" in result.output and (tmp_path / "c" / "compare.png").exists()


def test_compare_without_summary(app, tmp_path, rise_run):
    (tmp_path / "half").mkdir()
    one_clean_error(invoke(app, "compare", rise_run, tmp_path / "half", "--out", tmp_path / "c"), "half", "summary.json")


def test_transitions(app, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [episode("a", [0, 1]), episode("b", [1, 1])])
    result = invoke(app, "analyze", "transitions", path, "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert "| 2 | 2 | 1 (50.0%) | 0 (0.0%) | 1 (50.0%) | 0 (0.0%) | 100.0 | 0.0 |" in result.output


def test_transitions_errors(app, tmp_path):
    one_clean_error(invoke(app, "analyze", "transitions", tmp_path / "none.jsonl", "--out", tmp_path / "t"), "none.jsonl", "no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(episode("a", [0, 1])) + "\n" + json.dumps({"id": "b", "task": "arithmetic", "mode": "sequential"}) + "\n")
    one_clean_error(invoke(app, "analyze", "transitions", bad, "--out", tmp_path / "t"), "bad.jsonl:2", "turns")


def test_fixes(app, tmp_path):
    parallel = write_jsonl(tmp_path / "p.jsonl", [episode("a", [r], mode="parallel", sample=s) for s, r in enumerate([0, 1])])
    sequential = write_jsonl(tmp_path / "s.jsonl", [episode("a", [0, 1, 1], preds=["1", "2", "2"])])
    result = invoke(app, "analyze", "fixes", parallel, sequential, "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    assert "| 1 | 1 of 1 | 0.0 | 100.0 | 100.0 |" in result.output
    one_clean_error(invoke(app, "analyze", "fixes", sequential, parallel, "--out", tmp_path / "f"), "s.jsonl", "expected parallel")


def test_nll(app, tmp_path, tiny_run):
    args = ["analyze", "nll", tiny_run, "--task", "arithmetic", "--task-option", "digits=1", "--limit", "2", "--out", tmp_path / "n"]
    result = invoke(app, *args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "n" / "nll.json").read_text())
    assert saved["rows"][0]["own_attempts"] == 1 and saved["rows"][0]["problems"] == 2
    one_clean_error(invoke(app, *args, "--stage", "iter3"), "no stage 'iter3'")
    one_clean_error(invoke(app, *args, "--attempts", "mine"), "--attempts", "mine")


def test_transfer(app, tmp_path, tiny_run):
    out = tmp_path / "x"
    result = invoke(app, "analyze", "transfer", tiny_run, "--task", "arithmetic:digits=2", "--limit", "1", "--turns", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "| boost | arithmetic_digits=2 | 1 |" in result.output
    assert json.loads((out / "transfer.json").read_text())["settings"]["turns"] == 2
    one_clean_error(invoke(app, "analyze", "transfer", tiny_run, "--task", "arith", "--out", out), "unknown task 'arith'")
    one_clean_error(invoke(app, "analyze", "transfer", tiny_run, "--task", "arithmetic", "--turns", "0", "--out", out), "--turns")
