"""What each stage of a run cost: responses generated, samples and tokens trained on, wall time.

Counted from the run directory:
  generated_responses  iter{k}: the sum of `num_candidates` over the turns of collect/episodes.jsonl
                       (best-of-N counts N); online@N / online: the `actions` of online/metrics.jsonl
                       (every sampled action of a step); base and boost generate nothing (0).
                       Evaluation generations are not counted: they measure, they do not train.
  trained_samples      the rows of <stage>/samples.jsonl; online: the same `actions` (each is trained).
  trained_tokens       the tokens the loss covers (each sample's final response and end-of-turn
                       token, as riselm.training.tokenize trains them), times the epochs of
                       <stage>/train/train_config.json; unknown when training stopped at max_steps or
                       for online stages.
  wall_s               the sum of the stage's `seconds` in summary.json (its evaluation included);
                       online@N: the `step_s` of its steps. A resumed run's summary counts only the
                       part run last, so resumed stages read low.

A `budget.json` in the run directory, written by whoever knows better (another tool, a cluster's
accounting), is preferred to the counts. Its keys, all optional numbers:
  {"generated_responses", "trained_samples", "trained_tokens", "wall_s"}  at the top level: the run's
      totals, i.e. the cumulative budget of its final stage;
  {"stages": {"<stage>": {same keys}}}  one stage alone.
Other keys are ignored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from riselm.analysis.runs import RunDir
from riselm.jsonl import DataError, iter_jsonl
from riselm.rollout.episode import read_episodes
from riselm.rundir import EPISODES_FILE, ONLINE_PREFIX, TRAIN_CONFIG

logger = logging.getLogger(__name__)

BUDGET_FILE = "budget.json"
KEYS = ("generated_responses", "trained_samples", "trained_tokens", "wall_s")


@dataclass
class Budget:
    generated_responses: int | None = None  # responses sampled to make the stage's model (evaluation not counted)
    trained_samples: int | None = None  # training samples (online: action rows) the stage's training used
    trained_tokens: int | None = None  # tokens the training loss covered, over all epochs
    wall_s: float | None = None  # wall time of the stage (evaluation included)
    sources: dict[str, str] = field(default_factory=dict)  # where each known value came from, by key

    def values(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in KEYS}


def run_budgets(run: RunDir, count_tokens: bool = True) -> list[Budget]:
    """Each stage's own budget, in run order (budget.json's per-stage values applied)."""
    overrides = read_budget_file(run.path / BUDGET_FILE)
    online_steps = _online_rows(run.layout.online_metrics)
    budgets: list[Budget] = []
    done_step = 0  # the last online step an earlier online@N stage accounted for
    for row in run.stages:
        name = row["name"]
        if name.startswith(ONLINE_PREFIX) or name == "online":
            last = int(name.removeprefix(ONLINE_PREFIX)) if name != "online" else None
            budget = _online_budget(online_steps, done_step, last, row, budgets)
            done_step = last if last is not None else done_step
        else:
            budget = _offline_budget(run, name, row, count_tokens)
        _apply(budget, overrides.get("stages", {}).get(name, {}), f"{BUDGET_FILE} stages.{name}")
        budgets.append(budget)
    return budgets


def cumulative(budgets: list[Budget], run_totals: dict[str, Any] | None = None) -> list[Budget]:
    """The budget spent from the start of the run up to each stage; unknown once any stage is unknown.

    `run_totals` (budget.json's top-level keys) replace the final stage's cumulative values.
    """
    out: list[Budget] = []
    running = Budget(0, 0, 0, 0.0)
    for budget in budgets:
        for key in KEYS:
            total, own = getattr(running, key), getattr(budget, key)
            setattr(running, key, None if total is None or own is None else total + own)
        out.append(replace(running, sources=dict(budget.sources)))
    if out and run_totals:
        _apply(out[-1], run_totals, f"{BUDGET_FILE} (run totals)")
    return out


def read_budget_file(path: Path) -> dict[str, Any]:
    """budget.json checked: numbers under the known keys, an object of objects under 'stages'."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with keys among {', '.join(KEYS)} and 'stages'")
    stages = data.get("stages", {})
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise DataError(f"{path}: 'stages' must map stage names to objects")
    for where, values in [("", data), *((f"stages.{k}.", v) for k, v in stages.items())]:
        for key in KEYS:
            value = values.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{path}: {where}{key} must be a number, got {value!r}")
    return {**{k: data[k] for k in KEYS if data.get(k) is not None}, "stages": stages}


