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
    [({"response": "a", "pred": "1"}, ["e.jsonl:1", "'reward'"]), ({"response": "a", "pred": "1", "reward": "high"}, ["e.jsonl:1", "'reward'", "number"])],
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
    [("--turns", 0), ("--limit", -1), ("--parallel", -1), ("--chunk-size", 0), ("--max-new-tokens", 0), ("--top-p", 1.5), ("--batch-size", 0)],
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


@pytest.mark.parametrize("option", ["--task-option", "--backend-option"])
def test_a_malformed_option_value_names_the_option(tmp_path, tiny_model_dir, option):
    result = invoke("eval", "--model", tiny_model_dir, "--task", "arithmetic", option, "digits={", "--out", tmp_path / "e")
    one_clean_error(result, "digits={", "not valid YAML")


def test_a_malformed_run_override_names_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path / 'run'}\n")
    one_clean_error(invoke("run", config, "train.learning_rate=[1,"), "train.learning_rate=[1,", "not valid YAML")
