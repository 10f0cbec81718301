"""The learner's precision reaches vLLM's CPU build: bf16 where the CPU has it natively (riselm.generators).

Skipped without vLLM, on a GPU, and on a CPU without AVX512-BF16 or AMX-BF16 (there `auto` means float32,
which tests/generation/test_vllm.py runs). Its own engine, started and closed here.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.generation.base import SamplingParams  # noqa: E402
from riselm.generation.hf import HFGenerator  # noqa: E402
from riselm.generators import build_generator  # noqa: E402
from riselm.hardware import cpu_bf16_flag  # noqa: E402
from tests.generation.chat_samples import CONVERSATIONS  # noqa: E402
from tests.generation.test_vllm import chaotic_llama, save_model  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available() or not cpu_bf16_flag(), reason="needs a CPU with native bf16 and no GPU")
def test_the_learner_runs_vllms_cpu_build_in_bf16_where_the_cpu_has_it(tmp_path, char_tokenizer):
    from transformers import AutoModelForCausalLM

    model_dir = save_model(chaotic_llama(char_tokenizer, seed=1), char_tokenizer, tmp_path / "model")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    generator = build_generator(str(model_dir), backend="vllm")  # the learner's default precision: auto
    try:
        assert generator._llm.llm_engine.model_config.dtype == torch.bfloat16
        served = generator.generate(CONVERSATIONS[:3], greedy)
    finally:
        generator.close()
    in_bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    expected = HFGenerator(in_bf16, char_tokenizer).generate(CONVERSATIONS[:3], greedy)
    # the same bf16 weights: the first tokens agree (later ones may part where bf16 rounding ties two logits)
    assert [c[0].text[:4] for c in served] == [c[0].text[:4] for c in expected]
