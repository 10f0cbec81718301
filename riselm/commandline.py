"""What every riselm command shares: one clean line and exit code 2 for a user's mistake, options
parsed into settings, an output directory claimed for the work (riselm.rundir).

riselm.cli and riselm.analysis.cli import these; the library underneath never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

TASK_OPTION_HELP = "Task option KEY=VALUE, repeatable (e.g. feedback=true for code tasks, digits=4 for arithmetic)."
BACKEND_OPTION_HELP = "Backend option KEY=VALUE, repeatable (e.g. send_seed=false for openai, dtype=bfloat16 for hf)."


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def run(fn, *args, **kwargs):
    """Call a library function; turn user errors (bad data or options, unreachable models, a full or
    read-only disk) into one clean line and exit code 2."""
    from riselm.distributed import WorkerFailed
    from riselm.generation.errors import BackendUnavailable
    from riselm.jsonl import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, BackendUnavailable, ValueError, WorkerFailed) as e:
        fail(str(e))
    except OSError as e:  # FileNotFoundError, PermissionError, a full disk, a path under a regular file
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}{e.strerror or e}")


# settings fields whose command-line option has another name
OPTION_NAMES = {
    "parallel_samples": "parallel",
    "eval_split": "split",
    "eval_data": "data",
    "eval_limit": "limit",
    "train_split": "split",
    "train_data": "data",
    "train_limit": "limit",
}


def settings_of(model, values: dict[str, Any]):
    """`model` validated from CLI option values; an invalid value is an error naming its option."""
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][-1]) if err["loc"] else "?"
            option = OPTION_NAMES.get(field, field).replace("_", "-")
            problems.append(f"--{option}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
        fail("; ".join(problems))


def options(pairs: list[str]) -> dict:
    """KEY=VALUE pairs (values read as YAML) as a dict."""
    from riselm.config import apply_overrides

    return run(apply_overrides, {}, pairs)


def claim(out: Path, overwrite: bool, *, command: str, model: str | None, data: str | Path | None = None, **identity: Any) -> None:
    """Claim the output directory for this command's settings (riselm.rundir): resume only the same work.

    Settings models among `identity` are recorded as their content (`settings` without the command's speed
    settings, riselm.rundir.NOT_CONTENT) and read back from an older riselm's record with today's defaults."""
    from pydantic import BaseModel

    from riselm.rundir import NOT_CONTENT, claim, data_identity, model_identity, without

    models = {key: value for key, value in identity.items() if isinstance(value, BaseModel)}

    def content(key: str, settings: BaseModel) -> dict:
        return without(settings.model_dump(), NOT_CONTENT.get(command, ()) if key == "settings" else ())

    def as_today(recorded: dict) -> dict:
        return {**recorded, **{key: content(key, type(value).model_validate(recorded[key])) for key, value in models.items()}}

    identity = {**identity, **{key: content(key, value) for key, value in models.items()}}
    identity = {"command": command, **identity, "model": model_identity(model), "data": data_identity(data)}
    run(claim, out, identity, overwrite, as_today)


def sampling_values(temperature: float, top_p: float, max_new_tokens: int) -> dict:
    """The `sampling` section of a settings model from its three command-line options."""
    return {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
