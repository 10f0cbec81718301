"""Where a finished `riselm run` spent its wall time, and how close each step came to the compute bound.

    riselm run configs/arithmetic_smollm2.yaml out=runs/recipe        # on an otherwise idle machine
    python benchmarks/recipe_time.py runs/recipe --output benchmarks/results/recipe_time.md

Reads the run's own record (summary.json: the wall seconds of every step of every stage, measured by
the run) and the work each step did: the tokens trained (every token of the rows the trainer forms,
with the run's share_prefixes, times its epochs) and the tokens generated (collection and evaluation
episodes; a turn that sampled n candidates counts n times its chosen response's length, since the
others' lengths are not kept). Each step is stated against the bound of this machine: the measured
matrix-product rate of the run's thread count over 6 (training) or 2 (generation) FLOP a parameter a
token (riselm.hardware.bound_tokens_per_s), in float32 or bfloat16 as the run's precision resolves.
Prompt tokens (prefill) and attention are not counted, so a generation step's fraction is a lower bound.
Training counts the whole model, output head included, at every token (the usual 6·N a token of model
FLOPs utilisation); the trainer runs the head on the trained positions only, so what it skips shows up
as a higher fraction, not as less work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from riselm import hardware
from riselm.hardware import bound_tokens_per_s, resolve_precision
from riselm.jsonl import read_jsonl
from riselm.models import load_model_and_tokenizer
from riselm.rundir import RunLayout
from riselm.training.samples import TrainingSample
from riselm.training.tokenize import rows_of, tokenize_samples

TRAIN_STEPS = {"boost", "train"}  # summary.json's step names that train; collect and eval generate


def trained_tokens(samples_file: Path, tokenizer, train: dict[str, Any]) -> int:
    """Tokens through forward and backward: the rows the trainer forms from the samples, times its epochs."""
    samples = [TrainingSample.from_dict(row) for row in read_jsonl(samples_file)]
    rows = rows_of(tokenize_samples(tokenizer, samples, train["max_length"]), train["share_prefixes"])
    return round(sum(len(row["input_ids"]) for row in rows) * train["epochs"])


def generated_tokens(folder: Path) -> int:
    """Tokens sampled in the episodes files of a collection or evaluation folder."""
    total = 0
    for path in sorted(folder.glob("episodes*.jsonl")):
        for episode in read_jsonl(path):
            total += sum(turn["num_tokens"] * max(turn.get("num_candidates") or 1, 1) for turn in episode["turns"])
    return total


def step_work(layout: RunLayout, config: dict[str, Any], stage: str, step: str, tokenizer) -> int:
    if step == "boost":
        return trained_tokens(layout.samples("boost"), tokenizer, config["boost"]["train"])
    if step == "train":
        return trained_tokens(layout.samples(stage), tokenizer, config["train"])
    folder = layout.collect_dir(stage) if step == "collect" else layout.eval_dir(stage)
    return generated_tokens(folder)


def measure(run: Path) -> dict[str, Any]:
    layout = RunLayout(run)
    config = yaml.safe_load(layout.config.read_text())
    summary = json.loads(layout.summary().read_text())
    last_model = summary["stages"][-1]["model"]
    model, tokenizer = load_model_and_tokenizer(last_model)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    precision = {
        "train": resolve_precision(config["train"]["precision"], "cpu"),
        "generate": resolve_precision(config["learner"]["precision"], "cpu"),
    }
    steps = []
    for stage in summary["stages"]:
        for step, seconds in stage.get("seconds", {}).items():
            work = "train" if step in TRAIN_STEPS else "decode"
            tokens = step_work(layout, config, stage["name"], step, tokenizer)
            bound = bound_tokens_per_s(parameters, precision["train" if work == "train" else "generate"], work)
            steps.append(
                {"stage": stage["name"], "step": step, "seconds": seconds, "work": work, "tokens": tokens, "bound_seconds": tokens / bound}
            )
    return {"run": str(run), "parameters": parameters, "precision": precision, "threads": torch.get_num_threads(), "steps": steps}


def report(result: dict[str, Any]) -> str:
    lines = [
        "| stage | step | work | tokens | wall (min) | tokens/s | of bound | at the bound (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["steps"]:
        rate = s["tokens"] / max(s["seconds"], 1e-9)
        lines.append(
            f"| {s['stage']} | {s['step']} | {'trained' if s['work'] == 'train' else 'generated'} | {s['tokens']:,} | "
            f"{s['seconds'] / 60:.1f} | {rate:,.0f} | {100 * s['bound_seconds'] / max(s['seconds'], 1e-9):.1f}% | "
            f"{s['bound_seconds'] / 60:.1f} |"
        )
    wall = sum(s["seconds"] for s in result["steps"])
    bound = sum(s["bound_seconds"] for s in result["steps"])
    lines.append(f"| **all** | | | | **{wall / 60:.1f}** | | {100 * bound / wall:.1f}% | **{bound / 60:.1f}** |")
    lines += [
        "",
        f"- Run: `{result['run']}`; {result['parameters']:,} parameters; precision {result['precision']}; {result['threads']} torch "
        f"threads; bound at {hardware.matmul_flops(result['precision']['train']) / 1e9:.0f} GFLOP/s (measured now).",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}; "
        f"load average (1 min) {os.getloadavg()[0]:.1f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished riselm run directory (it holds summary.json)")
    parser.add_argument("--output", type=Path, help="append the report to this markdown file")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON as the last line")
    args = parser.parse_args(argv)
    if not RunLayout(args.run).summary().is_file():  # a run still going, or not a run: nothing timed to read
        parser.error(f"{args.run}: no summary.json; expected the directory of a finished riselm run")
    result = measure(args.run)
    text = report(result)
    print(text)
    if args.output:
        with args.output.open("a", encoding="utf-8") as f:
            f.write(f"\n## {args.run}\n\nCommand: `python benchmarks/recipe_time.py {args.run}`\n\n{text}\n")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
