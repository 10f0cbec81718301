"""Requests to an OpenAI-compatible server that fail: when to retry them, and how to say what went wrong.

`with_retries` retries connection errors, timeouts, 429 and 5xx answers with exponential backoff and
full jitter, waiting at least what a Retry-After header asks for. A request gives up `max_wait_s` of
wall time after its first try at the latest, the time spent inside failed attempts included (each
attempt waits at most `min(timeout, time left)`), or after `max_retries` retries; it then raises
`BackendUnavailable` with a one-line message naming the server, what went wrong (e.g. "stopped
answering (connection refused) after answering 500: <its last error>"), the attempts and the wall
time they took. Any other error (a 4xx answer but 429, ...) is raised at once.

`ServerRecord` remembers what a server last did (whether it ever answered, the error it last answered
with), so that the message tells a server that never answered from one that stopped answering.
`describe` gives the one-line account of one error of the OpenAI client, the body of an error answer
shortened to one line.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from riselm.generation.errors import BackendUnavailable

T = TypeVar("T")


class Aborted(Exception):
    """A request stopped retrying because another request of the same call failed."""


class ServerRecord:
    """What a server last did, for error messages: whether it ever answered, and the error status it
    last answered with (None once it answers successfully again)."""

    def __init__(self) -> None:
        self.answered = False
        self.last_error_answer: Exception | None = None

    def what_happened(self, error: Exception) -> str:
        """How the server failed, e.g. "stopped answering (connection refused) after answering 500: ..."."""
        from openai import APIStatusError

        if isinstance(error, APIStatusError):
            return f"keeps failing ({describe(error)})"
        earlier = self.last_error_answer
        if earlier is not None:
            answer = describe(earlier).replace("answered", "answering", 1)
            return f"stopped answering ({describe(error)}) after {answer}"
        if self.answered:
            return f"stopped answering ({describe(error)})"
        return f"is not answering ({describe(error)})"


def with_retries(
    call: Callable[[float], T],
    *,
    server: str,
    record: ServerRecord,
    max_retries: int,
    timeout: float,
    max_wait_s: float,
    backoff_s: float,
    abort: threading.Event | None = None,
) -> T:
    """`call(timeout)`, retried on transient failures with exponential backoff and full jitter.

    server: how the server is named in the error message (its base URL). record: updated with every
    answer. backoff_s: the first backoff; doubles on each retry. Gives up `max_wait_s` of wall time
    after the first try at the latest: each attempt gets at most the time left, and no retry starts
    (nor any backoff is slept) past that point. Raises `Aborted` instead of retrying once `abort` is set.
    """
    from openai import APIStatusError

    abort = abort or threading.Event()
    if abort.is_set():
        raise Aborted()
    started = time.monotonic()
    deadline = started + max_wait_s
    attempts = 0
    while True:
        attempts += 1
        try:
            response = call(max(min(timeout, deadline - time.monotonic()), 0.001))
        except Exception as error:
            if isinstance(error, APIStatusError):
                record.answered = True
                if _is_transient(error):
                    record.last_error_answer = error
            if not _is_transient(error):
                raise
            last_error = error
        else:
            record.answered = True
            record.last_error_answer = None
            return response
        if abort.is_set():
            raise Aborted() from last_error
        delay = backoff_s * 2 ** (attempts - 1) * random.random()
        asked = _retry_after_s(last_error)
        left = deadline - time.monotonic()
        if attempts > max_retries:
            limit = f"max_retries={max_retries} reached"
        elif left <= 0:
            limit = f"max_wait_s={max_wait_s:g} reached"
        elif asked >= left:
            limit = f"the server asked to wait {asked:g} s, past max_wait_s={max_wait_s:g}"
        elif delay >= left:
            limit = f"the next backoff of {delay:.1f} s would pass max_wait_s={max_wait_s:g}"
        else:
            if abort.wait(max(delay, asked)):
                raise Aborted() from last_error
            continue
        raise BackendUnavailable(
            one_line(
                f"the server at {server} {record.what_happened(last_error)}; gave up after "
                f"{attempts} attempt{'s' * (attempts != 1)} in {time.monotonic() - started:.1f} s ({limit})"
            )
        ) from last_error


def _is_transient(error: Exception) -> bool:
    """Connection problems, timeouts, rate limits and server errors: worth another try."""
    from openai import APIConnectionError, APIStatusError

    if isinstance(error, APIConnectionError):  # includes timeouts
        return True
    return isinstance(error, APIStatusError) and (error.status_code == 429 or error.status_code >= 500)


def _retry_after_s(error: Exception) -> float:
    """The wait a 429/503 answer asks for in its Retry-After header (seconds form only), else 0."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def describe(error: Exception) -> str:
    """A short one-line account of an error of the OpenAI client.

    "answered 500: <the error text of the body>", "connection refused", "connection reset",
    "connection closed without an answer", "no answer in time (timed out)", ...
    """
    from openai import APIConnectionError, APIStatusError, APITimeoutError

    if isinstance(error, APIStatusError):
        text = _error_text(getattr(error, "body", None))
        if not text:
            try:
                text = _error_text(error.response.text)
            except Exception:  # a streamed or unreadable body
                text = ""
        return f"answered {error.status_code}" + (f": {shorten(text)}" if text else "")
    if isinstance(error, APITimeoutError):
        return "no answer in time (timed out)"
    if isinstance(error, APIConnectionError):
        cause: BaseException | None = error
        seen = 0
        innermost: BaseException = error
        while cause is not None and seen < 10:
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, ConnectionResetError):
                return "connection reset"
            if isinstance(cause, ConnectionAbortedError | BrokenPipeError):
                return "connection closed"
            if "disconnected without sending a response" in str(cause):
                return "connection closed without an answer"
            innermost, cause, seen = cause, cause.__cause__ or cause.__context__, seen + 1
        detail = str(innermost) or type(innermost).__name__
        return shorten(f"{type(innermost).__name__}: {detail}" if innermost is not error else detail)
    return shorten(f"{type(error).__name__}: {error}")


def _error_text(body) -> str:
    """The message of an error body: {"error": {"message": ...}}, {"message": ...}, {"detail": ...} or text."""
    for _ in range(3):
        if isinstance(body, dict):
            inner = body.get("error", body.get("message", body.get("detail")))
            if inner is None:
                return json.dumps(body)
            body = inner
        else:
            break
    if body is None:
        return ""
    text = body if isinstance(body, str) else json.dumps(body)
    return re.sub(r"<[^>]*>", " ", text)  # HTML error pages from proxies: keep their words


def shorten(text: str, limit: int = 200) -> str:
    """`text` on one line, cut to `limit` characters (an ellipsis marks the cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """`text` with every run of whitespace, line breaks included, made one space."""
    return " ".join(text.split())
