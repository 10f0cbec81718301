"""build_generator: one entry point for every backend, tolerant of options meant for other backends."""

from __future__ import annotations

import sys

import pytest

from riselm.generation.hf import HFGenerator
from riselm.generation.openai_compat import OpenAIGenerator
from riselm.generators import build_generator


def test_hf_backend_loads_the_model_and_ignores_http_options(tiny_model_dir):
    generator = build_generator(
        str(tiny_model_dir), backend="hf", base_url=None, api_key_env="X", batch_size=3, send_seed=False, device="cpu"
    )
    assert isinstance(generator, HFGenerator) and generator.batch_size == 3


def test_openai_backend_uses_the_url_and_model_name():
    generator = build_generator("served-model", backend="openai", base_url="http://127.0.0.1:9/v1", batch_size=8, max_concurrency=2)
    assert isinstance(generator, OpenAIGenerator)
    assert (generator.model, generator.base_url, generator.max_concurrency) == ("served-model", "http://127.0.0.1:9/v1", 2)
    assert generator.send_seed is True
    assert build_generator("m", backend="openai", base_url="http://127.0.0.1:9/v1", send_seed=False).send_seed is False


def test_missing_vllm_backend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "riselm.generation.vllm", None)  # makes the import fail
    with pytest.raises(ValueError, match=r"riselm\[vllm\]"):
        build_generator("smollm2", backend="vllm")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown generation backend 'tgi'"):
        build_generator("m", backend="tgi")


def test_one_default_batch_size_whichever_way_a_generator_is_built(tiny_model_dir, tiny_model, char_tokenizer):
    from riselm.generators import build
    from riselm.settings import GeneratorSettings

    default = GeneratorSettings().batch_size
    assert build_generator(str(tiny_model_dir)).batch_size == default
    assert build(GeneratorSettings(), str(tiny_model_dir)).batch_size == default
    assert HFGenerator(tiny_model, char_tokenizer).batch_size == default


@pytest.mark.parametrize(
    ("backend", "precision", "cpu_flag", "gpu", "dtype"),
    [
        ("vllm", "auto", "avx512_bf16", False, "bfloat16"),  # native bf16 on this CPU: vLLM's CPU build in bf16
        ("vllm", "auto", None, False, "float32"),  # emulated bf16 would be slower: float32
        ("vllm", "fp32", "amx_bf16", False, "float32"),  # an explicit precision wins
        ("vllm", "bf16", None, False, "bfloat16"),
        ("vllm", "auto", None, True, None),  # on a GPU vLLM keeps the model's own dtype
        ("hf", "auto", "avx512_bf16", False, "bfloat16"),
        ("hf", "auto", None, False, "float32"),
        ("openai", "bf16", "avx512_bf16", False, None),  # the server decides
    ],
)
def test_the_generation_dtype_follows_the_learners_precision(monkeypatch, backend, precision, cpu_flag, gpu, dtype):
    import torch

    from riselm import generators, hardware
    from riselm.generators import generation_dtype
    from riselm.settings import GeneratorSettings

    monkeypatch.setattr(hardware, "cpu_bf16_flag", lambda: cpu_flag)
    monkeypatch.setattr(generators, "cuda_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert generation_dtype(GeneratorSettings(backend=backend, precision=precision), {}) == dtype
