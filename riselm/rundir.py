"""The run directory: where every file of a run lives (`RunLayout`), and what made it (`claim`).

`RunLayout` is the one place the run directory's folder and file names are written; the pipeline,
the online stage, the trainer, the evaluation, the summary and the analyses all ask it. Its tree is
`RunLayout.describe()`, which the README reproduces (a test holds the two together).

What made an output directory, recorded in it, so that re-running resumes only the same work:

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
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riselm.files import write_json

logger = logging.getLogger(__name__)

IDENTITY_FILE = "riselm.json"

_TRAIN_BOOKKEEPING = ("logging_steps", "save_steps", "save_total_limit", "report_to", "resume")
# Settings that decide how fast or how visibly the work is done, not what it produces: they may change
# between a run and its resume. (Training batch sizes do change what is trained, so they are content.)
# Keyed by command: `eval`, `collect` and `train` by the keys of their settings model.
NOT_CONTENT: dict[str, tuple[str, ...]] = {
    "eval": ("chunk_size", "base", "boost"),
    "collect": ("chunk_size",),
    "train": _TRAIN_BOOKKEEPING,
    "run": (
        "out",
        "threads",
        "iterations",
        "distributed",
        "learner.batch_size",
        "collect.chunk_size",
        "eval.chunk_size",
        "eval.base",
        "eval.boost",
        "online.eval_every",
        "online.save_every",
        "online.report_to",
        "online.micro_batch",
        *(f"{section}.{key}" for section in ("train", "boost.train") for key in _TRAIN_BOOKKEEPING),
    ),
}


class RunDirError(ValueError):
    """An output directory holds the results of other work than the command asks for."""


def claim(
    directory: str | Path,
    identity: Mapping[str, Any],
    overwrite: bool = False,
    upgrade: Callable[[dict], dict] | None = None,
) -> None:
    """Record `identity` in a new (or empty) `directory`, or check it against the one recorded there.

    `upgrade` reads a record as today's settings would: an older riselm recorded no value for the options
    added since, and their defaults do what that version did, so the run resumes after an upgrade. A record
    it cannot read (an option since removed) is compared as it stands."""
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
        if difference is not None and upgrade is not None:
            difference = first_difference(_upgraded(recorded, upgrade), identity)
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


def _upgraded(recorded: dict, upgrade: Callable[[dict], dict]) -> dict:
    try:
        return json.loads(json.dumps(upgrade(recorded)))
    except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
        return recorded


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


# ---- the layout ---------------------------------------------------------------------------------

# Inside any training output directory (a stage's train/, `riselm train --out`)
FINAL = "final"  # the trained model, present only once whole
FINAL_PARTIAL = "final.partial"  # the model being written; renamed to final/ when complete
TRAIN_CONFIG = "train_config.json"
# Inside any evaluation output directory (a stage's eval/, `riselm eval --out`)
SEQUENTIAL_FILE = "episodes.sequential.jsonl"
PARALLEL_FILE = "episodes.parallel.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy.png"
# Inside a collection output directory (a stage's collect/, `riselm collect --out`)
EPISODES_FILE = "episodes.jsonl"
DONE_FILE = "DONE"  # marks a finished collection (written after the last episode)


def iteration_stage(k: int) -> str:
    """RISE iteration k's stage name (its folder, its summary row, its collection's random streams)."""
    return f"iter{k}"


ONLINE_PREFIX = "online@"  # the stage name of the live policy evaluated after N online steps
_ONLINE_EVAL = re.compile(r"eval-step(\d+)$")


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run directory (`riselm run`, `riselm demo`). Stages: base, boost, iter1, iter2,
    …, online@N (the live policy after N online steps) and online."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # -- the run's own files
    @property
    def identity(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def summary(self, suffix: str = "json") -> Path:
        """summary.json, summary.md or summary.png: Table 1 across the stages."""
        return self.root / f"summary.{suffix}"

    # -- stages
    def stage_dir(self, stage: str) -> Path:
        """The folder a stage writes into (the online@N evaluations live inside online/)."""
        return self.root / ("online" if stage.startswith(ONLINE_PREFIX) else stage)

    def iteration(self, k: int) -> Path:
        return self.root / iteration_stage(k)

    def collect_dir(self, iteration: int | str) -> Path:
        """Iteration k's collection (by number, or by stage name such as 'iter2')."""
        stage = self.iteration(iteration) if isinstance(iteration, int) else self.stage_dir(iteration)
        return stage / "collect"

    def samples(self, stage: str) -> Path:
        return self.stage_dir(stage) / "samples.jsonl"

    def train_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "train"

    def model(self, stage: str) -> Path:
        """The model a stage trained: <stage>/train/final, or online/final for the online stage."""
        return self.stage_dir(stage) / FINAL if stage == "online" else self.train_dir(stage) / FINAL

    def eval_dir(self, stage: str) -> Path:
        if stage.startswith(ONLINE_PREFIX):
            return self.online_eval_dir(int(stage.removeprefix(ONLINE_PREFIX)))
        return self.stage_dir(stage) / "eval"

    # -- the online stage
    @property
    def online_dir(self) -> Path:
        return self.root / "online"

    def online_eval_dir(self, step: int) -> Path:
        return self.online_dir / f"eval-step{step}"

    def online_evaluations(self) -> list[tuple[int, Path]]:
        """(step, eval dir) of every finished evaluation of the live policy, by step."""
        found = []
        for path in self.online_dir.glob("eval-step*"):
            match = _ONLINE_EVAL.match(path.name)
            if match and (path / METRICS_FILE).is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    @property
    def online_metrics(self) -> Path:
        return self.online_dir / "metrics.jsonl"

    @property
    def online_curves(self) -> Path:
        return self.online_dir / "curves.png"

    @property
    def online_tensorboard(self) -> Path:
        return self.online_dir / "tensorboard"

    @property
    def online_sync(self) -> Path:
        """Where the live weights are saved for a vLLM engine to load them."""
        return self.online_dir / "sync"

    @staticmethod
    def stage_of(path: str | Path) -> str | None:
        """The stage whose evaluation holds `path` (an episodes file or its folder): 'boost' for
        out/boost/eval/episodes.sequential.jsonl, 'online@40' for out/online/eval-step40/…; None otherwise."""
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        match = _ONLINE_EVAL.match(folder.name)
        if match:
            return f"{ONLINE_PREFIX}{match.group(1)}"
        return folder.parent.name if folder.name == "eval" else None

    @staticmethod
    def describe() -> str:
        """The tree of a run directory, as the README shows it."""
        return TREE


TREE = """\
    out/
      riselm.json           what made the run (resuming checks it)
      config.yaml           the validated config of the run
      summary.json|md|png   the paper's Table 1 across stages, with per-turn curves
      base/eval/            eval.base: the starting model's evaluation
      boost/                collect/ (boost.wrong_attempts: own), samples.jsonl, train/, eval/ (eval.boost)
      iter1/                collect/ (episodes.jsonl, DONE), samples.jsonl, train/, eval/
      online/               method online: metrics.jsonl, curves.png, tensorboard/, sync/, checkpoint-{N}/, eval-step{N}/, final/, eval/
      <stage>/eval/         episodes.sequential.jsonl, episodes.parallel.jsonl, metrics.json, report.md, accuracy.png
      <stage>/train/        checkpoint-{N}/ while training, final.partial/ while saving, final/ when whole, train_config.json"""
