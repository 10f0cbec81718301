"""A scripted stand-in for a model, for tests: deterministic responses, every call recorded."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from riselm.generation.base import Completion, Conversation, GenerationStats, SamplingParams, check_seeds

Response = str | Completion
Answer = Callable[[Conversation, int], Response]  # script(conversation, sample_index)
SeededAnswer = Callable[[Conversation, int, int | None], Response]  # script(conversation, sample_index, seed)
Script = Answer | SeededAnswer | Sequence[Response]


class Call(NamedTuple):
    """One recorded `generate` call (a tuple: `conversations, params, seeds = gen.calls[0]` works too)."""

    conversations: list[Conversation]  # a deep copy, as the conversations were at the call
    params: SamplingParams
    seeds: list[int] | None  # a copy of the seeds given, or None


class ScriptedGenerator:
    """A `Generator` that answers from a script instead of a model.

    script: either
      - a function `script(conversation, sample_index)`, or `script(conversation, sample_index, seed)`
        where seed is that conversation's seed (None when the call had no seeds). Three-argument
        functions are recognised by their signature; `pass_seed=True/False` decides explicitly;
      - a list, cycled across samples, conversations and calls, in that order, so the k-th
        completion ever produced is `script[k % len(script)]`.
      A response is a string, or a whole `Completion` when a test needs a finish_reason, a token
      count or token ids of its own.

    A string response is returned exactly as scripted (no stop strings or length limits are applied),
    with `num_tokens` = its number of words, finish_reason "stop" and token_ids None.

    Recorded: `calls` holds a `Call(conversations, params, seeds)` per `generate` call (copies);
    `stats` counts calls, prompts, completions and tokens; `closed` tells whether `close()` was called
    (closing changes nothing else: the fake keeps answering).

    Example:

        >>> from riselm.generation.base import SamplingParams
        >>> gen = ScriptedGenerator(lambda conversation, sample, seed: f"{conversation[-1]['content']} {sample} {seed}")
        >>> [[first, second]] = gen.generate([[{"role": "user", "content": "hi"}]], SamplingParams(n=2), seeds=[7])
        >>> first.text, second.text
        ('hi 0 7', 'hi 1 7')
        >>> gen.calls[0].seeds
        [7]
        >>> answers = ScriptedGenerator(["4", "5"]).generate([[{"role": "user", "content": "2+2?"}]] * 3, SamplingParams())
        >>> [[c.text for c in completions] for completions in answers]
        [['4'], ['5'], ['4']]
    """

    def __init__(self, script: Script, name: str = "scripted", *, pass_seed: bool | None = None):
        if callable(script):
            self._pass_seed = _takes_three_arguments(script) if pass_seed is None else pass_seed
        else:
            if isinstance(script, (str, Completion)):
                raise TypeError("a scripted response list must be a list of responses, not a single response")
            script = list(script)
            if not script:
                raise ValueError("a scripted response list must not be empty")
            self._pass_seed = False
        self.script = script
        self.name = name
        self.stats = GenerationStats()
        self.calls: list[Call] = []
        self.closed = False
        self._produced = 0  # completions produced so far: the position in a cycled list

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        seeds = check_seeds(seeds, len(conversations))
        self.calls.append(Call(copy.deepcopy(list(conversations)), params, None if seeds is None else list(seeds)))
        results = [
            [self._completion(conversation, sample, None if seeds is None else seeds[i]) for sample in range(params.n)]
            for i, conversation in enumerate(conversations)
        ]
        self.stats.record(len(conversations), results, 0.0)
        return results

    def reload(self, model: str) -> bool:
        """A script serves no model: nothing to reload."""
        return False

    def close(self) -> None:
        """Nothing to release; records that it was called."""
        self.closed = True

    def __enter__(self) -> ScriptedGenerator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _completion(self, conversation: Conversation, sample: int, seed: int | None) -> Completion:
        if not callable(self.script):
            response = self.script[self._produced % len(self.script)]
        elif self._pass_seed:
            response = cast(SeededAnswer, self.script)(conversation, sample, seed)
        else:
            response = cast(Answer, self.script)(conversation, sample)
        self._produced += 1
        if isinstance(response, Completion):
            return response
        if not isinstance(response, str):
            raise TypeError(f"a script must answer with a str or a Completion, got {type(response).__name__}")
        return Completion(text=response, num_tokens=len(response.split()))


def _takes_three_arguments(function: Callable) -> bool:
    """Whether `function` accepts (conversation, sample_index, seed) positionally."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: call them the classic way
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    return variadic or len(positional) >= 3
