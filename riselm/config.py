"""Reading a run config: one YAML file of `RunSettings` (riselm.settings), with key=value overrides.

Errors name the file and the key: an unknown key, a value out of range, a model that cannot be had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from riselm.settings import RunSettings, ScheduleStep


class ConfigError(ValueError):
    """A configuration file or override that is not valid; the message says which key and why."""


def parse_schedule(text: str) -> list[ScheduleStep]:
    """'learner:1,learner:16' -> one ScheduleStep per turn (the last repeats for later turns)."""
    steps = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        model, _, n = part.partition(":")
        try:
            steps.append(ScheduleStep(model=model, n=int(n or 1)))
        except (ValueError, ValidationError):
            raise ConfigError(f"schedule entry {part!r}: expected MODEL:N with N >= 1, e.g. learner:16") from None
    if not steps:
        raise ConfigError(f"schedule {text!r} is empty: expected e.g. learner:1,learner:16")
    return steps


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.learning_rate=2e-5' -> (['train', 'learning_rate'], 2e-5); values are read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. iterations=3 or train.learning_rate=2e-5")
    return key.split("."), yaml.safe_load(value) if value != "" else ""


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


def load_config(path: str | Path | None, overrides: list[str] = (), check_models: bool = True) -> RunSettings:
    """Read a YAML run config (or none: all defaults), apply key=value overrides and validate.

    With `check_models`, every model the run names must also be at hand (see `check_model_specs`).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
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
