"""A scripted stand-in for a model, for tests: deterministic responses, every call recorded."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from riselm.generation.base import Completion, Conversation, GenerationStats, SamplingParams

Script = Callable[[Conversation, int], str] | Sequence[str]


class ScriptedGenerator:
    """Answers with `script(conversation, sample_index)`, or with the items of a list in turn.

    A list is cycled across samples, conversations and calls, in that order, so the k-th
    completion ever produced is `script[k % len(script)]`. Responses are returned exactly as
    scripted (no stop strings or length limits are applied); `num_tokens` counts words.
    `calls` holds a copy of every (conversations, params) received.
    """

    def __init__(self, script: Script, name: str = "scripted"):
        if not callable(script):
            script = list(script)
            if not script:
                raise ValueError("a scripted response list must not be empty")
        self.script = script
        self.name = name
        self.stats = GenerationStats()
        self.calls: list[tuple[list[Conversation], SamplingParams]] = []
        self._produced = 0  # completions produced so far: the position in a cycled list

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((copy.deepcopy(list(conversations)), params))
        results = [[self._completion(conversation, sample) for sample in range(params.n)] for conversation in conversations]
        self.stats.calls += 1
        self.stats.prompts += len(conversations)
        self.stats.completions += len(conversations) * params.n
        self.stats.generated_tokens += sum(c.num_tokens for completions in results for c in completions)
        return results

    def _completion(self, conversation: Conversation, sample: int) -> Completion:
        if callable(self.script):
            text = self.script(conversation, sample)
        else:
            text = self.script[self._produced % len(self.script)]
        self._produced += 1
        return Completion(text=text, num_tokens=len(text.split()))
