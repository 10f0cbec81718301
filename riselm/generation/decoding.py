"""The sampling loop of the HF backend: shared prefill, a preallocated KV cache, finished rows dropped.

Why not `model.generate`: for RISE's workload (n samples of long multi-turn prompts, answers of very
different lengths) it wastes most of its time. It computes a prompt once per sample, keeps every
finished row in the batch until the longest one ends, and grows its KV cache by concatenation, which
copies the whole cache at every step. transformers' own continuous batching ran at about half the
speed of `generate` on CPU here (benchmarks/results/hf_decoding.md). This loop computes each prompt
once and copies its cache to its samples, writes new keys and values in place, and drops rows from
the batch as they finish. Everything else (the model, its cache layers, attention masks, stop
strings) is transformers'.

Sampling draws argmax(p / E) with E ~ Exp(1) per token, which is exact. Unseeded, E comes from one
batched `exponential_` on torch's global generator. Seeded, every row has its own random stream
(`RowStreams`): E is a counter-based hash of (row key, step, token), computed for the whole batch at
once, so a row's tokens depend on its key and its own logits only, not on the other rows, the batch
size or when other rows finish. Per-row `torch.Generator`s would give the same independence at the
price of one Python call per row per step; the hash is cheaper than even the unseeded
`exponential_` on CPU (benchmarks/results/hf_decoding.md), gives the same stream on every device and
never touches the global generator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from riselm.generation.base import GOLDEN, MIX_MULTIPLIERS, MIX_SHIFTS


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: greedy, or from softmax(logits / temperature) within top_p."""

    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


