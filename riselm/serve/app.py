"""The HTTP application: `create_app(generator, settings)` (FastAPI), as `riselm serve` runs it.

Routes: `POST /v1/chat/completions` (OpenAI's protocol, riselm.serve.protocol), `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus) and `GET /` (the page that shows each turn).

Limits: at most `max_concurrency` requests are generated at once and `max_queue` more wait; a request
beyond those gets 429 at once. A request that has not been answered `request_timeout` seconds after
it arrived gets 504 and frees its place; a batch it was part of drops it at the next turn boundary
(a turn being generated is not interrupted). A backend error fails the requests it concerns (500, or
502 when a proxied server gave up) and nothing else. The API key of the backend, and the server's own
(`api_key`), are never logged nor echoed.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from riselm.generation.base import Generator, prompt_ids
from riselm.generation.errors import BackendUnavailable
from riselm.serve.metrics import ServeMetrics
from riselm.serve.protocol import ApiError, ChatRequest, chunk_body, completion_body, completion_id, parse_request, split_messages
from riselm.serve.runner import Job, Runner
from riselm.serve.settings import ServeSettings
from riselm.serve.task import GenericTask
from riselm.settings import SamplingSettings
from riselm.tasks.base import Problem, Task

logger = logging.getLogger("riselm.serve")
KEEPALIVE_S = 10.0  # a streamed request that has nothing new for this long gets an SSE comment


class PromptCounter:
    """Counts the tokens of a conversation with the model's tokenizer (a copy of its own, behind a lock,
    so that counting never races the backend), or None when the backend has no tokenizer here."""

    def __init__(self, generator: Generator):
        tokenizer = getattr(generator, "tokenizer", None)
        self.tokenizer = copy.deepcopy(tokenizer) if getattr(tokenizer, "chat_template", None) else None
        model = getattr(generator, "model", None)
        self.positions: int | None = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.lock = threading.Lock()

    def __call__(self, conversation: list[dict[str, str]]) -> int | None:
        if self.tokenizer is None:
            return None
        with self.lock:
            return len(prompt_ids(self.tokenizer, conversation))

    def text(self, text: str) -> int:
        assert self.tokenizer is not None
        with self.lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))


def create_app(
    generator: Generator,
    settings: ServeSettings = ServeSettings(),
    *,
    model_name: str | None = None,
    task: Task | None = None,
    batched: bool | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The server's app around `generator` (which the caller keeps and closes).

    model_name: the name clients send (default: settings.served_model_name, else the generator's name).
    task: the task of the prompt, retry message, extractor and vote (default: settings.task, else the
        generic \\boxed{} task). batched: gather concurrent requests into one rollout (default: yes,
        except for an OpenAI-compatible backend, whose own server batches). api_key: when given,
        clients must send it as `Authorization: Bearer KEY`.
    """
    from riselm.generation.openai_compat import OpenAIGenerator
    from riselm.tasks import get_task

    if task is None:
        task = get_task(settings.task, **settings.task_options) if settings.task else GenericTask()
    name = model_name or settings.served_model_name or generator.name
    if batched is None:
        batched = not isinstance(generator, OpenAIGenerator)
    metrics = ServeMetrics()
    counter = PromptCounter(generator)
    runner = Runner(
        generator,
        task,
        batched=batched,
        max_concurrency=settings.max_concurrency,
        batch_wait_ms=settings.batch_wait_ms,
        counter=counter,
        observe_batch=metrics.batch.observe,
    )
    admitted = 0  # requests admitted and not yet answered

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()

    app = FastAPI(title="riselm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runner, app.state.metrics, app.state.task, app.state.model_name = runner, metrics, task, name

    def error_response(error: ApiError, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown routes, wrong methods
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return error_response(ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key"))
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "task": task.name,
            "turns": settings.turns,
            "batched": batched,
            "in_flight": admitted,
            "running": runner.running,
            "queued": runner.waiting,
        }

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "riselm"}]}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        from riselm.serve.page import live_page

        return HTMLResponse(live_page(name, settings.turns, settings.max_turns))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        nonlocal admitted
        started = time.monotonic()
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ApiError(400, f"the request body is not valid JSON: {error}") from None
            chat_request = parse_request(body)
            job = make_job(chat_request)
            if admitted >= settings.max_concurrency + settings.max_queue:
                raise ApiError(
                    429,
                    f"the server is full ({settings.max_concurrency} requests running and {settings.max_queue} waiting); try again later",
                    code="queue_full",
                )
        except ApiError as error:
            metrics.answered(error.status, time.monotonic() - started)
            return error_response(error, {"Retry-After": "1"} if error.status == 429 else None)
        admitted += 1
        metrics.in_flight.inc()
        released = False

        def release() -> None:
            nonlocal admitted, released
            if not released:
                released = True
                admitted -= 1
                metrics.in_flight.dec()

        if chat_request.stream and chat_request.riselm.stream_turns:
            return StreamingResponse(stream_turns(chat_request, job, started, release), media_type="text/event-stream")
        try:
            result = await outcome(job, started)
        except ApiError as error:
            metrics.answered(error.status, time.monotonic() - started)
            return error_response(error)
        finally:
            release()
        metrics.answered(200, time.monotonic() - started, result["riselm"], result["usage"])
        rid = completion_id()
        if chat_request.stream:
            return StreamingResponse(_sse(final_chunks(rid, chat_request, result)), media_type="text/event-stream")
        return completion_body(rid, name, result["text"], result["finish_reason"], result["usage"], result["riselm"])

    def make_job(chat_request: ChatRequest) -> Job:
        if chat_request.model != name:
            raise ApiError(404, f"'model': this server serves {name!r}, not {chat_request.model!r}", param="model", code="model_not_found")
        system, messages = split_messages(chat_request)
        options = chat_request.riselm
        continuing = len(messages) > 1
        if continuing and options.turns not in (None, 1):
            raise ApiError(
                400,
                "'riselm.turns': a conversation that already holds assistant turns is continued with "
                "one completion; send the question alone for several turns",
                param="riselm.turns",
            )
        turns = 1 if continuing else options.turns or settings.turns
        if turns > settings.max_turns:
            raise ApiError(
                400,
                f"'riselm.turns': {turns} turns asked, this server allows at most {settings.max_turns}",
                param="riselm.turns",
                code="too_many_turns",
            )
        base = settings.sampling
        sampling = SamplingSettings(
            temperature=base.temperature if chat_request.temperature is None else chat_request.temperature,
            top_p=base.top_p if chat_request.top_p is None else chat_request.top_p,
            max_new_tokens=chat_request.new_tokens or base.max_new_tokens,
        )
        window = options.window if options.window is not None else settings.window
        job = Job(
            messages=messages,
            system=system,
            turns=turns,
            window=window,
            sampling=sampling,
            seed=chat_request.seed,
            stable=settings.stop_when_stable if options.stop_when_stable is None else options.stop_when_stable,
        )
        check_length(job)
        return job

    def check_length(job: Job) -> None:
        """400 for a prompt over max_prompt_tokens, or a conversation that could outgrow the model's positions."""
        question = job.question
        first = job.messages if question is None else [{"role": "user", "content": task.prompt(Problem("-", question, ""))}]
        first = ([{"role": "system", "content": job.system}] if job.system else []) + first
        tokens = counter(first)
        unit = "tokens"
        if tokens is None:  # no tokenizer here (openai, vllm): characters, never fewer than tokens
            tokens, unit = sum(len(m["content"]) for m in first), "characters"
        if settings.max_prompt_tokens is not None and tokens > settings.max_prompt_tokens:
            raise ApiError(
                400,
                f"'messages': the prompt is {tokens} {unit} long, more than this server's max_prompt_tokens={settings.max_prompt_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        if counter.positions is None or unit != "tokens":
            return
        attempts = 0 if question is None else min(job.turns - 1, (job.window or job.turns) - 1)
        retry = counter.text(task.retry_message(Problem("-", question or "", ""))) + 16 if attempts else 0
        need = tokens + attempts * (job.sampling.max_new_tokens + retry) + job.sampling.max_new_tokens
        if need > counter.positions:
            raise ApiError(
                400,
                f"'messages': the prompt has {tokens} tokens; with {job.turns} turns of up to "
                f"{job.sampling.max_new_tokens} new tokens the conversation may reach {need} tokens, more than "
                f"the model's {counter.positions} positions (ask for fewer turns or max_tokens, or a window)",
                param="messages",
                code="context_length_exceeded",
            )

    async def outcome(job: Job, started: float) -> dict[str, Any]:
        future = runner.submit(job)
        left = settings.request_timeout - (time.monotonic() - started)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(left, 0.0))
        except asyncio.TimeoutError:
            job.given_up = True
            raise ApiError(
                504, f"no answer within the server's request timeout ({settings.request_timeout:g} s)", code="request_timeout"
            ) from None
        except asyncio.CancelledError:
            job.given_up = True  # the client went away
            raise
        except Exception as error:  # noqa: BLE001 - the backend failed on this request
            raise backend_error(error) from None

    async def stream_turns(chat_request: ChatRequest, job: Job, started: float, release) -> AsyncIterator[bytes]:
        """One chunk per turn as it is scored (no choices, a `riselm.turn` field), then the answer's chunks."""
        rid, created = completion_id(), int(time.time())
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def on_turn(turn: dict[str, Any]) -> None:  # in the worker thread
            loop.call_soon_threadsafe(events.put_nowait, ("turn", turn))

        job.on_turn = on_turn
        future = runner.submit(job)
        future.add_done_callback(lambda f: events.put_nowait(("done", None)))
        status = 499  # until answered: the client went away
        try:
            yield _event(chunk_body(rid, name, created, {"role": "assistant", "content": ""}))
            while True:
                left = settings.request_timeout - (time.monotonic() - started)
                if left <= 0:
                    job.given_up, status = True, 504
                    yield _event(
                        ApiError(
                            504, f"no answer within the server's request timeout ({settings.request_timeout:g} s)", code="request_timeout"
                        ).body()
                    )
                    return
                try:
                    kind, turn = await asyncio.wait_for(events.get(), min(left, KEEPALIVE_S))
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if kind == "turn":
                    yield _event(chunk_body(rid, name, created, riselm={"turn": turn}))
                    continue
                try:
                    result = future.result()
                except Exception as error:  # noqa: BLE001
                    failure = backend_error(error)
                    status = failure.status
                    yield _event(failure.body())
                    return
                status = 200
                metrics.answered(200, time.monotonic() - started, result["riselm"], result["usage"])
                for chunk in final_chunks(rid, chat_request, result, created, role=False):
                    yield _event(chunk) if chunk != "[DONE]" else b"data: [DONE]\n\n"
                return
        finally:
            if not future.done():
                job.given_up = True  # the client went away, or the request timed out
            if status != 200:
                metrics.answered(status, time.monotonic() - started)
            release()

    def final_chunks(rid: str, chat_request: ChatRequest, result: dict, created: int | None = None, role: bool = True):
        created = created or int(time.time())
        if role:
            yield chunk_body(rid, name, created, {"role": "assistant", "content": ""})
        yield chunk_body(rid, name, created, {"content": result["text"]})
        yield chunk_body(rid, name, created, {}, result["finish_reason"], riselm=result["riselm"])
        if chat_request.stream_options is not None and chat_request.stream_options.include_usage:
            yield chunk_body(rid, name, created, usage=result["usage"])
        yield "[DONE]"

    return app


def backend_error(error: BaseException) -> ApiError:
    """The answer to a request whose backend call failed (never the server's end)."""
    if isinstance(error, ApiError):
        return error
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status != 429:  # a proxied server refused the request
        return ApiError(status, f"the backend refused the request: {_one_line(error)}", code="backend_refused")
    if isinstance(error, BackendUnavailable):
        return ApiError(502, f"the backend is unavailable: {_one_line(error)}", code="backend_unavailable")
    return ApiError(500, f"the backend failed on this request: {type(error).__name__}: {_one_line(error)}", code="backend_error")


def _one_line(error: BaseException, limit: int = 500) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _event(body: dict) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


async def _sse(chunks) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield b"data: [DONE]\n\n" if chunk == "[DONE]" else _event(chunk)
