"""Shared fixtures: tiny models with random weights and a real `tokenizers` tokenizer; no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tiny models are dominated by per-op overhead: one thread is faster, and two threads spin badly
    # when the cores are shared (a tiny training step: 10 ms with one thread, over a second with two).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def char_tokenizer():
    from riselm.models import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A saved tiny Llama (random weights) with its char tokenizer and ChatML template."""
    from riselm.models import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_model(char_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2)
    model.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(char_tokenizer):
    from riselm.models import build_tiny_model

    return build_tiny_model(char_tokenizer, arch="llama", hidden_size=32, num_layers=2, num_heads=2)
