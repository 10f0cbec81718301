"""benchmarks/recipe_time.py on a finished tiny run: each step's recorded seconds, its work, its bound."""

import json

import pytest

from riselm.hardware import bound_tokens_per_s
from riselm.jsonl import read_jsonl
from riselm.run.demo import prepare_demo
from riselm.run.pipeline import run_pipeline
from tests.bench import load_benchmark
from tests.test_pipeline import TINY


@pytest.fixture(scope="module")
def recipe_time():
    return load_benchmark("recipe_time")


@pytest.fixture(scope="module")
def measured(tmp_path_factory, recipe_time):
    out = tmp_path_factory.mktemp("recipe")
    # two epochs in the iteration: its trained tokens are twice its rows' tokens
    run_pipeline(prepare_demo(out, [*TINY, "train.epochs=2"]), show_progress=False)
    return out, recipe_time.measure(out)


def test_every_step_the_run_timed_is_reported_with_its_recorded_seconds(measured):
    out, result = measured
    summary = json.loads((out / "summary.json").read_text())
    recorded = [(stage["name"], step, seconds) for stage in summary["stages"] for step, seconds in stage["seconds"].items()]
    assert [(s["stage"], s["step"], s["seconds"]) for s in result["steps"]] == recorded
    assert {(s["stage"], s["step"]) for s in result["steps"]} == {
        ("boost", "boost"),
        ("boost", "eval"),
        ("iter1", "collect"),
        ("iter1", "train"),
        ("iter1", "eval"),
    }


def test_generated_tokens_count_every_candidate(measured):
    out, result = measured
    turns = [turn for episode in read_jsonl(out / "iter1/collect/episodes.jsonl") for turn in episode["turns"]]
    assert any(turn["num_candidates"] == 2 for turn in turns)  # the schedule samples 2 from turn 2
    expected = sum(turn["num_tokens"] * turn["num_candidates"] for turn in turns)
    step = next(s for s in result["steps"] if s["step"] == "collect")
    assert step["tokens"] == expected and step["work"] == "decode"


def test_trained_tokens_are_the_rows_times_the_epochs(measured, recipe_time):
    from riselm.models import load_model_and_tokenizer

    out, result = measured
    _, tokenizer = load_model_and_tokenizer(out / "iter1/train/final")
    once = recipe_time.trained_tokens(out / "iter1/samples.jsonl", tokenizer, {"max_length": 512, "share_prefixes": True, "epochs": 1})
    step = next(s for s in result["steps"] if s["step"] == "train")
    assert once > 0 and step["tokens"] == 2 * once and step["work"] == "train"  # train.epochs=2


def test_turns_of_one_episode_that_share_a_prefix_are_counted_once(tmp_path, tiny_model_dir, recipe_time):
    from riselm.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    first = [{"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "3"}]
    second = [*first, {"role": "user", "content": "Incorrect. Try again"}, {"role": "assistant", "content": "2"}]
    turns = [(first, 0.0), (second, 1.0)]
    rows = [{"messages": m, "reward": r, "weight": 1.0, "episode_id": "e", "turn": t, "sample": 0} for t, (m, r) in enumerate(turns)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {"max_length": 512, "epochs": 1}
    apart = recipe_time.trained_tokens(path, tokenizer, {**settings, "share_prefixes": False})
    shared = recipe_time.trained_tokens(path, tokenizer, {**settings, "share_prefixes": True})
    path.write_text(json.dumps(rows[1]) + "\n")
    longest = recipe_time.trained_tokens(path, tokenizer, {**settings, "share_prefixes": False})
    assert shared == longest < apart  # the first turn is inside the second's row


def test_the_bound_is_the_tokens_over_the_bound_rate_and_the_total_adds_up(measured, recipe_time):
    _, result = measured
    for s in result["steps"]:
        rate = bound_tokens_per_s(result["parameters"], "fp32", s["work"])
        assert s["bound_seconds"] == pytest.approx(s["tokens"] / rate, rel=1e-6)
    text = recipe_time.report(result)
    wall = sum(s["seconds"] for s in result["steps"]) / 60
    assert f"| **all** | | | | **{wall:.1f}** |" in text


def test_a_folder_that_is_not_a_finished_run_is_a_one_line_error(tmp_path, recipe_time, capsys):
    (tmp_path / "config.yaml").write_text("method: rise\n")  # started, never finished
    with pytest.raises(SystemExit) as exit_info:
        recipe_time.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"{tmp_path}: no summary.json" in capsys.readouterr().err
