"""Score responses from anywhere with a task's reward: `riselm score --task NAME FILE.jsonl`.

Each input row holds the task's own fields (as in its shipped files, e.g. `question` and `answer` for
GSM8K) plus `response`, the text to score. Every row comes back unchanged, in order, with `pred` (the
extracted final answer, or null) and `reward` added, and `feedback` where the task gives one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from riselm.files import dumps
from riselm.jsonl import DataError, iter_jsonl, write_jsonl
from riselm.tasks import Task, get_task


def score_rows(task: Task, rows: Iterable[dict[str, Any]], source: str = "<rows>") -> list[dict[str, Any]]:
    """The rows with `pred` and `reward` added; `source` names them in errors ("<source>:<row number>")."""
    return _score_numbered(task, list(enumerate(rows, start=1)), source)


def score_file(task_name: str, path: str | Path, output: str | Path | None = None, **task_options) -> list[dict]:
    """Score every row of a JSONL file and write them to `output` (stdout when None); returns the rows.

    The whole input is read and checked before anything is written, so a malformed row leaves no
    half-written output, and `output` may be the input file itself.
    """
    task = get_task(task_name, **task_options)
    required = (*task.row_fields, "response")
    scored = _score_numbered(task, list(iter_jsonl(path, required)), str(path))
    if output is None:
        for row in scored:
            sys.stdout.write(dumps(row) + "\n")
        sys.stdout.flush()
    else:
        write_jsonl(output, scored)
    return scored


def _score_numbered(task: Task, numbered: list[tuple[int, Any]], source: str) -> list[dict[str, Any]]:
    """Check every (line number, row) first, then score them all at once (code tasks run concurrently)."""
    problems = [_problem_of_row(task, row, source, lineno) for lineno, row in numbered]
    scores = task.score_many(problems, [row["response"] for _, row in numbered])
    out = []
    for (_, row), score in zip(numbered, scores):
        scored = {**row, "pred": score.pred, "reward": score.reward}
        if score.feedback is not None:
            scored["feedback"] = score.feedback
        out.append(scored)
    return out


def _problem_of_row(task: Task, row: Any, source: str, lineno: int):
    if not isinstance(row, dict):
        raise DataError(f"{source}:{lineno}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("response"), str):
        raise DataError(f"{source}:{lineno}: expected 'response' holding the text to score as a string")
    # The task's own row check: missing fields and invalid rows raise DataError naming source:lineno.
    return task.problem_of_row(row, lineno - 1, "score", source)
