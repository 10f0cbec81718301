"""HF decoding loops side by side: why riselm's HF backend has its own sampling loop, and what seeds cost.

    python benchmarks/hf_decoding.py                       # SmolLM2, 8 GSM8K prompts x 2 samples, 96 tokens
    python benchmarks/hf_decoding.py --output benchmarks/results/hf_decoding.md
    python benchmarks/hf_decoding.py --model tiny-char --prompts 256 --n 4 --max-new-tokens 80 --threads 2 \\
        --contenders riselm_unseeded,riselm,riselm_generators --repeat 5   # the demo's workload: 1024 rows

Contenders, on the same prompts, sampling at temperature 1.0 (top_k off):
  generate           `model.generate` on the left-padded batch, num_return_sequences=n
  continuous         transformers' continuous batching, `model.generate_batch`
  riselm             riselm.generation.decoding.sample_batch as the HF backend runs it with seeds: every
                     row its own random stream, drawn for all rows at once (decoding.RowStreams)
  riselm_unseeded    the same loop without seeds: one batched exponential_ per step from torch's global
                     generator (the loop as it was before per-row seeds)
  riselm_generators  the per-row design not taken: one torch.Generator per row, one exponential_ call
                     per row per step
With --precision fp32,bf16 every contender also runs on a bfloat16 copy of the model (NAME@bf16).
Each is stated as a fraction of its precision's compute bound: the measured matrix-product rate over
2 FLOP a parameter a token (riselm.hardware.bound_tokens_per_s).
Sampled lengths differ between contenders, so the comparison is generated tokens per second. Each
contender first runs once untimed on two prompts (warm-up). With --repeat K every contender runs K
times, interleaved, and the median run is reported. The last line
printed is one JSON object with each contender's tokens/s.

--model tiny-char is the demo's model shape (a character-level Llama, hidden 64, 2 layers, 4 heads,
random weights) on the demo's arithmetic prompts; any other value is a riselm model spec on GSM8K.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import GenerationConfig

from riselm import hardware
from riselm.generation import decoding
from riselm.generation.base import stream_key
from riselm.generation.decoding import Sampling, sample_batch
from riselm.hardware import bound_tokens_per_s
from riselm.models import load_model_and_tokenizer
from riselm.tasks import get_task


def generated_tokens(rows: list[list[int]], end_ids: set[int]) -> int:
    """Tokens up to and including each row's first end token (the padding after it is not generated)."""
    total = 0
    for row in rows:
        end = next((i for i, token in enumerate(row) if token in end_ids), None)
        total += len(row) if end is None else end + 1
    return total


def run_generate(model, prompts, n, config) -> int:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), config.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt)
        mask[i, width - len(prompt) :] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, num_return_sequences=n)
    return generated_tokens(out[:, width:].tolist(), {config.eos_token_id})


def run_continuous(model, prompts, n, config) -> int:
    config = GenerationConfig(**{**config.to_dict(), "num_return_sequences": n})
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    return generated_tokens([list(o.generated_tokens) for o in outputs.values()], {config.eos_token_id})


def run_riselm(model, prompts, n, config, seeded: bool = True) -> int:
    keys = [stream_key(seed, sample) for seed in range(len(prompts)) for sample in range(n)] if seeded else None
    rows = sample_batch(  # runs under inference mode itself
        model,
        prompts,
        [n] * len(prompts),
        config.max_new_tokens,
        Sampling(),
        [config.eos_token_id],
        config.pad_token_id,
        row_keys=keys,
    )
    return sum(map(len, rows))


def run_riselm_unseeded(model, prompts, n, config) -> int:
    return run_riselm(model, prompts, n, config, seeded=False)


class GeneratorStreams:
    """RowStreams' interface with one torch.Generator per row (the design not taken, for comparison)."""

    def __init__(self, keys, device):
        self.generators = [torch.Generator(device).manual_seed(key % 2**63) for key in keys]
        self.device = device

    def select(self, indices: torch.Tensor) -> None:
        self.generators = [self.generators[i] for i in indices.tolist()]

    def exponential(self, step: int, vocab: int) -> torch.Tensor:
        noise = torch.empty((len(self.generators), vocab), device=self.device)
        for row, generator in zip(noise, self.generators):
            row.exponential_(generator=generator)
        return noise


def run_riselm_generators(model, prompts, n, config) -> int:
    with mock.patch.object(decoding, "RowStreams", GeneratorStreams):
        return run_riselm(model, prompts, n, config)


