"""`riselm run`: boost -> iteration 1 -> iteration 2 ..., one resumable command.

Each iteration reads top to bottom: collect -> build samples -> train -> evaluate. Every stage
writes into its own folder of the run directory and is skipped when its output is complete, so
running the same command again after a crash continues where it stopped (collection and evaluation
resume inside their episodes files, training from its last checkpoint).

    out/
      config.yaml           the validated config of the run
      boost/                samples.jsonl, train/ (checkpoints, final model), eval/
      iter1/                collect/episodes.jsonl, samples.jsonl, train/, eval/
      summary.json|md|png   the paper's Table 1 across stages, with per-turn curves
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from riselm.config import ConfigError, GeneratorConfig, RunConfig
from riselm.training.config import TrainConfig
from riselm.evaluation.evaluate import EvalResult, evaluate
from riselm.evaluation.report import plot_turn_curves
from riselm.evaluation.runner import EvalSettings
from riselm.rollout.collect import CollectSettings, ImproverStep, collect
from riselm.rollout.episode import Episode
from riselm.tasks import get_task
from riselm.tasks.base import Problem, Task

TABLE_KEYS = ("m1@t1", "m5@t1", "m1@t5", "p1@t5")


@dataclass
class StageResult:
    name: str  # "base", "boost", "iter1", ...
    model: str  # the model evaluated (a checkpoint directory or a model spec)
    sequential: dict[str, Any]  # sequential metrics of the stage's evaluation
    parallel: dict[str, Any] | None  # parallel metrics (for m5@t1), when run
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step run this time

    def row(self) -> dict[str, Any]:
        metrics = {**(self.parallel or {}), **self.sequential}
        row: dict[str, Any] = {"name": self.name, "model": self.model}
        row.update({key: metrics.get(key) for key in TABLE_KEYS})
        turns = int(self.sequential.get("turns", 0))
        for curve in ("acc", "p1", "m1"):
            row[f"{curve}@tk"] = [self.sequential.get(f"{curve}@t{k}") for k in range(1, turns + 1)]
        row["seconds"] = self.seconds
        return row


# ---- the run -----------------------------------------------------------------------------------


def run_pipeline(cfg: RunConfig, show_progress: bool = True) -> list[StageResult]:
    """Run (or resume) the whole RISE loop of `cfg`; returns one result per evaluated stage."""
    out = Path(cfg.out)
    task, train_problems, eval_problems = prepare(cfg, out)
    stages: list[StageResult] = []
    learner = cfg.train_model or cfg.model  # the lineage being trained
    collector_fixed = cfg.model if cfg.train_model else None  # weak-to-strong: a fixed collector

    if cfg.eval.base:
        stages.append(evaluate_stage(cfg, task, eval_problems, learner, out / "base", "base", show_progress))
    if cfg.boost.enabled:
        timer = time.perf_counter()
        learner = boost(cfg, task, train_problems, learner, out / "boost", show_progress)
        stage = evaluate_stage(cfg, task, eval_problems, learner, out / "boost", "boost", show_progress)
        stage.seconds["boost"] = round(time.perf_counter() - timer, 1) - stage.seconds.get("eval", 0.0)
        stages.append(stage)
    start_model = learner
    for k in range(1, cfg.iterations + 1):
        stage_dir = out / f"iter{k}"
        seconds: dict[str, float] = {}
        timer = time.perf_counter()
        collect_stage(cfg, task, train_problems, collector_fixed or learner, stage_dir / "collect", show_progress)
        seconds["collect"] = round(time.perf_counter() - timer, 1)
        timer = time.perf_counter()
        samples = build_samples(cfg, [out / f"iter{i}" / "collect" for i in _data_iterations(cfg, k)], stage_dir)
        init = learner if cfg.init_from == "previous" else start_model
        learner = train_stage(cfg.train, samples, init, stage_dir / "train", show_progress)
        seconds["train"] = round(time.perf_counter() - timer, 1)
        stage = evaluate_stage(cfg, task, eval_problems, learner, stage_dir, f"iter{k}", show_progress)
        stage.seconds.update(seconds)
        stages.append(stage)
    write_summary(out, stages, title=f"RISE on {task.name} ({cfg.model})")
    return stages


def prepare(cfg: RunConfig, out: Path) -> tuple[Task, list[Problem], list[Problem]]:
    """Check everything the run needs before any work starts; save the config; load the problems."""
    try:
        task = get_task(cfg.task.name, **cfg.task.options)
    except TypeError as e:
        raise ConfigError(f"task.options: {e}") from None
    for name, spec in [("model", cfg.model), ("train_model", cfg.train_model)]:
        if spec is not None:
            check_model_spec(spec, name)
    for name, expert in cfg.experts.items():
        if expert.backend != "openai":
            check_model_spec(expert.model, f"experts.{name}.model")
    train_problems = task.load(cfg.task.train_split, cfg.task.train_data, cfg.task.train_limit)
    eval_problems = task.load(cfg.task.eval_split, cfg.task.eval_data, cfg.task.eval_limit)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return task, train_problems, eval_problems


def check_model_spec(spec: str, key: str) -> None:
    """Fail early on a model that cannot be had: a missing path, a named model whose package is not
    installed, or a hub id that cannot be fetched. (GGUF files are converted here, once.)"""
    from riselm.models import ModelNotFoundError, resolve_model_dir

    try:
        resolve_model_dir(spec)
    except ModelNotFoundError as e:
        raise ConfigError(f"{key}: {e}") from None


# ---- stages ------------------------------------------------------------------------------------


def boost(cfg: RunConfig, task: Task, problems: Sequence[Problem], model: str, stage_dir: Path, show_progress: bool) -> str:
    """SFT on the task's gold solutions (with earlier wrong attempts in context when configured)."""
    from riselm.training.boost import boost_samples

    chosen = list(problems)[: cfg.boost.limit] if cfg.boost.limit else list(problems)
    samples = boost_samples(
        task, chosen, with_history_turns=cfg.boost.history_turns, seed=cfg.seed, every_depth=cfg.boost.every_depth
    )
    _save_samples(samples, stage_dir / "samples.jsonl")
    return train_stage(cfg.boost.train, samples, model, stage_dir / "train", show_progress)


