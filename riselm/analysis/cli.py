"""The analysis commands: `riselm compare` and `riselm analyze transitions|fixes|nll|transfer`.

`register(app)` adds them to the `riselm` Typer app. Each command parses its options and calls one
library function of riselm.analysis; user errors (missing files, bad rows, unknown stages or tasks)
are one line and exit code 2 through riselm.commandline.
"""

from __future__ import annotations

from pathlib import Path

import typer

from riselm.commandline import fail, options, run, settings_of

analyze_app = typer.Typer(
    name="analyze",
    help="The paper's analyses of runs and episodes files: transitions, fixes (Fig. 2), nll (rebuttal Fig. 1), transfer (Table 2).",
    no_args_is_help=True,
)

OUT_HELP = "Output directory (tables as .md and .json, plots as .png)."
STAGE_HELP = "Only this stage (repeatable; default: every stage with a saved model)."
TASK_OPTION_HELP = "Task option KEY=VALUE, repeatable (e.g. digits=3 for arithmetic)."


def _threads(threads: int | None) -> None:
    if threads:
        from riselm.run.pipeline import set_cpu_threads

        set_cpu_threads(threads)


def _done(out: Path, table_file: str) -> None:
    typer.echo((out / table_file).read_text())
    typer.echo(f"wrote {out}/", err=True)


def compare_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (each with summary.json)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    all_stages: bool = typer.Option(False, "--all-stages", help="Every stage of each run, not only its final one."),
    count_tokens: bool = typer.Option(True, "--count-tokens/--no-count-tokens", help="Count trained tokens with each stage's tokenizer."),
) -> None:
    """The paper's Table 1 across runs (m1@t1, mP@t1, m1@tK, p1@tK) with each row's budget: compare.md/json/png."""
    from riselm.analysis.compare import compare_runs

    run(compare_runs, run_dirs, out, all_stages=all_stages, count_tokens=count_tokens)
    _done(out, "compare.md")


@analyze_app.command("transitions")
def transitions_command(
    episodes: Path = typer.Argument(..., help="A sequential episodes file (e.g. RUN/iter1/eval/episodes.sequential.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
) -> None:
    """Right/wrong transitions from turn k-1 to turn k, as counts and shares: transitions.md/json/png."""
    from riselm.analysis.transitions import transitions_of_file

    run(transitions_of_file, episodes, out)
    _done(out, "transitions.md")


@analyze_app.command("fixes")
def fixes_command(
    parallel: Path = typer.Argument(..., help="The earlier stage's parallel episodes (P first-turn samples per problem)."),
    sequential: Path = typer.Argument(..., help="The later stage's sequential episodes (K turns per problem)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    turns: int | None = typer.Option(None, min=1, help="Count only the later model's first K turns (default: all)."),
) -> None:
    """Fig. 2: of the problems all B first-turn samples miss, the share the later model solves over turns."""
    from riselm.analysis.fixes import fixes_of_files

    run(fixes_of_files, parallel, sequential, out, turns=turns)
    _done(out, "fixes.md")


@analyze_app.command("nll")
def nll_command(
    run_dir: Path = typer.Argument(..., help="A run directory (with summary.json)."),
    task: str = typer.Option(..., "--task", "-t", help="The task whose gold solutions are scored."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    limit: int | None = typer.Option(None, min=1, help="Only the first N problems."),
    split: str | None = typer.Option(None, help="Task split (default: its test split)."),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
    stage: list[str] = typer.Option([], "--stage", help=STAGE_HELP),
    attempts: str = typer.Option(
        "own", help="Wrong attempt in the multi-turn context: 'own' (the stage's, else corrupted gold) or 'corrupted'."
    ),
    batch_size: int = typer.Option(16, min=1, help="Conversations scored together."),
    max_length: int = typer.Option(2048, min=2, help="Tokens per conversation (longer contexts are cut from the left)."),
    device: str | None = typer.Option(None, help="cpu, cuda, … (default: cuda when available)."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
    seed: int = typer.Option(0, help="Seeds the choice of wrong attempts."),
) -> None:
    """Rebuttal Fig. 1: mean NLL per token of the gold solution, directly and after a wrong attempt, per checkpoint."""
    from riselm.analysis.nll import nll_of_run

    if attempts not in ("own", "corrupted"):
        fail(f"--attempts: expected 'own' or 'corrupted', got {attempts!r}")
    _threads(threads)
    run(
        nll_of_run,
        run_dir,
        task,
        options(task_option),
        out,
        stages=stage or None,
        split=split,
        limit=limit,
        attempts=attempts,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        seed=seed,
    )
    _done(out, "nll.md")


@analyze_app.command("transfer")
def transfer_command(
    run_dir: Path = typer.Argument(..., help="A run directory (with summary.json and config.yaml)."),
    task: list[str] = typer.Option(..., "--task", "-t", help="NAME or NAME:KEY=VALUE,… (e.g. arithmetic:digits=2), repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Evaluations go to OUT/<stage>/<task>/ (re-running resumes); tables to OUT."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N problems of each task."),
    split: str | None = typer.Option(None, help="Task split (default: each task's test split)."),
    task_option: list[str] = typer.Option([], "--task-option", help="Option KEY=VALUE for every task, repeatable."),
    stage: list[str] = typer.Option([], "--stage", help=STAGE_HELP),
    turns: int | None = typer.Option(None, help="Sequential turns K (default: the run's)."),
    parallel: int | None = typer.Option(None, help="Parallel samples (default: the run's; 0: none)."),
    window: int | None = typer.Option(None, help="Context window in attempts (default: the run's)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default: the run's)."),
    max_new_tokens: int | None = typer.Option(None, help="Tokens per response (default: the run's)."),
    batch_size: int | None = typer.Option(None, help="HF backend: sequences generated together (default: the run's)."),
    seed: int | None = typer.Option(None, help="The seed of the conversations (default: the run's)."),
    threads: int | None = typer.Option(None, min=1, help="Torch CPU threads."),
) -> None:
    """Table 2: every stage model evaluated on other tasks, m1@t1 / mP@t1 / m1@tK / p1@tK per stage and task."""
    from riselm.analysis.runs import read_run
    from riselm.analysis.transfer import (
        run_eval_settings,
        run_generator_settings,
        transfer,
    )
    from riselm.settings import EvalSettings, GeneratorSettings

    finished = run(read_run, run_dir)
    settings = run(run_eval_settings, finished).model_dump()
    given = {"turns": turns, "parallel_samples": parallel, "window": window}
    settings.update({k: v for k, v in given.items() if v is not None})
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens}
    settings["sampling"] = {**settings["sampling"], **{k: v for k, v in sampling.items() if v is not None}}
    generator = run(run_generator_settings, finished).model_dump()
    if batch_size is not None:
        generator["batch_size"] = batch_size
    _threads(threads)
    run(
        transfer,
        run_dir,
        task,
        out,
        settings_of(EvalSettings, settings),
        settings_of(GeneratorSettings, generator),
        stages=stage or None,
        split=split,
        limit=limit,
        seed=seed,
        task_options=options(task_option),
    )
    _done(out, "transfer.md")


def register(app: typer.Typer) -> None:
    """Add `compare` and the `analyze` group to a Typer app (riselm.cli's `app`)."""
    app.command("compare")(compare_command)
    app.add_typer(analyze_app, name="analyze")
