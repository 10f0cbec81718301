"""Watching work: a progress bar that can be switched off (tests, logs), and a timer for named steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator:
    if not enabled:
        yield _Silent()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, unit="gen", dynamic_ncols=True) as bar:
        yield bar


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to seconds[key]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
