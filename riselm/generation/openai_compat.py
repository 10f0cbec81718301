"""Generation through any OpenAI-compatible chat completions server (OpenAI, vLLM serve, llama.cpp, ...).

Requests run in a bounded thread pool. Connection errors, timeouts, 429 and 5xx answers are retried
with exponential backoff and jitter. A request gives up `max_wait_s` of wall time after its first
try at the latest, the time spent inside failed attempts included (each attempt waits at most
`min(timeout, time left)`), or after `max_retries` retries; the call then raises `BackendUnavailable`
with a one-line message naming the server, what went wrong (e.g. "stopped answering (connection
refused) after answering 500: <its last error>"), the attempts and the wall time they took. The
first request to give up stops the call: the others stop retrying and the call does not wait for
them. Servers that ignore `n` (fewer choices than asked) get the missing samples as separate
single-sample requests, from then on for every call. `check()` tells whether a server is up and
accepts the model name before any work (see its docstring).

Seeds: request i sends `seed: seeds[i]` (its n samples are the server's business; vLLM gives them
seeds[i], seeds[i]+1, ...). When the server ignores `n`, sample 0 keeps the seed seeds[i] and sample
j >= 1 is asked for on its own with the seed `sample_seed(seeds[i], j)`, a hash of (seeds[i], j)
below 2**31, so a sample keeps its seed whether or not the server's handling of `n` was already
known. `send_seed=False` never sends a seed (vLLM's CPU build crashes serving seeded requests).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from riselm.generation.base import SEED_LIMIT, Completion, Conversation, GenerationStats, SamplingParams, check_seeds, stream_key
from riselm.generation.errors import BackendUnavailable


@dataclass(frozen=True)
class _Request:
    """One HTTP request: `n` samples for one conversation."""

    conversation: int  # index into the conversations of the call
    n: int
    seed: int | None


def sample_seed(seed: int, sample: int) -> int:
    """The seed sent for sample `sample` of a conversation seeded `seed` when samples go one per request.

    Sample 0 keeps `seed`; the others get a hash of (seed, sample) below 2**31, so that neighbouring
    seeds share no samples.
    """
    return seed if sample == 0 else stream_key(seed, sample) % SEED_LIMIT


class OpenAIGenerator:
    """A model served behind /v1/chat/completions.

    api_key_env: the environment variable holding the key; local servers need none ("EMPTY" is sent).
    max_concurrency: requests in flight at once. max_retries: retries per request after the first try.
    timeout: seconds one attempt may take. max_wait_s: the most wall time one request may take from
        its first try to giving up, attempts and backoff included: no attempt runs past it (an attempt
        waits at most min(timeout, time left)), so a generation slower than max_wait_s always fails.
    send_seed: send each conversation's seed with its requests (module docstring). False sends none,
        for servers that fail on seeded requests (vLLM's CPU build); sampling is then unseeded.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 120.0,
        max_wait_s: float = 120.0,
        backoff_s: float = 1.0,
        name: str | None = None,
        send_seed: bool = True,
    ):
        from openai import OpenAI

        if max_concurrency < 1 or max_retries < 0:
            raise ValueError(f"need max_concurrency >= 1 and max_retries >= 0, got {max_concurrency} and {max_retries}")
        self.base_url = base_url
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_wait_s = max_wait_s
        self.backoff_s = backoff_s  # first backoff; doubles on each retry
        self.send_seed = send_seed
        self.name = name or model
        self.stats = GenerationStats()
        # Retries are ours (bounded total wait, clear error), so the client's own are switched off.
        api_key = os.environ.get(api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._n_supported = True  # becomes False once the server returns fewer choices than `n`
        self._stats_lock = threading.Lock()
        self._closed = False
        # What the server last did, for error messages: whether it ever answered, and the error
        # status it last answered with (None once it answers successfully again).
        self._answered = False
        self._last_error_answer: Exception | None = None

    def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        seeds = check_seeds(seeds, len(conversations))
        if self._closed:
            raise RuntimeError(f"the OpenAI-compatible generator {self.name!r} is closed")
        if not self.send_seed:
            seeds = None
        started = time.perf_counter()
        results: list[list[Completion]] = [[] for _ in conversations]
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        abort = threading.Event()  # set when the call fails: the other requests stop retrying
        try:
            if self._n_supported or params.n == 1:
                first = [_Request(i, params.n, None if seeds is None else seeds[i]) for i in range(len(conversations))]
            else:
                first = self._single_sample_requests(range(len(conversations)), params, seeds, have=0)
            self._run(pool, abort, first, conversations, params, results)
            short = [i for i, completions in enumerate(results) if len(completions) < params.n]
            if short:  # the server ignored n: ask for each missing sample on its own
                self._n_supported = False
                missing = [
                    request
                    for i in short
                    for request in self._single_sample_requests([i], params, seeds, have=len(results[i]))
                ]
                self._run(pool, abort, missing, conversations, params, results)
        except BaseException:
            # Raise now rather than after the requests in flight: they see `abort` and stop at the end
            # of their current attempt (itself bounded by their max_wait_s); queued ones never start.
            abort.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.prompts += len(conversations)
            self.stats.completions += sum(len(completions) for completions in results)
            self.stats.seconds += time.perf_counter() - started
        return [completions[: params.n] for completions in results]

    def check(self, timeout_s: float = 10.0) -> None:
        """Raise BackendUnavailable, naming the URL and the reason, unless the server answers and takes the model.

        Meant for the start of a run, before any work. One GET /models (through the client, so with its
        base URL and key); when the list holds the model name, that is all. When the server does not
        serve /models (404, 405, 501 or an answer that is no model list), or does not list the name
        (llama.cpp and some proxies accept names they do not list), one completion of one token is
        asked for with the model name, and the server must answer it. No retries: a server that is down
        or still starting fails at once (connection refused) or after about `timeout_s` (no answer),
        the most the whole check waits. It changes nothing (stats included), so it is safe to call
        twice or from several threads; each call checks afresh.
        """
        from openai import APIStatusError, OpenAIError

        if self._closed:
            raise RuntimeError(f"the OpenAI-compatible generator {self.name!r} is closed")
        started = time.monotonic()
        deadline = started + timeout_s

        def failed(reason: str) -> BackendUnavailable:
            return BackendUnavailable(
                _one_line(f"the server at {self.base_url} failed the check for model {self.model!r}: {reason} "
                          f"(checked in {time.monotonic() - started:.1f} s, timeout_s={timeout_s:g})")
            )

        def time_left() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise failed(f"no answer within {timeout_s:g} s")
            return left

        listed: list[str] | None = None
        try:
            page = self.client.models.list(timeout=time_left())
            listed = [str(model.id) for model in page.data]
        except APIStatusError as error:
            if error.status_code not in (404, 405, 501):  # 404/405/501: /models is not served
                raise failed(f"GET /models: {_describe(error)}") from error
        except OpenAIError as error:  # connection refused, timed out, ...
            raise failed(f"GET /models: {_describe(error)}") from error
        except (AttributeError, TypeError, ValueError):  # a 200 answer that is no model list
            pass
        if listed is not None and self.model in listed:
            return
        not_listed = "" if listed is None else f"; /models lists only {_shorten(', '.join(listed) or 'nothing', 120)}"
        try:
            self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Say OK."}],
                max_tokens=1,
                temperature=0.0,
                timeout=time_left(),
            )
        except APIStatusError as error:
            refused = "refused the model name" if error.status_code in (400, 404, 422) else "failed"
            raise failed(f"a one-token completion {refused}: {_describe(error)}{not_listed}") from error
        except OpenAIError as error:
            raise failed(f"a one-token completion: {_describe(error)}{not_listed}") from error

    def close(self) -> None:
        """Close the HTTP client's connections; generating afterwards is an error."""
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _single_sample_requests(conversations, params: SamplingParams, seeds: list[int] | None, have: int) -> list[_Request]:
        """One request per missing sample, sample j seeded with sample_seed(seeds[i], j)."""
        return [
            _Request(i, 1, None if seeds is None else sample_seed(seeds[i], sample))
            for i in conversations
            for sample in range(have, params.n)
        ]

    def _run(self, pool, abort: threading.Event, requests: list[_Request], conversations, params, results) -> None:
        futures = [pool.submit(self._complete, conversations[r.conversation], r, params, abort) for r in requests]
        wait(futures, return_when=FIRST_EXCEPTION)  # the first failure ends the call at once
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # BackendUnavailable, or an error not worth retrying
        for request, future in zip(requests, futures):
            results[request.conversation].extend(future.result())

    def _complete(
        self, conversation: Conversation, request: _Request, params: SamplingParams, abort: threading.Event
    ) -> list[Completion]:
        options = dict(n=request.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens)
        if request.seed is not None:  # left out rather than sent as null, which some servers reject
            options["seed"] = request.seed
        if params.stop:
            options["stop"] = list(params.stop)
        response = self._with_retries(
            lambda timeout: self.client.chat.completions.create(
                model=self.model, messages=list(conversation), timeout=timeout, **options
            ),
            abort,
        )
        usage = getattr(response, "usage", None)
        total_tokens = getattr(usage, "completion_tokens", None) or 0
        with self._stats_lock:
            self.stats.generated_tokens += total_tokens
        return [
            Completion(
                text=choice.message.content or "",
                # usage covers all choices together: exact per completion only when there is one
                num_tokens=total_tokens if len(response.choices) == 1 else 0,
                finish_reason="length" if choice.finish_reason == "length" else "stop",
            )
            for choice in response.choices
        ]

    def _with_retries(self, call, abort: threading.Event | None = None):
        """`call(timeout)`, retried on transient failures with exponential backoff and full jitter.

        Gives up `max_wait_s` of wall time after the first try at the latest: each attempt gets at most
        the time left, and no retry starts (nor any backoff is slept) past that point.
        """
        from openai import APIStatusError

        abort = abort or threading.Event()
        if abort.is_set():
            raise _Aborted()
        started = time.monotonic()
        deadline = started + self.max_wait_s
        attempts = 0
        while True:
            attempts += 1
            try:
                response = call(max(min(self.timeout, deadline - time.monotonic()), 0.001))
            except Exception as error:
                if isinstance(error, APIStatusError):
                    self._answered = True
                    if _is_transient(error):
                        self._last_error_answer = error
                if not _is_transient(error):
                    raise
                last_error = error
            else:
                self._answered = True
                self._last_error_answer = None
                return response
            if abort.is_set():
                raise _Aborted() from last_error
            delay = self.backoff_s * 2 ** (attempts - 1) * random.random()
            asked = _retry_after_s(last_error)
            left = deadline - time.monotonic()
            if attempts > self.max_retries:
                limit = f"max_retries={self.max_retries} reached"
            elif left <= 0:
                limit = f"max_wait_s={self.max_wait_s:g} reached"
            elif asked >= left:
                limit = f"the server asked to wait {asked:g} s, past max_wait_s={self.max_wait_s:g}"
            elif delay >= left:
                limit = f"the next backoff of {delay:.1f} s would pass max_wait_s={self.max_wait_s:g}"
            else:
                if abort.wait(max(delay, asked)):
                    raise _Aborted() from last_error
                continue
            raise BackendUnavailable(
                _one_line(f"the server at {self.base_url} {self._what_happened(last_error)}; gave up after "
                          f"{attempts} attempt{'s' * (attempts != 1)} in {time.monotonic() - started:.1f} s ({limit})")
            ) from last_error

    def _what_happened(self, error: Exception) -> str:
        """How the server failed, e.g. "stopped answering (connection refused) after answering 500: ..."."""
        from openai import APIStatusError

        if isinstance(error, APIStatusError):
            return f"keeps failing ({_describe(error)})"
        earlier = self._last_error_answer
        if earlier is not None:
            answer = _describe(earlier).replace("answered", "answering", 1)
            return f"stopped answering ({_describe(error)}) after {answer}"
        if self._answered:
            return f"stopped answering ({_describe(error)})"
        return f"is not answering ({_describe(error)})"


class _Aborted(Exception):
    """A request stopped because another request of the same call failed (never reaches the caller)."""


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


def _describe(error: Exception) -> str:
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
        return f"answered {error.status_code}" + (f": {_shorten(text)}" if text else "")
    if isinstance(error, APITimeoutError):
        return "no answer in time (timed out)"
    if isinstance(error, APIConnectionError):
        cause: BaseException | None = error
        seen = 0
        innermost = error
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
        return _shorten(f"{type(innermost).__name__}: {detail}" if innermost is not error else detail)
    return _shorten(f"{type(error).__name__}: {error}")


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


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
