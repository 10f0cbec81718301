"""Resumable checkpoints that are never taken as finished when cut short.

A checkpoint directory gets a completion mark only after everything in it is written; one without
the mark (a kill or a full disk during the save) is ignored and removed when a run resumes. Final
outputs are written under a temporary name and renamed into place, so they exist only when whole.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARK = "riselm-complete"  # written into a checkpoint directory once everything in it is saved
PREFIX = "checkpoint-"  # checkpoint-N: the transformers Trainer's naming, which the online stage shares


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"{PREFIX}{step}"


def checkpoints(output_dir: Path) -> list[Path]:
    """Every checkpoint-N directory in `output_dir`, complete or not, by step."""
    found = [p for p in output_dir.glob(f"{PREFIX}*") if p.name.removeprefix(PREFIX).isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def mark_complete(directory: Path) -> None:
    tmp = directory / (COMPLETE_MARK + ".tmp")
    tmp.write_text("")
    os.replace(tmp, directory / COMPLETE_MARK)


def last_complete_checkpoint(output_dir: Path, prefix: str = PREFIX) -> Path | None:
    """The newest `prefix`N directory in `output_dir` holding the completion mark; incomplete ones are removed."""
    if not output_dir.is_dir():
        return None
    complete = []
    for path in output_dir.glob(f"{prefix}*"):
        step = path.name.removeprefix(prefix)
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / COMPLETE_MARK).exists():
            complete.append((int(step), path))
        else:
            logger.warning("removing %s: it was cut short (killed or out of disk) before it was complete", path)
            shutil.rmtree(path, ignore_errors=True)
    return max(complete)[1] if complete else None


def publish(partial: Path, final: Path) -> None:
    """Move a completely written `partial` directory to `final` (replacing an older one)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
