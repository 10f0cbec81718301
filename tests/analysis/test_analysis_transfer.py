"""transfer: a run's stage models evaluated on another task, with the run's own evaluation settings."""

import json

import pytest
import yaml

from riselm.analysis.runs import read_run
from riselm.analysis.transfer import TaskSpec, eval_identity, run_eval_settings, run_generator_settings, transfer
from riselm.rundir import RunDirError, claim
from tests.analysis.helpers import stage_row, write_summary

EVAL = {"turns": 2, "parallel_samples": 2, "window": 2, "sampling": {"max_new_tokens": 6}, "chunk_size": 8}


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    """boost has the tiny model; iter1's model was never saved (skipped)."""
    keys = ["m1@t1", "m1@t2", "p1@t2"]
    run = write_summary(
        tmp_path / "run",
        keys,
        [
            stage_row("boost", tiny_model_dir, keys, [0.0, 0.0, 0.0], 2),
            stage_row("iter1", tmp_path / "gone", keys, [0.0, 0.0, 0.0], 2),
        ],
    )
    config = {"eval": EVAL, "learner": {"backend": "hf", "batch_size": 8}, "seed": 3}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_task_specs():
    spec = TaskSpec.parse("arithmetic:digits=2,ops=+-")
    assert (spec.name, spec.options, spec.label) == ("arithmetic", {"digits": 2, "ops": "+-"}, "arithmetic_digits=2_ops=+-")
    assert TaskSpec.parse("gsm8k") == TaskSpec("gsm8k", {})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        TaskSpec.parse("arithmetic:digits")


def vote_of_two(first, second):
    """Right or wrong, the majority of two answers: equal answers agree, and a tie goes to the later
    one unless it has no answer (by hand, independently of riselm.evaluation.metrics)."""
    if second["pred"] is not None:
        return second["reward"] == 1.0
    return first["pred"] is not None and first["reward"] == 1.0


def hand_count(folder):
    """m1@t1, m2@t1, m1@t2, p1@t2 of a 2-turn, 2-sample evaluation folder, counted from its episodes."""
    read = lambda name: [json.loads(line) for line in (folder / f"episodes.{name}.jsonl").read_text().splitlines()]
    sequential, parallel = read("sequential"), read("parallel")
    samples = {}
    for e in sorted(parallel, key=lambda e: e["sample"]):
        samples.setdefault(e["id"], []).append(e["turns"][0])
    share = lambda hits, n: round(100.0 * hits / n, 2)
    n = len(sequential)
    assert n == len(samples) == 2 and all(len(e["turns"]) == 2 for e in sequential)
    return {
        "m1@t1": share(sum(e["turns"][0]["reward"] == 1.0 for e in sequential), n),
        "mP@t1": share(sum(vote_of_two(*s) for s in samples.values()), n),
        "m1@tK": share(sum(vote_of_two(*e["turns"]) for e in sequential), n),
        "p1@tK": share(sum(any(t["reward"] == 1.0 for t in e["turns"]) for e in sequential), n),
    }


def seed_episodes(folder, task, problems):
    """Hand-written episodes for a finished evaluation (resumed, nothing generated): with values known by hand,
    m1@t1 50, m2@t1 100, m1@t2 0, p1@t2 50."""

    def turn(problem, right):
        pred = problem.answer if right else str(int(problem.answer) + 1)
        return {"response": f"\\boxed{{{pred}}}", "pred": pred, "reward": 1.0 if right else 0.0}

    a, b = problems
    row = lambda p, mode, sample, turns: {
        "id": p.id,
        "task": task.name,
        "mode": mode,
        "sample": sample,
        "prompt": task.prompt(p),
        "turns": turns,
    }
    sequential = [row(a, "sequential", 0, [turn(a, True), turn(a, False)]), row(b, "sequential", 0, [turn(b, False), turn(b, False)])]
    parallel = [row(a, "parallel", 0, [turn(a, False)]), row(a, "parallel", 1, [turn(a, True)])]
    parallel += [row(b, "parallel", i, [turn(b, True)]) for i in range(2)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sequential", sequential), ("parallel", parallel)):
        (folder / f"episodes.{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_transfer_to_another_difficulty(tmp_path, tiny_run):
    out = tmp_path / "transfer"
    digits1 = TaskSpec.parse("arithmetic:digits=1").build()
    run = read_run(tiny_run)  # hand-made episodes in a folder claimed for exactly this evaluation
    identity = eval_identity(
        run.stage_model("boost"), "arithmetic_digits=1", None, None, 2, 3, run_eval_settings(run), run_generator_settings(run)
    )
    claim(out / "boost" / "arithmetic_digits=1", identity)
    seed_episodes(out / "boost" / "arithmetic_digits=1", digits1, digits1.load(limit=2))
    result = transfer(tiny_run, ["arithmetic:digits=1", "arithmetic:digits=2"], out, limit=2)
    assert result["seed"] == 3 and result["settings"]["turns"] == 2  # the run's own settings
    assert [(r["stage"], r["task"]) for r in result["rows"]] == [("boost", "arithmetic_digits=1"), ("boost", "arithmetic_digits=2")]
    row = result["rows"][0]
    assert (row["problems"], row["turns"], row["samples"]) == (2, 2, 2)
    columns = ("m1@t1", "mP@t1", "m1@tK", "p1@tK")
    assert {key: row[key] for key in columns} == {"m1@t1": 50.0, "mP@t1": 100.0, "m1@tK": 0.0, "p1@tK": 50.0}
    assert hand_count(out / "boost" / "arithmetic_digits=1") == {key: row[key] for key in columns}
    generated = result["rows"][1]  # the tiny model's own episodes, counted by hand
    assert hand_count(out / "boost" / "arithmetic_digits=2") == {key: generated[key] for key in columns}
    metrics = json.loads((out / "boost" / "arithmetic_digits=1" / "metrics.json").read_text())
    assert metrics["sequential"]["m1@t2"] == row["m1@tK"] and metrics["parallel"]["m2@t1"] == row["mP@t1"]
    episodes = out / "boost" / "arithmetic_digits=2" / "episodes.sequential.jsonl"
    assert "=?" in json.loads(episodes.read_text().splitlines()[0])["prompt"]
    table = (out / "transfer.md").read_text()
    assert "| boost | arithmetic_digits=1 | 2 | 50.0 | 100.0 | 0.0 | 50.0 | -50.0 |" in table
    assert "| boost | arithmetic_digits=2 | 2 |" in table and "m1@t2 − m1@t1" in table
    assert (out / "transfer.png").exists()

    # a second call resumes: nothing is generated again, the numbers stay
    before = episodes.read_text()
    again = transfer(tiny_run, ["arithmetic:digits=1", "arithmetic:digits=2"], out, limit=2)
    assert episodes.read_text() == before and again["rows"] == result["rows"]
    # another evaluation into the same folders stops, naming the setting, and mixes nothing in
    with pytest.raises(RunDirError, match="limit=2, not limit=3"):
        transfer(tiny_run, ["arithmetic:digits=1", "arithmetic:digits=2"], out, limit=3)
    assert episodes.read_text() == before


def test_an_unknown_task_fails_before_any_model_loads(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="unknown task 'arith'"):
        transfer(tiny_run, ["arith"], tmp_path / "t")
    assert not (tmp_path / "t").exists()
