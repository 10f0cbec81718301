"""What `auto` picks: bf16 only where the hardware computes it natively (bf16 training keeps fp32 weights);
vLLM where it is installed."""

import pytest
import torch

from riselm import hardware
from riselm.settings import GeneratorSettings, TrainSettings


@pytest.fixture
def cpu_flag(monkeypatch):
    def set_flag(flag):
        monkeypatch.setattr(hardware, "cpu_bf16_flag", lambda: flag)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return set_flag


def test_auto_follows_the_cpus_bf16_instructions(cpu_flag):
    cpu_flag("avx512_bf16")
    assert hardware.resolve_precision("auto") == "bf16"
    cpu_flag(None)
    assert hardware.resolve_precision("auto") == "fp32"
    assert hardware.resolve_precision("bf16") == "bf16" and hardware.resolve_precision("fp32") == "fp32"


def test_the_cpu_flag_is_read_from_cpuinfo():
    flags = open("/proc/cpuinfo").read().split()
    assert hardware.cpu_bf16_flag() == next((f for f in ("avx512_bf16", "amx_bf16") if f in flags), None)


def test_training_arguments_follow_the_precision(cpu_flag, tmp_path):
    from riselm.training.trainer import training_arguments

    cpu_flag(None)
    assert training_arguments(TrainSettings(), tmp_path).bf16 is False
    assert training_arguments(TrainSettings(precision="bf16"), tmp_path).bf16 is True
    cpu_flag("amx_bf16")
    assert training_arguments(TrainSettings(), tmp_path).bf16 is True


def test_hf_generation_loads_the_weights_in_the_chosen_dtype(cpu_flag, tiny_model_dir):
    from riselm.generators import build

    cpu_flag(None)
    assert next(build(GeneratorSettings(), str(tiny_model_dir)).model.parameters()).dtype == torch.float32
    assert next(build(GeneratorSettings(precision="bf16"), str(tiny_model_dir)).model.parameters()).dtype == torch.bfloat16
    explicit = GeneratorSettings(precision="bf16", options={"dtype": "float32"})  # an explicit dtype wins
    assert next(build(explicit, str(tiny_model_dir)).model.parameters()).dtype == torch.float32


def test_bf16_training_keeps_float32_master_weights(tmp_path, char_tokenizer):
    from riselm.models import build_tiny_model
    from riselm.training.samples import TrainingSample
    from riselm.training.trainer import train_weighted

    model = build_tiny_model(char_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    samples = [TrainingSample([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "\\boxed{2}"}], 1.0, 1.0, "a", 0)] * 4
    settings = TrainSettings(
        precision="bf16", batch_size=4, grad_accum=1, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, save_steps=1000
    )
    train_weighted(model, samples, tmp_path, settings, tokenizer=char_tokenizer, show_progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(model.parameters(), start))
    assert 1e-4 < moved
    # the steps ran in bf16: the same steps in fp32 end elsewhere
    fp32 = build_tiny_model(char_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=0)
    train_weighted(
        fp32, samples, tmp_path / "fp32", settings.model_copy(update={"precision": "fp32"}), tokenizer=char_tokenizer, show_progress=False
    )
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fp32.parameters()))


def test_the_bound_is_the_measured_matmul_rate_over_the_flops_a_token_needs(monkeypatch):
    rate = hardware.matmul_flops("fp32", size=128, seconds=0.05)
    assert rate > 1e8  # a measured rate: even a slow CPU does more than 0.1 GFLOP/s on a 128² product
    monkeypatch.setattr(hardware, "matmul_flops", {"fp32": 1.2e11, "bf16": 3.6e11}.get)
    assert hardware.bound_tokens_per_s(135_000_000, "fp32", "decode") == pytest.approx(1.2e11 / 2.7e8)
    assert hardware.bound_tokens_per_s(135_000_000, "bf16", "train") == pytest.approx(3.6e11 / 8.1e8)


@pytest.mark.parametrize("installed, chosen", [(True, "vllm"), (False, "hf")])
def test_backend_auto_is_vllm_where_installed_else_hf(monkeypatch, installed, chosen):
    import importlib.util

    from riselm.config import load_config
    from riselm.settings import GeneratorSettings

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: (object() if installed else None) if name == "vllm" else real(name, *a)
    )
    assert GeneratorSettings(backend="auto").backend == chosen
    assert GeneratorSettings(backend="hf").backend == "hf"  # a named backend is kept as given
    # a run records the backend that generated, not "auto"
    assert load_config(None, ["learner.backend=auto"], check_models=False).model_dump()["learner"]["backend"] == chosen
