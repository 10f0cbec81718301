"""OpenAIGenerator against a small real HTTP server speaking /v1/chat/completions on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from riselm.generation.base import SamplingParams
from riselm.generation.errors import BackendUnavailable
from riselm.generation.openai_compat import OpenAIGenerator, sample_seed

QUESTION = [{"role": "user", "content": "What is 1+1?"}]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # reset or abandoned connections are expected here
        pass


class FakeServer:
    """Answers chat completions with "<last user message> #<choice index>", and GET /models.

    failures: answers to give (in order) before answering normally: an HTTP status, or (status, body
        text) or (status, body text, headers) for a body of one's own.
    then: what the server does once the failures are used up: None answers normally, "refuse" closes
        the listening socket right after the last failure (connections are refused from then on),
        "reset" resets every connection without answering.
    honour_n: when False, returns a single choice whatever `n` asks (as some servers do).
    delay_s: time each answer takes, so that concurrent requests overlap (cut short when the server stops).
    models: the model ids GET /models lists; None: /models is not served (404).
    accepted: the model names chat completions accept (404 for others); None accepts any name.
    """

    def __init__(self, failures=(), honour_n=True, delay_s=0.0, then=None, models=("test-model",), accepted=None):
        self.failures = list(failures)
        self.honour_n = honour_n
        self.delay_s = delay_s
        self.then = then
        self.models = None if models is None else list(models)
        self.accepted = accepted
        self.requests: list[dict] = []
        self.gets: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.killed = False
        self.httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()  # releases answers still waiting out delay_s
        self.kill()

    def kill(self):
        """Stop listening: from now on connections are refused."""
        with self.lock:
            if self.killed:
                return
            self.killed = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, body: dict) -> tuple[int, object, dict]:
        with self.lock:
            self.requests.append(body)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            failure = self.failures.pop(0) if self.failures else None
            last_failure = failure is not None and not self.failures
            reset = failure is None and self.then == "reset"
        self.stopping.wait(self.delay_s)
        with self.lock:
            self.in_flight -= 1
        if reset:
            return 0, None, {}
        if last_failure and self.then == "refuse":
            self.kill()  # before answering: the client's retry finds nobody listening
        if failure is not None:
            status, text, headers = (*failure, {})[:3] if isinstance(failure, tuple) else (failure, None, {})
            return status, text if text is not None else {"error": {"message": f"scripted failure {status}"}}, headers
        if self.accepted is not None and body["model"] not in self.accepted:
            return 404, {"object": "error", "message": f"The model `{body['model']}` does not exist.", "code": 404}, {}
        question = body["messages"][-1]["content"]
        n = body.get("n", 1) if self.honour_n else 1
        choices = [{"index": i, "message": {"role": "assistant", "content": f"{question} #{i}"}, "finish_reason": "stop"} for i in range(n)]
        usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices, "usage": usage}, {}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, headers = server.answer(body)
                if status == 0:  # reset the connection: no answer at all
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                self.reply(status, payload, headers)

            def do_GET(self):
                with server.lock:
                    server.gets.append(self.path)
                server.stopping.wait(server.delay_s)
                if self.path.rstrip("/").endswith("/models") and server.models is not None:
                    self.reply(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me"} for m in server.models]})
                else:
                    self.reply(404, {"error": {"message": "Not Found"}})

            def reply(self, status, payload, headers=None):
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
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
        2,
        0.7,
        0.9,
        33,
        5,
        ["END"],
    )
    assert sorted((r["messages"][-1]["content"], r["seed"]) for r in server.requests) == [("q0", 5), ("q1", 6), ("q2", 7)]
    assert gen.stats.generated_tokens == 18 and gen.stats.completions == 6


@pytest.mark.parametrize("honour_n", [True, False])
def test_seeds_are_sent_only_with_send_seed(honour_n):
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(2)]
    bodies = {}
    for send_seed in (True, False):
        with FakeServer(honour_n=honour_n) as server:
            gen = generator(server.url, send_seed=send_seed)
            for _ in range(2):  # the second call knows whether the server honours n
                results = gen.generate(conversations, SamplingParams(n=2), seeds=[1, 2])
                assert [[c.text for c in r] for r in results] == [[f"q{i} #0", f"q{i} #{1 if honour_n else 0}"] for i in range(2)]
        bodies[send_seed] = server.requests
    # honoured n: one request per conversation and call; ignored: 2 (n=2) + 2 extra, then 4 single ones
    assert len(bodies[True]) == len(bodies[False]) == (4 if honour_n else 8)
    assert not any("seed" in body for body in bodies[False])
    assert all("seed" in body for body in bodies[True])
    expected = {("q0", 1), ("q1", 2)} | (set() if honour_n else {("q0", sample_seed(1, 1)), ("q1", sample_seed(2, 1))})
    assert {(body["messages"][-1]["content"], body["seed"]) for body in bodies[True]} == expected


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
    with FakeServer(failures=[500] * 10) as server, pytest.raises(BackendUnavailable) as error:
        generator(server.url, max_retries=2).generate([QUESTION], SamplingParams())
    assert len(server.requests) == 3
    assert re.fullmatch(
        rf"the server at {re.escape(server.url)} keeps failing \(answered 500: scripted failure 500\); "
        r"gave up after 3 attempts in \d+\.\d s \(max_retries=2 reached\)",
        str(error.value),
    )


def test_dead_server_raises_backend_unavailable_within_the_wait_bound():
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as error:
        generator(url, max_retries=100, max_wait_s=0.5, backoff_s=0.05).generate([QUESTION] * 4, SamplingParams())
    assert time.monotonic() - started < 5.0
    assert str(error.value).startswith(f"the server at {url} is not answering (connection refused); gave up after ")


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


def dead_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def reported_seconds(message: str) -> float:
    return float(re.search(r"gave up after \d+ attempts? in (\d+\.\d) s", message).group(1))


def test_max_wait_s_bounds_wall_time_including_slow_failed_attempts():
    # Every attempt times out (0.2 s), the backoffs are ~0: counting only the backoffs, 100 retries
    # would take 20 s. The request must give up at max_wait_s and report the wall time it really took.
    with FakeServer(delay_s=10.0) as server:
        gen = generator(server.url, timeout=0.2, max_wait_s=1.0, max_retries=100, backoff_s=0.001)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as error:
            gen.generate([QUESTION], SamplingParams())
        elapsed = time.monotonic() - started
    message = str(error.value)
    assert 0.9 <= elapsed < 2.0, message  # before: "gave up after 11 attempts in 3.0s", after 3.0 s
    assert abs(reported_seconds(message) - elapsed) < 0.3, (message, elapsed)
    assert message.startswith(f"the server at {server.url} is not answering (no answer in time (timed out)); gave up after ")
    assert "max_wait_s=1 reached" in message and len(server.requests) <= 6


def test_a_failing_call_returns_without_waiting_for_its_other_requests():
    # 8 conversations, 2 at a time, a server that never answers: the first request to give up ends
    # the call; the others neither keep retrying nor wait their turn for their own max_wait_s.
    with FakeServer(delay_s=10.0) as server:
        gen = generator(server.url, timeout=0.2, max_wait_s=0.6, max_retries=100, backoff_s=0.001, max_concurrency=2)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as error:
            gen.generate([QUESTION] * 8, SamplingParams())
        elapsed = time.monotonic() - started
        # before: "gave up after 11 attempts in 2.6s" when the call returned after 5.3 s
        assert elapsed < 1.5 and abs(reported_seconds(str(error.value)) - elapsed) < 0.3, (str(error.value), elapsed)
        time.sleep(0.4)  # requests in flight end with their current attempt and start no other
        settled = len(server.requests)
        time.sleep(0.4)
        assert len(server.requests) == settled <= 2 * 4


def test_other_requests_stop_retrying_once_one_gives_up():
    with FakeServer(failures=[500] * 10_000) as server:
        gen = generator(server.url, max_retries=10_000, max_wait_s=0.4, backoff_s=0.01, max_concurrency=3)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="keeps failing"):
            gen.generate([QUESTION] * 12, SamplingParams())
        assert time.monotonic() - started < 1.5
        time.sleep(0.2)
        settled = len(server.requests)
        time.sleep(0.3)
        assert len(server.requests) == settled


@pytest.mark.parametrize("then, how", [("refuse", "connection refused"), ("reset", "connection reset")])
def test_a_server_that_dies_after_errors_is_reported_dead_with_its_last_error(then, how):
    with FakeServer(failures=[500, 503], then=then) as server:
        # 2 s of patience: on a loaded machine a reset can take longer to arrive than a short wait allows
        gen = generator(server.url, max_retries=100, max_wait_s=2.0, backoff_s=0.01)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as error:
            gen.generate([QUESTION], SamplingParams())
        elapsed = time.monotonic() - started
    message = str(error.value)
    assert message.startswith(
        f"the server at {server.url} stopped answering ({how}) after answering 503: scripted failure 503; gave up after "
    ), message
    assert "\n" not in message and elapsed < 3.5 and abs(reported_seconds(message) - elapsed) < 0.3


def test_the_last_error_body_is_shortened_to_one_line():
    page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n" + "upstream failed\n" * 500 + "</body></html>"
    with FakeServer(failures=[(502, page)], then="refuse") as server, pytest.raises(BackendUnavailable) as error:
        generator(server.url, max_retries=100, max_wait_s=0.3).generate([QUESTION], SamplingParams())
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    assert "stopped answering (connection refused) after answering 502: 502 Bad Gateway upstream failed upstream" in message
    assert "…; gave up after " in message


def test_a_server_that_answered_and_then_died_stopped_answering():
    with FakeServer() as server:
        gen = generator(server.url, max_retries=100, max_wait_s=0.3)
        gen.generate([QUESTION], SamplingParams())
        server.kill()
        with pytest.raises(BackendUnavailable) as error:
            gen.generate([QUESTION], SamplingParams())
    assert str(error.value).startswith(f"the server at {server.url} stopped answering (connection refused); gave up after ")


def test_retry_after_past_max_wait_s_gives_up_at_once():
    with FakeServer(failures=[(429, "slow down", {"Retry-After": "30"})] * 5) as server:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as error:
            generator(server.url, max_retries=100, max_wait_s=1.0).generate([QUESTION], SamplingParams())
    assert time.monotonic() - started < 0.5 and len(server.requests) == 1
    assert str(error.value).startswith(f"the server at {server.url} keeps failing (answered 429: slow down); gave up after 1 attempt in ")
    assert str(error.value).endswith(" s (the server asked to wait 30 s, past max_wait_s=1)")


# check(): before any work


def test_check_passes_when_the_model_is_listed_and_asks_nothing_else():
    with FakeServer() as server:
        gen = generator(server.url)
        started = time.monotonic()
        assert gen.check(timeout_s=2.0) is None
        gen.check(timeout_s=2.0)  # twice is fine
        assert time.monotonic() - started < 1.0
    assert server.gets == ["/v1/models", "/v1/models"] and server.requests == []
    assert gen.stats.calls == 0


def test_check_of_a_dead_server_names_the_url_and_the_reason_at_once():
    url = dead_url()
    gen = generator(url, max_wait_s=30.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as error:
        gen.check(timeout_s=5.0)
    assert time.monotonic() - started < 1.0
    assert str(error.value).startswith(
        f"the server at {url} failed the check for model 'test-model': GET /models: connection refused (checked in "
    )


def test_check_of_a_server_that_does_not_answer_gives_up_after_timeout_s():
    with FakeServer(delay_s=10.0) as server:
        gen = generator(server.url, timeout=30.0)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"GET /models: no answer in time \(timed out\)") as error:
            gen.check(timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.2 and server.url in str(error.value)


def test_check_without_models_endpoint_asks_one_token_completion():
    with FakeServer(models=None) as server:
        generator(server.url).check(timeout_s=2.0)
    assert server.gets == ["/v1/models"]
    assert [(r["model"], r["max_tokens"]) for r in server.requests] == [("test-model", 1)]


def test_check_accepts_a_model_the_server_does_not_list_but_serves():
    with FakeServer(models=["/models/llama.gguf"]) as server:  # llama.cpp lists its file, takes any name
        generator(server.url).check(timeout_s=2.0)
    assert len(server.requests) == 1


@pytest.mark.parametrize("models", [None, ["other-model"]])
def test_check_fails_when_the_server_refuses_the_model_name(models):
    with FakeServer(models=models, accepted=["other-model"]) as server, pytest.raises(BackendUnavailable) as error:
        generator(server.url).check(timeout_s=2.0)
    listed = "" if models is None else "; /models lists only other-model"
    assert str(error.value).startswith(
        f"the server at {server.url} failed the check for model 'test-model': a one-token completion refused the "
        f"model name: answered 404: The model `test-model` does not exist.{listed} (checked in "
    ), str(error.value)


def test_check_fails_on_an_error_answer_to_models(monkeypatch):
    with FakeServer() as server:
        handler = server.httpd.RequestHandlerClass
        monkeypatch.setattr(handler, "do_GET", lambda self: self.reply(401, {"error": {"message": "bad key"}}))
        with pytest.raises(BackendUnavailable, match=r"GET /models: answered 401: bad key \(checked in"):
            generator(server.url).check(timeout_s=2.0)
    assert server.requests == []


def test_check_falls_back_to_a_completion_when_models_answers_no_model_list(monkeypatch):
    with FakeServer() as server:
        monkeypatch.setattr(server.httpd.RequestHandlerClass, "do_GET", lambda self: self.reply(200, "<html>hello</html>"))
        generator(server.url).check(timeout_s=2.0)
    assert [r["max_tokens"] for r in server.requests] == [1]


def test_check_on_a_closed_generator_is_an_error():
    gen = generator(dead_url())
    gen.close()
    with pytest.raises(RuntimeError, match="closed"):
        gen.check()
