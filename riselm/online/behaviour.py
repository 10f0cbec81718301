"""The behaviour policy of an online step: the log-probs the sampler gave the tokens it sampled.

The policy gradient's importance ratios compare the policy being trained with the policy that
sampled the actions. That policy is the sampler itself, not the training model before its first
update: on vLLM with `sync_every` > 1 the engine serves weights several updates old, and any
backend's arithmetic (bfloat16 kernels, a KV cache) differs a little from the training forward.
So each backend records the log-prob of every token it samples, from the distribution it drew
the token from (`Completion.logprobs`), and the step trains against those.

The rollout keeps each candidate's token ids but not its completion, so `SamplerLog` sits between
the rollout and the policy's generator: it asks the backend for log-probs and keeps them by
(prompt ids, action ids), where `batch.action_rows` finds them. Two samples with the same prompt
and tokens have the same log-probs (one model, one step), so the key is unambiguous.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from riselm.generation.base import Completion, Conversation, Generator, SamplingParams


class SamplerLog:
    """A `Generator` that passes everything to `generator` and records the sampled tokens' log-probs.

    Any other attribute (`stats`, `reload`, `close`, ...) is the wrapped generator's.
    """

    def __init__(self, generator: Generator):
        self.generator = generator
        self.recorded: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, ...] | None] = {}

    @property
    def name(self) -> str:
        return self.generator.name

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        results = self.generator.generate(conversations, dataclasses.replace(params, logprobs=True), seeds=seeds)
        for completions in results:
            for completion in completions:
                if completion.prompt_ids is not None and completion.token_ids is not None:
                    self.recorded[(completion.prompt_ids, completion.token_ids)] = completion.logprobs
        return results

    def take(self) -> dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, ...] | None]:
        """What was recorded since the last `take` (one step's rollout), and forget it."""
        recorded, self.recorded = self.recorded, {}
        return recorded

    def close(self) -> None:
        self.generator.close()

    def __getattr__(self, name: str):
        if name == "generator":  # not set yet (a half-built object): no recursion
            raise AttributeError(name)
        return getattr(self.generator, name)
