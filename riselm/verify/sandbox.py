"""Run untrusted Python programs (model-written code followed by its tests) in isolated child processes.

Each program runs in its own process tree, in a fresh temporary working directory, with a scrubbed
environment and resource limits, and never inside the riselm process. `run_program(source)` runs one;
`run_programs(sources, workers=...)` runs many through a bounded thread pool (each thread waits on
one child). A result says `passed` / `failed` / `timeout` / `error`, with a short reason and the
captured (truncated) output. The source runs as a module named `program`, so that a demo block under
`if __name__ == "__main__":` in a model's answer is skipped, as in the HumanEval harness.

How a run is built (one launch = three processes):

    riselm ──Popen──> supervisor ──fork──> init (pid 1 of the new namespaces) ──fork──> program

The supervisor (this file, run as a script with `python -I -S`) enters new user, mount, PID and
network namespaces when the machine allows it; init sets up the file system, drops every capability
and reaps; the program process applies the resource limits and executes the source. Without
namespaces the supervisor itself forks the program and reaps it as a child subreaper. Namespaces are
probed once per process: where they cannot be set up, runs fall back (with a warning) and say so.

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

import builtins
import ctypes
import functools
import json
import os
import resource
import select
import signal
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass, replace

# The caller-only modules (subprocess, selectors, tempfile, shutil, sysconfig, concurrent.futures)
# are imported inside the functions that use them: every sandbox run starts a fresh interpreter on
# this very file, and their imports would add a third to its start-up time.

PROGRAM_FILE = "program.py"  # the source's name in its working directory (and in tracebacks)
_TAIL_BYTES = 4096  # output kept from the end when the middle is dropped
_RECORDS_LIMIT = 1 << 16  # bytes of result records read from the result pipe; the rest is ignored
_REASON_CHARS = 300  # reasons are short: they go into Score.feedback and retry messages


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


# ==== the caller's side =========================================================================


def run_program(source: str, limits: Limits | None = None) -> ExecResult:
    """Run one program (solution + tests as one Python source) in a fresh sandbox; blocks until done."""
    limits = limits or Limits()
    if limits.use_namespaces and not _namespaces_work():
        limits = replace(limits, use_namespaces=False)
    return _run(source, limits)


def _run(source: str, limits: Limits) -> ExecResult:
    import tempfile

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="riselm-sandbox-")
    try:
        with open(os.path.join(workdir, PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(source)
        token = os.urandom(16).hex()
        output, records, timed_out = _launch(workdir, token, limits)
    finally:
        _remove_tree(workdir)
    return _judge(records, token, output, timed_out, limits, time.monotonic() - started)


def run_programs(sources: list[str], limits: Limits | None = None, workers: int | None = None) -> list[ExecResult]:
    """Run many programs, at most `workers` at a time (default: the CPUs this process may use)."""
    from concurrent.futures import ThreadPoolExecutor

    if not sources:
        return []
    workers = max(1, min(workers or default_workers(), len(sources)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _namespaces_work() -> bool:
    """Whether namespace isolation works on this machine (probed once, with a warning if not)."""
    try:
        result = _run("pass\n", Limits())
        problem = "" if result.passed else f"{result.status}: {result.reason}"
    except SandboxError as e:
        problem = str(e)
    if problem:
        warnings.warn(f"sandbox: namespace isolation failed ({problem}); using the fallback isolation", RuntimeWarning)
    return not problem


@functools.cache
def isolation() -> Isolation:
    """What this machine's sandbox enforces (probed once by running an empty program)."""
    result = run_program("pass\n")
    if result.isolation is None or not result.passed:
        raise SandboxError(f"the sandbox cannot run an empty program: {result.reason}\n{result.output}")
    return result.isolation


def network_isolation() -> str:
    """'netns' (a network namespace: no network at all) or 'socket-guard' (best-effort)."""
    return isolation().network


