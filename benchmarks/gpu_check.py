"""One command for a lent GPU: riselm's training step time and MFU, and HF-backend generation speed.

    python benchmarks/gpu_check.py --output benchmarks/results/gpu.md       # one H100/H200, ~5 minutes
    python benchmarks/gpu_check.py --shapes tiny --steps 2 --gen-batches 4 --gen-tokens 8   # CPU smoke test

Needs only PyTorch, transformers, accelerate and peft (riselm installed with `pip install --no-deps -e .`)
and no network: the models are random-weight Llamas of the named shapes, built in memory.

- training: riselm's `WeightedTrainer` (the weighted per-sample loss, the Trainer's AdamW, bf16
  autocast with float32 master weights) on random token rows of `--seq` tokens, `--batch` rows a step;
  the median step time after `--warmup` steps. MFU = model FLOPs per step / step time / peak, with
  model FLOPs = 6 × parameters × tokens + 12 × layers × hidden × seq × tokens (attention, causal
  mask not discounted, as in the PaLM paper's accounting).
- generation: riselm's HF sampling loop (`riselm.generation.decoding.sample_batch`, what the `hf`
  backend runs) in bf16 at each of `--gen-batches` rows, `--gen-tokens` new tokens after a 64-token
  prompt, end tokens never sampled (every row generates them all); tokens/s and the fraction of the
  compute bound 2 × parameters FLOPs a token.

Peak bf16 dense FLOP/s: looked up from the GPU's name (H100/H200 SXM 989 TFLOP/s, A100 312) or given
with --peak-tflops; on a CPU it is the measured 2048² bf16 matrix product (the bound this machine has).
The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from riselm.generation.decoding import Sampling, sample_batch
from riselm.settings import TrainSettings
from riselm.training.tokenize import WeightedCollator
from riselm.training.trainer import WeightedTrainer, training_arguments

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (32, 64, 2, 2, 2, 256),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0}


def build_model(shape: str, device: str) -> LlamaForCausalLM:
    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_flops(device: str, given: float | None) -> tuple[float, str]:
    """The bf16 dense bound in FLOP/s and where it came from."""
    if given:
        return given * 1e12, "--peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name} datasheet (bf16 dense)"
        raise SystemExit(f"unknown GPU {name!r}: give --peak-tflops")
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    torch.mm(a, a)
    start = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    return 5 * 2 * 2048**3 / (time.perf_counter() - start), "measured 2048² bf16 matmul on this CPU"


class StepTimes(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self.start = warmup, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)


def train_step(shape: str, device: str, opts, peak: float, out_dir: Path) -> dict:
    model = build_model(shape, device)
    vocab, hidden, layers = model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers
    generator = torch.Generator().manual_seed(0)
    rows = opts.batch * (opts.warmup + opts.steps)
    items = []
    for i in range(rows):
        ids = torch.randint(1, vocab, (opts.seq,), generator=generator).tolist()
        half = opts.seq // 2  # the second half is the trained response, as in a RISE sample
        items.append({"input_ids": ids, "labels": [-100] * half + ids[half:], "weight": 1.0 + i % 3, "episode": f"e{i}"})
    settings = TrainSettings(
        precision="bf16",
        batch_size=opts.batch,
        grad_accum=1,
        max_steps=opts.warmup + opts.steps,
        learning_rate=1e-5,
        save_steps=10**6,
        logging_steps=10**6,
        max_length=opts.seq,
        gradient_checkpointing=False,
    )
    args = training_arguments(settings, out_dir / shape, show_progress=False)
    args.save_strategy = "no"
    timer = StepTimes(opts.warmup)
    trainer = WeightedTrainer(model=model, args=args, train_dataset=items, data_collator=WeightedCollator(0), callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times)
    tokens = opts.batch * opts.seq
    n = parameters(model)
    flops = 6 * n * tokens + 12 * layers * hidden * opts.seq * tokens
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {
        "shape": shape,
        "params_m": round(n / 1e6, 1),
        "step_s": round(step, 4),
        "tokens_per_s": round(tokens / step),
        "mfu": round(flops / step / peak, 8),
        "peak_memory_gib": round(memory, 1) if memory is not None else None,
    }


def generation(shape: str, device: str, opts, peak: float) -> list[dict]:
    model = build_model(shape, device).to(torch.bfloat16).eval()
    vocab, n = model.config.vocab_size, parameters(model)
    results = []
    for batch in opts.gen_batches:
        prompts = [torch.randint(1, vocab, (64,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(batch)]
        sample_batch(model, prompts[:2], [1, 1], 4, Sampling(), end_ids=[0], pad_id=0)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        rows = sample_batch(model, prompts, [1] * batch, opts.gen_tokens, Sampling(), end_ids=[], pad_id=0, row_keys=list(range(batch)))
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        generated = sum(len(r) for r in rows)
        rate = generated / seconds
        results.append({"shape": shape, "batch": batch, "tokens_per_s": round(rate, 1), "bound_fraction": round(rate * 2 * n / peak, 8)})
    del model
    return results


def markdown(report: dict) -> str:
    lines = [
        "# GPU check: riselm's trainer and HF sampling loop in bf16",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Device: {report['device']}; peak {report['peak_tflops']:.1f} TFLOP/s ({report['peak_source']}); "
        f"torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        f"## Training step (WeightedTrainer, bf16 autocast, AdamW; batch {report['batch']} × {report['seq']} tokens)",
        "",
        "| shape | parameters (M) | step (s) | tokens/s | MFU | peak memory (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["training"]:
        lines.append(
            f"| {r['shape']} | {r['params_m']} | {r['step_s']} | {r['tokens_per_s']:,} | {100 * r['mfu']:.1f}% | {r['peak_memory_gib']} |"
        )
    lines += [
        "",
        f"## Generation (riselm's HF sampling loop, bf16, {report['gen_tokens']} new tokens after a 64-token prompt)",
        "",
        "| shape | rows | tokens/s | fraction of the compute bound |",
        "|---|---|---|---|",
    ]
    for r in report["generation"]:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['tokens_per_s']:,} | {100 * r['bound_fraction']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="smollm2-135m,llama-1b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gen-batches", default="64,256")
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")
    opts = parser.parse_args(argv)
    opts.gen_batches = [int(b) for b in opts.gen_batches.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak, source = peak_flops(device, opts.peak_tflops)
    shapes = opts.shapes.split(",")
    scratch = Path(opts.output.parent if opts.output else ".") / ".gpu_check"
    report = {
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "peak_tflops": peak / 1e12,
        "peak_source": source,
        "batch": opts.batch,
        "seq": opts.seq,
        "gen_tokens": opts.gen_tokens,
        "training": [train_step(shape, device, opts, peak, scratch) for shape in shapes],
        "generation": [row for shape in shapes for row in generation(shape, device, opts, peak)],
    }
    text = markdown(report)
    print(text)
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(text)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
