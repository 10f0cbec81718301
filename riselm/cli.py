"""The `riselm` command. Thin: each command parses its options into settings and calls one library function.

Option defaults come from the settings models (riselm.settings), which also check every value, so a
bad option is an error naming it, with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from riselm.analysis.cli import register as register_analyses
from riselm.commandline import BACKEND_OPTION_HELP, TASK_OPTION_HELP, claim, fail, options, run, sampling_values, settings_of
from riselm.rundir import EPISODES_FILE, REPORT_FILE, RunLayout
from riselm.rundir import model_identity as _model_identity
from riselm.serve.cli import register as register_serving
from riselm.settings import CollectSettings, EvalSettings, GeneratorSettings, SamplesSettings, SamplingSettings, check_schedule, default

app = typer.Typer(
    name="riselm",
    help="RISE: teach language models to improve their own answers over turns.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
    unparsable_reward: float = typer.Option(0.0, help="Reward of a response without a final answer (the reference uses -1)."),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
) -> None:
    """Score model responses: every row is written back with `pred` and `reward` added."""
    from riselm.scoring import score_file

    run(score_file, task, file, output=output, unparsable_reward=unparsable_reward, **options(task_option))


@app.command("metrics")
def metrics_command(
    file: Path = typer.Argument(..., help="An episodes JSONL file (README: Episodes files), from riselm or any tool."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Multi-turn metrics of an episodes file: acc@tK, p1@tk, m1@tk (sequential) or mk@t1, pass@k (parallel)."""
    from riselm.evaluation.evaluate import metrics_of_file

    metrics = run(metrics_of_file, file)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        typer.echo(f"{key:18s} {value}")