def collect_stage(
    cfg: RunConfig, task: Task, problems: Sequence[Problem], learner: str, collect_dir: Path, show_progress: bool
) -> list[Episode]:
    """On-policy rollouts of the learner with the configured improvers; resumes inside the episodes file."""
    episodes_path = collect_dir / "episodes.jsonl"
    if (collect_dir / "DONE").exists():
        from riselm.evaluation.runner import load_episodes

        return load_episodes(episodes_path)
    generators = {"learner": _generator(cfg.learner, learner)}
    for name, expert in cfg.experts.items():
        if any(step.model == name for step in cfg.collect.schedule):
            generators[name] = _generator(expert, expert.model)
    schedule = [ImproverStep(generators[s.model], s.n, source=s.model) for s in cfg.collect.schedule]
    settings = CollectSettings(
        max_turns=cfg.collect.max_turns,
        temperature=cfg.collect.temperature,
        top_p=cfg.collect.top_p,
        max_new_tokens=cfg.collect.max_new_tokens,
        seed=cfg.seed,
        chunk_size=cfg.collect.chunk_size,
        window=cfg.collect.window,
    )
    chosen = list(problems)[: cfg.collect.limit] if cfg.collect.limit else list(problems)
    episodes = collect(task, schedule, chosen, settings, episodes_path, show_progress)
    (collect_dir / "DONE").write_text("")
    _release(generators)
    return episodes


