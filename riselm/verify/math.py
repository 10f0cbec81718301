"""Final answers of math problems: extraction from `\\boxed{}`, numbers, and equivalence checking.

- `last_boxed` takes the final answer from a response (balanced braces, so `\\boxed{\\frac{\\sqrt{3}}{2}}`
  works, unlike the RISE reference regex).
- `parse_number` / `numbers_equal` compare numeric answers (GSM8K): "1,600", "$18.00", "75%", "3/4",
  by their exact values (no tolerance between written numbers; see `numbers_equal`).
- `normalize_math_answer` is the Hendrycks MATH string normalisation.
- `math_equivalent(gold, pred)` decides MATH answers: a fast in-process check (normalised strings, exact
  numbers), then math-verify (`parse(gold)`, `parse(pred)`, `verify(gold, pred)`, in that order since
  `verify` is not symmetric).

math-verify runs in worker processes killed at the timeout (`riselm.verify.mathverify`), so
`math_equivalent` can be called from any thread.
"""

from __future__ import annotations

import logging
import math
import re
from fractions import Fraction

from riselm.verify.mathverify import in_process, workers

_BOX_COMMANDS = ("\\boxed", "\\fbox")
logger = logging.getLogger(__name__)


# ---- extraction ---------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\boxed x`, `\\fbox{...}`) in `text`, stripped.

    Braces are matched with nesting (escaped `\\{`, `\\}` do not count). None when there is no box,
    when the last box is unbalanced (e.g. a response cut off mid-answer) or empty. Never raises.
    """
    if not isinstance(text, str):
        return None
    pos, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if pos < 0:
        return None
    rest = text[pos + len(command) :]
    body = rest.lstrip(" \t")
    if body.startswith("{"):
        content = _braced_group(body)
    elif body is not rest:  # "\boxed 5$": the answer is the token after the space
        token = re.match(r"[^\s$]+", body)
        content = token.group(0) if token else None
    else:  # "\boxedfoo" is some other command, not a box
        content = None
    if content is None or not content.strip():
        return None
    return content.strip()


def _braced_group(text: str) -> str | None:
    """The content of the `{...}` group that opens `text`, or None when it never closes."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes a group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[1:i]
        i += 1
    return None


# ---- numbers ------------------------------------------------------------------------------------
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_SLASH_FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TRAILING_UNITS = re.compile(r"(\s*\\(?:text|mbox|mathrm)\{[^{}]*\}|\s+[A-Za-z][A-Za-z'.]*)+$")


def exact_number(text: str) -> Fraction | None:
    """The exact value of a bare number: "-12", "0.5", ".5", "3/4", "\\frac{3}{4}", "-\\dfrac{1}{2}".

    Anything else (units, signs of currency, expressions) gives None: this is the strict parser used
    where a wrong "yes, that is a number" would be costly (`math_equivalent`).
    """
    text = text.strip()
    if len(text) > 100:  # no answer worth comparing is that long, and int() of huge strings is slow
        return None
    try:
        if _PLAIN_NUMBER.fullmatch(text):
            return Fraction(text)
        fraction = _SLASH_FRACTION.fullmatch(text) or _LATEX_FRACTION.fullmatch(text)
        if fraction:
            sign, num, den = fraction.groups()
            value = Fraction(int(num), int(den))  # ZeroDivisionError for "1/0"
            return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def parse_number(text: str) -> float | None:
    """A number written the way people and models write final answers, or None.

    Accepts thousands separators ("1,600"), currency ("$18", "\\$18"), percent ("75%" -> 75),
    trailing units or words ("18 dollars", "5 \\text{cm}"), a trailing period, negative numbers,
    simple fractions ("3/4") and `\\frac{a}{b}` / `\\dfrac{a}{b}`. Never raises.

    Digits are Unicode decimal digits, as in Python's `int`: full-width "４２" and Arabic-Indic "٤٢"
    are the number 42. They write the same value, so they score (and vote) as that value.
    The value as a float; `written_value` gives it exactly.
    """
    value = written_value(text)
    return None if value is None else float(value)


def written_value(text: str) -> Fraction | None:
    """The exact value of a number read as `parse_number` reads it, or None."""
    if not isinstance(text, str):
        return None
    text = text.strip().replace("\u2212", "-")  # unicode minus
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = text.replace("\\!", "").replace("\\,", "")
    text = _TRAILING_UNITS.sub("", text.strip()).rstrip(".").strip()
    text = _THOUSANDS_COMMA.sub("", text)
    return exact_number(text)


