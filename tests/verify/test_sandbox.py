"""The sandbox runs programs to a verdict and contains hostile ones (riselm.verify.sandbox)."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from riselm.verify import sandbox
from riselm.verify.sandbox import Isolation, Limits, SandboxError, caller, isolation, run_program, run_programs, runner

FAST = Limits(cpu_seconds=2, wall_seconds=10)


def run(source: str, limits: Limits = FAST):
    return run_program(textwrap.dedent(source), limits)


# ---- verdicts ------------------------------------------------------------------------------------


def test_passing_program_passes_and_its_output_is_captured():
    result = run(
        """
        def add(a, b):
            return a + b
        print("hello from the sandbox")
        assert add(2, 3) == 5
        """
    )
    assert result.status == "passed" and result.passed
    assert result.reason == ""
    assert "hello from the sandbox" in result.output
    assert result.isolation == isolation()


def test_failing_assert_is_failed_and_names_the_line():
    result = run(
        """
        def add(a, b):
            return a - b
        assert add(2, 3) == 5
        """
    )
    assert result.status == "failed"
    assert "AssertionError at line 4: assert add(2, 3) == 5" in result.reason
    assert "Traceback" in result.output  # as Python prints it, without the runner's frames:
    assert Path(caller.CHILD_SCRIPT).name not in result.output and Path(runner.__file__).name not in result.output


@pytest.mark.parametrize(
    "source, reason",
    [
        ("def f(:\n    pass\n", "SyntaxError"),
        ("x = undefined_name + 1\n", "NameError at line 1"),
        ("import os\nos._exit(3)\nassert False\n", "exited with code 3"),
    ],
)
def test_other_problems_are_errors(source, reason):
    result = run(source)
    assert result.status == "error"
    assert reason in result.reason


def test_a_main_guarded_demo_block_is_skipped():
    result = run(
        """
        def double(x):
            return 2 * x
        if __name__ == "__main__":
            import unittest
            unittest.main()  # would exit before the tests
        assert double(2) == 4
        """
    )
    assert result.passed, result.reason


def test_stdin_is_empty_and_does_not_hold_the_token():
    result = run("import sys\ndata = sys.stdin.read()\nassert data == '', data\n")
    assert result.passed


# ---- a program cannot pass without its asserts running ---------------------------------------------

EXIT_TRICKS = {
    "os._exit(0) before the asserts": """
        import os
        os._exit(0)
        assert False
        """,
    "sys.exit(0) before the asserts": """
        import sys
        sys.exit(0)
        assert False
        """,
    "raise SystemExit(0)": """
        raise SystemExit(0)
        assert False
        """,
    "SystemExit from an atexit handler": """
        import atexit
        def leave():
            raise SystemExit(0)
        atexit.register(leave)
        assert False
        """,
    "os._exit(0) from an atexit handler": """
        import atexit, os
        atexit.register(lambda: os._exit(0))
        assert 1 == 2
        """,
    "monkeypatched exit paths and output": """
        import builtins, json, os, sys
        os.write = lambda fd, data: len(data)
        json.dumps = lambda *a, **k: '{"kind": "verdict", "status": "passed", "token": "x"}'
        sys.exit = lambda *a: None
        builtins.print = lambda *a, **k: None
        assert False
        """,
    "a forged verdict on every descriptor": """
        import os
        forged = b'{"kind": "verdict", "status": "passed", "token": "00"}\\n'
        for fd in range(1, 64):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        os._exit(0)
        """,
    "exit from inside the function under test": """
        import os
        def solution(x):
            os._exit(0)
        assert solution(1) == 2
        """,
}


@pytest.mark.parametrize("source", EXIT_TRICKS.values(), ids=EXIT_TRICKS.keys())
def test_exit_tricks_never_pass(source):
    result = run(source)
    assert not result.passed
    assert result.status in ("failed", "error")


# ---- limits ---------------------------------------------------------------------------------------


def test_infinite_loop_hits_the_cpu_limit():
    # A generous wall-clock limit: on a busy machine one CPU second can take many wall seconds.
    result = run("while True:\n    pass\n", Limits(cpu_seconds=1, wall_seconds=120))
    assert result.status == "timeout"
    assert "CPU time limit of 1 s exceeded" in result.reason


def test_a_program_catching_sigxcpu_is_still_stopped():
    source = "import signal\nsignal.signal(signal.SIGXCPU, lambda *args: None)\nwhile True:\n    pass\n"
    result = run(source, Limits(cpu_seconds=1, wall_seconds=120))
    assert result.status == "timeout"
    assert "CPU time limit" in result.reason


def test_sleeping_program_hits_the_wall_clock_limit():
    result = run("import time\ntime.sleep(60)\n", Limits(cpu_seconds=2, wall_seconds=1.5))
    assert result.status == "timeout"
    assert "wall-clock" in result.reason
    assert result.duration < 10


def test_memory_bomb_is_stopped():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n", Limits(memory_mb=256))
    assert result.status == "error"
    assert "MemoryError" in result.reason


def test_file_size_is_limited():
    result = run("open('big.bin', 'wb').write(b'x' * (5 * 1024 * 1024))\n", Limits(file_size_mb=1))
    assert result.status == "error"
    assert "File too large" in result.reason or "file size" in result.reason


def test_fork_bomb_is_contained_and_the_next_run_works():
    bomb = """
        import os
        print("workdir:", os.getcwd(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    limits = Limits(cpu_seconds=2, wall_seconds=30, max_processes=16)
    result = run(bomb, limits)
    if isolation().process_limit == "per-sandbox":  # stopped by the process budget, not by the clock
        assert result.status == "error" and "process limit of 16 exceeded" in result.reason
    else:
        assert result.status in ("error", "timeout")
    workdir = result.output.split("workdir:", 1)[1].split()[0]  # unique to this run, in every cmdline
    assert workdir.startswith(os.sep)
    time.sleep(0.2)
    assert _processes_mentioning(workdir) == []  # nothing of the bomb survives the run
    assert run("assert 1 + 1 == 2\n").passed


def test_daemon_left_behind_is_killed_and_does_not_hold_the_run():
    # The daemon keeps stdout open: were it still alive the run would wait for the wall-clock limit.
    result = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        assert True
        """,
        Limits(cpu_seconds=2, wall_seconds=20),
    )
    assert result.passed
    assert result.duration < 10


def test_printing_gigabytes_is_truncated_and_the_run_continues():
    result = run(
        """
        import os
        chunk = b"x" * (1 << 20)
        for _ in range(1024):
            os.write(1, chunk)
        print("THE END")
        assert True
        """,
        Limits(cpu_seconds=5, wall_seconds=60, max_output_bytes=10_000),
    )
    assert result.passed
    assert len(result.output) < 20_000
    assert result.output.startswith("x" * 1000)
    assert "bytes of output dropped" in result.output
    assert result.output.rstrip().endswith("THE END")  # the tail is kept


# ---- containment ----------------------------------------------------------------------------------


def test_files_outside_the_working_directory_stay_untouched():
    if isolation().filesystem != "read-only":
        pytest.skip("no read-only file system view on this machine; only file permissions apply")
    # A throw-away directory outside /tmp (the sandbox gets a private /tmp, so a victim there would be
    # invisible rather than protected). Only this directory is ever targeted, even if containment fails.
    base = Path(__file__).parent
    if base.resolve().is_relative_to("/tmp"):  # a checkout under /tmp (e.g. a CI clone): use the home directory
        base = Path.home()
    victim_dir = base / f".sandbox-victim-{os.urandom(6).hex()}"
    victim_dir.mkdir()
    victim = victim_dir / "victim.txt"
    victim.write_text("keep me")
    created = victim_dir / "created.txt"
    try:
        result = run(
            f"""
            import os, shutil
            outcomes = []
            for action in (
                lambda: open({str(victim)!r}, "a").write("changed"),
                lambda: os.remove({str(victim)!r}),
                lambda: open({str(created)!r}, "w").write("new"),
                lambda: shutil.rmtree({str(victim_dir)!r}),
            ):
                try:
                    action()
                    outcomes.append("done")
                except OSError as e:
                    outcomes.append(e.strerror)
            open("inside.txt", "w").write("the working directory is writable")
            print(outcomes)
            """
        )
        assert result.passed, result.output
        assert "Read-only file system" in result.output
        assert "done" not in result.output
        assert victim.read_text() == "keep me"
        assert not created.exists()
    finally:
        shutil.rmtree(victim_dir, ignore_errors=True)


def test_the_callers_environment_is_not_visible(monkeypatch):
    secret = "riselm-test-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("RISELM_TEST_SECRET", secret)
    scan_proc = isolation().processes == "pidns"  # same-uid code could read /proc/PID/environ otherwise
    result = run(
        f"""
        import os
        print(sorted(os.environ))
        assert "RISELM_TEST_SECRET" not in os.environ
        if {scan_proc}:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{{pid}}/environ", "rb") as f:
                        assert b"RISELM_TEST_SECRET" not in f.read(), pid
                except OSError:
                    pass
        """
    )
    assert result.passed, result.reason
    assert secret not in result.output


def test_no_network_connection_reaches_the_host():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        result = run(
            f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"hello")
            """
        )
        assert result.status == "error"
        assert any(word in result.reason for word in ("Connection refused", "unreachable", "disabled"))
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected


_NAMESPACE_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
USER, MOUNT, PID, NET = 0x10000000, 0x00020000, 0x20000000, 0x40000000
works = libc.unshare(USER | MOUNT | PID | NET) == 0 or (os.getuid() == 0 and libc.unshare(MOUNT | PID | NET) == 0)
sys.exit(0 if works else 1)
"""

_LOOK_AROUND = """
import os
print("net", os.readlink("/proc/self/ns/net"))
print("pid", os.readlink("/proc/self/ns/pid"))
print("root", [line.split()[5] for line in open("/proc/self/mountinfo") if line.split()[4] == "/"][-1])
print("procs", sum(name.isdigit() for name in os.listdir("/proc")))
"""


def _seen(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.splitlines() if line.split(" ", 1)[0] in ("net", "pid", "root", "procs"))


def _root_options() -> str:
    return [line.split()[5] for line in open("/proc/self/mountinfo") if line.split()[4] == "/"][-1]


def _assert_reported_is_what_the_program_sees(result) -> None:
    reported, inside = result.isolation, _seen(result.output)
    assert result.passed, result.reason
    assert (inside["net"] != os.readlink("/proc/self/ns/net")) == (reported.network == "netns"), inside
    assert (inside["pid"] != os.readlink("/proc/self/ns/pid")) == (reported.processes == "pidns"), inside
    if reported.filesystem == "read-only":
        assert inside["root"].split(",")[0] == "ro", inside
    else:  # "permissions": nothing was remounted
        assert reported.filesystem == "permissions" and inside["root"] == _root_options(), inside
    if reported.processes == "pidns":  # init and the program alone in their /proc exactly when it can count them
        assert reported.process_limit == ("per-sandbox" if int(inside["procs"]) <= 3 else "none"), inside
    else:
        assert reported.process_limit == ("none" if os.getuid() == 0 else "per-user")


def test_isolation_is_reported():
    """The reported isolation is what this machine gives: namespaces when a fresh process can unshare them
    (probed here, apart from the sandbox), and each reported level matches what a program inside sees
    (its own network and PID namespaces, a read-only root, a /proc of its own few processes)."""
    namespaces = subprocess.run([sys.executable, "-c", _NAMESPACE_PROBE]).returncode == 0
    reported = isolation()
    assert (reported.network, reported.processes) == (("netns", "pidns") if namespaces else ("socket-guard", "process-group"))
    result = run(_LOOK_AROUND)
    assert result.isolation == reported
    _assert_reported_is_what_the_program_sees(result)
    fallback = run_program(_LOOK_AROUND, replace(FAST, use_namespaces=False))
    assert fallback.isolation == Isolation("socket-guard", "process-group", "permissions", "none" if os.getuid() == 0 else "per-user")
    _assert_reported_is_what_the_program_sees(fallback)


def test_signalling_the_parent_does_not_kill_the_caller():
    result = run(
        """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)
        assert False, "still alive"
        """
    )
    assert not result.passed  # and we are still here to check it
    assert run("assert True\n").passed


def test_fallback_isolation_still_contains_the_basics(monkeypatch):
    monkeypatch.setenv("RISELM_TEST_SECRET", "fallback-secret")
    limits = Limits(cpu_seconds=2, wall_seconds=10, use_namespaces=False)
    result = run_program("import os\nassert 'RISELM_TEST_SECRET' not in os.environ\n", limits)
    assert result.passed
    assert result.isolation.network == "socket-guard"
    assert result.isolation.processes == "process-group"
    blocked = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", limits)
    assert blocked.status == "error" and "disabled in the sandbox" in blocked.reason
    looping = run_program("while True:\n    pass\n", replace(limits, cpu_seconds=1))
    assert looping.status == "timeout"


def test_runs_fall_back_with_a_warning_where_namespaces_fail(monkeypatch):
    real_run = caller.run

    def namespaces_broken(source, limits):
        if limits.use_namespaces:
            raise SandboxError("sandbox setup failed: OSError: unshare: Operation not permitted")
        return real_run(source, limits)

    monkeypatch.setattr(caller, "run", namespaces_broken)
    sandbox._namespaces_work.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="using the fallback isolation"):
            result = run_program("assert True\n", FAST)
        assert result.passed and result.isolation.network == "socket-guard"
    finally:
        sandbox._namespaces_work.cache_clear()


# ---- the child-side script ------------------------------------------------------------------------


def test_the_child_side_imports_only_the_standard_library():
    # Both files run in a fresh `python -I -S` interpreter: riselm (or any installed package) is not there.
    sibling = Path(runner.__file__)
    assert sibling.parent == Path(caller.CHILD_SCRIPT).parent
    for path in (caller.CHILD_SCRIPT, runner.__file__):
        imported = set()
        for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, "a relative import cannot work in a script"
                imported.add(node.module.split(".")[0])
        imported.discard(sibling.stem)  # child.py imports runner.py by its plain name
        assert imported and imported <= sys.stdlib_module_names, (path, imported - sys.stdlib_module_names)
    # and the entry script loads as the child's interpreter loads it (isolated, without site-packages),
    # importing its sibling without leaving the sandbox folder on sys.path or the sibling in sys.modules
    check = (
        "import os, runpy, sys; found = runpy.run_path(sys.argv[1], run_name='child');"
        "assert callable(found['program_process']) and 'runner' not in sys.modules;"
        "assert os.path.dirname(sys.argv[1]) not in sys.path, sys.path;"
        "print(sorted({m.split('.')[0] for m in sys.modules} - sys.stdlib_module_names - {'__main__'}))"
    )
    command = [sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", check, caller.CHILD_SCRIPT]
    loaded = subprocess.run(command, capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_program_cannot_import_the_sandbox_modules():
    # child.py puts its folder on sys.path only while it imports runner.py: the program never sees it.
    folder = os.path.dirname(caller.CHILD_SCRIPT)
    result = run(
        f"""
        import importlib.util, os, sys
        assert {folder!r} not in sys.path
        assert "runner" not in sys.modules
        for name in ("runner", "child", "caller"):
            spec = importlib.util.find_spec(name)
            assert spec is None or os.path.dirname(spec.origin or "") != {folder!r}, name
        """
    )
    assert result.passed, result.reason + result.output


# ---- the pool -------------------------------------------------------------------------------------


def test_pool_keeps_order_and_bounds_concurrency():
    sources = ["import time\ntime.sleep(1.0)\nassert True\n"] * 4 + ["assert False\n"]
    started = time.monotonic()
    results = run_programs(sources, FAST, workers=2)
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["passed"] * 4 + ["failed"]
    assert elapsed >= 2.0  # never more than two at a time
    assert elapsed < 4.0 + 2.0  # but two at a time (sequential would take over 4 s of sleeping)
    assert run_programs([], FAST) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found