def _launch(workdir: str, token: str, limits: Limits) -> tuple[str, list[dict], bool]:
    """Start the supervisor, feed it the token, collect its output and result records."""
    import subprocess

    result_r, result_w = os.pipe()
    config = {
        "limits": asdict(limits),
        "workdir": workdir,
        "result_fd": result_w,
        "caller_pid": os.getpid(),
        "extra_path": _site_packages(),
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", os.path.abspath(__file__), json.dumps(config)],
            cwd=workdir,
            env=_scrubbed_env(workdir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
            pass_fds=(result_w,),
            start_new_session=True,  # its own process group: killpg reaches supervisor (+ init)
        )
    except OSError as e:
        os.close(result_r)
        raise SandboxError(f"cannot start the sandbox interpreter {sys.executable}: {e}") from e
    finally:
        os.close(result_w)
    try:
        try:
            proc.stdin.write(token.encode())
            proc.stdin.close()
        except BrokenPipeError:  # the supervisor died at once; its records say why
            pass
        output, records, timed_out = _collect(proc.stdout.fileno(), result_r, limits)
    finally:
        # Kill before reaping: until proc.wait() the supervisor's pid (= its group id) cannot be reused.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
        os.close(result_r)
    return output, _parse_records(records), timed_out


def _collect(output_fd: int, result_fd: int, limits: Limits) -> tuple[str, bytes, bool]:
    """Read both pipes until every writer is gone or the wall-clock limit passes."""
    import selectors

    output = _CappedBuffer(limits.max_output_bytes)
    records = bytearray()
    deadline = time.monotonic() + limits.wall_seconds
    with selectors.DefaultSelector() as selector:
        selector.register(output_fd, selectors.EVENT_READ)
        selector.register(result_fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return output.text(), bytes(records), True
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fd)
                elif key.fd == output_fd:
                    output.add(chunk)
                elif len(records) < _RECORDS_LIMIT:
                    records += chunk
    return output.text(), bytes(records), False


class _CappedBuffer:
    """Keeps the first `limit` bytes and the last few KiB of a stream, counting what it drops."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-_TAIL_BYTES:]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        data = bytes(self.head)
        if dropped > 0:
            data += f"\n[... {dropped} bytes of output dropped ...]\n".encode()
        return (data + bytes(self.tail)).decode("utf-8", errors="replace")


def _parse_records(data: bytes) -> list[dict]:
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a program may write garbage to the descriptor: ignore it
        if isinstance(record, dict):
            records.append(record)
    return records


def _judge(
    records: list[dict], token: str, output: str, timed_out: bool, limits: Limits, duration: float
) -> ExecResult:
    """Turn what the sandbox reported into one status and reason."""
    if records and records[0].get("kind") == "setup-error":  # first = written before the program ran
        raise SandboxError(f"sandbox setup failed: {records[0].get('message')}")
    isolation = None
    if records and records[0].get("kind") == "isolation":
        isolation = Isolation(**{k: str(records[0].get(k)) for k in Isolation.__dataclass_fields__})

    def result(status: str, reason: str) -> ExecResult:
        return ExecResult(status, reason[:_REASON_CHARS], output, duration, isolation)

    verdicts = [r for r in records if r.get("kind") == "verdict"]
    if any(v.get("status") == "passed" and v.get("token") == token for v in verdicts):
        return result("passed", "")
    if timed_out:
        return result("timeout", f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
    failures = [v for v in verdicts if v.get("status") in ("failed", "error")]
    exits = [r for r in records if r.get("kind") == "exit"]
    end = exits[-1] if exits else None
    if end and end.get("process_limit"):
        return result("error", f"process limit of {limits.max_processes} exceeded (all its processes were killed)")
    if end and _ran_out_of_cpu(end, limits):
        return result("timeout", f"CPU time limit of {limits.cpu_seconds} s exceeded")
    if failures:
        return result(str(failures[-1]["status"]), str(failures[-1].get("reason", "")))
    if end is None:
        return result("error", "the sandbox ended without reporting how the program exited")
    if end.get("signal"):
        name = _signal_name(int(end["signal"]))
        if name == "SIGXFSZ":
            return result("error", f"file size limit of {limits.file_size_mb} MiB exceeded")
        return result("error", f"killed by {name} before its tests finished")
    return result("error", f"exited with code {end.get('code')} before its tests finished")


def _ran_out_of_cpu(end: dict, limits: Limits) -> bool:
    # The kernel sends SIGXCPU at the soft limit and SIGKILL at the hard one, a second later. The CPU
    # time wait() reports runs a little below the kernel's own count, hence the margin.
    signal_number = end.get("signal")
    if signal_number == signal.SIGXCPU:
        return True
    return signal_number == signal.SIGKILL and float(end.get("cpu", 0)) >= 0.8 * limits.cpu_seconds


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _scrubbed_env(workdir: str) -> dict[str, str]:
    # Nothing of the caller's environment: API keys and tokens must never reach model code.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}


@functools.cache
def _site_packages() -> list[str]:
    # The child starts with -S (no site: ~20 ms instead of ~100 ms with many .pth hooks); installed
    # packages stay importable through plain path entries, editable installs (riselm itself) do not.
    import sysconfig

    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths.get("purelib"), paths.get("platlib")) if p))


def _remove_tree(path: str) -> None:
    import shutil

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_force_remove)
    else:
        shutil.rmtree(path, onerror=_force_remove)


def _force_remove(function, path, _error) -> None:
    # A program may leave read-only files or directories behind (chmod 000); make them removable.
    parent = os.path.dirname(path)
    for p in (parent, path):
        try:
            os.chmod(p, 0o700)
        except OSError:
            pass
    try:
        function(path)
    except OSError:
        pass


# ==== inside the sandbox (runs in the supervisor / init / program processes; stdlib only) =========

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x4000, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH = 0x1, os.O_CLOEXEC, 0x4
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on x86_64 and arm64
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_WATCHDOG_PERIOD = 0.01  # seconds between process counts in the PID namespace
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _check(result: int, what: str) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _syscall(number: int, *args, what: str) -> int:
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc.syscall(ctypes.c_long(number), *converted), what)


def _prctl(option: int, value: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), what)


def _supervise(config: dict) -> None:
    """Entry point of `python sandbox.py CONFIG`: enter namespaces, start init or the program, wait."""
    result_fd = config["result_fd"]
    try:
        # Die with the caller. Popen is called from the pool thread that waits for us, so that
        # thread (PDEATHSIG's "parent") outlives the run.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")
        if os.getppid() != config["caller_pid"]:
            os._exit(1)
        if not (config["limits"]["use_namespaces"] and _enter_namespaces()):
            _reap(config, _fallback_isolation(), in_namespace=False)  # never returns
        pid = os.fork()
        if pid == 0:
            _init(config)  # never returns
    except Exception as e:
        _write_record(result_fd, {"kind": "setup-error", "message": f"{type(e).__name__}: {e}"})
        os._exit(70)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _enter_namespaces() -> bool:
    """Unshare user+mount+PID+network namespaces (as root, where user namespaces are disabled, the
    other three do as well); False when impossible."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) == -1:
        return uid == 0 and _libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) == 0
    # Map our own uid/gid onto themselves: files keep their owners, nothing else is mapped.
    for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{path}", "w") as f:
            f.write(text)
    return True


