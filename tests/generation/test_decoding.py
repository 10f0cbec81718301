"""The HF backend's sampling loop: exact sampling, per-row random streams, shared prefill, dropped rows, both cache paths."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from transformers import DynamicCache

from riselm.generation import decoding
from riselm.generation.base import splitmix64, stream_key
from riselm.generation.decoding import RowStreams, Sampling, next_tokens, sample_batch
from tests.generation.test_hf import chaotic_model

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def frequencies(sampling: Sampling, draws: int = 40_000) -> torch.Tensor:
    torch.manual_seed(0)
    logits = PROBS.log().expand(draws, -1)
    return torch.bincount(next_tokens(logits, sampling), minlength=4) / draws


@pytest.mark.parametrize(
    "sampling, expected",
    [
        (Sampling(), PROBS),
        (Sampling(temperature=0.5), PROBS**2 / (PROBS**2).sum()),
        (Sampling(top_p=0.6), torch.tensor([0.625, 0.375, 0.0, 0.0])),  # the smallest set reaching 0.6
        (Sampling(greedy=True), torch.tensor([1.0, 0.0, 0.0, 0.0])),
    ],
)
def test_tokens_are_drawn_from_the_requested_distribution(sampling, expected):
    assert torch.allclose(frequencies(sampling), expected, atol=0.01)


DISTRIBUTIONS = [
    (Sampling(), PROBS),
    (Sampling(temperature=0.5), PROBS**2 / (PROBS**2).sum()),
    (Sampling(top_p=0.6), torch.tensor([0.625, 0.375, 0.0, 0.0])),
]


@pytest.mark.parametrize("sampling, expected", DISTRIBUTIONS)
def test_seeded_rows_draw_from_the_requested_distribution(sampling, expected):
    # Across rows: 40,000 streams (seeds x samples) at one step.
    keys = [stream_key(seed, sample) for seed in range(10_000) for sample in range(4)]
    logits = PROBS.log().expand(len(keys), -1)
    across_rows = next_tokens(logits, sampling, RowStreams(keys, "cpu").exponential(0, 4))
    assert torch.allclose(torch.bincount(across_rows, minlength=4) / len(keys), expected, atol=0.01)
    # Along one stream: one row over 15,000 steps.
    stream = RowStreams([stream_key(3, 1)], "cpu")
    along = torch.cat([next_tokens(PROBS.log()[None], sampling, stream.exponential(step, 4)) for step in range(15_000)])
    assert torch.allclose(torch.bincount(along, minlength=4) / len(along), expected, atol=0.015)


@pytest.mark.parametrize("sampling, expected", DISTRIBUTIONS)
def test_each_drawn_token_comes_with_its_log_prob_under_the_sampled_distribution(sampling, expected):
    """The log-prob is that of the distribution sampled: after the temperature, and within the nucleus
    renormalised (top_p 0.6 keeps 0.5 and 0.3: the first token has probability 0.625, not 0.5)."""
    keys = [stream_key(seed, 0) for seed in range(2000)]
    logits = PROBS.log().expand(len(keys), -1)
    tokens, logprobs = decoding.draw(logits, sampling, RowStreams(keys, "cpu").exponential(0, 4))
    assert set(tokens.tolist()) == {k for k in range(4) if expected[k] > 0}  # every kept token is drawn
    torch.testing.assert_close(logprobs, expected[tokens].log())
    assert torch.equal(tokens, next_tokens(logits, sampling, RowStreams(keys, "cpu").exponential(0, 4)))
    assert decoding.draw(logits, Sampling(greedy=True))[1] is None


def reference_noise(key: int, step: int, token: int) -> float:
    """The Exp(1) value RowStreams documents, computed with Python integers."""
    h = splitmix64(splitmix64(key, step), token)
    w = numpy.float32(numpy.float32(h >> 11) + numpy.float32(0.5)) * numpy.float32(2.0**-53)
    return -math.log1p(-float(min(w, numpy.float32(1 - 2**-24))))


def test_row_streams_follow_the_documented_hash():
    keys = [stream_key(seed, sample) for seed in (0, 1, 2**31 - 1) for sample in (0, 1, 5)]
    streams = RowStreams(keys, "cpu")
    for step in (0, 1, 79, 100_000):
        noise = streams.exponential(step, 50_000)
        for row, key in enumerate(keys):
            for token in (0, 1, 2, 103, 49_999):
                assert noise[row, token].item() == pytest.approx(reference_noise(key, step, token), rel=1e-6)
    assert 0.99 < noise.mean().item() < 1.01 and 0.98 < noise.var().item() < 1.02  # Exp(1): mean 1, variance 1
    # Dropping rows keeps each remaining row's stream.
    streams.select(torch.tensor([4, 0]))
    assert torch.equal(streams.exponential(7, 300), RowStreams([keys[4], keys[0]], "cpu").exponential(7, 300))


def test_stream_keys_of_neighbouring_seeds_and_samples_are_unrelated():
    keys = {stream_key(seed, sample) for seed in range(200) for sample in range(20)}
    assert len(keys) == 200 * 20
    assert stream_key(5, 1) != stream_key(6, 0)  # not seed + sample


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, char_tokenizer):
    return chaotic_model(char_tokenizer, request.param).eval()  # GPT-2 has dropout


PROMPTS = [[5, 9, 13, 2, 7, 30, 31], [40, 41], [12, 12, 50, 51, 52], [60, 3, 8, 22]]


def greedy(model, prompts, copies, end_ids, max_new_tokens=16):
    return sample_batch(model, prompts, copies, max_new_tokens, Sampling(greedy=True), end_ids, pad_id=0)


def test_rows_ending_early_do_not_change_the_others(model):
    free = [greedy(model, [p], [1], end_ids=[1])[0] for p in PROMPTS]
    # An end token the model produces mid-way in some rows only: rows finish at different steps
    # and are dropped from the batch while the others go on.
    end = free[0][3]
    expected = []
    for tokens in free:
        cut = tokens.index(end) + 1 if end in tokens else len(tokens)
        expected.append(tokens[:cut])
    assert len({len(t) for t in expected}) > 1
    assert greedy(model, PROMPTS, [1, 1, 1, 1], end_ids=[end]) == expected


def test_copies_of_a_prompt_share_its_prefill(model):
    alone = [greedy(model, [p], [1], end_ids=[1])[0] for p in PROMPTS]
    copied = greedy(model, PROMPTS, [2, 1, 3, 1], end_ids=[1])
    assert copied == [alone[0]] * 2 + [alone[1]] + [alone[2]] * 3 + [alone[3]]


def test_padded_prefill_path_gives_the_same_tokens(model, monkeypatch):
    buffered = greedy(model, PROMPTS, [1, 2, 1, 1], end_ids=[1])
    monkeypatch.setattr(decoding, "new_cache", lambda model, capacity: DynamicCache(config=model.config))
    assert greedy(model, PROMPTS, [1, 2, 1, 1], end_ids=[1]) == buffered


def test_a_full_buffer_is_an_error():
    layer = decoding.BufferedLayer(capacity=3)
    states = torch.zeros(1, 2, 2, 4)
    layer.update(states, states)
    with pytest.raises(RuntimeError, match="full"):
        layer.update(states, states)


HOT = Sampling(temperature=1.5)


def sampled(model, prompts, copies, keys, end_ids=(1,), max_new_tokens=16, sampling=HOT):
    return sample_batch(model, prompts, copies, max_new_tokens, sampling, list(end_ids), pad_id=0, row_keys=keys)


def test_a_seeded_row_does_not_depend_on_the_other_rows(model):
    keys = [stream_key(seed, 0) for seed in range(len(PROMPTS))]
    alone = [sampled(model, [p], [1], [k])[0] for p, k in zip(PROMPTS, keys)]
    assert sampled(model, PROMPTS, [1] * 4, keys) == alone
    assert sampled(model, PROMPTS[::-1], [1] * 4, keys[::-1]) == alone[::-1]
    # Rows that finish early (an end token some rows sample mid-way) are dropped; the others go on unchanged.
    end = alone[0][3]
    expected = [tokens[: tokens.index(end) + 1] if end in tokens else tokens for tokens in alone]
    assert len({len(t) for t in expected}) > 1
    assert sampled(model, PROMPTS, [1] * 4, keys, end_ids=[end]) == expected


def test_copies_with_their_own_streams_differ_and_equal_streams_agree(model):
    keys = [stream_key(1, 0), stream_key(1, 1), stream_key(1, 0), stream_key(2, 0)]
    first, second, again, other = sampled(model, PROMPTS[:1], [4], keys)
    assert first == again and len({tuple(first), tuple(second), tuple(other)}) == 3
    assert sampled(model, PROMPTS[:1], [1], keys[1:2]) == [second]


def test_seeded_sampling_leaves_the_global_generator_alone(model):
    keys = [stream_key(9, sample) for sample in range(3)]
    state = torch.get_rng_state()
    first = sampled(model, PROMPTS[:2], [2, 1], keys, sampling=Sampling(temperature=0.8, top_p=0.9))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state changes nothing
    assert sampled(model, PROMPTS[:2], [2, 1], keys, sampling=Sampling(temperature=0.8, top_p=0.9)) == first


def test_row_keys_must_match_the_rows(model):
    with pytest.raises(ValueError, match="3 row keys for 2 rows"):
        sampled(model, PROMPTS[:1], [2], [1, 2, 3])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_cache_goes_under_the_name_forward_takes(char_tokenizer, arch):
    """transformers 5.2x renamed forward's `past_key_values` to `cache`: the old name only warns until it
    is removed, so the loop must pass the name this version's forward declares (no deprecation warning)."""
    import inspect
    import warnings

    model = chaotic_model(char_tokenizer, arch)
    assert decoding.cache_argument(model) in inspect.signature(type(model).forward).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rows = sample_batch(model, [[1, 2, 3], [4, 5]], [2, 1], 4, Sampling(greedy=True), [0], pad_id=0)
    assert [len(r) for r in rows] == [4, 4, 4]
