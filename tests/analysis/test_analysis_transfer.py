"""transfer: a run's stage models evaluated on another task, with the run's own evaluation settings."""

import json

import pytest
import yaml

from riselm.analysis.transfer import TaskSpec, transfer
from tests.analysis.helpers import stage_row, write_summary

EVAL = {"turns": 2, "parallel_samples": 2, "window": 2, "sampling": {"max_new_tokens": 6}, "chunk_size": 8}


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    """boost has the tiny model; iter1's model was never saved (skipped)."""
    keys = ["m1@t1", "m1@t2", "p1@t2"]
    run = write_summary(tmp_path / "run", keys, [
        stage_row("boost", tiny_model_dir, keys, [0.0, 0.0, 0.0], 2),
        stage_row("iter1", tmp_path / "gone", keys, [0.0, 0.0, 0.0], 2),
    ])
    config = {"eval": EVAL, "learner": {"backend": "hf", "batch_size": 8}, "seed": 3}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_task_specs():
    spec = TaskSpec.parse("arithmetic:digits=2,ops=+-")
    assert (spec.name, spec.options, spec.label) == ("arithmetic", {"digits": 2, "ops": "+-"}, "arithmetic_digits=2_ops=+-")
    assert TaskSpec.parse("gsm8k") == TaskSpec("gsm8k", {})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        TaskSpec.parse("arithmetic:digits")


def test_transfer_to_another_difficulty(tmp_path, tiny_run):
    out = tmp_path / "transfer"
    result = transfer(tiny_run, ["arithmetic:digits=1", "arithmetic:digits=2"], out, limit=2)
    assert result["seed"] == 3 and result["settings"]["turns"] == 2  # the run's own settings
    assert [(r["stage"], r["task"]) for r in result["rows"]] == [("boost", "arithmetic_digits=1"), ("boost", "arithmetic_digits=2")]
    row = result["rows"][0]
    assert (row["problems"], row["turns"], row["samples"]) == (2, 2, 2)
    for key in ("m1@t1", "mP@t1", "m1@tK", "p1@tK"):
        assert 0.0 <= row[key] <= 100.0
    metrics = json.loads((out / "boost" / "arithmetic_digits=1" / "metrics.json").read_text())
    assert metrics["sequential"]["m1@t2"] == row["m1@tK"]
    episodes = out / "boost" / "arithmetic_digits=2" / "episodes.sequential.jsonl"
    assert "=?" in json.loads(episodes.read_text().splitlines()[0])["prompt"]
    table = (out / "transfer.md").read_text()
    assert "| boost | arithmetic_digits=2 | 2 |" in table and "m1@t2 − m1@t1" in table
    assert (out / "transfer.png").exists()

    # a second call resumes: nothing is generated again, the numbers stay
    before = episodes.read_text()
    again = transfer(tiny_run, ["arithmetic:digits=1", "arithmetic:digits=2"], out, limit=2)
    assert episodes.read_text() == before and again["rows"] == result["rows"]


def test_an_unknown_task_fails_before_any_model_loads(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="unknown task 'arith'"):
        transfer(tiny_run, ["arith"], tmp_path / "t")
    assert not (tmp_path / "t").exists()
