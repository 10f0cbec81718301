"""The one generation interface every backend implements: conversations in, n responses each out.

Backends know nothing about tasks: they see chat messages and return text.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]

DEFAULT_BATCH_SIZE = 32  # hf: rows generated together, unless a GeneratorSettings or the caller says otherwise
SEED_LIMIT = 2**31  # seeds are non-negative ints below this (every backend and server accepts them)


def prompt_ids(tokenizer, conversation: Sequence[Message]) -> list[int]:
    """The ids a model is conditioned on to answer `conversation`: the tokenizer's own chat template with
    the generation prompt. The one rendering of the backends that hold a tokenizer (hf, vllm), of the
    server's token counts and of online RL's training rows."""
    return list(tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=True, return_dict=False))


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # responses per conversation
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()  # generation ends at the first of these strings (excluded from the text)
    # Ask for each sampled token's log-prob (`Completion.logprobs`). hf records them whenever it samples
    # (they come free with the draw); vllm only when asked (it costs a log-softmax per token).
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Completion:
    text: str  # the response, without the end-of-turn token or stop string
    num_tokens: int  # tokens generated (for throughput), 0 when the backend cannot tell
    finish_reason: str = "stop"  # "stop" (end of turn or stop string) or "length" (hit max_new_tokens)
    # The generated token ids exactly as sampled: the end-of-turn token included when one was generated,
    # no padding. None where the backend does not know them (OpenAI-compatible servers, the scripted fake).
    token_ids: tuple[int, ...] | None = None
    # The prompt ids the backend conditioned on (the chat rendered with its template and tokenized),
    # shared by a conversation's samples; None where the backend does not know them.
    prompt_ids: tuple[int, ...] | None = None
    # The log-prob of each of `token_ids` under the distribution the backend drew it from: the model's
    # softmax(logits / temperature), renormalised over the nucleus when top_p < 1. Online RL uses it
    # as the behaviour policy's log-prob in its importance ratios. None when nothing was sampled
    # (greedy), when not asked for (vllm: `SamplingParams.logprobs`) or when the backend cannot tell.
    # Not compared: completions are the same sample when their tokens are, and the log-probs of one
    # sample differ in their last bits between batch shapes.
    logprobs: tuple[float, ...] | None = field(default=None, compare=False)


@runtime_checkable
class Generator(Protocol):
    """A chat model. `generate` returns, for each conversation, `params.n` completions.

    Seeds: `seeds[i]` is the seed of conversation i, a non-negative int below 2**31 (`SEED_LIMIT`);
    `seeds=None` samples unseeded. Sample j of conversation i is drawn from a random stream that
    depends only on (seeds[i], j): not on the other conversations of the call, their order, how many
    there are, the batch size, which rows finish early or how a run is chunked. A resumed, re-chunked
    or sharded run therefore gives the same samples as one uninterrupted run, as far as the backend
    allows (below). Greedy decoding (temperature 0) uses no randomness; seeds are accepted and unused.

    Per backend:
    - hf: row (i, j) draws its noise from a counter-based hash of (stream_key(seeds[i], j), step,
      token) (riselm.generation.decoding), the same integers on every device. The text is the same
      whatever the batching up to floating-point differences in the logits themselves (a batched
      matmul may round its last bit differently for another batch shape), which change a token only
      when two candidates are that close. The global torch random state is neither used nor changed.
    - vllm: request i carries seed seeds[i] and vLLM gives its n samples the seeds seeds[i], seeds[i]+1,
      ..., so sample j of seed s shares its stream with sample j-1 of seed s+1: with n > 1, give
      conversations seeds that are not consecutive (e.g. hashed).
    - openai: request i sends `seed: seeds[i]`; servers that ignore `n` get sample j >= 1 as its own
      request with a seed derived from (seeds[i], j). Whether a seed makes the server deterministic
      is up to the server (OpenAI's API: best effort). `send_seed=False` sends no seeds.
    - the scripted fake records the seeds and passes them to a script that takes three arguments.

    `stats` holds running totals (GenerationStats.record). `reload(model)` serves another model in
    place where the backend can (vllm: a new engine or a LoRA adapter) and returns True; False means
    it cannot, and the caller builds a new generator. `close()` releases the model, engine or
    connections; it is safe to call twice, and a closed generator does not generate any more.
    """

    stats: GenerationStats

    @property
    def name(self) -> str: ...  # read-only: a backend may hold it as an attribute or compute it

    def reload(self, model: str) -> bool: ...

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


def check_seeds(seeds: Sequence[int] | None, conversations: int) -> list[int] | None:
    """`seeds` as a list of ints after checking there is one per conversation, each in [0, 2**31); None stays None."""
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes, int)):
        raise TypeError(f"seeds must be a sequence of ints, one per conversation, or None; got {seeds!r}")
    checked = []
    for seed in seeds:
        if isinstance(seed, bool):
            raise TypeError(f"a seed must be an int, got {seed!r}")
        try:
            value = operator.index(seed)  # ints and integer numpy scalars, not floats
        except TypeError:
            raise TypeError(f"a seed must be an int, got {seed!r} ({type(seed).__name__})") from None
        if not 0 <= value < SEED_LIMIT:
            raise ValueError(f"seeds must be non-negative ints below 2**31, got {value}")
        checked.append(value)
    if len(checked) != conversations:
        raise ValueError(f"got {len(checked)} seeds for {conversations} conversations; give one seed per conversation")
    return checked


_MASK64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment
MIX_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # SplitMix64's finalizer
MIX_SHIFTS = (30, 27, 31)


def splitmix64(state: int, index: int = 0) -> int:
    """Output `index` (0, 1, ...) of a SplitMix64 generator started at `state`: mix64(state + (index+1)*golden)."""
    z = (state + (index + 1) * GOLDEN) & _MASK64
    z = ((z ^ (z >> MIX_SHIFTS[0])) * MIX_MULTIPLIERS[0]) & _MASK64
    z = ((z ^ (z >> MIX_SHIFTS[1])) * MIX_MULTIPLIERS[1]) & _MASK64
    return z ^ (z >> MIX_SHIFTS[2])


def stream_key(seed: int, sample: int) -> int:
    """The 64-bit key of the random stream of sample `sample` of a conversation seeded `seed`.

    splitmix64(splitmix64(seed), sample): neighbouring seeds, and neighbouring samples, get unrelated
    keys (unlike seed + sample, where seed 5's second sample would be seed 6's first).
    """
    return splitmix64(splitmix64(seed), sample)


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

    def record(self, prompts: int, results: Sequence[Sequence[Completion]], seconds: float, generated_tokens: int | None = None) -> None:
        """Count one `generate` call: its prompts, completions, seconds and generated tokens (by default
        the completions' own `num_tokens`; a backend that knows better passes its count)."""
        self.calls += 1
        self.prompts += prompts
        self.completions += sum(len(completions) for completions in results)
        if generated_tokens is None:
            generated_tokens = sum(c.num_tokens for completions in results for c in completions)
        self.generated_tokens += generated_tokens
        self.seconds += seconds
