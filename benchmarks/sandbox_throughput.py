"""Sandbox throughput: executions per second on MBPP's test split (500 reference solutions + tests).

Each program is the reference solution followed by its three asserts, run exactly as the `mbpp` task
scores a response: its own sandbox (fresh interpreter, namespaces, limits), many at a time through
the bounded pool of `run_programs`. Per configuration it reports wall-clock executions/s, the CPU
time spent per execution (sandbox processes + this process, from getrusage: unlike wall time this
hardly depends on what else the machine runs), and the load average around the run, because on a
shared machine wall-clock rates say as much about the neighbours as about the sandbox.

    python benchmarks/sandbox_throughput.py --workers 2
    python benchmarks/sandbox_throughput.py --workers 1 2 4 --modes namespaces fallback --write
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from riselm.tasks.code import MBPPTask
from riselm.verify.sandbox import Limits, isolation, run_programs

RESULTS = Path(__file__).parent / "results" / "sandbox_throughput.md"


def cpu_seconds() -> float:
    """CPU time of this process and of every child it has reaped (the sandboxes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(sources: list[str], limits: Limits, workers: int) -> dict:
    load_before = os.getloadavg()[0]
    cpu, started = cpu_seconds(), time.perf_counter()
    results = run_programs(sources, limits, workers=workers)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {
        "passed": sum(r.passed for r in results),
        "wall": wall,
        "rate": len(sources) / wall,
        "cpu_ms": 1000 * cpu / len(sources),
        "load": (load_before, os.getloadavg()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="pool sizes to measure")
    parser.add_argument("--modes", nargs="+", default=["namespaces"], choices=["namespaces", "fallback"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median reported)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS}")
    args = parser.parse_args()

    task = MBPPTask()
    problems = task.load("test", limit=args.limit)
    sources = [task.program(p.answer, p) for p in problems]
    print(f"isolation in force: {isolation()}", flush=True)

    rows, measured = [], []
    for mode in args.modes:
        limits = replace(task.limits, use_namespaces=mode == "namespaces")
        for workers in args.workers:
            runs = [measure(sources, limits, workers) for _ in range(args.repeats)]
            best = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]  # the median run
            row = (
                f"| {mode} | {workers} | {len(sources)} | {best['passed']} | {best['wall']:.1f} | "
                f"{best['rate']:.1f} | {statistics.median(r['cpu_ms'] for r in runs):.0f} | "
                f"{best['load'][0]:.1f} → {best['load'][1]:.1f} |"
            )
            print(row, flush=True)
            rows.append(row)
            measured.extend(runs)

    table = "\n".join(
        [
            "| isolation | workers | programs | passed | wall s | executions/s | CPU ms / execution | load avg (1 min) before → after |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    cpus = len(os.sched_getaffinity(0))
    loads = [load for run in measured for load in run["load"]]
    cpu_ms = statistics.median(run["cpu_ms"] for run in measured)
    note = (
        f"Load average (1 min) during the runs: {min(loads):.1f}–{max(loads):.1f} on {cpus} CPUs. A load above "
        f"{cpus} means other work competed for the CPUs, and the wall-clock rates are then the share the pool "
        f"got. CPU time per execution hardly depends on that: at {cpu_ms:.0f} ms, {cpus} idle CPUs bound the "
        f"rate at about {cpus * 1000 / cpu_ms:.0f} executions/s."
    )
    print("\n" + table + "\n\n" + note)
    if args.write:
        command = "python benchmarks/sandbox_throughput.py " + " ".join(sys.argv[1:])
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            f"# Sandbox throughput (MBPP test split, reference solutions)\n\n"
            f"Command: `{command.strip()}`\n\n"
            f"Machine: {platform.platform()}, Python {platform.python_version()}, "
            f"{cpus} CPUs; isolation: {isolation()}\n\n{table}\n\n{note}\n"
        )
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
