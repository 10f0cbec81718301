"""Generation with a Hugging Face transformers model, batched across conversations and samples.

Every (conversation, sample) pair becomes one row: prompts are rendered with the tokenizer's own
chat template, sorted by length (and identical prompts next to each other) so that rows of similar
length share a batch (less padding), padded on the left, generated in chunks by
riselm.generation.decoding (each distinct prompt computed once for all of its rows in a batch, even
when several conversations send the same prompt; finished rows dropped), and put back in their
original order.

Reproducibility: with `seeds`, sample j of conversation i samples from its own random stream, keyed
by `stream_key(seeds[i], j)` (decoding.RowStreams: a counter-based hash, one batched computation
per step). It does not depend on the other conversations of the call, their order, the batch size
or budget, rows that finish early, or on n (sample j stays sample j when more samples are asked
for); so a resumed or re-chunked run gives the same text, up to floating-point differences in the
logits themselves (another batch shape can round a matmul's last bit differently, which changes a
token only when two candidates are that close; the tiny models of the tests give identical text).
Seeded generation neither uses nor changes torch's global random state. Without seeds the rows draw
from torch's global generator, one batched draw per step. Greedy decoding (temperature 0) does not
depend on the batch either: batched and one-at-a-time generation give the same text (tested), up to
floating-point ties.

Log-probs: each sampled token's log-prob is taken from the very logits it was drawn from, after the
temperature (and the top-p renormalisation), and returned as `Completion.logprobs` (online RL's
behaviour policy); greedy decoding returns none.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from transformers import StopStringCriteria

from riselm.generation.base import (
    DEFAULT_BATCH_SIZE,
    Completion,
    Conversation,
    GenerationStats,
    SamplingParams,
    check_seeds,
    prompt_ids,
    stream_key,
)
from riselm.generation.decoding import Sampling, sample_batch


@dataclass(frozen=True)
class _Row:
    """One sequence to generate: a prompt's token ids and where its completion goes."""

    conversation: int  # index into the conversations of the call
    sample: int  # 0 .. n-1
    prompt_ids: list[int]
    prompt: int  # the same number for rows whose prompt ids are identical: they share one prefill
    key: int | None  # the row's random stream (seeded sampling), else None


