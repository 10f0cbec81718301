"""What this machine offers: usable CPUs, native bfloat16 and an installed vLLM, and what `auto` picks from them.

`precision: auto` (training, HF generation) means bfloat16 where the hardware computes it natively —
a GPU that supports it, or a CPU with AVX512-BF16 or AMX-BF16 instructions — and float32 elsewhere:
on a CPU without them, torch emulates bfloat16 matrix products, several times slower than float32
(measured: 35 against 120 GFLOP/s on a 2048² product, Intel Xeon with AVX-512 but no BF16). Training
in bf16 keeps float32 master weights and optimizer state (autocast), so only the arithmetic of the
forward and backward passes is bfloat16.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Literal

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "auto"]
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def cpu_bf16_flag() -> str | None:
    """The CPU's native bfloat16 instruction set (from /proc/cpuinfo), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in _CPU_BF16_FLAGS if flag in flags), None)


def resolve_precision(precision: Precision, device: str | None = None) -> Literal["fp32", "bf16"]:
    """`fp32` or `bf16` for `precision` on `device` ("cuda", "cpu"; None: the GPU when there is one)."""
    if precision != "auto":
        return precision
    import torch

    on_gpu = device == "cuda" or (device is None and torch.cuda.is_available())
    if on_gpu:
        native, reason = torch.cuda.is_bf16_supported(), "the GPU"
    else:
        flag = cpu_bf16_flag()
        native, reason = flag is not None, f"this CPU ({flag or 'no AVX512-BF16 or AMX-BF16'})"
    chosen: Literal["fp32", "bf16"] = "bf16" if native else "fp32"
    _log_once(chosen, reason)
    return chosen


@functools.cache
def _log_once(chosen: str, reason: str) -> None:
    logger.info("precision auto: %s, from %s", chosen, reason)


def local_backend() -> Literal["vllm", "hf"]:
    """The generation backend `backend: auto` picks for a local model: vLLM where it is installed (the
    SmolLM2 recipe's evaluation generated 1.46x the tokens a second of riselm's HF loop on vLLM's CPU build,
    benchmarks/results/rollout_throughput.md; far more on a GPU), else riselm's HF loop, which always works."""
    import importlib.util

    chosen: Literal["vllm", "hf"] = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    _log_backend_once(chosen)
    return chosen


@functools.cache
def _log_backend_once(chosen: str) -> None:
    logger.info("backend auto: %s (%s)", chosen, "vllm is installed" if chosen == "vllm" else "vllm is not installed")


# ---- the compute bound ---------------------------------------------------------------------------

FLOP_PER_PARAMETER = {"decode": 2, "train": 6}  # a token's forward pass: 2 FLOP per weight; forward + backward: 6


@functools.cache
def matmul_flops(precision: Literal["fp32", "bf16"], size: int = 1024, seconds: float = 1.0) -> float:
    """Measured dense matrix-product throughput (FLOP/s) of this CPU at `precision`, with torch's current
    threads: the compute bound that benchmarks state their results as fractions of. Cached per process."""
    import time

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, dtype=dtype)
    torch.mm(a, a)  # the first product allocates and starts the threads
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        torch.mm(a, a)
        count += 1
    return count * 2 * size**3 / (time.perf_counter() - start)


def bound_tokens_per_s(parameters: int, precision: Literal["fp32", "bf16"], work: Literal["decode", "train"]) -> float:
    """The most tokens a second a model of `parameters` weights could decode or train at the measured
    matrix-product rate (every weight used once a token; attention and overheads ignored)."""
    return matmul_flops(precision) / (FLOP_PER_PARAMETER[work] * parameters)