def build_samples(cfg: RunConfig, collect_dirs: Sequence[Path], stage_dir: Path) -> list:
    """Weighted training samples from the collected episodes (of this iteration, or all so far)."""
    from riselm.evaluation.runner import load_episodes
    from riselm.training.samples import samples_from_episodes

    episodes = [e for d in collect_dirs for e in load_episodes(d / "episodes.jsonl")]
    samples = samples_from_episodes(
        episodes, tau=cfg.samples.tau, filter=cfg.samples.filter, dedup=cfg.samples.dedup, window=cfg.collect.window
    )
    _save_samples(samples, stage_dir / "samples.jsonl")
    return samples


def train_stage(train: TrainConfig, samples: Sequence, init_model: str, train_dir: Path, show_progress: bool) -> str:
    """Reward-weighted training from `init_model`; returns the trained model's directory. Resumes from checkpoints."""
    from riselm.models import resolve_model_dir
    from riselm.training.trainer import train_weighted

    final = train_dir / "final"
    if (final / "config.json").exists() or (final / "adapter_config.json").exists():
        return str(final)
    if not samples:
        raise RuntimeError(f"no training samples for {train_dir}: collection produced nothing usable")
    final = train_weighted(resolve_model_dir(init_model), samples, train_dir, train, show_progress=show_progress)
    for checkpoint in train_dir.glob("checkpoint-*"):  # final/ is complete: resume points are no longer needed
        shutil.rmtree(checkpoint, ignore_errors=True)
    return str(final)


def evaluate_stage(
    cfg: RunConfig, task: Task, problems: Sequence[Problem], model: str, stage_dir: Path, name: str, show_progress: bool
) -> StageResult:
    """Sequential (and parallel) evaluation of one stage's model; resumes inside its episodes files."""
    timer = time.perf_counter()
    generator = _generator(cfg.learner, model)
    e = cfg.eval
    settings = EvalSettings(
        turns=e.turns,
        parallel_samples=e.parallel_samples,
        window=e.window,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=e.max_new_tokens,
        seed=e.seed,
        chunk_size=e.chunk_size,
    )
    result: EvalResult = evaluate(
        task, generator, stage_dir / "eval", settings, problems=problems, show_progress=show_progress, title=f"{name}: {task.name}"
    )
    _release({"learner": generator})
    return StageResult(name, model, result.sequential, result.parallel, {"eval": round(time.perf_counter() - timer, 1)})


# ---- helpers -----------------------------------------------------------------------------------


def _data_iterations(cfg: RunConfig, k: int) -> list[int]:
    return list(range(1, k + 1)) if cfg.aggregate else [k]


def _generator(gen: GeneratorConfig, model: str):
    from riselm.generation import build_generator

    return build_generator(
        model, backend=gen.backend, base_url=gen.base_url, api_key_env=gen.api_key_env, batch_size=gen.batch_size, **gen.options
    )


def _release(generators: dict) -> None:
    """Free generator memory before training or the next stage (a vLLM engine holds the whole GPU)."""
    for g in generators.values():
        close = getattr(g, "close", None)
        if close:
            close()
    generators.clear()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _save_samples(samples: Sequence, path: Path) -> None:
    from riselm.jsonl import write_jsonl

    write_jsonl(path, (s.to_dict() for s in samples))


def write_summary(out: Path, stages: Sequence[StageResult], title: str = "RISE") -> dict[str, Any]:
    """summary.json, summary.md and summary.png: the paper's Table 1 across stages, and per-turn curves."""
    summary = {"stages": [s.row() for s in stages]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {title}", "", "| stage | " + " | ".join(TABLE_KEYS) + " | acc@tk |", "|---|" + "---|" * (len(TABLE_KEYS) + 1)]
    for row in summary["stages"]:
        cells = ["–" if row[k] is None else f"{row[k]:.1f}" for k in TABLE_KEYS]
        curve = " → ".join(f"{v:.1f}" for v in row["acc@tk"] if v is not None)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {curve} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if stages:
        plot_turn_curves(
            {s.name: s.sequential for s in stages},
            out / "summary.png",
            title=title,
            parallel={s.name: s.parallel for s in stages if s.parallel},
        )
    return summary
