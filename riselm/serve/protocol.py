"""The OpenAI chat completions protocol as riselm serves it: requests checked field by field, errors in
OpenAI's shape, and the response and stream chunk bodies.

A request is OpenAI's `POST /v1/chat/completions` body. riselm reads `model`, `messages`, `stream`,
`stream_options.include_usage`, `temperature`, `top_p`, `max_tokens` (or `max_completion_tokens`),
`seed` and `n` (only 1), and its own object `riselm` (the openai client's `extra_body={"riselm": {...}}`):
`turns`, `window`, `stop_when_stable`, `stream_turns`. Other OpenAI fields are accepted and ignored,
except those that would change the answer and that riselm cannot honour (`stop`, `tools`,
`logprobs`, `response_format` and friends), which are a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout",
}
# fields that would change the answer and that riselm does not honour
UNSUPPORTED = (
    "stop",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logprobs",
    "top_logprobs",
    "response_format",
    "logit_bias",
    "prediction",
    "audio",
)


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class RiselmOptions(BaseModel):
    """The request's own `riselm` object (all optional: the server's settings otherwise)."""

    model_config = ConfigDict(extra="forbid")
    turns: StrictInt | None = Field(None, ge=1)
    window: StrictInt | None = Field(None, ge=1)
    stop_when_stable: StrictInt | None = Field(None, ge=0)
    stream_turns: StrictBool = False  # with stream: true, one chunk per turn as it finishes

    @field_validator("stop_when_stable")
    @classmethod
    def _not_one(cls, value):
        if value == 1:
            raise ValueError("must be 0 (off) or at least 2")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"only text parts are served, got a part of type {part.get('type')!r}")
            if not isinstance(part.get("text"), str):
                raise ValueError("a text part needs a string 'text'")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1, le=1)
    seed: StrictInt | None = Field(None, ge=0, lt=2**63)
    riselm: RiselmOptions = RiselmOptions()

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(body: Any) -> ChatRequest:
    """The request, or an ApiError(400) whose message and `param` name the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):
            raise ApiError(400, f"'{name}' is not supported by riselm serve", param=name, code="unsupported_parameter")
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = _param(first["loc"])
        raise ApiError(400, f"'{param}': {first['msg'].removeprefix('Value error, ')}", param=param) from None
    for i, message in enumerate(request.messages):
        try:
            message.text()
        except ValueError as error:
            raise ApiError(400, f"'messages[{i}].content': {error}", param=f"messages[{i}].content") from None
    return request


def _param(loc) -> str:
    """A pydantic error location as the field's name in the request: messages[0].role, riselm.turns."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "list[dict[str,any]]") and not str(part).startswith(("list[", "function-")):
            out += ("." if out else "") + str(part)
    return out or "body"


def split_messages(request: ChatRequest) -> tuple[str | None, list[dict[str, str]]]:
    """(the system text of the leading system/developer messages or None, the other messages as chat messages).

    The last message must be the user's; a system message after the conversation started is a 400.
    """
    system_parts: list[str] = []
    rest: list[dict[str, str]] = []
    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        if role == "system":
            if rest:
                raise ApiError(400, f"'messages[{i}]': system messages must come before the conversation", param=f"messages[{i}].role")
            system_parts.append(message.text())
        else:
            rest.append({"role": role, "content": message.text()})
    if not rest or rest[-1]["role"] != "user":
        raise ApiError(400, "'messages': the last message must be the user's (the question to answer)", param="messages")
    return ("\n\n".join(system_parts) if system_parts else None), rest


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(rid: str, model: str, text: str, finish_reason: str, usage: dict, riselm: dict) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
        "riselm": riselm,
    }


def chunk_body(
    rid: str, model: str, created: int, delta: dict | None = None, finish_reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` gives a chunk without choices (turn events, usage)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices, **extra}
