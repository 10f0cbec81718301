"""Generation through any OpenAI-compatible chat completions server (OpenAI, vLLM serve, llama.cpp, ...).

Requests run in a bounded thread pool, each retried on transient failures within `max_retries` and
`max_wait_s` (the policy and the one-line error messages are in `riselm.generation.retries`); a
request that gives up makes the call raise `BackendUnavailable`. The first request to give up stops
the call: the others stop retrying and the call does not wait for them. Servers that ignore `n`
(fewer choices than asked) get the missing samples as separate single-sample requests, from then on
for every call. `check()` tells whether a server is up and accepts the model name before any work
(see its docstring).

Seeds: request i sends `seed: seeds[i]` (its n samples are the server's business; vLLM gives them
seeds[i], seeds[i]+1, ...). When the server ignores `n`, sample 0 keeps the seed seeds[i] and sample
j >= 1 is asked for on its own with the seed `sample_seed(seeds[i], j)`, a hash of (seeds[i], j)
below 2**31, so a sample keeps its seed whether or not the server's handling of `n` was already
known. `send_seed=False` never sends a seed (vLLM's CPU build crashes serving seeded requests).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from riselm.generation.base import SEED_LIMIT, Completion, Conversation, GenerationStats, SamplingParams, check_seeds, stream_key
from riselm.generation.errors import BackendUnavailable
from riselm.generation.retries import ServerRecord, describe, one_line, shorten, with_retries

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


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
        self._record = ServerRecord()  # what the server last did, for error messages

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
                missing = [request for i in short for request in self._single_sample_requests([i], params, seeds, have=len(results[i]))]
                self._run(pool, abort, missing, conversations, params, results)
        except BaseException:
            # Raise now rather than after the requests in flight: they see `abort` and stop at the end
            # of their current attempt (itself bounded by their max_wait_s); queued ones never start.
            abort.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        with self._stats_lock:  # the tokens were counted per request, from the server's usage
            self.stats.record(len(conversations), results, time.perf_counter() - started, generated_tokens=0)
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
                one_line(
                    f"the server at {self.base_url} failed the check for model {self.model!r}: {reason} "
                    f"(checked in {time.monotonic() - started:.1f} s, timeout_s={timeout_s:g})"
                )
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
                raise failed(f"GET /models: {describe(error)}") from error
        except OpenAIError as error:  # connection refused, timed out, ...
            raise failed(f"GET /models: {describe(error)}") from error
        except (AttributeError, TypeError, ValueError):  # a 200 answer that is no model list
            pass
        if listed is not None and self.model in listed:
            return
        not_listed = "" if listed is None else f"; /models lists only {shorten(', '.join(listed) or 'nothing', 120)}"
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
            raise failed(f"a one-token completion {refused}: {describe(error)}{not_listed}") from error
        except OpenAIError as error:
            raise failed(f"a one-token completion: {describe(error)}{not_listed}") from error

    def reload(self, model: str) -> bool:
        """The server decides what it serves: another model is another generator."""
        return False

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

    def _complete(self, conversation: Conversation, request: _Request, params: SamplingParams, abort: threading.Event) -> list[Completion]:
        options: dict[str, Any] = dict(n=request.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens)
        if request.seed is not None:  # left out rather than sent as null, which some servers reject
            options["seed"] = request.seed
        if params.stop:
            options["stop"] = list(params.stop)
        response = with_retries(
            lambda timeout: self.client.chat.completions.create(
                model=self.model, messages=cast("list[ChatCompletionMessageParam]", list(conversation)), timeout=timeout, **options
            ),
            server=self.base_url,
            record=self._record,
            max_retries=self.max_retries,
            timeout=self.timeout,
            max_wait_s=self.max_wait_s,
            backoff_s=self.backoff_s,
            abort=abort,
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
