"""The serving commands: `riselm serve` and `riselm view`; `register(app)` adds them to the `riselm` app.

Only pydantic settings are imported here: FastAPI and uvicorn are imported by `serve` itself, so the
rest of the CLI works without the serve extra.
"""

from __future__ import annotations

from pathlib import Path

import typer

from riselm.commandline import BACKEND_OPTION_HELP, TASK_OPTION_HELP, fail, options, run, sampling_values, settings_of
from riselm.serve.settings import ServeSettings
from riselm.settings import GeneratorSettings, SamplingSettings, default


def serve_command(
    model: str = typer.Argument(..., help="Local dir, hub id, .gguf file or 'smollm2' (hf, vllm); the served model's name (openai)."),
    backend: str = typer.Option(
        default(GeneratorSettings, "backend"),
        help="hf, vllm, openai (a proxy in front of --base-url), or auto (vllm where installed, else hf).",
    ),
    base_url: str | None = typer.Option(None, help="The OpenAI-compatible server behind this one (backend openai)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    turns: int = typer.Option(default(ServeSettings, "turns"), "--turns", "-k", help="Turns K per request (a request may ask for others)."),
    max_turns: int = typer.Option(default(ServeSettings, "max_turns"), help="The most turns a request may ask for."),
    window: int | None = typer.Option(None, help="Context window in attempts (default: whole history)."),
    stop_when_stable: int = typer.Option(
        default(ServeSettings, "stop_when_stable"), help="Stop once N consecutive turns give the same answer (0: never)."
    ),
    task: str | None = typer.Option(
        None, "--task", "-t", help="Prompt, retry message and answer extractor of this task (default: generic \\boxed{})."
    ),
    task_option: list[str] = typer.Option([], "--task-option", help=TASK_OPTION_HELP),
    temperature: float = typer.Option(default(SamplingSettings, "temperature"), help="Default sampling temperature; 0 for greedy."),
    top_p: float = typer.Option(default(SamplingSettings, "top_p")),
    max_new_tokens: int = typer.Option(default(SamplingSettings, "max_new_tokens"), help="Default max_tokens of a turn."),
    max_concurrency: int = typer.Option(
        default(ServeSettings, "max_concurrency"), help="Requests generated at once (hf, vllm: one batch)."
    ),
    max_queue: int = typer.Option(default(ServeSettings, "max_queue"), help="Requests waiting beyond those; more get 429."),
    request_timeout: float = typer.Option(default(ServeSettings, "request_timeout"), help="Seconds before a request gets 504."),
    max_prompt_tokens: int | None = typer.Option(None, help="Longest prompt accepted (default: what fits the model's positions)."),
    served_model_name: str | None = typer.Option(None, help="The model name clients send (default: MODEL)."),
    api_key_env: str | None = typer.Option(None, help="A variable holding the key clients must send as a bearer token."),
    batch_size: int = typer.Option(default(GeneratorSettings, "batch_size"), help="HF backend: sequences generated together."),
    backend_option: list[str] = typer.Option([], "--backend-option", help=BACKEND_OPTION_HELP),
) -> None:
    """Serve MODEL behind an OpenAI-compatible API: K sequential turns per request, then the majority vote (m1@tK)."""
    try:
        from riselm.serve.server import serve
    except ImportError as e:
        fail(f"riselm serve needs its extra ({e.name} is missing): pip install 'riselm[serve]'")
    settings = settings_of(
        ServeSettings,
        dict(
            turns=turns,
            max_turns=max_turns,
            window=window,
            stop_when_stable=stop_when_stable,
            task=task,
            task_options=options(task_option),
            sampling=sampling_values(temperature, top_p, max_new_tokens),
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            request_timeout=request_timeout,
            max_prompt_tokens=max_prompt_tokens,
            served_model_name=served_model_name,
        ),
    )
    if task is not None:
        from riselm.tasks import get_task

        run(get_task, task, **settings.task_options)  # an unknown task fails before the model loads
    settings_of(GeneratorSettings, dict(backend=backend, base_url=base_url, batch_size=batch_size))
    if backend == "openai" and not base_url:
        fail("--backend openai: give --base-url, the server this one stands in front of")
    run(
        serve,
        model,
        settings,
        backend=backend,
        base_url=base_url,
        host=host,
        port=port,
        batch_size=batch_size,
        options=options(backend_option),
        api_key_env=api_key_env,
    )


def view_command(
    file: Path = typer.Argument(..., help="An episodes JSONL file (README: Episodes files)."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML page to write."),
) -> None:
    """One HTML page showing every episode turn by turn, with filters (wrong→right, right→wrong, unsolved)."""
    from riselm.serve.view import view_file

    counts = run(view_file, file, out)
    typer.echo(
        f"wrote {out}: {counts['all']} episodes ({counts['wrong→right']} wrong→right, "
        f"{counts['right→wrong']} right→wrong, {counts['unsolved']} unsolved)"
    )


def register(app: typer.Typer) -> None:
    """Add `serve` and `view` to a Typer app (riselm.cli's `app`)."""
    app.command("serve")(serve_command)
    app.command("view")(view_command)
