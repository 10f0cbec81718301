"""Every file riselm writes is written whole or not at all, and every JSON file is valid JSON.

A file is written under a temporary name in its own folder, flushed to disk, then renamed over the
target, so a crash, a kill or a full disk leaves the old file or the new one, never half of one.
JSON is written with `allow_nan=False`: NaN and infinity are not JSON, and a value that would need
them is an error here rather than a file other tools cannot read. (Episodes are appended row by row
instead, by riselm.jsonl.JsonlAppender, which keeps every finished row of a killed run.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # keeps the suffix: matplotlib reads the format from it
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole text file (UTF-8)."""
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def dumps(data: Any, indent: int | None = None) -> str:
    """JSON text of `data`; ValueError for NaN or infinity, which JSON cannot hold."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as an indented JSON file."""
    write_text_atomic(path, dumps(data, indent=2) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure."""
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
