"""`riselm serve`: sequential self-improvement behind an OpenAI-compatible API, and a page to watch it.

Per request: up to K turns through riselm's rollout engine (the task's retry message after each),
each turn's answer extracted by the task, a majority vote over the answers as m1@tK counts it, and
the voted turn's text as the assistant message. `create_app(generator, ServeSettings(...))` embeds
it; `serve(model, ...)` runs it; `render_episodes` / `view_file` draw any episodes file turn by turn.

Needs the `serve` extra: pip install 'riselm[serve]' (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from riselm.serve.settings import ServeSettings

__all__ = ["GenericTask", "ServeSettings", "create_app", "render_episodes", "serve", "view_file"]


def __getattr__(name: str):  # FastAPI and friends are imported only when a server is made
    if name == "GenericTask":
        from riselm.serve.task import GenericTask

        return GenericTask
    if name == "create_app":
        from riselm.serve.app import create_app

        return create_app
    if name == "serve":
        from riselm.serve.server import serve

        return serve
    if name in ("render_episodes", "view_file"):
        from riselm.serve import view

        return getattr(view, name)
    raise AttributeError(f"module 'riselm.serve' has no attribute {name!r}")
