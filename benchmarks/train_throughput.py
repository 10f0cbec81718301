"""Training throughput: RISE's reward-weighted trainer against plain HF SFT, side by side in one run.

Both train the same randomly initialised tiny Llama on the same samples (GSM8K training questions
with their gold solutions, half of them after a wrong first attempt and a retry message), with the
same batches in the same order and the same trained tokens. "plain" is a stock transformers Trainer
whose loss is the model's own causal-LM loss (token mean over the trained tokens); "weighted" is
`WeightedTrainer` (per-sample mean CE × weight, mean over samples, logits for the trained positions
only), padded and packed. `--model smollm2` trains the real model instead, whose 49k-token head makes
the logits matter.
The runs alternate (plain, weighted, packed, plain, …) so load on a shared machine hits all alike;
each figure is the median over repeats of tokens / seconds of the timed steps (the first steps of
every run warm up and are not timed). Tokens are the non-padding input tokens.

    python benchmarks/train_throughput.py --quick --threads 1
    python benchmarks/train_throughput.py --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainerCallback

from riselm import hardware
from riselm.hardware import bound_tokens_per_s
from riselm.jsonl import read_json_or_jsonl
from riselm.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer
from riselm.settings import TrainSettings
from riselm.training.samples import TrainingSample, reward_weight
from riselm.training.tokenize import WeightedCollator, tokenize_samples
from riselm.training.trainer import WeightedTrainer, training_arguments

RESULTS = Path(__file__).parent / "results" / "train_throughput.md"
RETRY = "Your answer is incorrect. Please try again."
KINDS = ("plain", "weighted", "weighted-packed", "weighted-bf16")  # the trainers `run_once` knows


def gsm8k_samples(n: int, seed: int = 0) -> list[TrainingSample]:
    """n samples from shipped GSM8K train rows; every second one follows a wrong first attempt."""
    resource = importlib.resources.files("riselm") / "data" / "gsm8k" / "train.jsonl.gz"
    with importlib.resources.as_file(resource) as path:
        rows = read_json_or_jsonl(path)
    rng = random.Random(seed)
    samples = []
    for i, row in enumerate(rng.sample(rows, n)):
        working, _, answer = row["answer"].rpartition("####")
        solution = f"{working.strip()}\n\\boxed{{{answer.strip()}}}"
        messages = [{"role": "user", "content": row["question"]}]
        if i % 2:
            messages += [{"role": "assistant", "content": f"\\boxed{{{rng.randint(1, 99)}}}"}, {"role": "user", "content": RETRY}]
        reward = float(rng.choice([0.0, 1.0]))
        messages.append({"role": "assistant", "content": solution})
        samples.append(TrainingSample(messages, reward, reward_weight(reward), f"gsm8k-{i}", i % 2))
    return samples


class PlainCollator:
    """The same batches without the per-sample fields: what a stock SFT trainer gets."""

    def __init__(self, collator: WeightedCollator):
        self.collator = collator

    def __call__(self, rows):
        batch = self.collator(rows)
        batch.pop("sample_index")
        batch.pop("sample_weights")
        return batch


class StepTimer(TrainerCallback):
    """Wall time and process CPU time of each optimizer step after the warm-up steps.

    On a CPU shared with other jobs, wall time also counts the time other processes held the cores;
    the process's CPU time counts only its own work, so it compares trainers fairly there.
    """

    def __init__(self, warmup: int):
        self.warmup, self.wall, self.cpu, self.start = warmup, [], [], (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step > self.warmup:
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])


class TokenCount:
    """Counts the non-padding tokens of the batches a collator makes, per batch."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, []

    def __call__(self, rows):
        self.tokens.append(sum(len(r["input_ids"]) for r in rows))
        return self.collator(rows)


def make_model(opts, tokenizer):
    """A fresh model for one run: the random tiny Llama, or `--model` (loaded anew, so every run starts alike)."""
    if opts.model:
        return load_model_and_tokenizer(opts.model)[0]
    return build_tiny_model(tokenizer, hidden_size=opts.hidden, num_layers=opts.layers, num_heads=opts.heads, seed=0)