class BufferedLayer(DynamicLayer):
    """A full-attention cache layer that writes into a preallocated buffer instead of concatenating.

    `keys` and `values` stay views of the used part of the buffer, so everything in transformers that
    reads them (masks, sequence length, attention) sees an ordinary dynamic layer.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def allocate(self, like: torch.Tensor, rows: int) -> None:
        """An empty buffer for `rows` sequences, shaped and typed like the key states `like`."""
        _, heads, _, dim = like.shape
        self.dtype, self.device = like.dtype, like.device
        self._keys = like.new_zeros((rows, heads, self.capacity, dim))
        self._values = like.new_zeros((rows, heads, self.capacity, dim))
        self.is_initialized = True

    def write(self, rows: torch.Tensor, end: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Place prefilled states of `rows` so that they end at column `end` (left padding before them)."""
        start = end - keys.shape[-2]
        self._keys[rows, :, start:end] = keys
        self._values[rows, :, start:end] = values
        self.length = max(self.length, end)
        self._expose()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.allocate(key_states, key_states.shape[0])
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions is full (asked for {end})")
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.batch_select_indices(torch.arange(self._keys.shape[0], device=self._keys.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:  # not used by this loop; keep the parent's contract
        if tokens_to_remove < 0 and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = None
        self._keys = self._values = torch.empty(0)  # the buffers are freed; the next update allocates new ones
        self.is_initialized = False


def new_cache(model, capacity: int) -> Cache:
    """Buffered layers when every layer is plain full attention; otherwise transformers' own dynamic cache."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    if all(kind == "full_attention" for kind in layer_types):
        return Cache(layers=[BufferedLayer(capacity) for _ in layer_types])
    return DynamicCache(config=model.config)


def cache_argument(model) -> str:
    """The name `forward` takes the KV cache under: transformers 5.2x renamed `past_key_values` to `cache`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model forwards **kwargs
    return _cache_argument_of(type(base).forward)


@cache
def _cache_argument_of(forward: Callable[..., Any]) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def next_tokens(logits: torch.Tensor, sampling: Sampling, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from last-position logits [rows, vocab].

    noise: Exp(1) values shaped like `logits` (a `RowStreams` draw) for seeded rows; None draws them
    from torch's global generator. Greedy sampling uses none.
    """
    return draw(logits, sampling, noise)[0]


def draw(logits: torch.Tensor, sampling: Sampling, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`next_tokens` and the log-probability [rows] (float32) each drawn token had where it was drawn.

    The log-prob is that of the distribution actually sampled: softmax(logits / temperature), and with
    top_p < 1 the nucleus renormalised to sum to 1 (so a token's log-prob is higher than its
    untruncated one). Online RL takes it as the behaviour policy's log-prob. Greedy: None (nothing
    was sampled).
    """
    if sampling.greedy:
        return logits.argmax(-1), None
    scaled = logits.float() / sampling.temperature
    probs = torch.softmax(scaled, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        # keep the smallest set of tokens whose mass reaches top_p (the most likely token always stays)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    # argmax(p / E) with E ~ Exp(1) draws from p exactly, and is much faster than torch.multinomial
    # over a large vocabulary.
    if noise is None:
        noise = torch.empty_like(probs).exponential_()
    chosen = (probs / noise).argmax(-1)
    picked = scaled.gather(-1, chosen[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    if sampling.top_p < 1.0:  # renormalise over the nucleus: log p − log Σ_nucleus p
        picked = picked - probs.sum(-1).log()
    return chosen, picked


def _signed(value: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits."""
    value &= 2**64 - 1
    return value - 2**64 if value >= 2**63 else value


_MULTIPLIERS = tuple(_signed(m) for m in MIX_MULTIPLIERS)
_SHIFT_MASKS = tuple(2 ** (64 - shift) - 1 for shift in MIX_SHIFTS)  # logical shifts of int64 tensors


def _mix64_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer on int64 `x` in place (multiplications wrap around as in uint64)."""
    for k, shift in enumerate(MIX_SHIFTS):
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch &= _SHIFT_MASKS[k]  # >> of an int64 copies the sign bit; the mask makes it a logical shift
        x ^= scratch
        if k < len(_MULTIPLIERS):
            x *= _MULTIPLIERS[k]
    return x


class RowStreams:
    """One random stream per row of a batch, drawn for all rows at once: Exp(1) noise for seeded sampling.

    Row r has a 64-bit key (`riselm.generation.base.stream_key(seed, sample)`). Its noise for token v
    at generation step t (0 for the first new token) is, with splitmix64 as in riselm.generation.base:

        h = splitmix64(splitmix64(key_r, t), v)      # a 64-bit integer
        w = min(float32(float32(h >> 11) + 0.5) * 2**-53, 1 - 2**-24)
        E = -log1p(-w)                                # Exp(1), finely resolved near 0 where tokens win

    The value depends on (key, t, v) alone: a row's stream does not change with the other rows of the
    batch, their number or order, or the rows dropped when they finish (`select` keeps the keys with
    their rows). The integer part is exact on every device.
    """

    def __init__(self, keys: Sequence[int], device):
        self.keys = torch.tensor([_signed(key) for key in keys], dtype=torch.int64, device=device)
        self._offsets = torch.empty(0, dtype=torch.int64, device=device)

    def select(self, indices: torch.Tensor) -> None:
        """Keep the streams of rows `indices` (in that order), as the batch keeps those rows."""
        self.keys = self.keys[indices]

    def exponential(self, step: int, vocab: int) -> torch.Tensor:
        """The Exp(1) noise [rows, vocab] of every row for generation step `step`."""
        if len(self._offsets) < vocab:  # (v + 1) * golden for every token v: splitmix64's counter steps
            tokens = torch.arange(1, vocab + 1, dtype=torch.int64, device=self.keys.device)
            self._offsets = tokens * _signed(GOLDEN)
        base = self.keys + _signed((step + 1) * GOLDEN)
        base = _mix64_(base, torch.empty_like(base))  # splitmix64(key, step) of every row
        bits = base[:, None] + self._offsets[None, :vocab]
        _mix64_(bits, torch.empty_like(bits))  # splitmix64(base, v) of every token
        bits >>= 11
        bits &= 2**53 - 1
        w = bits.to(torch.float32)
        return w.add_(0.5).mul_(2.0**-53).clamp_(max=1.0 - 2.0**-24).neg_().log1p_().neg_()


@torch.inference_mode()
def sample_batch(
    model,
    prompts: Sequence[Sequence[int]],
    copies: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling,
    end_ids: Sequence[int],
    pad_id: int,
    stop_criteria=None,
    row_keys: Sequence[int] | None = None,
    return_logprobs: bool = False,
) -> list[list[int]] | tuple[list[list[int]], list[list[float]] | None]:
    """Generate `copies[i]` continuations of `prompts[i]`; returns them prompt by prompt, copy by copy.

    A continuation ends after an end token (kept in the result), when `stop_criteria` (transformers'
    StopStringCriteria) fires, or after max_new_tokens. Prompts are left padded and position ids
    follow the attention mask, so absolute position embeddings (GPT-2) see each prompt from 0.
    row_keys: one 64-bit stream key per continuation (in the order of the result) for seeded
    sampling through `RowStreams`; None samples from torch's global generator.
    return_logprobs: also return, for every continuation, each token's log-prob under the distribution
    it was drawn from (`draw`; None when greedy), from the very logits it was sampled from.
    """
    device = model.device
    rows = sum(copies)
    if row_keys is not None and len(row_keys) != rows:
        raise ValueError(f"got {len(row_keys)} row keys for {rows} rows")
    streams = RowStreams(row_keys, device) if row_keys is not None and not sampling.greedy else None
    width = max(len(p) for p in prompts)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        mask[i, width - len(prompt) :] = 1
    mask = mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache(model, width + max_new_tokens)
    cache_name = cache_argument(model)
    if all(isinstance(layer, BufferedLayer) for layer in cache.layers):
        logits = _prefill_by_length(model, prompts, cache, width)
    else:
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_name: cache},
        ).logits[:, -1]
    # Every copy of a prompt starts from the same prefill: copy its cache rows instead of recomputing them.
    owner = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(list(copies), device=device))
    cache.batch_select_indices(owner)
    logits, mask, next_position = logits[owner], mask[owner], positions[owner, -1] + 1

    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    token_logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long)
    alive = torch.arange(rows, device=device)  # original row of each batch row
    finished = torch.zeros(rows, dtype=torch.bool, device=device)  # per batch row, not yet dropped
    end_ids_t = torch.tensor(list(end_ids), device=device)
    for step in range(max_new_tokens):
        chosen, logprobs = draw(logits, sampling, None if streams is None else streams.exponential(step, logits.shape[-1]))
        tokens[alive, step] = chosen
        if logprobs is not None:
            token_logprobs[alive, step] = logprobs
        ends = torch.isin(chosen, end_ids_t)
        if stop_criteria is not None:
            ends |= stop_criteria(tokens[alive, : step + 1], None).to(device)
        newly = ends & ~finished
        if newly.any():
            lengths[alive[newly].cpu()] = step + 1
            finished |= newly
        if step + 1 == max_new_tokens or bool(finished.all()):
            break
        # Dropping rows copies the cache, so wait until enough of the batch is finished to pay for it.
        if int(finished.sum()) * 8 >= len(alive):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, mask, next_position, chosen = alive[keep], mask[keep], next_position[keep], chosen[keep]
            finished = finished[keep]
            if streams is not None:
                streams.select(keep)
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        logits = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            use_cache=True,
            **{cache_name: cache},
        ).logits[:, -1]
        next_position = next_position + 1
    tokens = tokens.cpu()
    generated = [tokens[row, : lengths[row]].tolist() for row in range(rows)]
    if not return_logprobs:
        return generated
    if sampling.greedy:
        return generated, None
    token_logprobs = token_logprobs.cpu()
    return generated, [token_logprobs[row, : lengths[row]].tolist() for row in range(rows)]


def _prefill_by_length(model, prompts: Sequence[Sequence[int]], cache: Cache, width: int) -> torch.Tensor:
    """Compute prompts in groups of equal length (no padding to compute) into the left-padded buffer.

    Returns the last-position logits of every prompt.
    """
    device = model.device
    buffers = cast("list[BufferedLayer]", cache.layers)  # the caller checked that every layer is one
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    logits = None
    for rows in by_length.values():
        group = DynamicCache()
        ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_argument(model): group}).logits[:, -1]
        computed = cast("list[DynamicLayer]", group.layers)  # full attention only (the caller checked)
        if logits is None:
            logits = out.new_empty((len(prompts), out.shape[-1]))
            for layer, states in zip(buffers, computed):
                assert states.keys is not None  # the forward pass filled every layer
                layer.allocate(states.keys, len(prompts))
        index = torch.tensor(rows, device=device)
        logits[index] = out
        for layer, states in zip(buffers, computed):
            assert states.keys is not None and states.values is not None
            layer.write(index, width, states.keys, states.values)
    assert logits is not None  # prompts is not empty (sample_batch took the max of their lengths)
    return logits
