"""The sandbox's program process: limits it, runs the untrusted source and reports a verdict.

Part of the child side (with child.py, which imports it by its plain name, and only the standard
library: it runs in the fresh `python -I -S` interpreter). The program process (`program_process`,
forked by init or the supervisor) parks the caller's token, applies the resource limits, installs
the socket guard where there is no network namespace, executes the source as the module `program`
and writes one verdict record: "passed" with the token read back only after the whole source ran,
or "failed" (an AssertionError) or "error" with a short reason.

It also holds what both sides of the sandbox share: the source's file name, the record kinds and
the record writers (the format is the interface written in child.py's docstring), and the few libc
helpers child.py uses as well. The caller (caller.py) imports this module for those constants; it
never imports child.py.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import signal
import sys
import types

PROGRAM_FILE = "program.py"  # the source's name in its working directory (and in tracebacks)
REASON_CHARS = 300  # reasons are short: they go into Score.feedback and retry messages
ISOLATION, SETUP_ERROR, VERDICT, EXIT = "isolation", "setup-error", "verdict", "exit"  # record kinds

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def check(result: int, what: str) -> int:
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def prctl(option: int, value: int, what: str) -> None:
    check(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), what)


def all_pids() -> list[str]:
    return [name for name in os.listdir("/proc") if name.isdigit()]


def verdict(status: str, reason: str) -> dict:
    return {"kind": VERDICT, "status": status, "reason": reason}


def write_record(fd: int, record: dict) -> None:
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass


def give_up(fd: int, record: dict) -> None:
    """Report why the sandbox could not go on, and exit (70: EX_SOFTWARE) without cleanup."""
    write_record(fd, record)
    os._exit(70)


def program_process(config: dict, isolation: dict, in_namespace: bool) -> None:
    """The process that runs the untrusted source; never returns."""
    try:
        if in_namespace:
            os.setsid()  # kill(0, ...) or killpg from the program reaches only its own session
        else:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")
        token_fd = _park_stdin()
        _set_limits(config["limits"], isolation["process_limit"])
        if isolation["network"] == "socket-guard":
            _install_socket_guard()
        sys.path.extend(config["extra_path"])
    except Exception as e:
        give_up(config["result_fd"], verdict("error", f"sandbox: {e}"))
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
    for pid in all_pids():
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

    vars(socket)["socket"] = GuardedSocket  # socket.socket = GuardedSocket, which mypy refuses (a class is no variable)


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
    main.__dict__["__builtins__"] = builtins  # main.__builtins__, which ModuleType does not declare
    sys.modules["program"] = main  # so that pickle (and multiprocessing) find what it defines
    sys.argv = [path]
    try:
        exec(compile(source, path, "exec"), main.__dict__)
        _flush()
        result = {"kind": VERDICT, "status": "passed", "token": read(token_fd, 64).decode()}
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the tests did not finish
        try:  # as Python would print it, without the runner's own frame
            import traceback  # only on failure: a passing run need not pay for its import

            traceback.print_exception(type(exc), exc, _program_frames(exc.__traceback__, path))
        except BaseException:
            pass
        _flush()
        result = _describe_failure(exc, source, path)
    try:
        write(result_fd, (dumps(result) + "\n").encode())
    finally:
        exit_now(0)  # no atexit handlers or lingering threads after the verdict


def _program_frames(tb: types.TracebackType | None, path: str) -> types.TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return tb


def _describe_failure(exc: BaseException, source: str, path: str) -> dict:
    if isinstance(exc, SystemExit):
        return verdict("error", f"the program called exit({exc.code!r}) before its tests finished")
    if isinstance(exc, SyntaxError) and exc.filename == path:
        return verdict("error", f"SyntaxError: {exc.msg} (line {exc.lineno})")
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
    return verdict(status, reason[:REASON_CHARS])


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
