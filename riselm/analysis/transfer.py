"""Table 2 form: a run's stage models evaluated on other tasks (out of distribution).

Every stage model is evaluated on every task with riselm.evaluation.evaluate into
out_dir/<stage>/<task label>/ (episodes, metrics.json, report.md; calling again resumes, and a
finished evaluation loads no model), then one table of m1@t1, mP@t1, m1@tK and p1@tK per stage and
task. The evaluation settings, generation backend and seed default to the run's own (config.yaml),
so the numbers sit next to the run's in-distribution ones.

A task is given as NAME or NAME:KEY=VALUE,KEY=VALUE (values read as YAML), e.g. `gsm8k`,
`arithmetic:digits=2` or `arithmetic:ops=+-`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riselm.analysis.runs import RunDir, models_of, read_run
from riselm.files import write_json, write_text_atomic
from riselm.rundir import claim, model_identity, without
from riselm.settings import EvalSettings, GeneratorSettings
from riselm.tables import markdown_table, pyplot, save_figure
from riselm.tasks.base import Task


@dataclass(frozen=True)
class TaskSpec:
    name: str  # a task of `riselm tasks`
    options: dict[str, Any] = field(default_factory=dict)  # its constructor options (difficulty, reward…)

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """'arithmetic:digits=2,ops=+-' -> TaskSpec('arithmetic', {'digits': 2, 'ops': '+-'})."""
        from riselm.config import parse_override

        name, _, rest = text.partition(":")
        if not name.strip():
            raise ValueError(f"task {text!r}: expected NAME or NAME:KEY=VALUE,KEY=VALUE")
        options = {}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            path, value = parse_override(pair)
            options[".".join(path)] = value
        return cls(name.strip(), options)

    @property
    def label(self) -> str:
        """A folder name: the task's name, then its options as key=value."""
        text = "_".join([self.name, *(f"{k}={v}" for k, v in self.options.items())])
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)

    def build(self, common: dict[str, Any] | None = None) -> Task:
        from riselm.tasks import get_task

        return get_task(self.name, **{**(common or {}), **self.options})


