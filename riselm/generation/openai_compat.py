"""Generation through any OpenAI-compatible chat completions server (OpenAI, vLLM serve, llama.cpp, ...).

Requests run in a bounded thread pool. Connection errors, timeouts, 429 and 5xx answers are retried
with exponential backoff and jitter; when the retries or the total wait run out the call raises
`BackendUnavailable` naming the server and the last error. Servers that ignore `n` (fewer choices
than asked) get the missing samples as separate single-sample requests, from then on for every call.

Seeds: request i sends `seed: seeds[i]` (its n samples are the server's business; vLLM gives them
seeds[i], seeds[i]+1, ...). When the server ignores `n`, sample 0 keeps the seed seeds[i] and sample
j >= 1 is asked for on its own with the seed `sample_seed(seeds[i], j)`, a hash of (seeds[i], j)
below 2**31, so a sample keeps its seed whether or not the server's handling of `n` was already
known. `send_seed=False` never sends a seed (vLLM's CPU build crashes serving seeded requests).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    timeout: seconds for one request. max_wait_s: the most seconds one request may spend backing off.
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
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            if self._n_supported or params.n == 1:
                first = [_Request(i, params.n, None if seeds is None else seeds[i]) for i in range(len(conversations))]
            else:
                first = self._single_sample_requests(range(len(conversations)), params, seeds, have=0)
            self._run(pool, first, conversations, params, results)
            short = [i for i, completions in enumerate(results) if len(completions) < params.n]
            if short:  # the server ignored n: ask for each missing sample on its own
                self._n_supported = False
                missing = [
                    request
                    for i in short
                    for request in self._single_sample_requests([i], params, seeds, have=len(results[i]))
                ]
                self._run(pool, missing, conversations, params, results)
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.prompts += len(conversations)
            self.stats.completions += sum(len(completions) for completions in results)
            self.stats.seconds += time.perf_counter() - started
        return [completions[: params.n] for completions in results]

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

    def _run(self, pool, requests: list[_Request], conversations, params, results) -> None:
        futures = [pool.submit(self._complete, conversations[r.conversation], r, params) for r in requests]
        try:
            for request, future in zip(requests, futures):
                results[request.conversation].extend(future.result())  # re-raises BackendUnavailable
        except BaseException:
            for future in futures:  # queued requests would each wait out their own retries
                future.cancel()
            raise

    def _complete(self, conversation: Conversation, request: _Request, params: SamplingParams) -> list[Completion]:
        options = dict(n=request.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens)
        if request.seed is not None:  # left out rather than sent as null, which some servers reject
            options["seed"] = request.seed
        if params.stop:
            options["stop"] = list(params.stop)
        response = self._with_retries(
            lambda: self.client.chat.completions.create(model=self.model, messages=list(conversation), **options)
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

    def _with_retries(self, call):
        """`call()`, retried on transient failures with exponential backoff and full jitter."""
        started = time.monotonic()
        waited = 0.0
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as error:
                if not _is_transient(error):
                    raise
                last_error = error
            delay = max(self.backoff_s * 2**attempt * random.random(), _retry_after_s(last_error))
            if attempt == self.max_retries or waited + delay > self.max_wait_s:
                break
            time.sleep(delay)
            waited += delay
        raise BackendUnavailable(
            f"the server at {self.base_url} is unavailable: gave up after {attempt + 1} attempts in "
            f"{time.monotonic() - started:.1f}s; last error: {type(last_error).__name__}: {last_error}"
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
