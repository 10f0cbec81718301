"""Proxy mode: a riselm server on the openai backend in front of a second riselm server playing the backend."""

from __future__ import annotations

import openai
import pytest
from typer.testing import CliRunner

from riselm.cli import app as cli
from riselm.generation.errors import BackendUnavailable
from riselm.generation.fake import ScriptedGenerator
from riselm.serve import ServeSettings
from riselm.serve.server import build_backend
from tests.serve.conftest import by_turn, client, create_app, free_socket, needs_serve_extra, running

needs_serve_extra()

ASK = [{"role": "user", "content": "What is 2+2?"}]


def test_the_proxy_runs_the_turns_and_the_vote_over_the_server_behind_it(monkeypatch, caplog, capfd):
    secret = "sk-backend-5e6f7a8b9c"
    monkeypatch.setenv("OPENAI_API_KEY", secret)  # the proxy's key for the server behind it
    inner_gen = ScriptedGenerator(by_turn({1: 4, 2: 5, 3: 4}))
    inner = create_app(inner_gen, ServeSettings(turns=1), model_name="inner", api_key=secret)
    settings = ServeSettings(turns=3)
    with caplog.at_level("DEBUG"), running(inner, log_level="info") as inner_url:
        proxy_gen = build_backend("inner", "openai", base_url=f"{inner_url}/v1", settings=settings)
        try:
            with running(create_app(proxy_gen, settings, model_name="outer"), log_level="info") as url:
                openai_client = client(url)
                response = openai_client.chat.completions.create(model="outer", messages=ASK, seed=11)
                streamed = list(openai_client.chat.completions.create(model="outer", messages=ASK, seed=11, stream=True))
        finally:
            proxy_gen.close()
    info = response.model_extra["riselm"]
    assert response.choices[0].message.content == "attempt 3: \\boxed{4}"
    assert info["vote"] == {"answer": "4", "turn": 3, "votes": 2, "of": 3, "groups": [[1, 3], [2]]}
    assert response.usage.completion_tokens == 9  # the backend's usage, summed over the turns
    # the server behind saw the question, then the proxy's growing conversations (continued with one completion each)
    sent = [call.conversations[0] for call in inner_gen.calls]
    assert [len(c) for c in sent] == [1, 3, 5, 1, 3, 5]
    assert sent[2][-1]["content"].startswith("Your answer is incorrect.") and sent[2][3]["content"] == "attempt 2: \\boxed{5}"
    assert inner_gen.calls[0].seeds == inner_gen.calls[3].seeds  # the proxy's conversation seeds reach the backend
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "attempt 3: \\boxed{4}"
    out, err = capfd.readouterr()
    assert "POST /v1/chat/completions" in out + err + caplog.text and secret not in out + err + caplog.text


def test_a_backend_that_goes_away_fails_requests_with_502_not_the_proxy():
    inner = create_app(ScriptedGenerator(["\\boxed{1}"]), ServeSettings(turns=1), model_name="inner")
    settings = ServeSettings(turns=2, request_timeout=5)
    with running(inner) as inner_url:
        proxy_gen = build_backend("inner", "openai", base_url=f"{inner_url}/v1", settings=settings, options={"max_retries": 0})
    try:
        with running(create_app(proxy_gen, settings, model_name="outer")) as url:
            with pytest.raises(openai.APIStatusError) as error:
                client(url).chat.completions.create(model="outer", messages=ASK)
            assert client(url).models.list().data[0].id == "outer"  # still serving
    finally:
        proxy_gen.close()
    assert error.value.status_code == 502 and error.value.body["code"] == "backend_unavailable"
    assert inner_url.removeprefix("http://") in error.value.body["message"]


def test_the_proxy_checks_the_server_behind_it_at_start():
    sock = free_socket()  # bound, not listening: connections are refused
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        with pytest.raises(BackendUnavailable, match="failed the check"):
            build_backend("inner", "openai", base_url=dead, settings=ServeSettings())
        result = CliRunner().invoke(cli, ["serve", "inner", "--backend", "openai", "--base-url", dead])
        assert result.exit_code == 2 and "failed the check" in result.output
        result = CliRunner().invoke(cli, ["serve", "inner", "--backend", "openai"])
        assert result.exit_code == 2 and "--base-url" in result.output
    finally:
        sock.close()
