"""A progress bar that can be switched off (tests, logs) without changing the calling code."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


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
