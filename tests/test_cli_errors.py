"""Every user mistake on the command line is one line naming the file, line, key or option, and exit code 2."""

import errno
import json

import pytest
from typer.testing import CliRunner

from riselm.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_clean_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error: " in line]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output  # one line, at the end
    message = errors[0]
    for word in words:
        assert str(word) in message, (word, message)


@pytest.fixture
def scored_input(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1", "response": "\\\\boxed{1}"}\n')
    return path


def test_an_output_path_under_a_regular_file(tmp_path, scored_input):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_clean_error(invoke("score", "--task", "gsm8k", scored_input, "-o", blocker / "out.jsonl"), "file")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_names_the_path_and_leaves_nothing_behind(tmp_path, scored_input, monkeypatch, code, words):
    import os

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code), str(tmp_path / "out.jsonl.tmp"))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    one_clean_error(invoke("score", "--task", "gsm8k", scored_input, "-o", tmp_path / "out.jsonl"), words, "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]  # no .tmp, no half-written output


def test_a_directory_given_to_metrics(tmp_path):
    one_clean_error(invoke("metrics", tmp_path), tmp_path, "directory")


@pytest.mark.parametrize(
    "turn, words",
    [
        ({"response": "a", "pred": "1"}, ["e.jsonl:1", "'reward'"]),
        ({"response": "a", "pred": "1", "reward": "high"}, ["e.jsonl:1", "'reward'", "number"]),
    ],
)
def test_a_turn_without_a_numeric_reward(tmp_path, turn, words):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"id": "x", "task": "gsm8k", "mode": "sequential", "turns": [turn]}) + "\n")
    one_clean_error(invoke("metrics", path), *words)


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "#### 1", "response": "x"}\n{"question": "\xff"}\n')
    one_clean_error(invoke("score", "--task", "gsm8k", path), "e.jsonl:2", "UTF-8")


@pytest.mark.parametrize(
    "option, value",
    [
        ("--turns", 0),
        ("--limit", -1),
        ("--parallel", -1),
        ("--chunk-size", 0),
        ("--max-new-tokens", 0),
        ("--top-p", 1.5),
        ("--batch-size", 0),
    ],
)
def test_eval_options_out_of_range_are_refused_by_name(tmp_path, option, value):
    one_clean_error(invoke("eval", "--model", tmp_path, "--task", "arithmetic", option, value, "--out", tmp_path / "o"), option)
    assert not (tmp_path / "o").exists()


def test_train_settings_name_the_bad_key(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("")
    one_clean_error(invoke("train", path, "--model", tmp_path, "--set", "learning_rate=-1"), "--set", "learning_rate")
    one_clean_error(invoke("train", path, "--model", tmp_path, "--window", "two"), "--window")


def test_run_whose_filter_leaves_no_samples(tmp_path, tiny_model_dir):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: {tmp_path / 'run'}\nmodel: {tiny_model_dir}\nthreads: 1\niterations: 1\n"
        "task: {name: arithmetic, options: {train_size: 4, test_size: 2}, train_limit: 2, eval_limit: 1}\n"
        "collect: {max_turns: 1, schedule: [{model: learner, n: 1}], sampling: {max_new_tokens: 4}}\n"
        "samples: {filter: success}\n"
        "eval: {turns: 1, parallel_samples: 0, sampling: {max_new_tokens: 4}}\n"
    )
    one_clean_error(invoke("run", config), "no training samples", "filter='success'")


def test_a_reference_improver_without_gold_solutions_stops_before_any_work(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "twelve plus seven?", "answer": 19}\n')  # not an expression: no worked solution
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: {tmp_path / 'run'}\nmodel: {tiny_model_dir}\nthreads: 1\niterations: 1\nboost: {{enabled: false}}\n"
        f"task: {{name: arithmetic, options: {{train_size: 4, test_size: 2}}, train_data: {data}, eval_limit: 1}}\n"
        "collect: {max_turns: 2, schedule: [{model: learner, n: 1}, {model: reference}], sampling: {max_new_tokens: 4}}\n"
        "eval: {turns: 1, parallel_samples: 0, sampling: {max_new_tokens: 4}}\n"
    )
    one_clean_error(invoke("run", config), "reference improver", "'arithmetic'")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["riselm.json"]  # refused before any stage ran


