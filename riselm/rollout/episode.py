"""Turn and Episode records: one multi-turn attempt at one problem, as stored in episodes JSONL."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from riselm.generation.base import Conversation

Mode = Literal["sequential", "parallel", "collect"]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Turn":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class Episode:
    id: str  # the problem's id (parallel samples of one problem share it)
    task: str  # the task's name
    mode: Mode  # "sequential" / "parallel" (evaluation) or "collect" (training data)
    prompt: str  # the first user message
    turns: list[Turn] = field(default_factory=list)
    sample: int = 0  # index among a problem's parallel samples
    system: str | None = None  # an optional system message before the prompt
    answer: str | None = None  # the gold answer, for reading the file by eye

    def messages(self, upto: int | None = None, window: int | None = None) -> Conversation:
        """The conversation up to (not including) the action of turn `upto` (0-based; None: all turns).

        The result ends with a user message when `upto` is given, ready to generate turn `upto`.
        `window` keeps the first prompt plus only the last `window - 1` attempts with their feedback,
        the sliding context window of RISE's evaluation.
        """
        turns = self.turns if upto is None else self.turns[:upto]
        if window is not None and window >= 1:
            turns = turns[len(turns) - (window - 1):] if window > 1 else []
        conv: Conversation = []
        if self.system:
            conv.append({"role": "system", "content": self.system})
        conv.append({"role": "user", "content": self.prompt})
        for t in turns:
            conv.append({"role": "assistant", "content": t.response})
            if t.feedback is not None:
                conv.append({"role": "user", "content": t.feedback})
        return conv

    @property
    def solved(self) -> bool:
        return any(t.reward >= 1.0 for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["turns"] = [t.to_dict() for t in self.turns]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Episode":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "turns"}
        return cls(**known, turns=[Turn.from_dict(t) for t in d.get("turns", [])])
