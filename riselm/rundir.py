"""What made an output directory, recorded in it, so that re-running resumes only the same work.

Every command that writes a resumable directory (`riselm eval`, `collect`, `train`, `run`, `demo`)
first *claims* it with an identity: the settings that decide the directory's content (model, task
and its options, data file and its hash, turns, window, sampling, seed, method, …), but not those
that only decide how fast it is made (batch and chunk sizes, threads, processes, progress bars,
logging). The identity is written to `riselm.json` when the directory is created. Re-running with
the same identity resumes as before; with a different one the command stops with one line naming
the first setting that differs and both values. `overwrite=True` (`--overwrite`) first moves the old
directory aside to `DIR.old-N` (never deleting anything) and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

from riselm.files import write_json

logger = logging.getLogger(__name__)

IDENTITY_FILE = "riselm.json"

_TRAIN_BOOKKEEPING = ("logging_steps", "save_steps", "save_total_limit", "report_to", "resume")
# Settings that decide how fast or how visibly the work is done, not what it produces: they may change
# between a run and its resume. (Training batch sizes do change what is trained, so they are content.)
NOT_CONTENT: dict[str, tuple[str, ...]] = {
    "train": _TRAIN_BOOKKEEPING,
    "run": (
        "out", "threads", "iterations", "distributed", "learner.batch_size", "collect.chunk_size", "eval.chunk_size",
        "eval.base", "online.eval_every", "online.save_every", "online.report_to", "online.micro_batch",
        *(f"{section}.{key}" for section in ("train", "boost.train") for key in _TRAIN_BOOKKEEPING),
    ),
}


class RunDirError(ValueError):
    """An output directory holds the results of other work than the command asks for."""


def claim(directory: str | Path, identity: Mapping[str, Any], overwrite: bool = False) -> None:
    """Record `identity` in a new (or empty) `directory`, or check it against the one recorded there."""
    directory = Path(directory)
    identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists, keys strings
    if overwrite and _holds_files(directory):
        aside = _aside(directory)
        directory.rename(aside)
        logger.warning("moved the old %s aside to %s", directory, aside)
    record = directory / IDENTITY_FILE
    if record.exists():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{record}: damaged (not valid JSON); use another --out, or --overwrite to move {directory} aside") from None
        difference = first_difference(recorded, identity)
        if difference is None:
            return
        key, old, new = difference
        raise RunDirError(
            f"{directory} holds the results of {key}={_show(old)}, not {key}={_show(new)}; to keep both, give "
            f"another --out; to start afresh here, add --overwrite (the old directory is moved aside, not deleted)"
        )
    if _holds_files(directory):
        raise RunDirError(
            f"{directory} already holds files with no record ({IDENTITY_FILE}) of what made them; give another --out, "
            "or add --overwrite to move them aside"
        )
    write_json(record, identity)


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key whose values differ (a missing key reads as None), or None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=lambda k: (k not in old, list(old).index(k) if k in old else 0)):
            found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else (prefix.rstrip("."), old, new)


def without(settings: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A copy of nested `settings` without the dotted `keys` (settings that do not change the content)."""
    result = json.loads(json.dumps(settings))
    for key in keys:
        *parents, last = key.split(".")
        node = result
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return result


def model_identity(spec: str | Path | None, root: str | Path | None = None) -> str | None:
    """A model as given: a local path made absolute (so a resume from another folder matches), one inside
    `root` (the demo's own starting model) relative to it, else the name."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if root is not None and path.resolve().is_relative_to(Path(root).resolve()):
        return f"<out>/{path.resolve().relative_to(Path(root).resolve())}"
    return str(path.resolve()) if path.exists() else str(spec)


def data_identity(path: str | Path | None) -> str | None:
    """A data file by the hash of its content (moved or renamed, it is the same data); a hub id as given."""
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        return str(path)
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _holds_files(directory: Path) -> bool:
    # hidden names are riselm's own temporary files (riselm.files), possibly another process's
    return directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir())


def _aside(directory: Path) -> Path:
    n = 1
    while directory.with_name(f"{directory.name}.old-{n}").exists():
        n += 1
    return directory.with_name(f"{directory.name}.old-{n}")


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