def numbers_equal(a: float | int | str | None, b: float | int | str | None) -> bool:
    """Whether two numbers (or numeric strings, read with `parse_number`) are the same number.

    Strings and ints compare by exact value ("1,000,001" is not "1000000", "0.5" is "1/2", "0.33" is
    not "1/3"). Only a float argument, which may carry rounding error (0.1 + 0.2), gets a tolerance
    (1e-9 absolute, 1e-12 relative), and only when a side is not an integer: two different integers
    are never equal, however large.
    """
    x, y = (written_value(v) if isinstance(v, str) else _number_value(v) for v in (a, b))
    if x is None or y is None:
        return False
    if x == y:  # Fraction == float compares exact values
        return True
    if (isinstance(x, Fraction) and isinstance(y, Fraction)) or (_is_integer(x) and _is_integer(y)):
        return False  # different exact values, or two different integers
    return math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-9)


def _number_value(x: object) -> Fraction | float | None:
    if isinstance(x, int) and not isinstance(x, bool):
        return Fraction(x)
    return x if isinstance(x, float) and not math.isnan(x) else None


def _is_integer(x: Fraction | float) -> bool:
    return x.denominator == 1 if isinstance(x, Fraction) else x.is_integer()


# ---- Hendrycks MATH normalisation ---------------------------------------------------------------
_UNIT_MARKERS = ("\\text{ ", "\\mbox{ ")  # a space after the brace marks units: "5 \text{ cm}"
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")


def normalize_math_answer(answer: str) -> str:
    """The Hendrycks MATH normalisation, so that equal answers written differently compare equal.

    Drops layout (`\\left`, `\\right`, `\\!`, spaces, line breaks), units after `\\text{ `, degrees,
    dollar and percent signs, a trailing period and a short `x =` prefix; rewrites `\\dfrac`/`\\tfrac`
    as `\\frac`, `\\frac12` as `\\frac{1}{2}`, `\\sqrt3` as `\\sqrt{3}`, `3/4` as `\\frac{3}{4}`,
    `.5` as `0.5` and `0.5` as `\\frac{1}{2}`.
    """
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    for marker in _UNIT_MARKERS:
        s = s.split(marker)[0]
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    left, eq, right = s.partition("=")
    if eq and "=" not in right and len(left.strip()) <= 2:  # "x = 5" and "k=5" answer 5
        s = right
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _brace_frac_arguments(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    fraction = _SLASH_FRACTION.fullmatch(s)
    if fraction:
        sign, num, den = fraction.groups()
        s = f"{sign}\\frac{{{num}}}{{{den}}}"
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]
    return s


def _brace_frac_arguments(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; well-formed fractions unchanged."""
    pieces = s.split("\\frac")
    out = [pieces[0]]
    for piece in pieces[1:]:
        args = []
        rest = piece
        for _ in range(2):
            if rest.startswith("{"):
                group = _braced_group(rest)
                if group is None:
                    break
                args.append(group)
                rest = rest[len(group) + 2 :]
            elif rest and rest[0] != "\\":
                args.append(rest[0])
                rest = rest[1:]
            else:
                break
        if len(args) == 2:
            out.append(f"\\frac{{{args[0]}}}{{{args[1]}}}{rest}")
        else:  # not a fraction we understand: leave it as written
            out.append("\\frac" + piece)
    return "".join(out)


# ---- equivalence --------------------------------------------------------------------------------
def math_equivalent(gold: str, pred: str, timeout: float | None = 5.0) -> bool:
    """Whether `pred` is mathematically equivalent to `gold` (both final answers, without `\\boxed`).

    The fast path runs here: equal normalised strings or equal exact numbers are equivalent, and two
    different integers or fractions are not. Everything else goes to math-verify in a worker process,
    killed after `timeout` seconds (timeout=None runs math-verify in this process with no limit).
    A timeout or any error counts as not equivalent. Safe to call from any thread; never raises.
    """
    if not isinstance(gold, str) or not isinstance(pred, str) or not gold.strip() or not pred.strip():
        return False
    try:
        verdict = _quick_verdict(gold, pred)
        if verdict is not None:
            return verdict
        if timeout is None:
            return in_process(gold, pred)
        return workers.check(gold, pred, timeout)
    except Exception as e:  # never crash a run; but a broken checker should not go unnoticed
        logger.warning("math_equivalent(%r, %r) failed, counted as not equivalent: %s", gold[:50], pred[:50], e)
        return False


def _quick_verdict(gold: str, pred: str) -> bool | None:
    """True/False when cheap checks settle the question, None when math-verify must decide."""
    g, p = normalize_math_answer(gold), normalize_math_answer(pred)
    if g == p:
        return True
    g_value, p_value = exact_number(g), exact_number(p)
    if g_value is None or p_value is None:
        return None
    if g_value == p_value:
        return True
    if "." not in g and "." not in p:
        return False  # exact integers/fractions that differ; decimals may still match by rounding
    return None
