"""Run untrusted Python programs (model-written code followed by its tests) in isolated child processes.

Each program runs in its own process tree, in a fresh temporary working directory, with a scrubbed
environment and resource limits, and never inside the riselm process. `run_program(source)` runs one;
`run_programs(sources, workers=...)` runs many through a bounded thread pool (each thread waits on
one child). A result says `passed` / `failed` / `timeout` / `error`, with a short reason and the
captured (truncated) output. The source runs as a module named `program`, so that a demo block under
`if __name__ == "__main__":` in a model's answer is skipped, as in the HumanEval harness.

One launch runs three processes, riselm ──> supervisor ──> init ──> program (see child.py), and the
modules split along that line: this one holds the API and its types, caller.py what runs in the
riselm process (launch, capped output, records, judgement), child.py the stand-alone script run in
the fresh interpreter (supervisor and init; its docstring also lists the records the two sides
exchange) and runner.py, which it imports, the program process (limits, socket guard, running the
source, the verdict) and the record kinds both sides share. Namespaces are probed once per process:
where they cannot be set up, runs fall back (with a warning) and say so.

What is guaranteed, by isolation level (`isolation()` says which is in force; every result carries it):

* Always: the program is a separate process started from a fresh interpreter with an environment
  holding only PATH/HOME/TMPDIR/LANG (never the caller's variables); its own session or process
  group is killed with SIGKILL on the wall-clock limit; RLIMIT_CPU, RLIMIT_AS (memory),
  RLIMIT_FSIZE, RLIMIT_NOFILE and RLIMIT_CORE=0 apply; stdin is empty; output is captured into a
  bounded buffer (head and tail kept, the middle dropped) while the pipe is drained, so printing
  gigabytes costs the program its CPU budget and the caller nothing but the reads.
* Passing needs proof that the tests ran: the caller writes a random token into the program's stdin;
  the test runner moves it to a spare descriptor before the program starts and reads it only after
  the whole source (solution and tests) ran without an exception. `os._exit(0)`, `sys.exit(0)`, a
  `SystemExit` raised from anywhere, atexit tricks or a killed parent therefore end as `error`, never
  `passed`. Not defended: code that deliberately digs the token out of its own descriptors, and
  objects that make the test's comparisons lie (e.g. an `__eq__` that always returns True).
* Namespaces (user+mount+PID+network; needs unprivileged user namespaces, or root):
  - network "netns": a new network namespace with no interfaces up; abstract unix sockets are private.
  - processes "pidns": the program sees only its own processes; when init ends (or the supervisor is
    killed, through PR_SET_PDEATHSIG) the kernel kills everything left in the namespace, fork bombs
    and daemons included. `os.kill(os.getppid(), ...)` cannot reach anything outside.
  - process_limit "per-sandbox": init counts the processes of its PID namespace every 10 ms and
    kills them all once there are more than `max_processes` (RLIMIT_NPROC cannot do it: the kernel
    exempts uid 0 from it, also inside a user namespace). A fork bomb thus ends as an `error` within
    a fraction of a second; measured on a busy 2-core machine, a bash fork bomb peaked at about 150
    processes before it was killed.
  - filesystem "read-only": every mount is made read-only, nosuid and nodev (mount_setattr, Linux
    5.12+); the working directory is the only writable host path; /tmp, /var/tmp and /run are private
    size-limited tmpfs (hiding host unix sockets there); /dev is a tmpfs holding only null, zero,
    full, random, urandom (+ a private shm); /proc is a fresh read-only procfs of the new PID
    namespace. Writing or deleting files elsewhere fails with EROFS.
  The program keeps the caller's uid (mapped identically) but holds no capabilities, has an empty
  bounding set and no_new_privs. It can therefore *read* whatever the caller can read; with no
  network it can only return that through its own output.
* Fallback (no namespaces): network "socket-guard" (Python's socket module refuses AF_INET/AF_INET6;
  best-effort: ctypes or a subprocess can bypass it), processes "process-group" (daemons that call
  setsid() before the run ends are only killed if the supervisor survives to reap them),
  filesystem "permissions" (ordinary file permissions of the caller's uid), process_limit
  "per-user" (RLIMIT_NPROC set to the user's current task count plus the budget) or "none" as root
  (a fork bomb then runs until the wall-clock limit kills its process group). Same-uid code can
  signal the caller's processes and read their environments in /proc in this mode.
"""