def _apply(budget: Budget, values: dict[str, Any], source: str) -> None:
    for key in KEYS:
        if values.get(key) is not None:
            value = values[key]
            setattr(budget, key, float(value) if key == "wall_s" else int(value))
            budget.sources[key] = source


# ---- counting -------------------------------------------------------------------------------


def _offline_budget(run: RunDir, name: str, row: dict[str, Any], count_tokens: bool) -> Budget:
    budget = Budget(sources={})
    collected = run.layout.collect_dir(name) / EPISODES_FILE
    if collected.is_file():
        episodes = read_episodes(collected)
        budget.generated_responses = sum(t.num_candidates for e in episodes for t in e.turns)
        budget.sources["generated_responses"] = str(collected)
    elif name in ("base", "boost"):
        budget.generated_responses = 0  # a base stage trains nothing; boost trains on gold solutions
        budget.sources["generated_responses"] = "nothing sampled"
    samples = run.layout.samples(name)
    if samples.is_file():
        rows = [r for _, r in iter_jsonl(samples)]
        budget.trained_samples = len(rows)
        budget.sources["trained_samples"] = str(samples)
        if count_tokens:
            budget.trained_tokens = _trained_tokens(run, name, rows)
            if budget.trained_tokens is not None:
                budget.sources["trained_tokens"] = f"{samples} × epochs"
    elif name == "base":
        budget.trained_samples, budget.trained_tokens = 0, 0
    budget.wall_s = _seconds(row)
    if budget.wall_s is not None:
        budget.sources["wall_s"] = "summary.json seconds"
    return budget


def _trained_tokens(run: RunDir, name: str, rows: list[dict[str, Any]]) -> int | None:
    """Trained-span tokens of the samples (with the stage model's tokenizer) times the epochs trained."""
    config_path = run.layout.train_dir(name) / TRAIN_CONFIG
    model = run.stage_model(name)
    if model is None or not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if int(config.get("max_steps", -1)) > 0:
        return None  # stopped at a step count: how much of the last epoch was seen is not recorded
    from transformers import AutoTokenizer

    from riselm.training.tokenize import IGNORE_INDEX, tokenize_sample

    max_length = int(config.get("max_length", 2048))
    per_epoch = 0
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        for row in rows:
            tokenized = tokenize_sample(tokenizer, row["messages"], max_length)
            if tokenized is not None:  # dropped by training too (the response alone exceeds max_length)
                per_epoch += sum(label != IGNORE_INDEX for label in tokenized["labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:  # a budget column is not worth failing the table for
        logger.warning("%s: trained tokens of stage %s not counted: %s", run.path, name, e)
        return None
    return round(per_epoch * float(config.get("epochs", 1.0)))


def _online_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path)] if path.is_file() else []


def _online_budget(steps: list[dict[str, Any]], after: int, upto: int | None, row: dict[str, Any], earlier: list[Budget]) -> Budget:
    """The online steps in (after, upto]; the final `online` stage takes the rest and the remaining time."""
    chosen = [s for s in steps if s.get("step", 0) > after and (upto is None or s.get("step", 0) <= upto)]
    budget = Budget(sources={}, trained_tokens=None)
    if chosen:
        actions = sum(int(s.get("actions", 0)) for s in chosen)
        budget.generated_responses = budget.trained_samples = actions
        budget.sources["generated_responses"] = budget.sources["trained_samples"] = "online/metrics.jsonl actions"
    if upto is not None:
        budget.wall_s = round(sum(float(s.get("step_s", 0.0)) for s in chosen), 1) if chosen else None
        source = "online/metrics.jsonl step_s"
    else:
        # summary.json times the whole online stage; the online@N stages before it already hold their steps
        total = _seconds(row)
        spent = [b.wall_s for b in earlier if b.wall_s is not None and b.sources.get("wall_s") == "online/metrics.jsonl step_s"]
        budget.wall_s = None if total is None else round(total - sum(spent), 1)
        source = "summary.json seconds"
    if budget.wall_s is not None:
        budget.sources["wall_s"] = source
    return budget


def _seconds(row: dict[str, Any]) -> float | None:
    seconds = row.get("seconds")
    if not isinstance(seconds, dict) or not seconds:
        return None
    return round(sum(float(v) for v in seconds.values() if isinstance(v, (int, float))), 1)


__all__ = ["BUDGET_FILE", "KEYS", "Budget", "cumulative", "read_budget_file", "run_budgets"]
