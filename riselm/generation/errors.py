"""Errors the generation backends raise for conditions the caller should handle."""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A generation server could not be reached (or kept failing) within the allowed wait."""
