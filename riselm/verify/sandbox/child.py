"""The sandbox's child side: a stand-alone script that runs untrusted source, in a fresh interpreter.

The caller (caller.py) starts it as `python -I -S -B -X utf8 child.py CONFIG`: no site, no user or
environment paths, so nothing of the caller's packages or start-up hooks runs next to the program.
It therefore imports only the standard library and its sibling runner.py, never riselm (a test
checks both files). It is only ever run as a script: the caller imports runner.py, not this file.

How a run is built (one launch = three processes):

    riselm ──Popen──> supervisor ──fork──> init (pid 1 of the new namespaces) ──fork──> program

This file holds the first two: the supervisor (`_supervise`) enters new user, mount, PID and
network namespaces when the machine allows it; init (`_init`) sets up the file system, drops every
capability and reaps. The program process (`program_process`, in runner.py) applies the resource
limits and executes the source. Without namespaces the supervisor itself forks the program and reaps
it as a child subreaper. What each isolation level guarantees is written in the package's docstring
(riselm/verify/sandbox/__init__.py).

The interface with the caller:

* argv[1], the config (a JSON object):
    limits      the Limits fields; used here: cpu_seconds, memory_mb, file_size_mb, max_open_files,
                max_processes, tmpfs_mb, use_namespaces
    workdir     the run's directory (also the current one), holding the source as PROGRAM_FILE
    result_fd   an inherited descriptor: the write end of the result pipe
    caller_pid  the supervisor exits at once if its parent is no longer this process
    extra_path  directories appended to the program's sys.path (the caller's site-packages)
* stdin: the caller's random token, then end of file (the program gets an empty stdin instead).
* stdout, with stderr joined to it: the program's output, passed through untouched.
* the result pipe: JSON records, one a line; `kind` says which (the constants in runner.py, which
  the caller imports too, as it does PROGRAM_FILE and REASON_CHARS):
    isolation    supervisor/init: network, processes, filesystem, process_limit (the Isolation
                 fields: what is in force), written before the program starts
    setup-error  supervisor/init: message; the sandbox could not be set up (as the first record,
                 instead of isolation, it makes the caller raise SandboxError)
    verdict      program: status "passed" with the token read back after the whole source ran;
                 or status "failed" (an AssertionError) or "error", with a short reason
    exit         supervisor/init, after the program process ended: code or signal (the other is
                 null), cpu (its user+system seconds), process_limit (true: its processes were
                 killed for exceeding max_processes)
  The program can write to this pipe as well: the caller counts a pass only from a verdict holding
  its token, and reads isolation or setup-error from the first record and the end from the last exit.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

# `-I` leaves this script's folder off sys.path: put it there just long enough to import the sibling
# by its plain name (as riselm.verify.sandbox.runner it would run the package's __init__, which is not
# stdlib-only). This lets the untrusted program import nothing new: the folder holds only the
# sandbox's own modules, it is taken off sys.path again at once and runner is dropped from
# sys.modules, so the program's imports resolve as before; and runner itself is stdlib-only code that
# already runs in the program's own process.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    from runner import (  # noqa: E402
        EXIT,
        ISOLATION,
        PR_SET_PDEATHSIG,
        SETUP_ERROR,
        all_pids,
        check,
        give_up,
        libc,
        prctl,
        program_process,
        write_record,
    )
finally:
    sys.path.remove(_HERE)
    sys.modules.pop("runner", None)

libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x4000, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH = 0x1, os.O_CLOEXEC, 0x4
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on x86_64 and arm64
PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 24, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_WATCHDOG_PERIOD = 0.01  # seconds between process counts in the PID namespace
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _syscall(number: int, *args, what: str) -> int:
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return check(libc.syscall(ctypes.c_long(number), *converted), what)


def _supervise(config: dict) -> None:
    """Entry point of `python child.py CONFIG`: enter namespaces, start init or the program, wait."""
    result_fd = config["result_fd"]
    try:
        # Die with the caller. Popen is called from the pool thread that waits for us, so that
        # thread (PDEATHSIG's "parent") outlives the run.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")
        if os.getppid() != config["caller_pid"]:
            os._exit(1)
        if not (config["limits"]["use_namespaces"] and _enter_namespaces()):
            _reap(config, _fallback_isolation(), in_namespace=False)  # never returns
        pid = os.fork()
        if pid == 0:
            _init(config)  # never returns
    except Exception as e:
        give_up(result_fd, _setup_error(e))
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _enter_namespaces() -> bool:
    """Unshare user+mount+PID+network namespaces (as root, where user namespaces are disabled, the
    other three do as well); False when impossible."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) == -1:
        return uid == 0 and libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) == 0
    # Map our own uid/gid onto themselves: files keep their owners, nothing else is mapped.
    for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{path}", "w") as f:
            f.write(text)
    return True


