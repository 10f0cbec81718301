"""Writers of hand-made episodes files and summary.json files for the analysis tests."""

from __future__ import annotations

import json
from pathlib import Path


def episode(pid, rewards, preds=None, mode="sequential", sample=0, prompt=None, responses=None, task="arithmetic", candidates=None):
    """One episodes-file row; `rewards` gives the turns (1 right, 0 wrong), `preds` their answers."""
    preds = preds or [str(i) for i in range(len(rewards))]
    turns = []
    for i, reward in enumerate(rewards):
        turn = {"response": (responses or {}).get(i, f"\\boxed{{{preds[i]}}}"), "pred": preds[i], "reward": reward}
        if i + 1 < len(rewards):
            turn["feedback"] = "Incorrect. Try again"
        if candidates:
            turn["num_candidates"] = candidates[i]
        turns.append(turn)
    row = {"id": pid, "task": task, "mode": mode, "sample": sample, "turns": turns}
    if prompt is not None:
        row["prompt"] = prompt
    return row


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage_row(name, model, keys, values, turns, seconds=None):
    """A summary.json stage row as riselm.run.summary writes it (curves filled with a ramp)."""
    row = {"name": name, "model": str(model), **dict(zip(keys, values))}
    row["acc@tk"] = [10.0 + k for k in range(turns)]
    row["p1@tk"] = [10.0 + 5 * k for k in range(turns)]
    row["m1@tk"] = [10.0 + 2 * k for k in range(turns)]
    row["seconds"] = seconds or {}
    return row


def write_summary(run: Path, keys, stages) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"keys": keys, "stages": stages}))
    return run


def one_clean_error(result, *words):
    """Exit code 2 and one `error:` line at the end, holding every word; no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error: " in line]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for word in words:
        assert str(word) in errors[0], (word, errors[0])
