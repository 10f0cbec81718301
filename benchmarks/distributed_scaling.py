"""The demo with 1 and with 2 processes on the same machine: wall time, collection and training throughput.

    python benchmarks/distributed_scaling.py --out /tmp/scaling [--processes 1,2] [KEY=VALUE ...]

Each contender is the whole `riselm demo` (boost, two RISE iterations, evaluations) run as a fresh
command, one after the other, with the same recipe: 1 process with the demo's 2 torch threads, or
N processes with 2/N threads each. Collection and evaluation are sharded over the processes, training
is DDP over gloo. Throughput comes from each stage's recorded seconds (summary.json): collected
problems per second and trained samples per second (samples.jsonl of the iteration). The last line
is the JSON of the results; `--record FILE` also writes a markdown table with the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from riselm.rundir import EPISODES_FILE, RunLayout, iteration_stage


def run_demo(out: Path, processes: int, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "riselm.cli", "demo", "--out", str(out), f"distributed.processes={processes}", *overrides]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    layout = RunLayout(out)
    summary = json.loads(layout.summary().read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    result = {"processes": processes, "wall_s": round(wall, 1), "table": {k: {m: s[m] for m in summary["keys"]} for k, s in stages.items()}}
    for k in (1, 2):
        stage = iteration_stage(k)
        seconds = stages.get(stage, {}).get("seconds", {})
        problems = sum(1 for _ in open(layout.collect_dir(k) / EPISODES_FILE))
        samples = sum(1 for _ in open(layout.samples(stage)))
        result[stage] = {
            "collect_s": seconds.get("collect"),
            "problems_per_s": round(problems / seconds["collect"], 1),
            "train_s": seconds.get("train"),
            "samples_per_s": round(2 * samples / seconds["train"], 1),  # 2 epochs
            "eval_s": seconds.get("eval"),
        }
    return result


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# The demo on 1 and 2 processes (CPU)",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
        "| processes | wall (s) | collect iter1 / iter2 (problems/s) | train iter1 / iter2 (samples/s) | iter2 m1@t1 | iter2 m1@t5 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        it1, it2 = r["iter1"], r["iter2"]
        final = r["table"]["iter2"]
        lines.append(
            f"| {r['processes']} | {r['wall_s']} | {it1['problems_per_s']} / {it2['problems_per_s']} | "
            f"{it1['samples_per_s']} / {it2['samples_per_s']} | {final['m1@t1']} | {final['m1@t5']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--record", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = [run_demo(args.out / f"p{n}", int(n), args.overrides) for n in args.processes.split(",")]
    if args.record:
        args.record.write_text(markdown(results, " ".join([Path(sys.executable).name, *sys.argv])))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