def _init(config: dict) -> None:
    """PID 1 of the new namespaces: build the file system view, drop privileges, run and reap."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")  # supervisor killed => all die
        filesystem, private_proc = _isolate_filesystem(config["workdir"], config["limits"]["tmpfs_mb"])
        _drop_capabilities()
        isolation = Isolation(
            network="netns",
            processes="pidns",
            filesystem=filesystem,
            process_limit="per-sandbox" if private_proc else "none",  # enforced by _wait_for's count
        )
    except Exception as e:
        _write_record(config["result_fd"], {"kind": "setup-error", "message": f"{type(e).__name__}: {e}"})
        os._exit(70)
    _reap(config, isolation, in_namespace=True)


def _isolate_filesystem(workdir: str, tmpfs_mb: int) -> tuple[str, bool]:
    """Make every mount read-only except the working directory and private tmpfs.

    Returns 'read-only' or 'permissions' (the kernel lacks mount_setattr: only /proc is replaced),
    and whether /proc is a procfs of our own PID namespace."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(private)")  # no leaks to host
    try:  # detached copies of what stays writable or usable, taken before everything turns read-only
        workdir_tree = _clone_tree(workdir)
        devices = {name: _clone_tree(f"/dev/{name}") for name in _DEVICES if os.path.exists(f"/dev/{name}")}
        _mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=True)
    except OSError:  # old kernel (< 5.12): keep the caller's file permissions only
        return "permissions", _mount_proc()
    private_proc = _mount_proc()
    _mount_tmpfs("/dev", MS_NOSUID | MS_NOEXEC, tmpfs_mb, mode=0o755)
    for name, tree in devices.items():
        open(f"/dev/{name}", "w").close()
        _attach_tree(tree, f"/dev/{name}")
    os.mkdir("/dev/shm")
    os.chmod("/dev/shm", 0o1777)
    for name, target in (("fd", "self/fd"), ("stdin", "self/fd/0"), ("stdout", "self/fd/1"), ("stderr", "self/fd/2")):
        os.symlink(f"/proc/{target}", f"/dev/{name}")
    for path in ("/tmp", "/var/tmp", "/run"):
        if os.path.isdir(path) and not os.path.islink(path):
            _mount_tmpfs(path, MS_NOSUID | MS_NODEV, tmpfs_mb, mode=0o1777)
    os.makedirs(workdir, exist_ok=True)  # inside the new /tmp when the working directory was there
    _attach_tree(workdir_tree, workdir)
    _mount_setattr(workdir, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, recursive=False)
    os.chdir(workdir)  # the old cwd still points into the read-only mount underneath
    return "read-only", private_proc


