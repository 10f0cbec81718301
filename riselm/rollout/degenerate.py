"""Detecting degenerate model responses (runaway repetition, absurd "words") to drop from collection."""

from __future__ import annotations

import re

MAX_WORD_CHARS = 120  # longer whitespace-free runs are junk (long LaTeX stays well under this)
MIN_REPEATS = 6  # a chunk repeated back to back this many times is a generation loop...
MIN_LOOP_CHARS = 48  # ...when the loop also spans this many characters (1000000 or "....." are fine)


def _has_runaway_repetition(text: str) -> bool:
    # Any substring of 1..60 characters repeated MIN_REPEATS times in a row over MIN_LOOP_CHARS.
    loops = re.finditer(rf"(.{{1,60}}?)\1{{{MIN_REPEATS - 1},}}", text, flags=re.DOTALL)
    return any(m.end() - m.start() >= MIN_LOOP_CHARS for m in loops)


def is_degenerate(text: str) -> bool:
    """Whether a response is junk: empty, looping, or holding an absurdly long 'word'."""
    stripped = text.strip()
    if not stripped:
        return True
    if any(len(word) > MAX_WORD_CHARS for word in stripped.split()):
        return True
    return _has_runaway_repetition(stripped)
