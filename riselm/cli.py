"""The `riselm` command. Thin: each command parses its options and calls one library function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="riselm",
    help="RISE: teach language models to improve their own answers over turns.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _task_options(options: list[str]) -> dict:
    """--task-option KEY=VALUE pairs (values read as YAML) as task constructor options."""
    from riselm.config import apply_overrides

    return _run(apply_overrides, {}, options)


TASK_OPTION_HELP = "Task option KEY=VALUE, repeatable (e.g. feedback=true for code tasks, digits=4 for arithmetic)."


def _run(fn, *args, **kwargs):
    """Call a library function; turn user errors (bad data, unknown names) into a clean message and exit 2."""
    from riselm.generation.errors import BackendUnavailable
    from riselm.jsonl import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, BackendUnavailable, FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command("tasks")
def tasks_command() -> None:
    """List the known tasks and their splits."""
    from riselm.tasks import get_task, task_names

    for name in task_names():
        task = get_task(name)
        typer.echo(f"{name:12s} splits: {', '.join(task.splits)} (default {task.default_split})")


@app.command("score")
def score_command(
    file: Path = typer.Argument(..., help="JSONL rows with the task's own fields plus `response`."),
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `riselm tasks`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    unparsable_reward: float = typer.Option(0.0, help="Reward of a response without a final answer (the reference uses -1)."),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
) -> None:
    """Score model responses: every row is written back with `pred` and `reward` added."""
    from riselm.scoring import score_file

    _run(score_file, task, file, output=output, unparsable_reward=unparsable_reward, **_task_options(task_option))


@app.command("metrics")
def metrics_command(
    file: Path = typer.Argument(..., help="An episodes JSONL file written by `riselm eval` or `riselm collect`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Multi-turn metrics of an episodes file: acc@tK, p1@tk, m1@tk (sequential) or mk@t1, pass@k (parallel)."""
    from riselm.evaluation.evaluate import metrics_of_file

    metrics = _run(metrics_of_file, file)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        typer.echo(f"{key:18s} {value}")


