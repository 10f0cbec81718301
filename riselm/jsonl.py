"""JSON Lines reading and writing with errors that name the file and line, and crash-safe appends."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from riselm.files import dumps, write_text_atomic


class DataError(ValueError):
    """Bad input data: the message names the file, the line and what was expected."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, row) for each non-blank line; rows must be JSON objects holding `required`."""
    path = Path(path)
    required = list(required)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a JSON Lines file")
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(_damage_checked(f, path), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line); expected UTF-8 JSON Lines") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: expected one JSON object per line, got invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(
                    f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))}; expected fields {', '.join(map(repr, required))}"
                )
            yield lineno, row


def _damage_checked(lines, path: Path):
    """The file's lines; a damaged or truncated gzip file is a DataError naming it."""
    try:
        yield from lines
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: damaged or truncated compressed file ({e}); expected a whole gzip file") from None


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    return [row for _, row in iter_jsonl(path, required)]


def read_json_or_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a file holding either a JSON array of objects or JSON Lines (optionally gzipped)."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".json"):
        with _open_text(path) as f:
            try:
                data = json.loads("".join(_damage_checked(f, path)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            except UnicodeDecodeError:
                raise DataError(f"{path}: not valid UTF-8; expected a UTF-8 JSON file") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON array of objects")
        return data
    return read_jsonl(path)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows atomically (riselm.files): a crash leaves either the old file or the new one, never half of one."""
    write_text_atomic(path, "".join(dumps(row) + "\n" for row in rows))


class JsonlAppender:
    """Append rows one at a time, flushed and fsynced, so a killed run keeps every finished row.

    Opening an existing file drops a trailing partial line (the row being written when a previous run
    was killed) so that the file stays valid JSON Lines.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drop_torn_tail(path: str | Path) -> None:
    """Remove a trailing partial line: the row being written when a run was killed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # 0 when the only line is partial
        f.seek(cut)
        f.truncate()