class HFGenerator:
    """A transformers causal LM behind the `Generator` interface.

    batch_size: the most rows (prompt x sample) generated together.
    max_batch_tokens: optionally also bound rows x (longest prompt + max_new_tokens) per batch,
        which keeps memory flat when prompts are long.
    """

    def __init__(
        self, model, tokenizer, batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int | None = None, name: str | None = None
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; HFGenerator renders every prompt with it")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.stats = GenerationStats()
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = _end_token_ids(model, tokenizer)

    @classmethod
    def from_pretrained(cls, spec: str, device=None, dtype=None, **options) -> HFGenerator:
        """Load `spec` (directory, .gguf file, named model or Hub id; see riselm.models) and wrap it."""
        from riselm.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(spec, device=device, dtype=dtype)
        return cls(model, tokenizer, name=options.pop("name", str(spec)), **options)

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        seeds = check_seeds(seeds, len(conversations))
        self._model()  # a closed generator says so before any work
        started = time.perf_counter()
        prompts = [self._prompt_ids(index, conversation, params) for index, conversation in enumerate(conversations)]
        distinct: dict[tuple[int, ...], int] = {}
        rows = []
        for index, prompt in enumerate(prompts):
            group = distinct.setdefault(tuple(prompt), len(distinct))
            for sample in range(params.n):
                key = None if seeds is None or params.greedy else stream_key(seeds[index], sample)
                rows.append(_Row(index, sample, prompt, group, key))
        # Stable: identical prompts end up next to each other, each in conversation then sample order.
        rows.sort(key=lambda row: (len(row.prompt_ids), row.prompt))
        results: list[list[Completion | None]] = [[None] * params.n for _ in conversations]
        for batch in self._batches(rows, params.max_new_tokens):
            for row, completion in zip(batch, self._generate_batch(batch, params)):
                results[row.conversation][row.sample] = completion
        completed = cast("list[list[Completion]]", results)  # every (conversation, sample) was a row
        self.stats.record(len(conversations), completed, time.perf_counter() - started)
        return completed

    def reload(self, model: str) -> bool:
        """The model lives in this process and is built around its weights: a new one means a new generator."""
        return False

    def close(self) -> None:
        """Drop the model (and empty the CUDA cache when it was on a GPU); generating afterwards is an error."""
        model, self.model = self.model, None
        if model is None:
            return
        on_cuda = model.device.type == "cuda"
        del model
        if on_cuda:
            import gc

            import torch

            gc.collect()  # the caller may still hold the model; what only we held goes now
            torch.cuda.empty_cache()

    def __enter__(self) -> HFGenerator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model(self):
        if self.model is None:
            raise RuntimeError(f"the HF generator {self.name!r} is closed")
        return self.model

    def _prompt_ids(self, index: int, conversation: Conversation, params: SamplingParams) -> list[int]:
        ids = prompt_ids(self.tokenizer, conversation)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and len(ids) + params.max_new_tokens > limit:
            # Absolute position embeddings (GPT-2) would fail with an index error deep inside the model.
            raise ValueError(
                f"conversation {index} has {len(ids)} prompt tokens; with max_new_tokens={params.max_new_tokens} "
                f"it exceeds the model's {limit} positions (shorten the history, e.g. with a context window)"
            )
        return ids

    def _batches(self, rows: list[_Row], max_new_tokens: int) -> list[list[_Row]]:
        """Consecutive rows (sorted by length) in chunks bounded by batch_size and max_batch_tokens."""
        batches: list[list[_Row]] = []
        for row in rows:
            current = batches[-1] if batches else None
            if current is None or not self._fits(current, row, max_new_tokens):
                batches.append([row])
            else:
                current.append(row)
        return batches

    def _fits(self, batch: list[_Row], row: _Row, max_new_tokens: int) -> bool:
        if len(batch) >= self.batch_size:
            return False
        if self.max_batch_tokens is None:
            return True
        longest = max(len(row.prompt_ids), *(len(other.prompt_ids) for other in batch))
        return (len(batch) + 1) * (longest + max_new_tokens) <= self.max_batch_tokens

    def _generate_batch(self, batch: list[_Row], params: SamplingParams) -> list[Completion]:
        # Rows are sorted by prompt length and rows with identical prompt ids (a conversation's samples,
        # and conversations sent more than once) are consecutive: each distinct prompt is computed once
        # for all of its rows in this batch.
        prompts: list[list[int]] = []
        copies: list[int] = []
        for i, row in enumerate(batch):
            if i and row.prompt == batch[i - 1].prompt:
                copies[-1] += 1
            else:
                prompts.append(row.prompt_ids)
                copies.append(1)
        sampling = Sampling(greedy=params.greedy, temperature=params.temperature, top_p=params.top_p)
        stop = StopStringCriteria(self.tokenizer, list(params.stop)) if params.stop else None
        keys = [row.key for row in batch if row.key is not None]  # every row has one (seeded sampling) or none does
        generated, logprobs = cast(
            "tuple[list[list[int]], list[list[float]] | None]",  # what sample_batch returns with return_logprobs=True
            sample_batch(
                self._model(),
                prompts,
                copies,
                params.max_new_tokens,
                sampling,
                self.eos_token_ids,
                self.pad_token_id,
                stop,
                row_keys=keys or None,
                return_logprobs=True,
            ),
        )
        prompt_ids = {row.prompt: tuple(row.prompt_ids) for row in batch}
        row_logprobs: Sequence[list[float] | None] = logprobs or [None] * len(batch)  # greedy: nothing sampled
        return [self._completion(tokens, params, prompt_ids[row.prompt], lp) for row, tokens, lp in zip(batch, generated, row_logprobs)]

    def _completion(
        self, tokens: list[int], params: SamplingParams, prompt_ids: tuple[int, ...], logprobs: list[float] | None = None
    ) -> Completion:
        """Text of one generated row: cut at the end-of-turn token or the first stop string."""
        end = next((i for i, token in enumerate(tokens) if token in self.eos_token_ids), None)
        if end is not None:
            text = self._decode(tokens[:end])
            num_tokens, finish_reason = end + 1, "stop"
        else:
            text = self._decode(tokens)
            num_tokens, finish_reason = len(tokens), "length"
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text = text[:cut]
            num_tokens = self._tokens_until_stop(tokens[:num_tokens], params.stop)
            finish_reason = "stop"
        return Completion(
            text=text,
            num_tokens=num_tokens,
            finish_reason=finish_reason,
            token_ids=tuple(tokens[:num_tokens]),
            prompt_ids=prompt_ids,
            logprobs=None if logprobs is None else tuple(logprobs[:num_tokens]),
        )

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_until_stop(self, tokens: list[int], stop: tuple[str, ...]) -> int:
        """The fewest leading tokens whose text holds a stop string (the rest is padding after the stop)."""
        low, high = 1, len(tokens)  # binary search: a longer prefix holds whatever a shorter one does
        while low < high:
            middle = (low + high) // 2
            if _first_stop(self._decode(tokens[:middle]), stop) is None:
                low = middle + 1
            else:
                high = middle
        return high


def _end_token_ids(model, tokenizer) -> list[int]:
    """Tokens that end a turn: the tokenizer's eos and every eos of the model's generation config."""
    ids = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if token is not None and token not in ids:
            ids.append(token)
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an eos token")
    return ids


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None
