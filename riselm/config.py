"""Reading a run config: one YAML file of `RunSettings` (riselm.settings), with key=value overrides.

Errors name the file and the key: an unknown key, a value out of range, a model that cannot be had.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from riselm.settings import RunSettings, ScheduleStep


class ConfigError(ValueError):
    """A configuration file or override that is not valid; the message says which key and why."""


def parse_schedule(text: str) -> list[ScheduleStep]:
    """'learner:1,learner:16' -> one ScheduleStep per turn (the last repeats for later turns).

    An entry is MODEL[:N[:CONTEXT]]: 'learner:4:fresh' samples 4 fresh attempts, 'reference' gives the gold solution.
    """
    steps = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        model, n, context, *extra = part.split(":") + ["", ""]
        try:
            if any(extra):  # more than three fields
                raise ValueError(part)
            steps.append(ScheduleStep(model=model, n=int(n or 1), context=context or "history"))
        except (ValueError, ValidationError):
            raise ConfigError(
                f"schedule entry {part!r}: expected MODEL[:N[:CONTEXT]] with N >= 1 and CONTEXT history or fresh, "
                "e.g. learner:16 or learner:4:fresh"
            ) from None
    if not steps:
        raise ConfigError(f"schedule {text!r} is empty: expected e.g. learner:1,learner:16")
    return steps


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.learning_rate=2e-5' -> (['train', 'learning_rate'], 2e-5); values are read as YAML.

    The one parser of every KEY=VALUE the commands take (`riselm run` overrides, --task-option,
    --backend-option, --set): a value that is not valid YAML is an error naming the override.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. iterations=3 or train.learning_rate=2e-5")
    if value == "":
        return key.split("."), ""
    try:
        return key.split("."), load_yaml(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({yaml_problem(e)}); quote it if it is a string") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line saying what is wrong in a YAML text and where."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_yaml(text: str) -> Any:
    """YAML as riselm reads it: safe, and a duplicate key is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = (), check_models: bool = True) -> RunSettings:
    """Read a YAML run config (or none: all defaults), apply key=value overrides and validate.

    With `check_models`, every model the run names must also be at hand (see `check_model_specs`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    data = apply_overrides(data, list(overrides))
    settings = validate(RunSettings, data, path)
    if check_models:
        check_model_specs(settings)
    return settings


def validate(model: type[BaseModel], data: dict[str, Any], path: Path | str | None = None):
    """`model` validated from `data`, or a ConfigError naming each bad key (and the file, when given)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None


def check_model_specs(settings: RunSettings) -> None:
    """Fail before any work on a model that cannot be had: a missing path, a named model whose package
    is not installed, or a hub id that cannot be fetched. (GGUF files are converted here, once.)"""
    from riselm.models import ModelNotFoundError, resolve_model_dir

    specs = [("model", settings.model), ("train_model", settings.train_model)]
    specs += [(f"experts.{name}.model", e.model) for name, e in settings.experts.items() if e.backend != "openai"]
    for key, spec in specs:
        if spec is None:
            continue
        try:
            resolve_model_dir(spec)
        except ModelNotFoundError as e:
            raise ConfigError(f"{key}: {e}") from None


def _describe(error: ValidationError, path: Path | str | None) -> str:
    """One line naming every bad key: 'config.yaml: unknown key 'train.lr'; eval.turns: ...'."""
    problems = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        elif err["type"] == "value_error":
            problems.append(err["msg"].removeprefix("Value error, "))
        else:
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return (f"{path}: " if path else "") + "; ".join(problems)
