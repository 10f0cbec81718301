"""The settings of `riselm serve` (the CLI takes its option defaults from here)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from riselm.settings import SamplingSettings, _Settings


class ServeSettings(_Settings):
    """How a server answers: the turns, the vote's task, the sampling, and the limits that protect it."""

    turns: int = Field(3, ge=1)  # K: turns per request unless the request asks for others
    max_turns: int = Field(10, ge=1)  # the most turns a request may ask for (more: 400)
    window: int | None = Field(None, ge=1)  # context window in attempts (None: the whole history)
    stop_when_stable: int = Field(0, ge=0)  # stop once N consecutive turns give the same answer (0: never; N >= 2)
    task: str | None = None  # the task whose prompt, retry message and extractor are used (None: generic \boxed{})
    task_options: dict[str, Any] = {}
    sampling: SamplingSettings = SamplingSettings()  # defaults; a request may set temperature, top_p, max_tokens
    max_concurrency: int = Field(16, ge=1)  # requests generated at once (one batch on hf/vllm; parallel rollouts on openai)
    max_queue: int = Field(64, ge=0)  # requests waiting beyond those; more get 429
    request_timeout: float = Field(600.0, gt=0)  # seconds a request may take (queue included) before a 504
    batch_wait_ms: float = Field(5.0, ge=0)  # hf/vllm: how long a batch waits for more requests to join it
    max_prompt_tokens: int | None = Field(None, ge=1)  # longest first prompt (None: the model's positions less max_tokens, where known)
    served_model_name: str | None = None  # the model name clients send (default: the MODEL argument)

    @model_validator(mode="after")
    def _check(self):
        if self.turns > self.max_turns:
            raise ValueError(f"turns={self.turns} is more than max_turns={self.max_turns}")
        if self.stop_when_stable == 1:
            raise ValueError("stop_when_stable must be 0 (off) or at least 2 (one answer is always 'stable')")
        return self