def _clone_tree(path: str) -> int:
    """A detached copy of the mount at `path` (open_tree), to attach elsewhere later."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC
    return _syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), flags, what=f"open_tree({path})")


def _attach_tree(tree: int, path: str) -> None:
    _syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH, what=f"move_mount({path})")


def _mount_tmpfs(path: str, flags: int, size_mb: int, mode: int) -> None:
    options = f"size={size_mb}m,mode={mode:o}".encode()
    _check(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, options), f"mount(tmpfs on {path})")


def _mount_setattr(path: str, attributes: int, recursive: bool) -> None:
    attr = (ctypes.c_uint64 * 4)(attributes, 0, 0, 0)  # struct mount_attr {set, clr, propagation, userns_fd}
    flags = AT_RECURSIVE if recursive else 0
    size = ctypes.sizeof(attr)
    _syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), size, what=f"mount_setattr({path})")


def _mount_proc() -> bool:
    """A procfs of the new PID namespace (True), or where that is refused (a host /proc with masked
    parts) an empty tmpfs (False): either way host processes and their environments are invisible."""
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"proc", b"/proc", b"proc", flags, None) == 0:
        return True
    _check(_libc.mount(b"tmpfs", b"/proc", b"tmpfs", flags, b"size=4k"), "mount(/proc)")
    return False


def _drop_capabilities() -> None:
    """No capabilities now or after any exec (empty bounding set, no_new_privs)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(NO_NEW_PRIVS)")
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) == 0:  # EINVAL past the last cap
        cap += 1
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _fallback_isolation() -> Isolation:
    return Isolation(
        network="socket-guard",
        processes="process-group",
        filesystem="permissions",
        process_limit="none" if os.getuid() == 0 else "per-user",
    )


