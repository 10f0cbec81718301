"""A real (tiny) model on the HF backend: batching, seeds, token counts, the context check, and `riselm serve`
itself as a process: its key, its log, and SIGTERM draining the request in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from riselm.serve import ServeSettings
from riselm.settings import SamplingSettings
from tests.serve.conftest import client, create_app, free_socket, needs_serve_extra, running

needs_serve_extra()


@pytest.fixture(scope="module")
def hf_server(tiny_model_dir):
    from riselm.generation.hf import HFGenerator

    generator = HFGenerator.from_pretrained(str(tiny_model_dir), batch_size=16)
    settings = ServeSettings(turns=2, max_concurrency=8, batch_wait_ms=100, sampling=SamplingSettings(max_new_tokens=12))
    app = create_app(generator, settings, model_name="tiny")
    with running(app) as url:
        yield url, generator
    generator.close()


def ask(openai_client, text: str, **options):
    return openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], **options)


def test_seeded_requests_give_the_same_turns_alone_or_batched(hf_server):
    url, generator = hf_server
    openai_client = client(url)
    alone = [ask(openai_client, f"{i}+{i}=?", seed=i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: ask(openai_client, f"{i}+{i}=?", seed=i), range(4)))
    assert [a.model_extra["riselm"]["turns"] for a in alone] == [t.model_extra["riselm"]["turns"] for t in together]
    assert len({a.choices[0].message.content for a in alone}) == 4  # different seeds and questions: different text
    metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    singles = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith('riselm_batch_size_bucket{le="1.0"}')))
    batches = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("riselm_batch_size_count")))
    assert batches < 8 and singles < batches  # the concurrent four shared a rollout


def test_usage_counts_every_turns_prompt_and_completion_tokens(hf_server):
    url, generator = hf_server
    response = ask(client(url), "1+1=?", seed=1)
    turns = response.model_extra["riselm"]["turns"]
    first = generator.tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1=?"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert response.usage.completion_tokens == sum(t["tokens"] for t in turns) > 0
    assert response.usage.prompt_tokens > 2 * len(first)  # the second turn's prompt holds the first turn and the retry


def test_a_conversation_that_could_outgrow_the_model_is_refused_before_any_work(hf_server):
    url, _ = hf_server
    openai_client = client(url)
    with pytest.raises(openai.BadRequestError) as error:  # 2 turns of 600 new tokens cannot fit 1024 positions
        ask(openai_client, "1+1=?", max_tokens=600)
    assert error.value.body["code"] == "context_length_exceeded" and "1024 positions" in error.value.body["message"]
    assert ask(openai_client, "1+1=?", max_tokens=600, extra_body={"riselm": {"window": 1}}).choices  # a window fits
    with pytest.raises(openai.BadRequestError):
        ask(openai_client, "x" * 1020)


def wait_for(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"riselm serve exited with {process.returncode}: {process.stdout.read()}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("riselm serve did not start")


def test_riselm_serve_checks_its_key_logs_no_key_and_drains_on_sigterm(tiny_model_dir):
    secret = "sk-cli-1a2b3c4d5e"
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RISELM_TEST_KEY": secret, "OPENAI_API_KEY": secret, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "riselm.cli",
            "serve",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--api-key-env",
            "RISELM_TEST_KEY",
            "--served-model-name",
            "tiny",
            "-k",
            "2",
            "--window",
            "1",
            "--max-new-tokens",
            "16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_for(url, process)
        with pytest.raises(openai.AuthenticationError):
            ask(client(url), "1+1=?")
        openai_client = client(url, api_key=secret)
        assert ask(openai_client, "1+1=?").choices
        slow = threading.Thread(
            target=lambda: results.append(ask(openai_client, "2+2=?", max_tokens=150, extra_body={"riselm": {"turns": 3}}))
        )
        results: list = []
        slow.start()
        deadline = time.monotonic() + 30
        while json.load(urllib.request.urlopen(f"{url}/health"))["running"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # while that request is being generated
        time.sleep(0.2)
        with pytest.raises(openai.APIConnectionError):  # no new request once draining ...
            ask(client(url, api_key=secret, timeout=5), "3+3=?")
        slow.join(60)
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it drained for
    finally:
        if process.poll() is None:
            process.kill()
    assert len(results) == 1 and len(results[0].model_extra["riselm"]["turns"]) == 3  # ... but the one in flight is answered
    log = process.stdout.read()
    assert (
        "Finished server process" in log and 'POST /v1/chat/completions HTTP/1.1" 401' in log and "riselm serve: tiny (hf backend)" in log
    )
    assert secret not in log
