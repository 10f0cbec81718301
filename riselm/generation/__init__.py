"""Generation backends behind one interface (`riselm.generation.base.Generator`).

- `hf.HFGenerator`: transformers, batched, CPU or GPU.
- `vllm` (optional extra): fast GPU/CPU inference through vLLM.
- `openai_compat.OpenAIGenerator`: any OpenAI-compatible HTTP server.
- `fake.ScriptedGenerator`: scripted responses for tests.

Every backend has `generate(conversations, params, seeds=None)` and `close()`; `seeds[i]` (a
non-negative int below 2**31) seeds conversation i, and sample j of it depends only on (seeds[i], j),
not on the batching (see `Generator` for each backend's guarantee). Generators are built one way:
riselm.generators.build (from GeneratorSettings) or build_generator (the same from keyword arguments).
"""

from __future__ import annotations

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

BACKENDS = ("auto", "hf", "vllm", "openai")  # auto: vllm where it is installed, else hf (riselm.hardware.local_backend)


__all__ = [
    "BACKENDS",
    "SEED_LIMIT",
    "Completion",
    "Conversation",
    "GenerationStats",
    "Generator",
    "Message",
    "SamplingParams",
    "check_seeds",
    "stream_key",
]
