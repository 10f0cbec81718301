"""A bounded load test on loopback: 200 requests at concurrency 16, none failed, none lost, none mixed up."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from riselm.generation.fake import ScriptedGenerator
from riselm.serve import ServeSettings
from tests.serve.conftest import boxed_sum, client, create_app, needs_serve_extra, running

needs_serve_extra()

REQUESTS, CONCURRENCY = 200, 16


def test_200_requests_at_concurrency_16_all_answered_each_with_its_own_answer():
    gen = ScriptedGenerator(boxed_sum)
    app = create_app(gen, ServeSettings(turns=3, max_concurrency=8, max_queue=8, request_timeout=60), model_name="m")
    with running(app) as url:
        openai_client = client(url, timeout=60)

        def one(i: int):
            a, b = i, 1000 + 7 * i
            messages = [{"role": "user", "content": f"{a}+{b}"}]
            if i % 5 == 0:  # some streamed
                chunks = list(openai_client.chat.completions.create(model="m", messages=messages, stream=True))
                return i, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), a + b
            response = openai_client.chat.completions.create(model="m", messages=messages, extra_body={"riselm": {"turns": 1 + i % 3}})
            assert len(response.model_extra["riselm"]["turns"]) == 1 + i % 3
            return i, response.choices[0].message.content, a + b

        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(one, range(REQUESTS)))
        elapsed = time.monotonic() - started
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert [i for i, _, _ in results] == list(range(REQUESTS))
    assert all(text.endswith(f"\\boxed{{{total}}}") for _, text, total in results)  # each its own answer
    assert f'riselm_requests_total{{status="200"}} {float(REQUESTS)}' in metrics and 'status="429"' not in metrics
    assert health["in_flight"] == health["running"] == health["queued"] == 0
    assert elapsed < 60