def transfer(
    run_dir: str | Path,
    tasks: Sequence[str | TaskSpec],
    out_dir: str | Path,
    settings: EvalSettings | None = None,
    generator: GeneratorSettings | None = None,
    stages: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    task_options: dict[str, Any] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate each stage model (or `stages`) on each task; transfer.md, transfer.json, transfer.png in out_dir.

    `settings`, `generator` and `seed` default to the run's own; `task_options` go to every task
    (a task's own options win).
    """
    from riselm.evaluation.evaluate import evaluate
    from riselm.generators import Learner

    run = read_run(run_dir)
    specs = [TaskSpec.parse(t) if isinstance(t, str) else t for t in tasks]
    if not specs:
        raise ValueError("transfer: give at least one task")
    labels = [s.label for s in specs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"transfer: a task is given twice ({', '.join(labels)})")
    built = {s.label: s.build(task_options) for s in specs}  # a bad task fails before any model loads
    problems = {label: task.load(split=split, limit=limit) for label, task in built.items()}
    settings = settings or run_eval_settings(run)
    generator = generator or run_generator_settings(run)
    seed = int(run.config.get("seed", 0)) if seed is None else seed
    out = Path(out_dir)
    rows = []
    for stage, model in models_of(run, list(stages) if stages else None).items():
        with Learner(generator) as learner:  # builds the model only when something is left to generate
            for label, task in built.items():
                # each evaluation resumes in its folder: only the same evaluation may (riselm.rundir)
                identity = eval_identity(model, label, task_options, split, limit, seed, settings, generator)
                claim(out / stage / label, identity)
                result = evaluate(
                    task,
                    learner.at(model),
                    out / stage / label,
                    settings,
                    problems=problems[label],
                    seed=seed,
                    show_progress=show_progress,
                    title=f"{stage} on {label}",
                )
                rows.append(transfer_row(stage, label, model, result.sequential, result.parallel))
    summary = {"run_dir": str(run.path), "settings": settings.model_dump(), "seed": seed, "rows": rows}
    write_transfer(summary, out)
    return summary


def eval_identity(
    model: str,
    label: str,
    task_options: dict[str, Any] | None,
    split: str | None,
    limit: int | None,
    seed: int,
    settings: EvalSettings,
    generator: GeneratorSettings,
) -> dict[str, Any]:
    """What decides the content of one transfer evaluation folder (riselm.rundir.claim)."""
    return {
        "command": "analyze transfer",
        "model": model_identity(model),
        "task": label,
        "task_options": task_options or {},
        "split": split,
        "limit": limit,
        "seed": seed,
        "settings": without(settings.model_dump(), ["chunk_size", "base"]),
        "backend": generator.backend,
        "precision": generator.precision,
    }


def run_eval_settings(run: RunDir) -> EvalSettings:
    """The run's evaluation settings (config.yaml's `eval:`), or the defaults."""
    section = run.config_section("eval")
    return EvalSettings.model_validate(section) if section else EvalSettings()


def run_generator_settings(run: RunDir) -> GeneratorSettings:
    """The run's learner backend (config.yaml's `learner:`), or the defaults."""
    section = run.config_section("learner")
    return GeneratorSettings.model_validate(section) if section else GeneratorSettings()


def transfer_row(stage: str, task: str, model: str, sequential: dict[str, Any], parallel: dict[str, Any] | None) -> dict[str, Any]:
    k = int(sequential.get("turns", 0))
    p = int((parallel or {}).get("samples", 0))
    return {
        "stage": stage,
        "task": task,
        "model": model,
        "problems": sequential.get("num_problems", 0),
        "turns": k,
        "samples": p,
        "m1@t1": sequential.get("m1@t1"),
        "mP@t1": (parallel or {}).get(f"m{p}@t1") if p > 1 else None,
        "m1@tK": sequential.get(f"m1@t{k}"),
        "p1@tK": sequential.get(f"p1@t{k}"),
        "m1@tk": [sequential.get(f"m1@t{i}") for i in range(1, k + 1)],
    }


def transfer_table(rows: Sequence[dict[str, Any]]) -> str:
    k = max((r["turns"] for r in rows), default=1)
    p = max((r["samples"] for r in rows), default=0)
    header = ["stage", "task", "problems", "m1@t1", f"m{p}@t1" if p > 1 else "mP@t1", f"m1@t{k}", f"p1@t{k}", f"m1@t{k} − m1@t1"]
    body = []
    for r in rows:
        gain = None if r["m1@tK"] is None or r["m1@t1"] is None else round(r["m1@tK"] - r["m1@t1"], 2)
        body.append([r["stage"], r["task"], r["problems"], r["m1@t1"], r["mP@t1"], r["m1@tK"], r["p1@tK"], gain])
    return markdown_table(header, body)


def write_transfer(summary: dict[str, Any], out: Path) -> None:
    s = summary["settings"]
    text = [
        f"# Transfer: {summary['run_dir']} on other tasks",
        "",
        (
            f"{s['turns']} sequential turns, {s['parallel_samples']} parallel samples, window {s['window']}, "
            f"temperature {s['sampling']['temperature']}, max_new_tokens {s['sampling']['max_new_tokens']}, seed {summary['seed']}."
        ),
        "",
        transfer_table(summary["rows"]),
        "",
    ]
    write_text_atomic(out / "transfer.md", "\n".join(text))
    write_json(out / "transfer.json", summary)
    plot_transfer(summary["rows"], out / "transfer.png")


def plot_transfer(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per task: m1@t1, m1@tK, p1@tK (and mP@t1) across the stages."""
    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        xs = list(range(len(mine)))
        for key, style in [("m1@t1", "o-"), ("m1@tK", "s-"), ("p1@tK", "d:"), ("mP@t1", "^--")]:
            values = [r[key] for r in mine]
            if any(v is not None for v in values):
                ax.plot(xs, [float("nan") if v is None else v for v in values], style, label=key)
        ax.set_xticks(xs, [r["stage"] for r in mine])
        ax.set_title(task, fontsize=9)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
