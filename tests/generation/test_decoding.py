"""The HF backend's sampling loop: exact sampling, shared prefill, dropped rows, both cache paths."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from riselm.generation import decoding
from riselm.generation.decoding import Sampling, next_tokens, sample_batch

from test_hf import chaotic_model  # noqa: E402  (tests/generation is on sys.path under pytest)

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