def _reap(config: dict, isolation: Isolation, in_namespace: bool) -> None:
    """Fork the program, reap every child until the program is gone, report how it ended, exit."""
    result_fd = config["result_fd"]
    if not in_namespace:
        _drop_capabilities_if_root()
        _prctl(PR_SET_CHILD_SUBREAPER, 1, "prctl(CHILD_SUBREAPER)")  # orphans come back to us
    _write_record(result_fd, {"kind": "isolation", **asdict(isolation)})
    program = os.fork()
    if program == 0:
        _program_process(config, isolation, in_namespace)  # never returns
    # The kernel exempts uid 0 from RLIMIT_NPROC (even in a user namespace), so in our own PID
    # namespace we count the processes ourselves and kill them all when the program exceeds its budget.
    watchdog_limit = config["limits"]["max_processes"] if in_namespace and isolation.process_limit != "none" else None
    status, usage, over_limit = _wait_for(program, watchdog_limit)
    end = {"kind": "exit", "cpu": usage.ru_utime + usage.ru_stime, "code": None, "signal": None}
    if os.WIFSIGNALED(status):
        end["signal"] = os.WTERMSIG(status)
    else:
        end["code"] = os.WEXITSTATUS(status)
    end["process_limit"] = over_limit
    if not in_namespace:
        _kill_children()
    _write_record(result_fd, end)
    os._exit(0)  # as PID 1: the kernel now kills whatever the program left behind


def _wait_for(program: int, watchdog_limit: int | None) -> tuple[int, resource.struct_rusage, bool]:
    """Reap children (orphans included) until `program` ends; its wait status and resource usage.

    With `watchdog_limit`, every few milliseconds count the processes of our PID namespace (our
    private /proc) and SIGKILL all of them (kill(-1) spares only us, its init) when over the limit."""
    over_limit = False
    pidfd = os.pidfd_open(program)  # readable once the program has exited: no busy waiting
    try:
        while True:
            select.select([pidfd], [], [], _WATCHDOG_PERIOD)
            while True:
                pid, status, usage = os.wait3(os.WNOHANG)
                if pid == program:
                    return status, usage, over_limit
                if pid == 0:
                    break
            if watchdog_limit is not None and not over_limit and len(_all_pids()) - 1 > watchdog_limit:
                over_limit = True
                os.kill(-1, signal.SIGKILL)
    finally:
        os.close(pidfd)


def _drop_capabilities_if_root() -> None:
    if os.getuid() == 0:
        try:
            _drop_capabilities()
        except OSError:
            pass


def _kill_children() -> None:
    """Fallback cleanup: SIGKILL our remaining children (orphans reparented to us) until none is left."""
    me = str(os.getpid())
    while True:
        children = [pid for pid in _all_pids() if _parent_of(pid) == me]
        if not children:
            return
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.01)
                    break
            except ChildProcessError:
                break


def _all_pids() -> list[str]:
    return [name for name in os.listdir("/proc") if name.isdigit()]


def _parent_of(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]  # the field after state; comm may hold ')'
    except (OSError, IndexError):
        return None


def _program_process(config: dict, isolation: Isolation, in_namespace: bool) -> None:
    """The process that runs the untrusted source."""
    try:
        if in_namespace:
            os.setsid()  # kill(0, ...) or killpg from the program reaches only its own session
        else:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")
        token_fd = _park_stdin()
        _set_limits(config["limits"], isolation.process_limit)
        if isolation.network == "socket-guard":
            _install_socket_guard()
        sys.path.extend(config["extra_path"])
    except Exception as e:
        _write_record(config["result_fd"], {"kind": "verdict", "status": "error", "reason": f"sandbox: {e}"})
        os._exit(70)
    _run_source(PROGRAM_FILE, token_fd, config["result_fd"])


def _park_stdin() -> int:
    """Move stdin (holding the caller's token) to a spare descriptor; the program gets an empty stdin."""
    token_fd = os.dup(0)
    empty_r, empty_w = os.pipe()
    os.close(empty_w)
    os.dup2(empty_r, 0)
    os.close(empty_r)
    return token_fd


