"""The served protocol with the real openai client against uvicorn on 127.0.0.1: turns, vote, streaming, batching."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from riselm.generation.fake import ScriptedGenerator
from riselm.serve import ServeSettings
from riselm.settings import SamplingSettings
from tests.serve.conftest import attempt, by_turn, client, create_app, needs_serve_extra, running

needs_serve_extra()

ASK = [{"role": "user", "content": "What is 2+2? Put the answer in \\boxed{}."}]


def serve(script, **settings):
    gen = ScriptedGenerator(script)
    return gen, create_app(gen, ServeSettings(**settings), model_name="m")


def extra(response) -> dict:
    return response.model_extra["riselm"]


def test_k1_returns_the_single_turn_and_its_answer():
    gen, app = serve(by_turn({1: 4, 2: 5}), turns=1)
    with running(app) as url:
        response = client(url).chat.completions.create(model="m", messages=ASK)
    assert response.choices[0].message.content == "attempt 1: \\boxed{4}"
    assert response.choices[0].finish_reason == "stop"
    info = extra(response)
    assert [t["answer"] for t in info["turns"]] == ["4"] and info["vote"]["answer"] == "4"
    assert len(gen.calls) == 1
    assert gen.calls[0].conversations == [ASK]  # the generic task sends the user's message as it is


@pytest.mark.parametrize(
    "answers, voted_turn, voted",
    [
        ({1: 4, 2: 5, 3: 4}, 3, "4"),  # the majority, shown as its most recent turn
        ({1: 7, 2: 7, 3: 9}, 2, "7"),  # not simply the last turn
        ({1: 1, 2: 5, 3: 5}, 3, "5"),  # not simply the first turn
    ],
)
def test_k3_returns_the_majority_of_the_turns_answers(answers, voted_turn, voted):
    gen, app = serve(by_turn(answers), turns=3)
    with running(app) as url:
        response = client(url).chat.completions.create(model="m", messages=ASK)
    info = extra(response)
    assert response.choices[0].message.content == f"attempt {voted_turn}: \\boxed{{{voted}}}"
    assert info["vote"]["answer"] == voted and info["vote"]["turn"] == voted_turn and info["vote"]["votes"] == 2
    assert [t["agrees"] for t in info["turns"]] == [str(answers[k]) == voted for k in (1, 2, 3)]
    assert [t["answer"] for t in info["turns"]] == [str(answers[k]) for k in (1, 2, 3)]
    # the turns are the engine's: each conversation is the last one plus the answer and the retry message
    assert [len(call.conversations[0]) for call in gen.calls] == [1, 3, 5]
    retry = gen.calls[1].conversations[0][-1]["content"]
    assert retry.startswith("Your answer is incorrect. Please try again.") and ASK[0]["content"] in retry
    assert response.usage.completion_tokens == sum(t["tokens"] for t in info["turns"]) == 9


def test_a_task_brings_its_prompt_retry_message_and_answer_equivalence():
    # arithmetic compares integers: "004" and "4" are one answer, so they outvote "5" (a tie of three strings otherwise)
    gen, app = serve(by_turn({1: "004", 2: 4, 3: 5}), turns=3, task="arithmetic")
    with running(app) as url:
        response = client(url).chat.completions.create(model="m", messages=[{"role": "user", "content": "2+2=?"}])
    assert extra(response)["vote"]["answer"] == "4" and extra(response)["vote"]["groups"] == [[1, 2], [3]]
    assert response.choices[0].message.content == "attempt 2: \\boxed{4}"
    first, second = gen.calls[0].conversations[0], gen.calls[1].conversations[0]
    assert first == [{"role": "user", "content": "Compute. Answer in \\boxed{}.\n\n2+2=?"}]
    assert second[-1]["content"] == "Incorrect. Try again: 2+2=?"


def test_requests_set_their_turns_window_sampling_and_system_message():
    gen, app = serve(by_turn({1: 1, 2: 2, 3: 3, 4: 4}), turns=2, max_turns=4, sampling=SamplingSettings(temperature=0.5))
    with running(app) as url:
        response = client(url).chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "Be brief."}, *ASK],
            max_tokens=7,
            top_p=0.9,
            extra_body={"riselm": {"turns": 4, "window": 2}},
        )
    turns = extra(response)["turns"]
    assert len(turns) == 4 and len(gen.calls) == 4
    last = gen.calls[-1].conversations[0]
    # window 2: the question and the last attempt only
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user"] and last[2]["content"] == turns[2]["text"]
    params = gen.calls[0].params
    assert (params.temperature, params.top_p, params.max_new_tokens) == (0.5, 0.9, 7)


def test_stop_when_stable_ends_a_request_once_its_answers_agree():
    gen, app = serve(by_turn({1: 4, 2: 6, 3: 6, 4: 6, 5: 6}), turns=5, stop_when_stable=2)
    with running(app) as url:
        openai_client = client(url)
        stable = extra(openai_client.chat.completions.create(model="m", messages=ASK))
        every = extra(openai_client.chat.completions.create(model="m", messages=ASK, extra_body={"riselm": {"stop_when_stable": 0}}))
        three = extra(openai_client.chat.completions.create(model="m", messages=ASK, extra_body={"riselm": {"stop_when_stable": 3}}))
    assert [t["answer"] for t in stable["turns"]] == ["4", "6", "6"] and stable["stopped"] == "stable"
    assert len(every["turns"]) == 5 and every["stopped"] == "turns"
    assert len(three["turns"]) == 4 and three["vote"]["answer"] == "6"


def test_streaming_gives_openai_chunks_of_the_voted_answer():
    gen, app = serve(by_turn({1: 4, 2: 5, 3: 4}), turns=3)
    with running(app) as url:
        chunks = list(client(url).chat.completions.create(model="m", messages=ASK, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "attempt 3: \\boxed{4}"
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].model_extra["riselm"]["vote"]["answer"] == "4"
    assert chunks[-1].usage.completion_tokens == 9 and not chunks[-1].choices
    assert len({c.id for c in chunks}) == 1


def test_streaming_each_turn_as_it_finishes():
    release = [threading.Event() for _ in range(3)]
    seen = []

    def script(conversation, sample):
        t = attempt(conversation)
        if t > 1:
            assert release[t - 2].wait(10)
        return f"attempt {t}: \\boxed{{{[4, 5, 4][t - 1]}}}"

    gen, app = serve(script, turns=3)
    with running(app) as url:
        stream = client(url).chat.completions.create(model="m", messages=ASK, stream=True, extra_body={"riselm": {"stream_turns": True}})
        for chunk in stream:
            event = (chunk.model_extra or {}).get("riselm") or {}
            if "turn" in event:
                seen.append(event["turn"])
                release[event["turn"]["turn"] - 1].set()  # the next turn is generated only after this one arrived
            elif chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)
    assert [s["turn"] if isinstance(s, dict) else s for s in seen] == [1, 2, 3, "attempt 3: \\boxed{4}"]
    assert [s["answer"] for s in seen[:3]] == ["4", "5", "4"]


def test_concurrent_requests_are_batched_into_one_rollout():
    started = threading.Event()

    def slow(conversation, sample):
        started.set()
        time.sleep(0.05)
        return f"attempt {attempt(conversation)}: \\boxed{{{conversation[0]['content']}}}"

    gen = ScriptedGenerator(slow)
    app = create_app(gen, ServeSettings(turns=3, max_concurrency=8, batch_wait_ms=50), model_name="m")
    with running(app) as url:
        openai_client = client(url)
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: openai_client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"q{i}"}], extra_body={"riselm": {"turns": 1 + i % 3}}
                    ),
                    range(8),
                )
            )
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert [extra(a)["vote"]["answer"] for a in answers] == [f"q{i}" for i in range(8)]
    assert [len(extra(a)["turns"]) for a in answers] == [1 + i % 3 for i in range(8)]  # each its own K in a shared batch
    assert max(len(call.conversations) for call in gen.calls) >= 4  # turns of several requests in one generate call
    assert len(gen.calls) < sum(1 + i % 3 for i in range(8))
    assert "riselm_batch_size_count" in metrics


def test_a_conversation_with_assistant_turns_is_continued_with_one_completion():
    gen, app = serve(by_turn({1: 4, 2: 5, 3: 6}), turns=3)
    history = [*ASK, {"role": "assistant", "content": "\\boxed{3}"}, {"role": "user", "content": "Try again."}]
    with running(app) as url:
        response = client(url).chat.completions.create(model="m", messages=history, seed=5)
    assert response.choices[0].message.content == "attempt 2: \\boxed{5}" and extra(response)["stopped"] == "continuation"
    assert len(gen.calls) == 1 and gen.calls[0].conversations == [history] and len(extra(response)["turns"]) == 1


def test_models_health_and_metrics():
    gen, app = serve(by_turn({1: 4, 2: 5, 3: 4}), turns=3)
    with running(app) as url:
        openai_client = client(url)
        assert [m.id for m in openai_client.models.list().data] == ["m"]
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        openai_client.chat.completions.create(model="m", messages=ASK)
        with pytest.raises(openai.NotFoundError):
            openai_client.chat.completions.create(model="other", messages=ASK)
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert health["status"] == "ok" and health["turns"] == 3 and health["in_flight"] == 0
    assert 'riselm_requests_total{status="200"} 1.0' in metrics and 'riselm_requests_total{status="404"} 1.0' in metrics
    assert "riselm_turns_per_request_sum 3.0" in metrics
    assert 'riselm_tokens_total{kind="completion"} 9.0' in metrics
    assert "riselm_request_latency_seconds_count 2.0" in metrics
