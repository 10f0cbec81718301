"""Every fault path: OpenAI-shaped 4xx naming the field, 404 model, too many turns, over-long prompt, 504 that
frees its slot, 429 when full, a crashed backend call that fails its request only, and the API key."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from riselm.generation.fake import ScriptedGenerator
from riselm.serve import ServeSettings
from tests.serve.conftest import attempt, client, create_app, needs_serve_extra, question, running

needs_serve_extra()

ASK = [{"role": "user", "content": "What is 2+2?"}]


def post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def url():
    gen = ScriptedGenerator(lambda conversation, sample: f"attempt {attempt(conversation)}: \\boxed{{4}}")
    with running(create_app(gen, ServeSettings(turns=2, max_turns=4, max_prompt_tokens=200), model_name="m")) as url:
        yield url


M = {"model": "m"}
MALFORMED = [
    (b"{not json", None, "not valid JSON"),
    ([1, 2], None, "must be a JSON object"),
    ({"messages": ASK}, "model", "'model'"),
    (M, "messages", "'messages'"),
    ({**M, "messages": []}, "messages", "'messages'"),
    ({**M, "messages": "hi"}, "messages", "'messages'"),
    ({**M, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'messages[0].role'"),
    ({**M, "messages": [{"role": "user"}]}, "messages[0].content", "'messages[0].content'"),
    (
        {**M, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content",
        "only text parts",
    ),
    ({**M, "messages": [*ASK, {"role": "assistant", "content": "4"}]}, "messages", "last message must be the user's"),
    ({**M, "messages": [*ASK, {"role": "system", "content": "late"}]}, "messages[1].role", "before the conversation"),
    ({**M, "messages": ASK, "temperature": 3}, "temperature", "'temperature'"),
    ({**M, "messages": ASK, "temperature": "hot"}, "temperature", "'temperature'"),
    ({**M, "messages": ASK, "top_p": 0}, "top_p", "'top_p'"),
    ({**M, "messages": ASK, "max_tokens": 0}, "max_tokens", "'max_tokens'"),
    ({**M, "messages": ASK, "n": 2}, "n", "'n'"),
    ({**M, "messages": ASK, "stream": "yes"}, "stream", "'stream'"),
    ({**M, "messages": ASK, "stop": ["\n"]}, "stop", "'stop' is not supported"),
    ({**M, "messages": ASK, "tools": [{"type": "function"}]}, "tools", "'tools' is not supported"),
    ({**M, "messages": ASK, "riselm": {"turns": 0}}, "riselm.turns", "'riselm.turns'"),
    ({**M, "messages": ASK, "riselm": {"bogus": 1}}, "riselm.bogus", "'riselm.bogus'"),
    ({**M, "messages": ASK, "riselm": {"stop_when_stable": 1}}, "riselm.stop_when_stable", "at least 2"),
    ({**M, "messages": ASK, "riselm": {"window": -1}}, "riselm.window", "'riselm.window'"),
    (
        {**M, "messages": [*ASK, {"role": "assistant", "content": "5"}, {"role": "user", "content": "again"}], "riselm": {"turns": 3}},
        "riselm.turns",
        "continued with one completion",
    ),
]


@pytest.mark.parametrize("body, param, words", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_requests_get_a_400_in_openais_shape_naming_the_field(url, body, param, words):
    status, answer = post(url, body)
    assert status == 400
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
    assert words in answer["error"]["message"]


def test_the_openai_client_sees_unknown_models_too_many_turns_and_long_prompts(url):
    openai_client = client(url)
    with pytest.raises(openai.NotFoundError) as error:
        openai_client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert (
        error.value.body["param"] == "model" and error.value.body["code"] == "model_not_found" and "gpt-4o" in error.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as error:
        openai_client.chat.completions.create(model="m", messages=ASK, extra_body={"riselm": {"turns": 5}})
    assert (
        error.value.body["param"] == "riselm.turns"
        and error.value.body["code"] == "too_many_turns"
        and "at most 4" in error.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as error:  # 201 characters (no tokenizer here: characters count)
        openai_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 201}])
    assert error.value.body["param"] == "messages" and error.value.body["code"] == "context_length_exceeded"
    assert "201 characters" in error.value.body["message"]
    assert openai_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 200}]).choices


def test_unknown_routes_and_methods_answer_in_openais_shape(url):
    for path, method in (("/v1/nothing", "GET"), ("/v1/chat/completions", "GET")):
        request = urllib.request.Request(f"{url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request)
        assert error.value.code in (404, 405) and path in json.load(error.value)["error"]["message"]


def test_requests_past_the_timeout_get_504_free_their_slots_and_leave_the_batch_or_the_queue():
    gate, generating = threading.Event(), threading.Event()

    def script(conversation, sample):
        if "slow" in question(conversation):
            generating.set()
            gate.wait(10)
        return f"attempt {attempt(conversation)}: \\boxed{{1}}"

    gen = ScriptedGenerator(script)
    app = create_app(gen, ServeSettings(turns=3, max_concurrency=1, max_queue=1, request_timeout=1.0), model_name="m")
    with running(app) as url:
        openai_client = client(url)

        def expect_504(text: str) -> float:
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as error:
                openai_client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
            assert error.value.status_code == 504 and error.value.body["code"] == "request_timeout"
            return time.monotonic() - started

        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(expect_504, "slow")  # generating when it times out
            assert generating.wait(10)
            queued = pool.submit(expect_504, "queued")  # waiting behind it when it times out
            assert 0.9 < slow.result() < 5 and 0.9 < queued.result() < 5
        with ThreadPoolExecutor(1) as pool:  # both slots are free again: the next request is admitted, not refused with 429
            fast = pool.submit(openai_client.chat.completions.create, model="m", messages=[{"role": "user", "content": "fast"}])
            time.sleep(0.2)
            gate.set()
            assert fast.result().choices[0].message.content == "attempt 3: \\boxed{1}"
        health = json.load(urllib.request.urlopen(f"{url}/health"))
    generated = [question(c) for call in gen.calls for c in call.conversations]
    # the one generating left its rollout at the first turn boundary instead of running its 3 turns; the queued one never ran
    assert generated.count("slow") == 1 and "queued" not in generated and generated.count("fast") == 3
    assert health["in_flight"] == 0


def test_a_full_server_answers_429_instead_of_queueing_more():
    gate = threading.Event()
    gen = ScriptedGenerator(lambda conversation, sample: gate.wait(10) and "\\boxed{1}")
    app = create_app(gen, ServeSettings(turns=1, max_concurrency=1, max_queue=1), model_name="m")
    with running(app) as url:
        openai_client = client(url)
        with ThreadPoolExecutor(2) as pool:
            first = [pool.submit(openai_client.chat.completions.create, model="m", messages=ASK) for _ in range(2)]
            deadline = time.monotonic() + 10
            while json.load(urllib.request.urlopen(f"{url}/health"))["in_flight"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as error:
                openai_client.chat.completions.create(model="m", messages=ASK)
            assert error.value.body["code"] == "queue_full" and error.value.response.headers["retry-after"] == "1"
            gate.set()
            assert [f.result().choices[0].message.content for f in first] == ["\\boxed{1}", "\\boxed{1}"]


def test_a_crashed_backend_call_fails_that_request_not_its_batch_nor_the_server():
    def script(conversation, sample):
        if "boom" in question(conversation):
            raise RuntimeError("the model fell over")
        return "\\boxed{7}"

    gen = ScriptedGenerator(script)
    app = create_app(gen, ServeSettings(turns=2, max_concurrency=4, batch_wait_ms=300), model_name="m")
    with running(app) as url:
        openai_client = client(url)
        with ThreadPoolExecutor(2) as pool:
            boom = pool.submit(openai_client.chat.completions.create, model="m", messages=[{"role": "user", "content": "boom"}])
            fine = pool.submit(openai_client.chat.completions.create, model="m", messages=[{"role": "user", "content": "fine"}])
            with pytest.raises(openai.InternalServerError) as error:
                boom.result()
            assert fine.result().choices[0].message.content == "\\boxed{7}"
        assert error.value.body["code"] == "backend_error" and "the model fell over" in error.value.body["message"]
        assert len(gen.calls[0].conversations) == 2  # they were one batch, run again one by one
        assert openai_client.chat.completions.create(model="m", messages=ASK).choices[0].message.content == "\\boxed{7}"
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert 'riselm_requests_total{status="500"} 1.0' in metrics


def test_the_servers_own_key_is_checked_and_never_logged(caplog, capfd):
    secret = "sk-serve-9f8e7d6c5b4a"
    gen = ScriptedGenerator(["\\boxed{1}"])
    with caplog.at_level("DEBUG"):
        with running(create_app(gen, ServeSettings(turns=1), model_name="m", api_key=secret), log_level="debug") as url:
            with pytest.raises(openai.AuthenticationError) as error:
                client(url, api_key="sk-guess-0000").chat.completions.create(model="m", messages=ASK)
            assert error.value.body["code"] == "invalid_api_key" and "sk-guess" not in error.value.body["message"]
            assert client(url, api_key=secret).chat.completions.create(model="m", messages=ASK).choices
            assert urllib.request.urlopen(f"{url}/health").status == 200  # the health check needs no key
    out, err = capfd.readouterr()
    assert "POST /v1/chat/completions" in out + err + caplog.text  # the log was captured ...
    assert secret not in out + err + caplog.text  # ... and holds no key