def _set_limits(limits: dict, process_limit: str) -> None:
    mib = 1024 * 1024
    wanted = {
        resource.RLIMIT_CPU: limits["cpu_seconds"],
        resource.RLIMIT_AS: limits["memory_mb"] * mib,
        resource.RLIMIT_FSIZE: limits["file_size_mb"] * mib,
        resource.RLIMIT_NOFILE: limits["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }
    if process_limit == "per-user":  # counted over all the user's tasks: allow the budget on top
        wanted[resource.RLIMIT_NPROC] = _user_task_count() + limits["max_processes"]
    for kind, value in wanted.items():
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        # CPU: SIGXCPU at the limit (a clear "timeout"), SIGKILL a second later if it is caught.
        extra = 1 if kind == resource.RLIMIT_CPU and (hard == resource.RLIM_INFINITY or value < hard) else 0
        resource.setrlimit(kind, (value, value + extra))


def _user_task_count() -> int:
    uid, count = os.getuid(), 0
    for pid in _all_pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _install_socket_guard() -> None:
    """Best-effort network block for machines without network namespaces."""
    import socket

    class GuardedSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
                raise PermissionError("network access is disabled in the sandbox")
            super().__init__(family, type, proto, fileno)

    socket.socket = GuardedSocket


def _run_source(path: str, token_fd: int, result_fd: int) -> None:
    """Execute the program; report a verdict that holds the token only if it all ran."""
    # Keep our own references: the program may rebind os.read, json.dumps and the like.
    read, write, exit_now, dumps = os.read, os.write, os._exit, json.dumps
    with open(path, encoding="utf-8") as f:
        source = f.read()
    # Named "program", not "__main__", as the HumanEval harness does: an answer's demo block under
    # `if __name__ == "__main__":` (examples, input(), unittest.main()) is skipped, its tests are not.
    main = types.ModuleType("program")
    main.__file__ = path
    main.__builtins__ = builtins
    sys.modules["program"] = main  # so that pickle (and multiprocessing) find what it defines
    sys.argv = [path]
    try:
        exec(compile(source, path, "exec"), main.__dict__)
        _flush()
        verdict = {"kind": "verdict", "status": "passed", "token": read(token_fd, 64).decode()}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the tests did not finish
        try:  # as Python would print it, without the runner's own frame
            import traceback  # only on failure: a passing run need not pay for its import

            traceback.print_exception(type(exc), exc, _program_frames(exc.__traceback__, path))
        except BaseException:
            pass
        _flush()
        verdict = _describe_failure(exc, source, path)
    try:
        write(result_fd, (dumps(verdict) + "\n").encode())
    finally:
        exit_now(0)  # no atexit handlers or lingering threads after the verdict


def _program_frames(tb: types.TracebackType | None, path: str) -> types.TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return tb


def _describe_failure(exc: BaseException, source: str, path: str) -> dict:
    if isinstance(exc, SystemExit):
        reason = f"the program called exit({exc.code!r}) before its tests finished"
        return {"kind": "verdict", "status": "error", "reason": reason}
    if isinstance(exc, SyntaxError) and exc.filename == path:
        return {"kind": "verdict", "status": "error", "reason": f"SyntaxError: {exc.msg} (line {exc.lineno})"}
    line_number = None
    tb = exc.__traceback__
    while tb is not None:  # the deepest frame that is in the program itself
        if tb.tb_frame.f_code.co_filename == path:
            line_number = tb.tb_lineno
        tb = tb.tb_next
    where = ""
    if line_number is not None:
        lines = source.splitlines()
        text = lines[line_number - 1].strip() if 0 < line_number <= len(lines) else ""
        where = f" at line {line_number}: {text}"
    try:
        message = str(exc)
    except BaseException:
        message = ""
    status = "failed" if isinstance(exc, AssertionError) else "error"
    reason = f"{type(exc).__name__}{where}" + (f" ({message})" if message else "")
    return {"kind": "verdict", "status": status, "reason": reason[:_REASON_CHARS]}


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _write_record(fd: int, record: dict) -> None:
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass


if __name__ == "__main__":
    _supervise(json.loads(sys.argv[1]))
