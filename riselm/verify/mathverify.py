"""math-verify, run in small worker processes that are killed when they exceed a timeout.

math-verify's own timeouts use SIGALRM, which works only in the main thread, and a hung sympy call
inside a thread cannot be stopped. So `riselm.verify.math.math_equivalent` sends what its fast checks
cannot settle to a worker process (started once, reused) through `workers.check`; a worker that does
not answer in time is killed and replaced. The workers speak JSON lines over pipes and wait on them with
`select`, so this needs a POSIX system.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

# math-verify warns on every first call that its own (signal-based) timeout is off; here that is intended.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> list:
    """math-verify's parse of a bare answer (cached: golds are compared many times)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        f"\\boxed{{{answer}}}",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=None,  # signal-based; the caller provides the timeout
    )


def in_process(gold: str, pred: str) -> bool:
    """math-verify's verdict, in this process and without a time limit. The argument order matters."""
    from math_verify import verify

    return bool(verify(_parsed(gold), _parsed(pred), timeout_seconds=None))


def _serve() -> None:
    """Worker process loop: read `[gold, pred]` JSON lines, answer each with a JSON boolean line."""
    answers = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    in_process("1", "1")  # import math-verify and sympy before saying ready
    answers.write("ready\n")
    answers.flush()
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            verdict = in_process(gold, pred)
        except Exception:
            verdict = False
        answers.write(json.dumps(verdict) + "\n")
        answers.flush()


class _Worker:
    """One math-verify worker process: one request at a time, killed when it does not answer in time."""

    START_TIMEOUT = 120.0  # importing sympy on a busy machine can take a while; not part of `timeout`

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # so the child finds riselm uninstalled
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from riselm.verify.mathverify import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes (PIPE above)
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        if self._read_line(self.START_TIMEOUT) != "ready\n":
            self.kill()
            raise RuntimeError("the math-verify worker process did not start")

    def check(self, gold: str, pred: str, timeout: float) -> bool | None:
        """The worker's verdict, or None when it timed out or died (the worker is then unusable)."""
        try:
            self._stdin.write(json.dumps([gold, pred]) + "\n")
            self._stdin.flush()
        except (OSError, ValueError):
            return None
        line = self._read_line(timeout)
        return None if line is None else json.loads(line) is True

    def _read_line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self._stdout], [], [], timeout)
        if not ready:
            return None
        return self._stdout.readline() or None  # "" means the worker exited

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self._stdin, self._stdout):
            try:
                pipe.close()
            except OSError:
                pass


class _WorkerPool:
    """Idle workers kept for reuse; at most `max_workers` run at once, extra callers wait their turn."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.forget()

    def forget(self) -> None:
        """Start empty. A forked child calls this: its parent's workers (and locks) are not its own."""
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()  # idle or busy; all are killed at exit, hung ones included
        self._lock = threading.Lock()

    def check(self, gold: str, pred: str, timeout: float) -> bool:
        with self._slots:
            worker = self._take()
            verdict = worker.check(gold, pred, timeout)
            with self._lock:
                if verdict is not None:
                    self._idle.append(worker)
                    return verdict
                self._live.discard(worker)
            worker.kill()  # hung or dead: the next call starts a fresh one
            return False

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = _Worker()
        with self._lock:
            self._live.add(worker)
        return worker

    def close(self) -> None:
        with self._lock:
            live, self._live, self._idle = self._live, set(), []
        for worker in live:
            worker.kill()


workers = _WorkerPool(max_workers=min(8, os.cpu_count() or 1))
atexit.register(workers.close)
os.register_at_fork(after_in_child=workers.forget)
