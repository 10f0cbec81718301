"""The generators of a run: built from settings, and the learner's kept across stages.

In a distributed run an HF model goes on the process's own GPU; everything else comes from the
backend's settings (riselm.settings.GeneratorSettings).
"""

from __future__ import annotations

import time

from riselm import distributed
from riselm.generation.base import GenerationStats, Generator
from riselm.hardware import resolve_precision
from riselm.settings import GeneratorSettings


def build(settings: GeneratorSettings, model: str) -> Generator:
    """A generator for `model` on the backend of `settings` (an HF model on this process's GPU in a distributed run)."""
    from riselm.generation import build_generator

    options = dict(settings.options)
    current = distributed.world()
    if settings.backend == "hf" and current.size > 1 and "device" not in options:
        import torch

        if torch.cuda.is_available():
            options["device"] = f"cuda:{current.local_rank}"
    if settings.backend == "hf" and "dtype" not in options:
        device = str(options.get("device", "")).split(":")[0] or None
        options["dtype"] = {"fp32": "float32", "bf16": "bfloat16"}[resolve_precision(settings.precision, device)]
    return build_generator(
        model,
        backend=settings.backend,
        base_url=settings.base_url,
        api_key_env=settings.api_key_env,
        batch_size=settings.batch_size,
        **options,
    )


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
