"""Model construction and loading.

`build_char_tokenizer` and `build_tiny_model` make small models from scratch (the CPU demo, tests):
a character-level `tokenizers` tokenizer with a ChatML chat template and a randomly initialised
causal LM of the requested shape.
"""

from __future__ import annotations

import string

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAR_SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def build_char_tokenizer(chars: str = string.printable, chat_template: str = CHATML_TEMPLATE):
    """A character-level tokenizer (one token per character) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = list(dict.fromkeys(chars))
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character its own token
    backend.decoder = decoders.Fuse()  # join tokens without spaces
    backend.add_special_tokens(CHAR_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = chat_template
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    tokenizer,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
):
    """A randomly initialised causal LM sized for `tokenizer` ("llama" or "gpt2" architecture)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            intermediate_size=intermediate_size or 4 * hidden_size,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True,
            **common,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **common,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: llama, gpt2")
    return AutoModelForCausalLM.from_config(config)