from __future__ import annotations

import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 5  # RLIMIT_CPU of the program (each process); exceeding it is a timeout
    wall_seconds: float = 30.0  # wall-clock limit of the whole run (generous: shared machines are slow)
    memory_mb: int = 1024  # RLIMIT_AS (address space) of each process
    file_size_mb: int = 16  # RLIMIT_FSIZE: the largest file the program may write
    max_processes: int = 32  # processes the program may have at once (fallback: RLIMIT_NPROC on top of the user's)
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 64 * 1024  # stdout+stderr kept from the start; the last 4 KiB are kept too
    tmpfs_mb: int = 64  # size of each private tmpfs (/tmp, /var/tmp, /run, /dev) in namespace mode
    use_namespaces: bool = True  # False forces the fallback isolation (tests; machines where they misbehave)


@dataclass(frozen=True)
class Isolation:
    network: str  # "netns" (no network at all) | "socket-guard" (Python-level, best-effort)
    processes: str  # "pidns" (everything dies with init) | "process-group" (killpg + subreaper)
    filesystem: str  # "read-only" (only the working directory is writable) | "permissions"
    process_limit: str  # "per-sandbox" (PID-namespace count) | "per-user" (RLIMIT_NPROC) | "none"


@dataclass(frozen=True)
class ExecResult:
    status: str  # "passed" | "failed" (a test assertion failed) | "timeout" | "error" (anything else)
    reason: str  # short human-readable cause, "" when passed
    output: str  # captured stdout+stderr, truncated to Limits.max_output_bytes (+ tail)
    duration: float  # wall seconds of the whole run
    isolation: Isolation | None  # what was in force; None when the sandbox never reported it

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (a broken installation, not a bad program)."""


# The caller's side builds the types above (imported after them: it imports them from here).
from riselm.verify.sandbox import caller  # noqa: E402


def run_program(source: str, limits: Limits | None = None) -> ExecResult:
    """Run one program (solution + tests as one Python source) in a fresh sandbox; blocks until done."""
    limits = limits or Limits()
    if limits.use_namespaces and not _namespaces_work():
        limits = replace(limits, use_namespaces=False)
    return caller.run(source, limits)


def run_programs(sources: list[str], limits: Limits | None = None, workers: int | None = None) -> list[ExecResult]:
    """Run many programs, at most `workers` at a time (default: the CPUs this process may use)."""
    if not sources:
        return []
    workers = max(1, min(workers or default_workers(), len(sources)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))


def default_workers() -> int:
    from riselm.hardware import usable_cpus

    return usable_cpus()


@functools.cache
def isolation() -> Isolation:
    """What this machine's sandbox enforces (probed once by running an empty program)."""
    result = run_program("pass\n")
    if result.isolation is None or not result.passed:
        raise SandboxError(f"the sandbox cannot run an empty program: {result.reason}\n{result.output}")
    return result.isolation


@functools.cache
def _namespaces_work() -> bool:
    """Whether namespace isolation works on this machine (probed once, with a warning if not)."""
    try:
        result = caller.run("pass\n", Limits())
        problem = "" if result.passed else f"{result.status}: {result.reason}"
    except SandboxError as e:
        problem = str(e)
    if problem:
        warnings.warn(f"sandbox: namespace isolation failed ({problem}); using the fallback isolation", RuntimeWarning, stacklevel=2)
    return not problem