def _init(config: dict) -> None:
    """PID 1 of the new namespaces: build the file system view, drop privileges, run and reap."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "prctl(PDEATHSIG)")  # supervisor killed => all die
        filesystem, private_proc = _isolate_filesystem(config["workdir"], config["limits"]["tmpfs_mb"])
        _drop_capabilities()
        isolation = {
            "network": "netns",
            "processes": "pidns",
            "filesystem": filesystem,
            "process_limit": "per-sandbox" if private_proc else "none",  # enforced by _wait_for's count
        }
    except Exception as e:
        give_up(config["result_fd"], _setup_error(e))
    _reap(config, isolation, in_namespace=True)


def _isolate_filesystem(workdir: str, tmpfs_mb: int) -> tuple[str, bool]:
    """Make every mount read-only except the working directory and private tmpfs.

    Returns 'read-only' or 'permissions' (the kernel lacks mount_setattr: only /proc is replaced),
    and whether /proc is a procfs of our own PID namespace."""
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(private)")  # no leaks to host
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
    check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", flags, options), f"mount(tmpfs on {path})")


def _mount_setattr(path: str, attributes: int, recursive: bool) -> None:
    attr = (ctypes.c_uint64 * 4)(attributes, 0, 0, 0)  # struct mount_attr {set, clr, propagation, userns_fd}
    flags = AT_RECURSIVE if recursive else 0
    size = ctypes.sizeof(attr)
    _syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), size, what=f"mount_setattr({path})")


def _mount_proc() -> bool:
    """A procfs of the new PID namespace (True), or where that is refused (a host /proc with masked
    parts) an empty tmpfs (False): either way host processes and their environments are invisible."""
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"proc", b"/proc", b"proc", flags, None) == 0:
        return True
    check(libc.mount(b"tmpfs", b"/proc", b"tmpfs", flags, b"size=4k"), "mount(/proc)")
    return False


def _drop_capabilities() -> None:
    """No capabilities now or after any exec (empty bounding set, no_new_privs)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(NO_NEW_PRIVS)")
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) == 0:  # EINVAL past the last cap
        cap += 1
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2 words): all empty
    check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _fallback_isolation() -> dict:
    return {
        "network": "socket-guard",
        "processes": "process-group",
        "filesystem": "permissions",
        "process_limit": "none" if os.getuid() == 0 else "per-user",
    }


def _reap(config: dict, isolation: dict, in_namespace: bool) -> None:
    """Fork the program, reap every child until the program is gone, report how it ended, exit."""
    result_fd = config["result_fd"]
    if not in_namespace:
        _drop_capabilities_if_root()
        prctl(PR_SET_CHILD_SUBREAPER, 1, "prctl(CHILD_SUBREAPER)")  # orphans come back to us
    write_record(result_fd, {"kind": ISOLATION, **isolation})
    program = os.fork()
    if program == 0:
        program_process(config, isolation, in_namespace)  # never returns
    # The kernel exempts uid 0 from RLIMIT_NPROC (even in a user namespace), so in our own PID
    # namespace we count the processes ourselves and kill them all when the program exceeds its budget.
    watchdog_limit = config["limits"]["max_processes"] if in_namespace and isolation["process_limit"] != "none" else None
    status, usage, over_limit = _wait_for(program, watchdog_limit)
    end = {"kind": EXIT, "cpu": usage.ru_utime + usage.ru_stime, "code": None, "signal": None}
    if os.WIFSIGNALED(status):
        end["signal"] = os.WTERMSIG(status)
    else:
        end["code"] = os.WEXITSTATUS(status)
    end["process_limit"] = over_limit
    if not in_namespace:
        _kill_children()
    write_record(result_fd, end)
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
            if watchdog_limit is not None and not over_limit and len(all_pids()) - 1 > watchdog_limit:
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
        children = [pid for pid in all_pids() if _parent_of(pid) == me]
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


def _parent_of(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]  # the field after state; comm may hold ')'
    except (OSError, IndexError):
        return None


def _setup_error(exc: Exception) -> dict:
    return {"kind": SETUP_ERROR, "message": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    _supervise(json.loads(sys.argv[1]))
