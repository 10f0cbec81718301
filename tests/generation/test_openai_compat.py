"""OpenAIGenerator against a small real HTTP server speaking /v1/chat/completions on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from riselm.generation.base import SamplingParams
from riselm.generation.errors import BackendUnavailable
from riselm.generation.openai_compat import OpenAIGenerator, sample_seed

QUESTION = [{"role": "user", "content": "What is 1+1?"}]


class FakeServer:
    """Answers chat completions with "<last user message> #<choice index>".

    failures: HTTP statuses to answer with (in order) before answering normally.
    honour_n: when False, returns a single choice whatever `n` asks (as some servers do).
    delay_s: time each answer takes, so that concurrent requests overlap.
    """

    def __init__(self, failures=(), honour_n=True, delay_s=0.0):
        self.failures = list(failures)
        self.honour_n = honour_n
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(body)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            status = self.failures.pop(0) if self.failures else 200
        time.sleep(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        if status != 200:
            return status, {"error": {"message": f"scripted failure {status}"}}
        question = body["messages"][-1]["content"]
        n = body.get("n", 1) if self.honour_n else 1
        choices = [
            {"index": i, "message": {"role": "assistant", "content": f"{question} #{i}"}, "finish_reason": "stop"}
            for i in range(n)
        ]
        usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices, "usage": usage}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.answer(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler


def generator(url: str, **options) -> OpenAIGenerator:
    defaults = dict(max_retries=4, timeout=5.0, max_wait_s=2.0, backoff_s=0.01)
    return OpenAIGenerator(url, "test-model", **{**defaults, **options})


def test_n_samples_per_conversation_in_order_with_request_fields():
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_new_tokens=33, stop=("END",))
    with FakeServer() as server:
        gen = generator(server.url)
        results = gen.generate(conversations, params, seeds=[5, 6, 7])
    assert [[c.text for c in completions] for completions in results] == [[f"q{i} #0", f"q{i} #1"] for i in range(3)]
    assert all(c.token_ids is None for completions in results for c in completions)  # the server does not say
    request = next(r for r in server.requests if r["messages"][-1]["content"] == "q0")
    assert (request["n"], request["temperature"], request["top_p"], request["max_tokens"], request["seed"], request["stop"]) == (
        2, 0.7, 0.9, 33, 5, ["END"]
    )
    assert sorted((r["messages"][-1]["content"], r["seed"]) for r in server.requests) == [("q0", 5), ("q1", 6), ("q2", 7)]
    assert gen.stats.generated_tokens == 18 and gen.stats.completions == 6


def test_send_seed_false_sends_no_seed():
    with FakeServer(honour_n=False) as server:
        generator(server.url, send_seed=False).generate([QUESTION, QUESTION], SamplingParams(n=2), seeds=[1, 2])
    assert len(server.requests) == 4 and all("seed" not in r for r in server.requests)


def test_server_ignoring_n_gets_one_request_per_missing_sample():
    with FakeServer(honour_n=False) as server:
        gen = generator(server.url)
        [samples] = gen.generate([QUESTION], SamplingParams(n=3), seeds=[10])
        assert len(samples) == 3
        assert server.requests[0]["seed"] == 10  # the first request (n=3) carries the conversation's seed
        # The extra samples come one by one with seeds derived from (seed, sample): not 11 and 12, which
        # would be the seeds of the next conversation's samples.
        derived = [sample_seed(10, 1), sample_seed(10, 2)]
        assert sorted(r["seed"] for r in server.requests[1:]) == sorted(derived)
        assert all(0 <= s < 2**31 for s in derived) and not {11, 12} & set(derived)
        server.requests.clear()
        gen.generate([QUESTION], SamplingParams(n=3), seeds=[10])
        assert [r["n"] for r in server.requests] == [1, 1, 1]  # remembered: no more n>1 requests
        assert sorted(r["seed"] for r in server.requests) == sorted([10, *derived])  # sample j keeps its seed
        server.requests.clear()
        gen.generate([QUESTION], SamplingParams(n=2))
        assert all("seed" not in r and "stop" not in r for r in server.requests)  # unset options are left out


def test_close_can_be_called_twice():
    gen = generator("http://127.0.0.1:1/v1")
    gen.close()
    gen.close()
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate([QUESTION], SamplingParams())


def test_retries_after_429_and_500_then_succeeds():
    with FakeServer(failures=[429, 500, 503]) as server:
        [[completion]] = generator(server.url).generate([QUESTION], SamplingParams())
    assert completion.text == "What is 1+1? #0"
    assert len(server.requests) == 4


def test_client_errors_are_not_retried():
    import openai

    with FakeServer(failures=[400]) as server:
        with pytest.raises(openai.BadRequestError):
            generator(server.url).generate([QUESTION], SamplingParams())
    assert len(server.requests) == 1


def test_persistent_server_errors_give_backend_unavailable_after_max_retries():
    with FakeServer(failures=[500] * 10) as server:
        with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
            generator(server.url, max_retries=2).generate([QUESTION], SamplingParams())
    assert len(server.requests) == 3


def test_dead_server_raises_backend_unavailable_within_the_wait_bound():
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as error:
        generator(url, max_retries=100, max_wait_s=0.5, backoff_s=0.05).generate([QUESTION] * 4, SamplingParams())
    assert time.monotonic() - started < 5.0
    assert url in str(error.value) and "APIConnectionError" in str(error.value)


def test_concurrency_is_bounded():
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    with FakeServer(delay_s=0.1) as server:
        results = generator(server.url, max_concurrency=3).generate(conversations, SamplingParams())
    assert [r[0].text for r in results] == [f"q{i} #0" for i in range(12)]
    assert 1 < server.most_in_flight <= 3


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RISELM_TEST_KEY", "sekrit")
    assert generator("http://127.0.0.1:1/v1", api_key_env="RISELM_TEST_KEY").client.api_key == "sekrit"
    monkeypatch.delenv("RISELM_TEST_KEY")
    assert generator("http://127.0.0.1:1/v1", api_key_env="RISELM_TEST_KEY").client.api_key == "EMPTY"
