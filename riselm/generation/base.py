"""The one generation interface every backend implements: conversations in, n responses each out.

Backends know nothing about tasks: they see chat messages and return text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # responses per conversation
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None  # makes sampling reproducible where the backend supports it
    stop: tuple[str, ...] = ()  # generation ends at the first of these strings (excluded from the text)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Completion:
    text: str  # the response, without the end-of-turn token or stop string
    num_tokens: int  # tokens generated (for throughput), 0 when the backend cannot tell
    finish_reason: str = "stop"  # "stop" (end of turn or stop string) or "length" (hit max_new_tokens)


@runtime_checkable
class Generator(Protocol):
    """A chat model. `generate` returns, for each conversation, `params.n` completions."""

    name: str

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]: ...


@dataclass
class GenerationStats:
    """Running totals a backend keeps, for tokens/s reports."""

    calls: int = 0
    prompts: int = 0
    completions: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
