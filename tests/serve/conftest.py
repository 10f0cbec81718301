"""A real uvicorn server on 127.0.0.1 (a free port) in a thread, and scripted models for the vote."""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager

import pytest


def create_app(*args, **kwargs):
    """riselm.serve.create_app, imported when called (so that a module without the serve extra skips, not errors)."""
    from riselm.serve.app import create_app as make

    return make(*args, **kwargs)


def needs_serve_extra() -> None:
    """Skip the calling test module (or test) when the serve extra is not installed."""
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        pytest.importorskip(module, reason="the serve extra is not installed: pip install 'riselm[serve]'")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running(app, log_level: str = "warning"):
    """Serve `app` with uvicorn on 127.0.0.1 until the block ends; yields the base URL (http://127.0.0.1:PORT)."""
    import uvicorn

    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def client(url: str, **options):
    from openai import OpenAI

    return OpenAI(
        base_url=f"{url}/v1", api_key=options.pop("api_key", "none"), max_retries=0, timeout=options.pop("timeout", 30), **options
    )


def attempt(conversation) -> int:
    """1 for the first turn, 2 after one retry message, ..."""
    return sum(1 for m in conversation if m["role"] == "assistant") + 1


def question(conversation) -> str:
    return next(m["content"] for m in conversation if m["role"] == "user")


def by_turn(answers: dict[int, str]):
    """A script whose turn t answers `answers[t]` (the last one after that) in a \\boxed{}."""

    def script(conversation, sample):
        t = attempt(conversation)
        return f"attempt {t}: \\boxed{{{answers.get(t, answers[max(answers)])}}}"

    return script


def boxed_sum(conversation, sample):
    """Answers 'a+b' questions right on every turn (for load tests)."""
    a, b = map(int, re.search(r"(\d+)\+(\d+)", question(conversation)).groups())
    return f"{a}+{b} is \\boxed{{{a + b}}}"
