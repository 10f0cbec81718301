"""Chat templates of other model families, on the char tokenizer, for tests of template handling."""

from riselm.models import build_char_tokenizer

# Llama-3's shape: a bos token, headers, trimmed contents, <|eot_id|> ending each message.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def llama3_tokenizer(eos_is_eot: bool = False):
    """The char tokenizer with the Llama-3 template (and <|eot_id|> as its eos when a model must stop on it)."""
    tok = build_char_tokenizer(chat_template=LLAMA3_TEMPLATE)
    special = {"bos_token": "<|begin_of_text|>", "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]}
    if eos_is_eot:
        special["eos_token"] = "<|eot_id|>"
    else:
        special["additional_special_tokens"].append("<|eot_id|>")
    tok.add_special_tokens(special)
    return tok