@app.command("eval")
def eval_command(
    model: str = typer.Option("smollm2", "--model", "-m", help="Local dir, hub id, .gguf file, 'smollm2', or a served model name."),
    task: str = typer.Option("gsm8k", "--task", "-t"),
    split: Optional[str] = typer.Option(None, help="Task split (default: the task's test split)."),
    data: Optional[str] = typer.Option(None, "--data", help="Your own JSON/JSONL file (task fields) or a hub dataset id."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    turns: int = typer.Option(5, help="Sequential turns K."),
    parallel: int = typer.Option(0, help="Also sample k independent first turns (for mk@t1, pass@k)."),
    window: Optional[int] = typer.Option(None, help="Context window in attempts (default: whole history)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; 0 for greedy."),
    top_p: float = typer.Option(1.0),
    max_new_tokens: int = typer.Option(512),
    seed: int = typer.Option(0),
    backend: str = typer.Option("hf", help="hf, vllm or openai."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server URL (backend openai)."),
    batch_size: int = typer.Option(16, help="HF backend: sequences generated together."),
    chunk_size: int = typer.Option(256, help="Problems generated (and saved) together."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Output directory (re-running resumes)."),
    unparsable_reward: float = typer.Option(0.0),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
) -> None:
    """Multi-turn evaluation: episodes, metrics.json, report.md and accuracy.png in --out."""
    from riselm.evaluation.evaluate import evaluate
    from riselm.evaluation.runner import EvalSettings
    from riselm.generation import build_generator
    from riselm.tasks import get_task

    task_obj = _run(get_task, task, unparsable_reward=unparsable_reward, **_task_options(task_option))
    problems = _run(task_obj.load, split=split, data=data, limit=limit)
    generator = _run(build_generator, model, backend=backend, base_url=base_url, batch_size=batch_size)
    settings = EvalSettings(
        turns=turns,
        parallel_samples=parallel,
        window=window,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        chunk_size=chunk_size,
    )
    result = _run(evaluate, task_obj, generator, out, settings=settings, problems=problems)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"wrote {out}/ (episodes, metrics.json, report.md, accuracy.png)", err=True)


@app.command("collect")
def collect_command(
    model: str = typer.Option(..., "--model", "-m", help="The learner: local dir, hub id, .gguf file or named model."),
    task: str = typer.Option("gsm8k", "--task", "-t"),
    split: str = typer.Option("train"),
    data: Optional[str] = typer.Option(None, "--data", help="Your own JSON/JSONL file (task fields) or a hub dataset id."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    schedule: str = typer.Option("learner:1,learner:16", help="Per-turn improvers MODEL:N, the last one repeats."),
    expert: Optional[str] = typer.Option(None, help="The model named `expert` in --schedule (a model spec or served name)."),
    expert_backend: str = typer.Option("openai", help="hf, vllm or openai."),
    expert_base_url: Optional[str] = typer.Option(None, help="The expert's OpenAI-compatible server URL."),
    max_turns: int = typer.Option(5),
    temperature: float = typer.Option(1.0),
    max_new_tokens: int = typer.Option(512),
    backend: str = typer.Option("hf", help="The learner's backend: hf or vllm."),
    batch_size: int = typer.Option(16),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/collect"), "--out", "-o", help="Writes OUT/episodes.jsonl (re-running resumes)."),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
) -> None:
    """RISE data collection: on-policy turns, then best-of-N from the learner or an expert after each wrong turn."""
    from riselm.config import parse_schedule
    from riselm.evaluation.metrics import sequential_metrics
    from riselm.generation import build_generator
    from riselm.rollout.collect import CollectSettings, ImproverStep, collect
    from riselm.tasks import get_task

    steps = _run(parse_schedule, schedule)
    task_obj = _run(get_task, task, **_task_options(task_option))
    problems = _run(task_obj.load, split=split, data=data, limit=limit)
    generators = {"learner": _run(build_generator, model, backend=backend, batch_size=batch_size)}
    if any(s.model == "expert" for s in steps):
        if not expert:
            _fail("--schedule names `expert`: give --expert (and --expert-base-url for a server)")
        generators["expert"] = _run(build_generator, expert, backend=expert_backend, base_url=expert_base_url, batch_size=batch_size)
    unknown = sorted({s.model for s in steps} - set(generators))
    if unknown:
        _fail(f"--schedule names unknown model(s) {unknown}; use `learner` or `expert`")
    settings = CollectSettings(max_turns=max_turns, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    plan = [ImproverStep(generators[s.model], s.n, source=s.model) for s in steps]
    episodes = _run(collect, task_obj, plan, problems, settings, out / "episodes.jsonl")
    metrics = sequential_metrics(episodes, task_obj.same_answer)
    typer.echo(f"{len(episodes)} episodes in {out / 'episodes.jsonl'}; solved by turn: "
               + ", ".join(f"t{k} {metrics[f'p1@t{k}']:.1f}%" for k in range(1, int(metrics.get('turns', 0)) + 1)))


@app.command("train")
def train_command(
    data: Path = typer.Argument(..., help="An episodes JSONL (from collect) or a samples JSONL."),
    model: str = typer.Option(..., "--model", "-m", help="The model to fine-tune (local dir or hub id)."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Checkpoints and OUT/final (re-running resumes)."),
    tau: float = typer.Option(0.4, help="Sample weight exp(reward / tau)."),
    filter: str = typer.Option("all", help="all, better, best or success."),
    dedup: bool = typer.Option(True),
    option: list[str] = typer.Option([], "--set", help="Training setting KEY=VALUE (see TrainConfig), repeatable."),
) -> None:
    """Reward-weighted training on the final turn of each sample (full or LoRA; accelerate-launchable)."""
    from riselm.config import apply_overrides
    from riselm.training.config import TrainConfig
    from riselm.training.trainer import train_from_file

    from riselm.models import resolve_model_dir

    config = _run(lambda: TrainConfig.model_validate(apply_overrides({}, option)))
    model_dir = _run(resolve_model_dir, model)  # named models and GGUF files become a checkpoint directory
    final = _run(train_from_file, data, model_dir, out, config, tau=tau, filter=filter, dedup=dedup)
    typer.echo(f"trained model in {final}")


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="A run config YAML (see configs/)."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. iterations=3 train.learning_rate=2e-5."),
) -> None:
    """The RISE loop: optional boost, then iterations of collect -> samples -> train -> evaluate. Resumable."""
    from riselm.config import load_config
    from riselm.pipeline import run_pipeline

    cfg = _run(load_config, config, overrides or [])
    _run(run_pipeline, cfg)
    typer.echo((Path(cfg.out) / "summary.md").read_text())


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="The run directory (re-running resumes)."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides of the demo config."),
) -> None:
    """The embedded default: the whole RISE loop on the synthetic task with a tiny model, on CPU, in minutes."""
    from riselm.demo import run_demo

    _run(run_demo, out, overrides or [])
    typer.echo((out / "summary.md").read_text())


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