@app.command("eval")
def eval_command(
    model: str = typer.Option("smollm2", "--model", "-m", help="Local dir, hub id, .gguf file, 'smollm2', or a served model name."),
    task: str = typer.Option("gsm8k", "--task", "-t"),
    split: str | None = typer.Option(None, help="Task split (default: the task's test split)."),
    data: str | None = typer.Option(None, "--data", help="Your own JSON/JSONL file (task fields) or a hub dataset id."),
    limit: int | None = typer.Option(None, help="Only the first N problems."),
    turns: int = typer.Option(default(EvalSettings, "turns"), help="Sequential turns K."),
    parallel: int = typer.Option(
        default(EvalSettings, "parallel_samples"), help="Also sample k independent first turns (mk@t1, pass@k); 0: none."
    ),
    window: int | None = typer.Option(None, help="Context window in attempts (default: whole history)."),
    feedback: str = typer.Option(
        default(EvalSettings, "feedback"), help="After each turn: retry (the task's retry message) or self_refine."
    ),
    temperature: float = typer.Option(default(SamplingSettings, "temperature"), help="Sampling temperature; 0 for greedy."),
    top_p: float = typer.Option(default(SamplingSettings, "top_p")),
    max_new_tokens: int = typer.Option(default(SamplingSettings, "max_new_tokens")),
    seed: int = typer.Option(0, help="The run seed; with each problem's id and turn it seeds every conversation."),
    backend: str = typer.Option(default(GeneratorSettings, "backend"), help="hf, vllm, openai, or auto (vllm where installed, else hf)."),
    base_url: str | None = typer.Option(None, help="OpenAI-compatible server URL (backend openai)."),
    batch_size: int = typer.Option(default(GeneratorSettings, "batch_size"), help="HF backend: sequences generated together."),
    backend_option: list[str] = typer.Option([], "--backend-option", help=BACKEND_OPTION_HELP),
    chunk_size: int = typer.Option(default(EvalSettings, "chunk_size"), help="Problems generated (and saved) together."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Output directory (re-running resumes)."),
    unparsable_reward: float = typer.Option(0.0),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds other work: move it aside to OUT.old-N and start afresh."),
) -> None:
    """Multi-turn evaluation: episodes, metrics.json, report.md and accuracy.png in --out."""
    from riselm.evaluation.evaluate import evaluate
    from riselm.generators import build
    from riselm.settings import TaskSettings
    from riselm.tasks import get_task

    settings = settings_of(
        EvalSettings,
        dict(
            turns=turns,
            parallel_samples=parallel,
            window=window,
            chunk_size=chunk_size,
            feedback=feedback,
            sampling=sampling_values(temperature, top_p, max_new_tokens),
        ),
    )
    where = settings_of(TaskSettings, dict(name=task, eval_split=split, eval_data=data, eval_limit=limit))
    generator_settings = settings_of(
        GeneratorSettings, dict(backend=backend, base_url=base_url, batch_size=batch_size, options=options(backend_option))
    )
    task_obj = run(get_task, task, unparsable_reward=unparsable_reward, **options(task_option))
    problems = run(task_obj.load, split=where.eval_split, data=where.eval_data, limit=where.eval_limit)
    claim(
        out,
        overwrite,
        command="eval",
        model=model,
        backend=generator_settings.backend,
        backend_options=generator_settings.options,
        task=task,
        task_options=options(task_option),
        unparsable_reward=unparsable_reward,
        split=where.eval_split,
        data=data,
        limit=limit,
        seed=seed,
        settings=settings,
    )
    generator = run(build, generator_settings, model)
    try:
        run(evaluate, task_obj, generator, out, settings, problems=problems, seed=seed)
    finally:
        generator.close()
    typer.echo((out / REPORT_FILE).read_text())
    typer.echo(f"wrote {out}/ (episodes, metrics.json, report.md, accuracy.png)", err=True)


@app.command("collect")
def collect_command(
    model: str = typer.Option(..., "--model", "-m", help="The learner: local dir, hub id, .gguf file or named model."),
    task: str = typer.Option("gsm8k", "--task", "-t"),
    split: str = typer.Option("train"),
    data: str | None = typer.Option(None, "--data", help="Your own JSON/JSONL file (task fields) or a hub dataset id."),
    limit: int | None = typer.Option(None, help="Only the first N problems."),
    schedule: str = typer.Option(
        "learner:1,learner:16", help="Per-turn improvers MODEL[:N[:fresh]] (learner, expert or reference), the last one repeats."
    ),
    expert: str | None = typer.Option(None, help="The model named `expert` in --schedule (a model spec or served name)."),
    expert_backend: str = typer.Option("openai", help="hf, vllm, openai, or auto (vllm where installed, else hf)."),
    expert_base_url: str | None = typer.Option(None, help="The expert's OpenAI-compatible server URL."),
    max_turns: int = typer.Option(default(CollectSettings, "max_turns")),
    window: int | None = typer.Option(None, help="Context window in attempts (default: whole history)."),
    temperature: float = typer.Option(default(SamplingSettings, "temperature")),
    top_p: float = typer.Option(default(SamplingSettings, "top_p")),
    max_new_tokens: int = typer.Option(default(SamplingSettings, "max_new_tokens")),
    backend: str = typer.Option(
        default(GeneratorSettings, "backend"), help="The learner's backend: hf, vllm, or auto (vllm where installed, else hf)."
    ),
    batch_size: int = typer.Option(default(GeneratorSettings, "batch_size")),
    chunk_size: int = typer.Option(default(CollectSettings, "chunk_size"), help="Problems rolled out (and saved) together."),
    seed: int = typer.Option(0, help="The run seed; with each problem's id and turn it seeds every conversation."),
    out: Path = typer.Option(Path("runs/collect"), "--out", "-o", help="Writes OUT/episodes.jsonl (re-running resumes)."),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds other work: move it aside to OUT.old-N and start afresh."),
) -> None:
    """RISE data collection: on-policy turns, then best-of-N from the learner or an expert after each wrong turn."""
    from riselm.config import parse_schedule
    from riselm.evaluation.metrics import sequential_metrics
    from riselm.generators import build
    from riselm.rollout.collect import collect
    from riselm.settings import TaskSettings
    from riselm.tasks import get_task

    steps = run(parse_schedule, schedule)
    settings = settings_of(
        CollectSettings,
        dict(
            max_turns=max_turns,
            window=window,
            schedule=steps,
            chunk_size=chunk_size,
            sampling=sampling_values(temperature, top_p, max_new_tokens),
        ),
    )
    where = settings_of(TaskSettings, dict(name=task, train_split=split, train_data=data, train_limit=limit))
    wanted = {s.model for s in steps}
    run(check_schedule, steps, ["learner", "expert"], "--schedule")
    if "expert" in wanted and not expert:
        fail("--schedule names `expert`: give --expert (and --expert-base-url for a server)")
    task_obj = run(get_task, task, **options(task_option))
    problems = run(task_obj.load, split=where.train_split, data=where.train_data, limit=where.train_limit)
    learner_settings = settings_of(GeneratorSettings, dict(backend=backend, batch_size=batch_size))
    expert_settings = settings_of(GeneratorSettings, dict(backend=expert_backend, base_url=expert_base_url, batch_size=batch_size))
    claim(
        out,
        overwrite,
        command="collect",
        model=model,
        backend=learner_settings.backend,
        task=task,
        task_options=options(task_option),
        split=where.train_split,
        data=data,
        limit=limit,
        seed=seed,
        settings=settings,
        expert=_model_identity(expert) if "expert" in wanted else None,
        expert_backend=expert_settings.backend if "expert" in wanted else None,
    )
    generators = {"learner": run(build, learner_settings, model)}
    try:
        if "expert" in wanted:
            generators["expert"] = run(build, expert_settings, expert)
        episodes = run(collect, task_obj, generators, problems, out / EPISODES_FILE, settings, seed)
    finally:
        for generator in generators.values():
            generator.close()
    metrics = sequential_metrics(episodes, task_obj.same_answer, task_obj.answer_key)
    typer.echo(
        f"{len(episodes)} episodes in {out / EPISODES_FILE}; solved by turn: "
        + ", ".join(f"t{k} {metrics[f'p1@t{k}']:.1f}%" for k in range(1, int(metrics.get("turns") or 0) + 1))
    )


@app.command("train")
def train_command(
    data: Path = typer.Argument(..., help="An episodes JSONL (from collect) or a samples JSONL."),
    model: str = typer.Option(..., "--model", "-m", help="The model to fine-tune (local dir, hub id, .gguf file or named model)."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Checkpoints and OUT/final (re-running resumes)."),
    tau: float = typer.Option(default(SamplesSettings, "tau"), help="Sample weight exp(reward / tau)."),
    filter: str = typer.Option(default(SamplesSettings, "filter"), help="all, better, best or success."),
    dedup: bool = typer.Option(default(SamplesSettings, "dedup")),
    window: str | None = typer.Option(None, help="Context window of the samples: N attempts, or 'all' (default: the episodes' own)."),
    option: list[str] = typer.Option([], "--set", help="Training setting KEY=VALUE (see TrainSettings), repeatable."),
    overwrite: bool = typer.Option(False, "--overwrite", help="OUT holds other work: move it aside to OUT.old-N and start afresh."),
) -> None:
    """Reward-weighted training on the final turn of each sample (full or LoRA; accelerate-launchable)."""
    from riselm.config import validate
    from riselm.models import resolve_model_dir
    from riselm.settings import TrainSettings
    from riselm.training.samples import EPISODE_WINDOW
    from riselm.training.trainer import train_from_file

    samples = settings_of(SamplesSettings, dict(tau=tau, filter=filter, dedup=dedup))
    settings = run(validate, TrainSettings, options(option), "--set")
    context = EPISODE_WINDOW if window is None else None if window == "all" else _window(window)
    model_dir = run(resolve_model_dir, model)  # named models and GGUF files become a checkpoint directory
    claim(
        out,
        overwrite,
        command="train",
        model=model,
        data=data,
        samples=samples,
        window=context,
        settings=settings,
    )
    final = run(train_from_file, data, model_dir, out, settings, samples, context)
    typer.echo(f"trained model in {final}")


def _window(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        fail(f"--window: expected a number of attempts >= 1 or 'all', got {text!r}")
    return int(text)


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="A run config YAML (see configs/)."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. iterations=3 train.learning_rate=2e-5."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="the run directory holds other work: move it aside to DIR.old-N and start afresh."
    ),
) -> None:
    """The RISE loop: optional boost, then iterations of collect -> samples -> train -> evaluate. Resumable."""
    from riselm.config import load_config

    settings = run(load_config, config, overrides or [])
    _pipeline(settings, ["run", str(config), *(overrides or [])], overwrite)


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="The run directory (re-running resumes)."),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides of the demo config."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="the run directory holds other work: move it aside to DIR.old-N and start afresh."
    ),
) -> None:
    """The embedded default: the whole RISE loop on the synthetic task with a tiny model, on CPU, in minutes."""
    from riselm.run.demo import prepare_demo

    settings = run(prepare_demo, out, overrides or [], overwrite)
    _pipeline(settings, ["demo", "--out", str(out), *(overrides or [])])


def _pipeline(settings, argv: list[str], overwrite: bool = False) -> None:
    """Run the pipeline here, or start its worker processes (distributed.processes > 1) running `argv`."""
    from riselm import distributed
    from riselm.run.pipeline import claim_run, run_pipeline

    run(claim_run, settings.out, settings, overwrite)

    if distributed.needs_launch(settings.distributed):
        run(distributed.launch, settings.distributed, Path(settings.out), argv)
    else:
        run(run_pipeline, settings)
        if distributed.in_worker():  # the launching command prints the summary
            return
    typer.echo(RunLayout(settings.out).summary("md").read_text())


register_analyses(app)  # compare and analyze (transitions, fixes, nll, transfer)
register_serving(app)  # serve and view


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