CONTENDERS = {
    "generate": run_generate,
    "continuous": run_continuous,
    "riselm": run_riselm,
    "riselm_unseeded": run_riselm_unseeded,
    "riselm_generators": run_riselm_generators,
}
DEFAULT_CONTENDERS = "generate,continuous,riselm_unseeded,riselm"


def tiny_char_workload(prompts: int):
    """The demo's model shape with random weights, and the demo's arithmetic questions as chat prompts."""
    from riselm.models import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch="llama", hidden_size=64, num_layers=2, num_heads=4)
    task = get_task("arithmetic", digits=3, operands=2, ops="+", train_size=10000, test_size=500)
    problems = (task.load("test") * (prompts // 500 + 1))[:prompts]
    return model, tokenizer, task, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--contenders", default=DEFAULT_CONTENDERS, help=f"any of {', '.join(CONTENDERS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender (interleaved); the median is reported")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or both (fp32,bf16): every contender in each")
    ap.add_argument("--output", type=Path, default=None, help="append a markdown section with the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model == "tiny-char":
        model, tokenizer, task, problems = tiny_char_workload(args.prompts)
    else:
        model, tokenizer = load_model_and_tokenizer(args.model)
        task = get_task("gsm8k")
        problems = task.load("test", limit=args.prompts)
    model.eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt(p)}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in problems
    ]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    models = {
        precision: model if precision == "fp32" else copy.deepcopy(model).to(torch.bfloat16) for precision in args.precision.split(",")
    }
    # a contender in fp32 keeps its name; in bf16 it is NAME@bf16
    entries = {(name if p == "fp32" else f"{name}@{p}"): (name, p) for p in models for name in args.contenders.split(",")}
    warm_up = GenerationConfig(**{**config.to_dict(), "max_new_tokens": 4})
    for name, p in entries.values():  # untimed: the first forward passes of a process are slow (allocations, thread start)
        CONTENDERS[name](models[p], prompts[:2], args.n, warm_up)
    runs: dict[str, list[tuple[int, float]]] = {entry: [] for entry in entries}
    for _ in range(args.repeat):
        for entry, (name, p) in entries.items():
            torch.manual_seed(0)
            started = time.perf_counter()
            tokens = CONTENDERS[name](models[p], prompts, args.n, config)
            runs[entry].append((tokens, time.perf_counter() - started))
            print(entry, {"tokens": tokens, "seconds": round(runs[entry][-1][1], 2)}, flush=True)
    parameters = sum(w.numel() for w in model.parameters())
    bounds = {p: bound_tokens_per_s(parameters, p, "decode") for p in models}  # measured after the runs, same threads
    results = {}
    for entry, measured in runs.items():
        tokens, seconds = sorted(measured, key=lambda run: run[0] / run[1])[len(measured) // 2]  # the median run
        bound = bounds[entries[entry][1]]
        results[entry] = {
            "tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "bound_tokens_per_s": round(bound),
            "of_bound": round(tokens / seconds / bound, 3),
        }
        if len(measured) > 1:
            results[entry]["all_seconds"] = [round(s, 2) for _, s in measured]
        print(entry, results[entry], flush=True)

    summary = {f"{name}_tokens_per_s": r["tokens_per_s"] for name, r in results.items()}
    if args.output:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        lines = [
            f"## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            "",
            f"Command: `{command}`",
            "",
            f"{args.prompts} {'arithmetic' if args.model == 'tiny-char' else 'GSM8K'} test prompts x {args.n} samples, "
            f"at most {args.max_new_tokens} new tokens, model {args.model}, temperature 1.0"
            + (f", median of {args.repeat} interleaved runs." if args.repeat > 1 else "."),
            "",
            f"Bound: {parameters:,} parameters, 2 FLOP a parameter a token, at the measured 1024² matrix-product rate "
            + ", ".join(f"{p} {hardware.matmul_flops(p) / 1e9:.0f} GFLOP/s" for p in models)
            + " (riselm.hardware.bound_tokens_per_s).",
            "",
            "| contender | tokens | seconds | tokens/s | bound tokens/s | of bound |",
            "|---|---|---|---|---|---|",
            *(
                f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {r['bound_tokens_per_s']:,} "
                f"| {100 * r['of_bound']:.1f}% |"
                for name, r in results.items()
            ),
            "",
        ]
        previous = args.output.read_text() if args.output.exists() else ""
        with open(args.output, "a") as f:
            f.write(("\n" if previous and not previous.endswith("\n\n") else "") + "\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
