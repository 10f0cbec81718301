"""The run configuration of `riselm run`: one YAML file, validated, with key=value overrides.

Every section is a pydantic model that forbids unknown keys, so a typo is an error naming the key,
not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from riselm.training.config import TrainConfig  # the `train:` sections (pydantic only: cheap to import)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Section):
    name: str = "gsm8k"  # a task of `riselm tasks`
    options: dict[str, Any] = {}  # task constructor options (e.g. unparsable_reward: -1, digits: 3)
    train_split: str = "train"  # problems for boosting and collection
    train_data: str | None = None  # your own JSON/JSONL file (or hub id) instead of the shipped train split
    train_limit: int | None = None  # only the first N training problems
    eval_split: str | None = None  # default: the task's test split
    eval_data: str | None = None
    eval_limit: int | None = None


class GeneratorConfig(_Section):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str | None = None  # model spec; for the learner it is set by the pipeline to the current checkpoint
    base_url: str | None = None  # backend openai: the server's URL
    api_key_env: str = "OPENAI_API_KEY"  # backend openai: the variable holding the key
    batch_size: int = 32  # backend hf: sequences generated together
    options: dict[str, Any] = {}  # more backend options (e.g. tensor_parallel_size for vllm)


class ScheduleStep(_Section):
    model: str = "learner"  # "learner" or the name of an expert
    n: int = Field(1, ge=1)  # candidates; the best by reward is kept


class CollectConfig(_Section):
    limit: int | None = None  # roll out only the first N training problems each iteration (default: all)
    max_turns: int = Field(5, ge=1)
    window: int | None = Field(None, ge=1)  # context window in attempts, also used to build the samples (None: all)
    schedule: list[ScheduleStep] = [ScheduleStep(model="learner", n=1), ScheduleStep(model="learner", n=16)]
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    chunk_size: int = 256


class SamplesConfig(_Section):
    tau: float = Field(0.4, gt=0)  # weight = exp(reward / tau)
    filter: Literal["all", "better", "best", "success"] = "all"
    dedup: bool = True


class BoostConfig(_Section):
    enabled: bool = False
    history_turns: int = 0  # prepend up to this many wrong attempts (+ retry message) before the gold solution
    every_depth: bool = True  # one sample per number of attempts 0..history_turns (False: one, drawn at random)
    limit: int | None = None  # gold solutions used (default: all training problems)
    train: TrainConfig = TrainConfig()


class EvalConfig(_Section):
    turns: int = Field(5, ge=1)
    parallel_samples: int = Field(5, ge=0)  # for m5@t1; 0 skips the parallel run
    window: int | None = Field(None, ge=1)  # context window: the question plus the last window-1 attempts
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    chunk_size: int = 256
    seed: int = 0
    base: bool = False  # also evaluate the starting model


class RunConfig(_Section):
    out: str = "runs/rise"  # the run directory; running again resumes there
    task: TaskConfig = TaskConfig()
    model: str = "smollm2"  # the starting learner (local dir, hub id, .gguf, or a named model)
    train_model: str | None = None  # weak-to-strong: train this model on data collected by `model`
    learner: GeneratorConfig = GeneratorConfig()  # how the learner generates
    experts: dict[str, GeneratorConfig] = {}  # improvers other than the learner, by name
    boost: BoostConfig = BoostConfig()
    iterations: int = Field(2, ge=0)
    init_from: Literal["previous", "base"] = "previous"  # each iteration trains from the last model or the base
    aggregate: bool = False  # train each iteration on the data of all iterations so far
    collect: CollectConfig = CollectConfig()
    samples: SamplesConfig = SamplesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _schedule_names_known(self) -> "RunConfig":
        for step in self.collect.schedule:
            if step.model != "learner" and step.model not in self.experts:
                known = ", ".join(["learner", *self.experts]) or "learner"
                raise ValueError(f"collect.schedule names model {step.model!r}, which is not defined; known: {known}")
        for name, expert in self.experts.items():
            if expert.model is None:
                raise ValueError(f"experts.{name}.model is required")
            if expert.backend == "openai" and not expert.base_url:
                raise ValueError(f"experts.{name}: backend openai needs base_url")
        return self


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or none: all defaults), apply key=value overrides and validate."""
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
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from None


def _describe(error: ValidationError, path: Path | None) -> str:
    where = f"{path}: " if path else ""
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}unknown key {key!r}")
        elif err["type"] == "value_error":
            lines.append(f"{where}{err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)
