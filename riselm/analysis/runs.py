"""A finished run directory as the analyses read it: summary.json, config.yaml, the stages' folders and models.

Its layout is riselm.rundir's `RunLayout` (written by `riselm run` / `riselm demo`). Stage names: base,
boost, iter1, iter2, ..., online@N (the live policy after N steps, never saved), online.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from riselm.jsonl import DataError
from riselm.rundir import ONLINE_PREFIX, RunLayout

logger = logging.getLogger(__name__)


@dataclass
class RunDir:
    path: Path  # the run directory
    keys: list[str]  # summary.json's Table 1 columns for this run (m1@t1, mP@t1, m1@tK, p1@tK)
    stages: list[dict[str, Any]]  # summary.json's stage rows, in the order the run made them
    config: dict[str, Any]  # config.yaml as the run wrote it ({} when the run directory has none)

    @property
    def name(self) -> str:
        return self.path.name

    def stage(self, name: str) -> dict[str, Any]:
        for row in self.stages:
            if row["name"] == name:
                return row
        raise ValueError(f"{self.path}: no stage {name!r}; its stages: {', '.join(self.stage_names)}")

    @property
    def stage_names(self) -> list[str]:
        return [row["name"] for row in self.stages]

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.path)

    def stage_model(self, name: str) -> str | None:
        """The model a stage evaluated, as a spec `build_generator` takes; None when it was never saved.

        summary.json records the model; when that path is gone (the run directory was moved) the
        stage's model folder in this run directory is. The base stage's model may be a named model or Hub id.
        """
        if name.startswith(ONLINE_PREFIX):
            return None  # the live policy at step N: evaluated in memory, never written out
        recorded = str(self.stage(name).get("model") or "")
        candidates = [Path(recorded)] if recorded else []
        candidates.append(self.layout.model(name))
        for path in candidates:
            if (path / "config.json").is_file():
                return str(path)
        if name == "base" and recorded:
            return recorded  # a named model or Hub id: the generator resolves it
        return None

    def config_section(self, key: str) -> dict[str, Any] | None:
        value = self.config.get(key)
        return value if isinstance(value, dict) else None


def read_run(path: str | Path) -> RunDir:
    """Read a run directory; a DataError naming it when it is not one (no or a broken summary.json)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such run directory")
    summary_path = RunLayout(path).summary("json")
    if not summary_path.is_file():
        raise DataError(f"{path}: not a finished run directory: no {summary_path.name} (written by `riselm run` at the end)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{summary_path}: not valid JSON ({e})") from None
    stages = summary.get("stages") if isinstance(summary, dict) else None
    if not isinstance(stages, list) or not stages:
        raise DataError(f"{summary_path}: expected an object with a non-empty 'stages' list")
    for i, row in enumerate(stages):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise DataError(f"{summary_path}: stage {i + 1} has no 'name'")
    keys = summary.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise DataError(f"{summary_path}: 'keys' must be a list of metric names")
    for row in stages:
        for key in keys:
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{summary_path}: stage {row['name']!r}: {key} must be a number or null, got {value!r:.40}")
    return RunDir(path=path, keys=keys, stages=stages, config=_read_config(RunLayout(path).config))


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    return data if isinstance(data, dict) else {}


def models_of(run: RunDir, stages: list[str] | None = None) -> dict[str, str]:
    """{stage: model} for the chosen stages (default: all) that have a model; the others are logged and skipped."""
    names = stages or run.stage_names
    for name in names:
        run.stage(name)  # an unknown stage name is an error, not a silent skip
    models = {}
    for name in names:
        model = run.stage_model(name)
        if model is None:
            logger.warning("%s: stage %s has no saved model; skipped", run.path, name)
        else:
            models[name] = model
    if not models:
        raise DataError(f"{run.path}: none of the stages {', '.join(names)} has a saved model")
    return models
