"""HF decoding loops side by side: why riselm's HF backend has its own sampling loop.

    python benchmarks/hf_decoding.py                       # SmolLM2, 8 GSM8K prompts x 2 samples, 96 tokens
    python benchmarks/hf_decoding.py --output benchmarks/results/hf_decoding.md

Contenders, on the same prompts, sampling at temperature 1.0 (top_k off):
  generate    `model.generate` on the left-padded batch, num_return_sequences=n
  continuous  transformers' continuous batching, `model.generate_batch`
  riselm      riselm.generation.decoding.sample_batch (shared prefill, in-place KV buffer, rows dropped)
Sampled lengths differ between contenders, so the comparison is generated tokens per second. The
last line printed is one JSON object with each contender's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from riselm.generation.decoding import Sampling, sample_batch
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


def run_riselm(model, prompts, n, config) -> int:
    rows = sample_batch(  # runs under inference mode itself
        model, prompts, [n] * len(prompts), config.max_new_tokens, Sampling(), [config.eos_token_id], config.pad_token_id
    )
    return sum(map(len, rows))


CONTENDERS = {"generate": run_generate, "continuous": run_continuous, "riselm": run_riselm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--output", type=Path, default=None, help="append a markdown section with the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    task = get_task("gsm8k")
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt(p)}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for p in task.load("test", limit=args.prompts)
    ]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    results = {}
    for name in args.contenders.split(","):
        torch.manual_seed(0)
        started = time.perf_counter()
        tokens = CONTENDERS[name](model, prompts, args.n, config)
        seconds = time.perf_counter() - started
        results[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        print(name, results[name], flush=True)

    summary = {f"{name}_tokens_per_s": r["tokens_per_s"] for name, r in results.items()}
    if args.output:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        lines = [
            f"## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads",
            "",
            f"Command: `{command}`",
            "",
            f"{args.prompts} GSM8K test prompts x {args.n} samples, at most {args.max_new_tokens} new tokens, "
            f"model {args.model}, temperature 1.0.",
            "",
            "| contender | tokens | seconds | tokens/s |",
            "|---|---|---|---|",
            *(f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} |" for name, r in results.items()),
            "",
        ]
        with open(args.output, "a") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
