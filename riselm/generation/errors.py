"""Errors the generation backends raise for conditions the caller should handle."""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A generation server could not be reached (or kept failing) within the allowed wait.

    The message is one line naming the server and what went wrong, e.g. "the server at URL stopped
    answering (connection refused) after answering 500: <its last error>; gave up after 4 attempts in
    2.0 s (max_wait_s=2)".
    """
