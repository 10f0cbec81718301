"""Turn and Episode records, and episodes files: one multi-turn attempt at one problem per JSON line.

The format (README, "Episodes files") is tolerant: a row needs only
`{"id", "task", "mode", "turns": [{"response", "pred", "reward"}, ...]}`; every other field is
optional, and unknown fields are ignored. A row that lacks a field a command truly needs (the
`prompt`, to build training samples) gets an error naming the file, the line and the field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from riselm.generation.base import Conversation
from riselm.jsonl import DataError, drop_torn_tail, iter_jsonl
from riselm.tasks.base import is_correct


@dataclass(frozen=True)
class Candidate:
    """One sampled response at a turn, with the exact token ids (kept in memory only, for online RL)."""

    response: str  # the text
    reward: float  # the task's reward for it
    pred: str | None  # its extracted final answer
    token_ids: tuple[int, ...] | None  # the ids as sampled (end-of-turn token included), None if unknown
    # the sampler's log-prob of each of those ids, from the distribution it drew them from (online RL's
    # behaviour policy); None if unknown
    logprobs: tuple[float, ...] | None = None


@dataclass
class Turn:
    response: str  # the action: one whole model response
    pred: str | None  # the final answer extracted from it, None when it has none
    reward: float  # the task's reward for it
    feedback: str | None = None  # the user message appended after this turn (None: the episode ended)
    source: str | None = None  # which model produced the action ("learner", or an expert's name)
    num_candidates: int = 1  # how many samples the action was chosen from (best-of-N)
    num_tokens: int = 0  # tokens generated for the chosen action
    truncated: bool = False  # generation hit max_new_tokens
    context: str | None = None  # "fresh": sampled from the question alone, then placed after the history (None: from the history)
    critique_request: str | None = None  # Self-Refine: the user message asking the model to review this action
    critique: str | None = None  # Self-Refine: the model's review of its own action (followed by `feedback`)
    # Not stored in files: the prompt ids the backend conditioned on (the chat rendered for this
    # turn) and every candidate sampled from them, in sample order; online RL trains on these.
    prompt_ids: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    candidates: list[Candidate] | None = field(default=None, repr=False, compare=False)

    @property
    def correct(self) -> bool:
        return is_correct(self.reward)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["prompt_ids"], d["candidates"]
        return d


@dataclass
class Episode:
    id: str  # the problem's id (the episodes of one problem share it and differ in `sample`)
    task: str  # the task's name
    mode: str  # how it was made: "collect", "sequential", "parallel" (riselm) or anything another tool writes
    prompt: str | None = None  # the first user message (needed to train on the episode)
    turns: list[Turn] = field(default_factory=list)
    sample: int = 0  # index among a problem's independent episodes (parallel samples, online groups)
    system: str | None = None  # an optional system message before the prompt
    answer: str | None = None  # the gold answer, for reading the file by eye
    window: int | None = None  # the context window it was generated with (None: the whole history)
    sampling: dict[str, Any] | None = None  # temperature, top_p, max_new_tokens it was generated with
    seed: int | None = None  # the run seed its conversations were seeded from
    origin: str | None = field(default=None, compare=False, repr=False)  # "file:line" it was read from (not stored)

    def messages(self, upto: int | None = None, window: int | None = None) -> Conversation:
        """The conversation up to (not including) the action of turn `upto` (0-based; None: all turns).

        The result ends with a user message when `upto` is given, ready to generate turn `upto`.
        `window` keeps the first prompt plus only the last `window - 1` attempts with their feedback,
        the sliding context window of RISE.
        """
        if self.prompt is None:
            where = self.origin or f"episode {self.id!r}"
            raise DataError(f"{where}: missing field 'prompt' (the first user message), needed to rebuild the conversation")
        turns = self.turns if upto is None else self.turns[:upto]
        if window is not None and window >= 1:
            turns = turns[len(turns) - (window - 1) :] if window > 1 else []
        conv: Conversation = []
        if self.system:
            conv.append({"role": "system", "content": self.system})
        conv.append({"role": "user", "content": self.prompt})
        for t in turns:
            conv.append({"role": "assistant", "content": t.response})
            if t.critique is not None:
                conv.append({"role": "user", "content": t.critique_request or ""})
                conv.append({"role": "assistant", "content": t.critique})
            if t.feedback is not None:
                conv.append({"role": "user", "content": t.feedback})
        return conv

    @property
    def solved(self) -> bool:
        return any(t.correct for t in self.turns)

    @property
    def key(self) -> tuple[str, int]:
        """Identifies the episode within its file: (problem id, sample)."""
        return self.id, self.sample

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["origin"]
        d["turns"] = [t.to_dict() for t in self.turns]
        return d

    @classmethod
    def from_dict(cls, row: dict[str, Any], origin: str | None = None) -> Episode:
        """An episode from one row of an episodes file; DataError naming `origin` and the field when invalid."""
        where = origin or "episode"
        missing = [k for k in ("id", "task", "mode", "turns") if k not in row]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))}; an episode needs 'id', 'task', 'mode' and 'turns'")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise DataError(f"{where}: 'id' must be a string or an integer, got {row['id']!r}")
        for key in ("task", "mode"):
            if not isinstance(row[key], str):
                raise DataError(f"{where}: {key!r} must be a string, got {row[key]!r}")
        if not isinstance(row["turns"], list):
            raise DataError(f"{where}: 'turns' must be a list of turns, got {type(row['turns']).__name__}")
        turns = [_turn(t, f"{where}: turn {i + 1}") for i, t in enumerate(row["turns"])]
        known = {k: row[k] for k in _OPTIONAL if row.get(k) is not None}
        _check_types(known, where)
        return cls(id=str(row["id"]), task=row["task"], mode=row["mode"], turns=turns, origin=origin, **known)


_OPTIONAL = {"prompt": str, "sample": int, "system": str, "answer": str, "window": int, "sampling": dict, "seed": int}
_TURN_OPTIONAL = {
    "feedback": str,
    "source": str,
    "num_candidates": int,
    "num_tokens": int,
    "truncated": bool,
    "context": str,
    "critique_request": str,
    "critique": str,
}


def _check_types(values: dict[str, Any], where: str, types: dict[str, type] = _OPTIONAL) -> None:
    for key, value in values.items():
        expected = types[key]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DataError(f"{where}: {key!r} must be {expected.__name__}, got {value!r}")


def _turn(row: Any, where: str) -> Turn:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with 'response', 'pred' and 'reward', got {type(row).__name__}")
    missing = [k for k in ("response", "pred", "reward") if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))}; a turn needs 'response', 'pred' and 'reward'")
    reward = row["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        raise DataError(f"{where}: 'reward' must be a finite number, got {reward!r}")
    if not isinstance(row["response"], str):
        raise DataError(f"{where}: 'response' must be a string, got {row['response']!r}")
    pred = row["pred"]
    if pred is not None and not isinstance(pred, (str, int, float)):
        raise DataError(f"{where}: 'pred' must be a string or null, got {pred!r}")
    extra = {k: row[k] for k in _TURN_OPTIONAL if row.get(k) is not None}
    _check_types(extra, where, _TURN_OPTIONAL)
    return Turn(response=row["response"], pred=None if pred is None else str(pred), reward=float(reward), **extra)


def read_episodes(path: str | Path) -> list[Episode]:
    """Every episode of an episodes JSONL file, checked row by row (errors name the file and the line)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an episodes JSONL file (e.g. {path}/episodes.sequential.jsonl)")
    return [Episode.from_dict(row, origin=f"{path}:{lineno}") for lineno, row in iter_jsonl(path)]


def finished_keys(path: str | Path) -> set[tuple[str, int]]:
    """The (id, sample) keys of the episodes already in `path`, after dropping a row torn by a kill."""
    path = Path(path)
    if not path.exists():
        return set()
    drop_torn_tail(path)  # a row torn by a kill is redone, not an error
    return {e.key for e in read_episodes(path)}
