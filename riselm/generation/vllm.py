"""Generation with vLLM, in this process: one engine, `n` samples per prompt in one request, prefix caching.

Prompts are rendered with the Hugging Face tokenizer's own chat template (exactly as `HFGenerator`
does) and handed to vLLM as token ids, so both backends see identical prompts; greedy decoding gives
the same tokens as transformers (tested). Sampling is plain temperature/top-p: the model's
generation_config defaults (top_k, repetition penalty) are not applied, as in `HFGenerator`.

Engine setup (importing vLLM, the defaults that make its CPU build usable, the arguments of
`vllm.LLM`, reading model and adapter directories) is in `riselm.generation.vllm_setup`.

Seeds: with `seeds`, request i (conversation i) carries seed seeds[i], and vLLM gives its n samples
the seeds seeds[i], seeds[i]+1, ..., seeds[i]+n-1 (each sample its own generator). Sample j of a
conversation therefore depends only on (seeds[i], j): not on the other conversations of the call,
their order or how a run is chunked (up to floating-point differences in the logits between batch
shapes). The same seeds sent to `vllm serve` through the openai backend sample the same way. With
n > 1, consecutive seeds overlap (seed s's sample 1 is seed s+1's sample 0): give conversations
seeds that are spread out, e.g. hashed.

New checkpoints: `reload(path)` serves another model. A full model directory shuts the engine down,
releases its memory and starts a fresh one (seconds on CPU for small models). A LoRA adapter directory
is served on top of the running base model through a `LoRARequest`, without a restart when the engine
was started with LoRA support and a large enough `max_lora_rank`. vLLM 0.32's in-place weight reload
(`collective_rpc("reload_weights")`) is not used: on CPU it returned wrong tokens for a reloaded Llama.

Log-probs: with `SamplingParams.logprobs` each request asks for the sampled token's log-prob
(`logprobs=0`), and the engine is started with `logprobs_mode="processed_logprobs"` unless the caller
sets another: vLLM's default returns the raw model's log-probs, before the temperature and top-p it
samples with, which are not the probabilities the tokens were drawn with (a vLLM without that mode
serves log-probs only at temperature 1, top_p 1, where the two agree).

Data parallelism: vLLM's `LLM` class refuses `data_parallel_size > 1` in one process. Serve the model
with `python -m vllm.entrypoints.openai.api_server --data-parallel-size N` and use the `openai` backend,
or run one riselm process per GPU group. `tensor_parallel_size` / `pipeline_parallel_size` work here.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from riselm.generation.base import Completion, Conversation, GenerationStats, SamplingParams, check_seeds, prompt_ids
from riselm.generation.errors import BackendUnavailable
from riselm.generation.vllm_setup import (
    adapter_base,
    adapter_rank,
    caller_rng_kept,
    cuda_available,
    engine_options,
    import_vllm,
    is_adapter,
    resolve_model,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


class VLLMGenerator:
    """A vLLM engine behind the `Generator` interface.

    model: a model directory, .gguf file, named model or Hub id (see `riselm.models.resolve_model_dir`),
        or a LoRA adapter directory (served on `base_model`, else on the base its adapter_config names).
    dtype, enforce_eager, max_model_len: None picks the defaults for the hardware (`vllm_setup`).
    enable_lora / max_lora_rank: start the engine ready for adapters (turned on by an adapter model).
    seed: the engine's own seed, used by unseeded requests (`seeds=None`).
    engine_options: any other `vllm.LLM` argument (max_num_seqs, quantization, enable_chunked_prefill, ...).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        base_model: str | os.PathLike | None = None,
        name: str | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        seed: int = 0,
        **engine_options,
    ):
        if int(engine_options.get("data_parallel_size", 1)) > 1:
            raise ValueError(
                "VLLMGenerator runs one engine in this process and cannot do data parallelism; serve the model with "
                "`python -m vllm.entrypoints.openai.api_server --data-parallel-size N` and use the openai backend, "
                "or run one riselm process per GPU group"
            )
        self.name = name or str(model)
        self.stats = GenerationStats()
        # prompt_tokens / cached_prompt_tokens: how much prefill the prefix cache saved (RISE turns share prefixes)
        self.stats.extra.update(engine_starts=0, engine_start_seconds=0.0, prompt_tokens=0, cached_prompt_tokens=0)
        self._settings = dict(
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            dtype=dtype,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            **engine_options,
        )
        self._enable_lora = enable_lora
        self._max_lora_rank = max_lora_rank
        self._llm = None  # the running vllm.LLM, None when closed or dead
        self._tokenizer: PreTrainedTokenizerBase | None = None  # the base model's HF tokenizer, renders prompts
        self._base_dir: Path | None = None  # the model the engine serves
        self._lora = None  # the LoRARequest every generation uses, or None
        self._lora_ids = 0  # vLLM caches adapters by integer id: every new adapter gets the next one
        self._dead: str | None = None  # why the engine stopped working, until the next start
        self._threads = 0  # the torch (OpenMP) thread count the engine was started with
        self._processed_logprobs = False  # whether the engine's log-probs are after temperature and top-p

        model_dir = resolve_model(model)
        if is_adapter(model_dir):
            self._start(adapter_base(model_dir, base_model), adapter=model_dir)
        else:
            self._start(model_dir)

    # ---- the Generator interface ---------------------------------------------------------------

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        seeds = check_seeds(seeds, len(conversations))
        llm = self._engine()
        # vLLM's CPU attention refuses to run on another OpenMP thread count than the engine was set up
        # with, and a thread other than the one that started the engine (a server's worker) starts with
        # OpenMP's default: generate on the engine's count.
        if not cuda_available() and self._threads and torch_threads() != self._threads:
            set_torch_threads(self._threads)
        started = time.perf_counter()
        prompts = [self._prompt_ids(conversation) for conversation in conversations]
        # A prompt that leaves no room for one new token makes vLLM refuse the whole batch; such a
        # conversation gets n empty "length" completions instead, like a model that ran out of context.
        runnable = [i for i, prompt in enumerate(prompts) if len(prompt) < self.max_model_len]
        if len(runnable) < len(prompts):
            logger.warning(
                "%d prompt(s) reach max_model_len=%d; they get empty completions", len(prompts) - len(runnable), self.max_model_len
            )
        requests = [{"prompt_token_ids": prompts[i]} for i in runnable]
        sampling = [self._sampling_params(params, None if seeds is None else seeds[i]) for i in runnable]
        try:
            outputs = llm.generate(requests, sampling, use_tqdm=False, lora_request=self._lora) if requests else []
        except Exception as error:
            self._engine_failed(error)
        results = [[Completion(text="", num_tokens=0, finish_reason="length")] * params.n for _ in conversations]
        with_logprobs = params.logprobs and not params.greedy  # greedy requests ask for none
        for i, output in zip(runnable, outputs):
            prompt_ids = tuple(prompts[i])
            ordered = sorted(output.outputs, key=lambda sample: sample.index)
            samples = [_completion(sample, prompt_ids, with_logprobs) for sample in ordered]
            results[i] = samples * params.n if params.greedy else samples  # greedy: one sample stands for n
        generated = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
        self.stats.record(len(conversations), results, time.perf_counter() - started, generated)  # greedy copies not counted
        self.stats.extra["prompt_tokens"] += sum(len(prompts[i]) for i in runnable)
        self.stats.extra["cached_prompt_tokens"] += sum(output.num_cached_tokens or 0 for output in outputs)
        return results

    # ---- checkpoints and lifetime ------------------------------------------------------------

    def reload(self, model: str | os.PathLike) -> bool:
        """Serve `model` from now on: a full model directory (fresh engine) or a LoRA adapter directory.

        An adapter is applied to the base model the engine serves; it is swapped in without a restart
        when the engine has LoRA support with a large enough rank, else the engine restarts with it.
        """
        model_dir = resolve_model(model)
        if not is_adapter(model_dir):
            self.close()
            self._start(model_dir)
            return True
        if self._llm is not None and self._enable_lora and adapter_rank(model_dir) <= self._max_lora_rank:
            self._lora = self._lora_request(model_dir)
            return True
        base = self._base_dir
        assert base is not None  # the first _start, in __init__, set it
        self.close()
        self._start(base, adapter=model_dir)
        return True

    def close(self) -> None:
        """Shut the engine down and release its memory (weights, KV cache); `reload` starts a new one.

        Safe to call twice; `generate` on a closed engine raises BackendUnavailable."""
        llm, self._llm, self._lora = self._llm, None, None
        if llm is not None:
            with contextlib.suppress(Exception):  # a dead engine may fail to shut down; its memory goes anyway
                llm.llm_engine.engine_core.shutdown()
            del llm
        gc.collect()
        if cuda_available():
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def max_model_len(self) -> int:
        return self._engine().llm_engine.model_config.max_model_len

    @property
    def model_dir(self) -> Path | None:
        """The base model directory the engine serves."""
        return self._base_dir

    @property
    def adapter_dir(self) -> Path | None:
        """The LoRA adapter directory applied to every generation, or None."""
        return Path(self._lora.lora_path) if self._lora is not None else None

    # ---- engine start ------------------------------------------------------------------------

    def _start(self, model_dir: Path, adapter: Path | None = None) -> None:
        from transformers import AutoTokenizer

        vllm = import_vllm()
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as error:  # vLLM would fail on the same files; say so before starting it
            raise BackendUnavailable(f"vLLM could not start an engine for {model_dir}: its tokenizer does not load: {error}") from error
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer of {model_dir} has no chat template; VLLMGenerator renders every prompt with it")
        if adapter is not None:
            self._enable_lora = True
            self._max_lora_rank = max(self._max_lora_rank, adapter_rank(adapter))
        lora_rank = self._max_lora_rank if self._enable_lora else None
        options = engine_options(self._settings, model_dir, on_gpu=cuda_available(), lora_rank=lora_rank)
        if _has_logprobs_mode():  # the log-probs of the distribution tokens are drawn from (module docstring)
            options.setdefault("logprobs_mode", "processed_logprobs")
        self._processed_logprobs = options.get("logprobs_mode") == "processed_logprobs"
        started = time.perf_counter()
        with caller_rng_kept():  # vLLM seeds the global RNGs of the process it runs in
            try:
                self._llm = vllm.LLM(str(model_dir), **options)
            except Exception as error:
                raise BackendUnavailable(f"vLLM could not start an engine for {model_dir}: {type(error).__name__}: {error}") from error
        self.stats.extra["engine_starts"] += 1
        self.stats.extra["engine_start_seconds"] += time.perf_counter() - started
        self._threads = torch_threads()
        self._tokenizer, self._base_dir, self._dead = tokenizer, model_dir, None
        self._lora = self._lora_request(adapter) if adapter is not None else None

    def _lora_request(self, adapter: Path):
        from vllm.lora.request import LoRARequest

        self._lora_ids += 1
        return LoRARequest(lora_name=f"{adapter.name}-{self._lora_ids}", lora_int_id=self._lora_ids, lora_path=str(adapter))

    # ---- generation helpers -----------------------------------------------------------------

    def _engine(self):
        if self._llm is None:
            reason = self._dead or "the engine was closed"
            raise BackendUnavailable(f"the vLLM engine for {self._base_dir} is not running ({reason}); call reload() to start one")
        return self._llm

    def _engine_failed(self, error: Exception):
        """A failure inside vLLM leaves the engine in an unknown state: shut it down and say so."""
        self._dead = f"it failed during generation: {type(error).__name__}: {error}"
        self.close()
        raise BackendUnavailable(f"the vLLM engine for {self._base_dir} {self._dead}; call reload() to start a fresh one") from error

    def _prompt_ids(self, conversation: Conversation) -> list[int]:
        assert self._tokenizer is not None  # the first _start, in __init__, loaded it
        return prompt_ids(self._tokenizer, conversation)

    def _sampling_params(self, params: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VLLMSamplingParams

        if params.n < 1 or params.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be at least 1, got n={params.n}, max_new_tokens={params.max_new_tokens}")
        options = dict(n=params.n, max_tokens=params.max_new_tokens, stop=list(params.stop) or None)
        if params.greedy:  # vLLM refuses n > 1 with greedy decoding; the n answers would be the same
            return VLLMSamplingParams(temperature=0.0, **{**options, "n": 1})
        if seed is not None:
            self._check_seed_supported()  # children of the request get seed, seed+1, ..., seed+n-1 from vLLM
        if params.logprobs:  # 0: the sampled token's log-prob only, no alternatives
            if not self._processed_logprobs and (params.temperature != 1.0 or params.top_p < 1.0):
                raise ValueError(
                    "this engine returns the model's raw log-probs, not those of the temperature / top-p it samples with "
                    "(vLLM before 0.10.2 has no logprobs_mode='processed_logprobs'); sample at temperature 1, top_p 1"
                )
            options["logprobs"] = 0
        return VLLMSamplingParams(temperature=params.temperature, top_p=params.top_p, seed=seed, **options)

    def _check_seed_supported(self) -> None:
        scheduler = self._engine().llm_engine.vllm_config.scheduler_config
        if not cuda_available() and scheduler.enable_chunked_prefill:
            raise ValueError(
                "seeded sampling on CPU needs chunked prefill off (vLLM's CPU sampler crashes on seeded requests whose "
                "prefill is chunked); leave enable_chunked_prefill unset, or sample with seeds=None"
            )


def _has_logprobs_mode() -> bool:
    """Whether this vLLM can return processed log-probs (its engine arguments have `logprobs_mode`)."""
    import dataclasses

    try:
        from vllm.engine.arg_utils import EngineArgs

        return any(f.name == "logprobs_mode" for f in dataclasses.fields(EngineArgs))
    except (ImportError, TypeError):  # moved, or no longer a dataclass: assume the default (raw) log-probs
        return False


def _completion(sample, prompt_ids: tuple[int, ...], logprobs: bool = False) -> Completion:
    """One vLLM CompletionOutput as a Completion (vLLM already cut the text at eos and stop strings).

    logprobs: read each sampled token's log-prob (the request asked for them).
    """
    finish_reason = "length" if sample.finish_reason == "length" else "stop"
    token_ids = tuple(sample.token_ids)  # as sampled: the eos or stop-string token included
    return Completion(
        text=sample.text,
        num_tokens=len(token_ids),
        finish_reason=finish_reason,
        token_ids=token_ids,
        prompt_ids=prompt_ids,
        logprobs=_sampled_logprobs(sample, token_ids) if logprobs else None,
    )


def _sampled_logprobs(sample, token_ids: tuple[int, ...]) -> tuple[float, ...]:
    """The log-prob of each sampled token: position i of `sample.logprobs` maps token ids to Logprob records."""
    if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {0 if sample.logprobs is None else len(sample.logprobs)} log-probs for {len(token_ids)} tokens")
    return tuple(float(sample.logprobs[i][token].logprob) for i, token in enumerate(token_ids))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