def run_once(kind: str, tokenizer, rows, opts, out_dir: str) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of one run of `kind` ("plain", "weighted", "weighted-packed",
    "weighted-bf16": bf16 autocast with float32 master weights)."""
    model = make_model(opts, tokenizer)
    config = TrainSettings(
        batch_size=opts.micro_batch,
        grad_accum=1,
        max_steps=opts.warmup + opts.steps,
        gradient_checkpointing=False,
        logging_steps=10**6,
        save_steps=10**6,
        max_length=opts.max_length,
        optimizer="adamw_torch",
        seed=0,
        precision="bf16" if kind == "weighted-bf16" else "fp32",
    )
    args = training_arguments(config, out_dir, show_progress=False)
    args.save_strategy = "no"  # nothing to keep; saving is not what is measured
    weighted = WeightedCollator(tokenizer.pad_token_id, pack=kind == "weighted-packed")
    collator = TokenCount(weighted if kind != "plain" else PlainCollator(weighted))
    timer = StepTimer(opts.warmup)
    trainer_class = Trainer if kind == "plain" else WeightedTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[timer])
    trainer.train()
    # The dataloader may prefetch; the step's batch is the one collated in order, one per step.
    timed_tokens = sum(collator.tokens[opts.warmup : opts.warmup + len(timer.wall)])
    return timed_tokens / sum(timer.wall), timed_tokens / sum(timer.cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 timed steps of 4 samples of ≤512 tokens, 3 repeats")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each trainer, interleaved")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--model", default=None, help="a real model instead of the tiny Llama (e.g. smollm2: its 49k vocabulary)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the trainers to compare, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    kinds = opts.kinds.split(",")
    if unknown := [k for k in kinds if k not in KINDS]:
        parser.error(f"--kinds: unknown trainer(s) {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    if opts.quick:
        opts.steps, opts.samples, opts.max_length = 4, 48, 512
    if opts.threads:
        torch.set_num_threads(opts.threads)

    tokenizer = load_model_and_tokenizer(opts.model)[1] if opts.model else build_char_tokenizer()
    rows = tokenize_samples(tokenizer, gsm8k_samples(opts.samples), opts.max_length)
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(opts.repeats):
            for kind in kinds:
                wall, cpu = run_once(kind, tokenizer, rows, opts, f"{tmp}/{kind}-{r}")
                results[kind].append((wall, cpu))
                print(f"repeat {r + 1}/{opts.repeats} {kind:16s} {wall:9.0f} tokens/s  {cpu:9.0f} tokens/CPU-s", flush=True)
    load_after = os.getloadavg()
    write_results(opts, argv if argv is not None else sys.argv[1:], results, rows, (load_before, load_after))


def write_results(opts, argv, results, rows, loads) -> None:
    def median(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind])

    baseline = next(iter(results))  # the first of --kinds: every other trainer is compared with it

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores visible)"
    lengths = [len(r["input_ids"]) for r in rows]
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} CPUs",
        "",
        f"Command: `python benchmarks/train_throughput.py {' '.join(argv)}`".rstrip(),
        "",
        f"| trainer | tokens/s (wall) | vs {baseline} | of bound | tokens per CPU-second | vs {baseline} | runs, wall tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    model = make_model(opts, build_char_tokenizer())
    parameters = sum(w.numel() for w in model.parameters())
    for kind, runs in results.items():
        wall, cpu = median(kind, 0), median(kind, 1)
        bound = bound_tokens_per_s(parameters, "bf16" if kind == "weighted-bf16" else "fp32", "train")
        lines.append(
            f"| {kind} | {wall:,.0f} | {100 * (wall / median(baseline, 0) - 1):+.1f}% | {100 * wall / bound:.1f}% "
            f"| {cpu:,.0f} | {100 * (cpu / median(baseline, 1) - 1):+.1f}% | {', '.join(f'{w:,.0f}' for w, _ in runs)} |"
        )
    lines += [
        "",
        "Medians over the repeats. Tokens are non-padding input tokens. CPU-seconds are the process's own CPU time,",
        "which other jobs on a shared machine do not inflate; on a GPU, read the wall column.",
        "",
        (
            f"- Model: {opts.model} ({type(model).__name__}, vocab {model.config.vocab_size}), "
            if opts.model
            else f"- Model: random tiny Llama, hidden {opts.hidden}, {opts.layers} layers, {opts.heads} heads, "
            f"char tokenizer (vocab {len(build_char_tokenizer())}), "
        )
        + "fp32, sdpa attention, no gradient checkpointing, AdamW.",
        f"- Data: {len(rows)} GSM8K train samples (half after a wrong attempt), {min(lengths)}–{max(lengths)} tokens, "
        f"mean {statistics.mean(lengths):.0f}; micro-batch {opts.micro_batch}, no accumulation; "
        f"{opts.warmup} warm-up + {opts.steps} timed steps per run, {opts.repeats} interleaved repeats.",
        f"- Device: {device}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}.",
        f"- Load average (1 min) before/after: {loads[0][0]:.1f} / {loads[1][0]:.1f}"
        + (
            f" on {os.cpu_count()} cores: the cores were shared with other jobs, so wall times vary from run to run."
            if max(loads[0][0], loads[1][0]) > 1.5
            else "."
        ),
        "- plain = stock `transformers.Trainer`, the model's own loss over the same trained tokens; "
        "weighted = `WeightedTrainer` (its output head projects only the trained positions, plain's every position); "
        "weighted-packed = the same with padding-free packed batches; "
        "weighted-bf16 = `WeightedTrainer` with `train.precision: bf16` (autocast, float32 master weights).",
        f"- Bound: {parameters:,} parameters, 6 FLOP a parameter a token (forward and backward), at the measured 1024² "
        f"matrix-product rate of the same threads: fp32 {hardware.matmul_flops('fp32') / 1e9:.0f}, "
        f"bf16 {hardware.matmul_flops('bf16') / 1e9:.0f} GFLOP/s (riselm.hardware.bound_tokens_per_s); "
        "attention and the optimizer are not counted.",
        "- Packing with sdpa (as here, and on any device without flash-attention) attends through a dense",
        "  block-diagonal mask over the whole packed row, so attention costs (sum of lengths)² instead of the",
        "  sum of squares: slower than padding. Packing is meant for `attn_implementation: flash_attention_2`,",
        "  whose variable-length kernels skip the masked blocks (not measured here: no GPU).",
        "",
    ]
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    fresh = not opts.output.exists()
    with opts.output.open("a", encoding="utf-8") as f:  # a new section: earlier runs stay in the record
        f.write(("# Training throughput: weighted trainer vs plain HF SFT\n\n" if fresh else "\n") + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
