"""The caller's side of a sandbox run: everything that happens in the riselm process.

`run(source, limits)` writes the source into a fresh working directory, starts the child-side script
(child.py) in a fresh interpreter, feeds it the token, drains its output into a capped buffer and its
result records into a bounded one until the wall-clock limit, kills what is left, and judges the
records (their format is the interface written in child.py's docstring) into one ExecResult. It takes
the record kinds from runner.py and never imports child.py, which is only ever run as a script.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict

from riselm.verify.sandbox import ExecResult, Isolation, Limits, SandboxError, runner

_TAIL_BYTES = 4096  # output kept from the end when the middle is dropped
_RECORDS_LIMIT = 1 << 16  # bytes of result records read from the result pipe; the rest is ignored
CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")  # run, never imported


def run(source: str, limits: Limits) -> ExecResult:
    """Run one program under exactly these limits (no probing of namespaces); blocks until done."""
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="riselm-sandbox-")
    try:
        with open(os.path.join(workdir, runner.PROGRAM_FILE), "w", encoding="utf-8") as f:
            f.write(source)
        token = os.urandom(16).hex()
        output, records, timed_out = _launch(workdir, token, limits)
    finally:
        _remove_tree(workdir)
    return _judge(records, token, output, timed_out, limits, time.monotonic() - started)


def _launch(workdir: str, token: str, limits: Limits) -> tuple[str, list[dict], bool]:
    """Start the supervisor, feed it the token, collect its output and result records."""
    result_r, result_w = os.pipe()
    config = {  # the child's config: see child.py
        "limits": asdict(limits),
        "workdir": workdir,
        "result_fd": result_w,
        "caller_pid": os.getpid(),
        "extra_path": _site_packages(),
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-X", "utf8", CHILD_SCRIPT, json.dumps(config)],
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
    assert proc.stdin is not None and proc.stdout is not None  # both are pipes (PIPE above)
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


def _judge(records: list[dict], token: str, output: str, timed_out: bool, limits: Limits, duration: float) -> ExecResult:
    """Turn what the sandbox reported into one status and reason."""
    first = records[0].get("kind") if records else None  # the first was written before the program ran
    if first == runner.SETUP_ERROR:
        raise SandboxError(f"sandbox setup failed: {records[0].get('message')}")
    isolation = None
    if first == runner.ISOLATION:
        isolation = Isolation(**{k: str(records[0].get(k)) for k in Isolation.__dataclass_fields__})

    def result(status: str, reason: str) -> ExecResult:
        return ExecResult(status, reason[: runner.REASON_CHARS], output, duration, isolation)

    verdicts = [r for r in records if r.get("kind") == runner.VERDICT]
    if any(v.get("status") == "passed" and v.get("token") == token for v in verdicts):
        return result("passed", "")
    if timed_out:
        return result("timeout", f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
    failures = [v for v in verdicts if v.get("status") in ("failed", "error")]
    exits = [r for r in records if r.get("kind") == runner.EXIT]
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
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths.get("purelib"), paths.get("platlib")) if p))


def _remove_tree(path: str) -> None:
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
