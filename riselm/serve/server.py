"""Running a server: `serve(model, ...)` builds the backend and runs the app under uvicorn until SIGTERM/SIGINT.

Shutdown is uvicorn's graceful one: on SIGTERM the server stops accepting connections, lets the
requests in flight finish (streams included, for up to `drain_s` seconds), then stops the queue's
workers and closes the backend.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from riselm.generation.base import DEFAULT_BATCH_SIZE
from riselm.serve.settings import ServeSettings

logger = logging.getLogger("riselm.serve")


def build_backend(
    model: str,
    backend: str = "hf",
    *,
    base_url: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    settings: ServeSettings = ServeSettings(),
    options: dict[str, Any] | None = None,
    check: bool = True,
):
    """The generator a server answers with. On the openai backend the generator's own concurrency,
    time limits and retries are fitted to the server's (a request never waits past its timeout), and
    the server behind it is checked first (`check`): an unreachable one is an error now, not at the first request."""
    from riselm.generators import build_generator

    options = dict(options or {})
    if backend == "openai":
        options.setdefault("max_concurrency", settings.max_concurrency)
        options.setdefault("timeout", settings.request_timeout)
        options.setdefault("max_wait_s", settings.request_timeout)
        options.setdefault("max_retries", 2)
    generator = build_generator(model, backend=backend, base_url=base_url, batch_size=batch_size, **options)
    if backend == "openai" and check:
        from riselm.generation.openai_compat import OpenAIGenerator

        assert isinstance(generator, OpenAIGenerator)
        try:
            generator.check()
        except Exception:
            generator.close()
            raise
    return generator


def run_server(app, host: str = "127.0.0.1", port: int = 8000, drain_s: float | None = None, log_level: str = "info") -> None:
    """Run `app` until SIGTERM or SIGINT, draining the requests in flight first (at most `drain_s` seconds; None: no limit)."""
    import uvicorn

    drain = None if drain_s is None else max(1, math.ceil(drain_s))
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain, lifespan="on", access_log=True)
    uvicorn.Server(config).run()


def serve(
    model: str,
    settings: ServeSettings = ServeSettings(),
    *,
    backend: str = "hf",
    base_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_size: int = DEFAULT_BATCH_SIZE,
    options: dict[str, Any] | None = None,
    api_key_env: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve `model` (see `riselm serve --help`) until stopped; the backend is closed at the end.

    api_key_env: a variable holding the key clients must send (none: no key is asked for).
    """
    from riselm.serve.app import create_app

    if not logger.handlers:  # the startup line and backend failures, beside uvicorn's own lines
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(getattr(logging, log_level.upper(), logging.INFO))
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise ValueError(f"--api-key-env {api_key_env}: the variable is not set (or empty)")
    generator = build_backend(model, backend, base_url=base_url, batch_size=batch_size, settings=settings, options=options)
    try:
        app = create_app(generator, settings, model_name=settings.served_model_name or model, api_key=api_key)
        task = app.state.task.name
        logger.info(
            "riselm serve: %s (%s backend) on http://%s:%d, task %s, K=%d, window %s, %s",
            settings.served_model_name or model,
            backend,
            host,
            port,
            task,
            settings.turns,
            settings.window or "all",
            f"stop when {settings.stop_when_stable} turns agree" if settings.stop_when_stable else "every turn",
        )
        run_server(app, host, port, drain_s=settings.request_timeout + 5, log_level=log_level)
    finally:
        generator.close()
