"""Run configs: shipped YAMLs validate, overrides apply, and every wrong key or value is a clear error."""

from pathlib import Path

import pytest

from riselm.config import ConfigError, load_config, parse_schedule

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_start_with_their_command(path):
    assert path.read_text().splitlines()[0] == f"# riselm run configs/{path.name}"
    load_config(path, check_models=False)  # their models are not at hand here


def test_overrides_reach_nested_keys():
    cfg = load_config(
        None, check_models=False, overrides=["iterations=3", "train.learning_rate=2e-5", "collect.schedule=[{model: learner, n: 4}]"]
    )
    assert cfg.iterations == 3 and cfg.train.learning_rate == 2e-5
    assert [(s.model, s.n) for s in cfg.collect.schedule] == [("learner", 4)]


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.learning_rate=1", "unknown key 'trian'"),
        ("train.lerning_rate=1", "unknown key 'train.lerning_rate'"),
        ("eval.turns=zero", "eval.turns"),
        ("eval.turns=0", "eval.turns"),
        ("task.eval_limit=-1", "task.eval_limit"),
        ("eval.parallel_samples=-1", "eval.parallel_samples"),
        ("collect.chunk_size=0", "collect.chunk_size"),
        ("eval.sampling.top_p=2", "eval.sampling.top_p"),
        ("collect.max_new_tokens=80", "unknown key 'collect.max_new_tokens'"),
        ("samples.filter=some", "samples.filter"),
        ("collect.schedule=[{model: gpt4, n: 2}]", "'gpt4', which is not defined"),
        ("iterations", "expected KEY=VALUE"),
        ("train.learning_rate=[1,", "override 'train.learning_rate=[1,': the value is not valid YAML"),
        ("eval.sampling.temperature=inf", "eval.sampling.temperature: Input should be a finite number"),
        ("train.learning_rate=.nan", "train.learning_rate: Input should be a finite number"),
        ("online.context=fresh", "online.context fresh needs online.objective awr"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override], check_models=False)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_key_given_twice_is_an_error_naming_it_and_its_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 1\niterations: 1\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: duplicate key 'train' at line 4"):
        load_config(twice, check_models=False)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'epochs' at line 3"):
        load_config(nested, check_models=False)


def test_parse_schedule():
    assert [(s.model, s.n) for s in parse_schedule("learner:1, expert:4")] == [("learner", 1), ("expert", 4)]
    with pytest.raises(ConfigError, match=r"MODEL\[:N"):
        parse_schedule("learner:many")


def test_a_model_that_cannot_be_had_is_named_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"^model: .*nowhere"):
        load_config(None, [f"model={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"train_model: "):
        load_config(None, [f"model={tmp_path}", f"train_model={tmp_path / 'nowhere'}"])