@pytest.mark.parametrize("option", ["--task-option", "--backend-option"])
def test_a_malformed_option_value_names_the_option(tmp_path, tiny_model_dir, option):
    result = invoke("eval", "--model", tiny_model_dir, "--task", "arithmetic", option, "digits={", "--out", tmp_path / "e")
    one_clean_error(result, "digits={", "not valid YAML")


def test_a_malformed_run_override_names_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path / 'run'}\n")
    one_clean_error(invoke("run", config, "train.learning_rate=[1,"), "train.learning_rate=[1,", "not valid YAML")


# ---- nonsense is refused, never silently accepted -----------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_an_episodes_file_without_episodes_is_an_error(tmp_path, text):
    path = tmp_path / "e.jsonl"
    path.write_text(text)
    one_clean_error(invoke("metrics", path), "e.jsonl", "no episodes")


def test_episodes_without_turns_are_reported_not_counted(tmp_path):
    path = tmp_path / "e.jsonl"
    rows = [
        {"id": "a", "task": "gsm8k", "mode": "sequential", "turns": []},
        {"id": "b", "task": "gsm8k", "mode": "sequential", "turns": [{"response": "\\boxed{1}", "pred": "1", "reward": 1}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("metrics", path, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["num_problems"] == 1 and metrics["episodes_without_turns"] == 1 and metrics["acc@t1"] == 100.0


@pytest.mark.parametrize(
    "content, words",
    [
        ("", ["d.jsonl", "no problems"]),
        ('{"question": 12345, "answer": "#### 4"}\n', ["d.jsonl:1", "'question'", "string"]),
    ],
    ids=["empty", "wrong-type"],
)
def test_bad_data_files_are_named(tmp_path, tiny_model_dir, content, words):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    one_clean_error(invoke("eval", "--model", tiny_model_dir, "--task", "gsm8k", "--data", data, "--out", tmp_path / "o"), *words)
    assert not (tmp_path / "o").exists()


def test_a_missing_local_data_file_is_named_at_once(tmp_path, tiny_model_dir):
    one_clean_error(
        invoke("eval", "--model", tiny_model_dir, "--task", "gsm8k", "--data", "nope.jsonl", "--out", tmp_path / "o"),
        "nope.jsonl",
        "no such file",
    )


def test_a_truncated_gzip_data_file_is_named(tmp_path, tiny_model_dir):
    import gzip

    whole = gzip.compress(b'{"question": "2+2?", "answer": "#### 4"}\n' * 50)
    data = tmp_path / "d.jsonl.gz"
    data.write_bytes(whole[: len(whole) // 2])
    one_clean_error(
        invoke("eval", "--model", tiny_model_dir, "--task", "gsm8k", "--data", data, "--out", tmp_path / "o"),
        "d.jsonl.gz",
        "damaged or truncated",
    )


def test_a_damaged_weight_file_is_named(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    result = invoke("eval", "--model", model, "--task", "arithmetic", "--limit", 1, "--turns", 1, "--parallel", 0, "--out", tmp_path / "o")
    one_clean_error(result, str(model), "model.safetensors", "damaged")


def test_infinite_floats_are_refused_and_json_files_stay_valid(tmp_path):
    from riselm.files import write_json

    one_clean_error(
        invoke("eval", "--model", tmp_path, "--task", "arithmetic", "--temperature", "inf", "--out", tmp_path / "o"),
        "--temperature",
        "finite",
    )
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"a": float("nan")})
    assert not list(tmp_path.glob("*x.json*"))


def test_compare_refuses_a_non_numeric_metric(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"keys": ["m1@t1"], "stages": [{"name": "iter1", "m1@t1": "high"}]}))
    one_clean_error(invoke("compare", run, "--out", tmp_path / "c"), "summary.json", "m1@t1", "number")


# ---- nothing is written half-way ----------------------------------------------------------------


def test_a_report_that_cannot_be_written_leaves_the_old_one_whole(tmp_path, tiny_model_dir, monkeypatch):
    import errno
    import os

    out = tmp_path / "e"
    args = [
        "eval",
        "--model",
        tiny_model_dir,
        "--task",
        "arithmetic",
        "--limit",
        2,
        "--turns",
        1,
        "--parallel",
        0,
        "--max-new-tokens",
        4,
        "--task-option",
        "test_size=4",
        "--task-option",
        "train_size=4",
        "--out",
        out,
    ]
    assert invoke(*args).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("metrics.json", "report.md", "accuracy.png")}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    one_clean_error(invoke(*args), "No space left")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
