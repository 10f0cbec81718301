"""Answer extraction, number parsing, MATH normalisation and equivalence (riselm.verify.math)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from riselm.verify import math as verify_math
from riselm.verify import mathverify
from riselm.verify.math import (
    exact_number,
    last_boxed,
    math_equivalent,
    normalize_math_answer,
    numbers_equal,
    parse_number,
)


# ---- last_boxed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),  # nested braces (the reference regex fails)
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
        ("the answer is $\\boxed 9$.", "9"),
        ("\\boxed {17}.", "17"),
        ("\\fbox{x+1}", "x+1"),
        ("\\boxed{ 5 }", "5"),
    ],
)
def test_last_boxed_finds_the_last_balanced_box(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    ["no box here", "\\boxed{1} and then \\boxed{\\frac{1}{2}", "\\boxed{}", "\\boxedx", "", None, 12, "}}}\\boxed{{"],
)
def test_last_boxed_gives_none_without_a_complete_final_box(text):
    assert last_boxed(text) is None


# ---- numbers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, value",
    [
        ("1,600", 1600.0),
        ("1,234,567", 1234567.0),
        ("$18.00", 18.0),
        ("\\$18", 18.0),
        ("75%", 75.0),
        ("-5", -5.0),
        ("\u22127", -7.0),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{2}", -0.5),
        ("18 dollars.", 18.0),
        ("5 \\text{cm}", 5.0),
        (".5", 0.5),
        ("42.", 42.0),
    ],
)
def test_parse_number_reads_written_answers(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "2\\sqrt{3}", "3+4", "1,60", "1/0", "1e400", "9" * 500, None])
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


def test_numbers_equal_reads_strings_and_tolerates_float_rounding():
    assert numbers_equal("1,600", 1600)
    assert numbers_equal(0.1 + 0.2, 0.3)  # floats carry rounding error: a tiny tolerance applies
    assert numbers_equal("$18.00", "18")
    assert not numbers_equal("18", "18.5")
    assert not numbers_equal("18", None)
    assert not numbers_equal("eighteen", "eighteen")


@pytest.mark.parametrize(
    "a, b",
    [
        ("1000001", "1000000"),  # equal under the old relative 1e-6 tolerance
        ("1,000,001", "1000000"),
        ("192000001", "192000000"),  # the size of GSM8K's largest train gold
        ("12345678901234567", "12345678901234568"),  # equal as floats: integers are read exactly
        (1000001, 1000000),
        (1e17, 1e17 + 16),  # two different integers, even as floats
        ("1000000.5", "1000000"),  # a decimal 0.5 away is not within a tolerance either
        ("0.000001", "0.000002"),  # small decimals are not all one number
        ("0.33", "1/3"),  # a written decimal is its exact value, not a rounding of another
        ("2.5", "2.5000001"),
        ("0.0000000001", "0.0000000002"),  # written numbers get no tolerance at all
        (1000000.5, 1000000.0),  # a float's tolerance is for rounding error only
    ],
)
def test_different_numbers_are_never_equal(a, b):
    assert not numbers_equal(a, b)
    assert not numbers_equal(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        ("1000000", "1,000,000"),
        ("1000000", "1000000.00"),
        ("0.5", "1/2"),
        ("0.75", "\\frac{3}{4}"),
        ("-2.50", "-5/2"),
        ("12345678901234567", "12,345,678,901,234,567"),
        (0.1 + 0.2, "0.3"),  # a float near the written decimal: rounding error only
        (2.5, "2.5"),
    ],
)
def test_equal_numbers_written_differently_are_equal(a, b):
    assert numbers_equal(a, b)
    assert numbers_equal(b, a)


def test_exact_number_is_strict():
    assert exact_number("\\frac{2}{4}") == exact_number("0.5") == exact_number("1/2")
    assert exact_number("1,000") is None  # a thousands separator or a tuple? math-verify decides
    assert exact_number("5 \\text{cm}") is None


# ---- normalisation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, normal",
    [
        ("\\left( 3, \\frac12 \\right)", "(3,\\frac{1}{2})"),
        ("\\dfrac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
        ("\\tfrac1{72}", "\\frac{1}{72}"),
        ("x = 5", "5"),
        ("5 \\text{ cm}", "5"),
        ("90^\\circ", "90"),
        ("\\$18.", "18"),
        ("10\\%", "10"),
        (".5", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("-3/4", "-\\frac{3}{4}"),
        ("1,\\!000", "1,000"),
        ("\\text{Devon}", "Devon"),
        ("y = 2x + 1", "2x+1"),
        ("a+b=c+d", "a+b=c+d"),  # not a short `x =` prefix: kept
    ],
)
def test_normalize_math_answer(raw, normal):
    assert normalize_math_answer(raw) == normal


# ---- equivalence ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gold, pred",
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("2\\sqrt{3}", "\\sqrt{12}"),  # needs math-verify (symbolic)
        ("x^2+2x+1", "(x+1)^2"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("1000", "1,000"),
        ("\\frac{1}{3}", "0.333333"),  # decimals compare with math-verify's rounding
        ("5", "x=5"),
    ],
)
def test_equivalent_answers(gold, pred):
    assert math_equivalent(gold, pred)


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("2\\sqrt{3}", "2"),
        ("\\pi", "3.14159"),
        ("\\frac{1}{3}", "0.333"),
        ("(1,2)", "(2,1)"),
        ("17", "18"),
        ("17", ""),
        ("17", "\\frac{1}{0}"),
        ("17", "}{"),
        ("17", None),
    ],
)
def test_non_equivalent_answers(gold, pred):
    assert not math_equivalent(gold, pred)


def test_equivalence_works_off_the_main_thread_and_times_out(monkeypatch):
    """math-verify's own timeout needs the main thread; ours must stop a hung check from any thread."""
    results: dict[str, object] = {}
    killed: list[mathverify._Worker] = []
    kill = mathverify._Worker.kill
    monkeypatch.setattr(mathverify._Worker, "kill", lambda worker: (kill(worker), killed.append(worker)))

    def work():
        start = time.monotonic()
        results["hung"] = math_equivalent("9^{9^{9}}", "9^{9^{8}}", timeout=1.0)  # sympy would run for ages
        results["hung_seconds"] = time.monotonic() - start
        results["symbolic"] = math_equivalent("2\\sqrt{3}", "\\sqrt{12}")  # the pool recovers
        results["different"] = math_equivalent("x^2", "x^3")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results["hung"] is False
    assert len(killed) == 1 and killed[0].proc.returncode is not None  # the hung process is gone
    assert killed[0] not in mathverify.workers._live
    assert results["hung_seconds"] < 30  # 1 s of checking, plus starting a worker on a busy machine
    assert results["symbolic"] is True
    assert results["different"] is False


def test_equivalence_from_many_threads_at_once():
    pairs = [("2\\sqrt{3}", "\\sqrt{12}", True), ("x^2+2x+1", "(x+1)^2", True), ("\\sqrt{2}", "2^{1/3}", False)] * 4
    results: list[bool | None] = [None] * len(pairs)

    def check(i: int, gold: str, pred: str) -> None:
        results[i] = math_equivalent(gold, pred)

    threads = [threading.Thread(target=check, args=(i, g, p)) for i, (g, p, _) in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [expected for _, _, expected in pairs]


def test_in_process_mode_agrees_with_the_worker():
    assert math_equivalent("2\\sqrt{3}", "\\sqrt{12}", timeout=None)
    assert not math_equivalent("2\\sqrt{3}", "2", timeout=None)


def test_fast_path_does_not_start_math_verify(monkeypatch):
    """Equal strings and plain numbers are settled here, without the worker process."""

    def fail(*args):
        raise AssertionError("math-verify should not be needed")

    monkeypatch.setattr(mathverify.workers, "check", fail)
    monkeypatch.setattr(verify_math, "in_process", fail)
    assert math_equivalent("\\frac{1}{2}", "0.5")
    assert math_equivalent("\\left(1,2\\right)", "(1, 2)")
    assert not math_equivalent("17", "-17")
    assert not math_equivalent("\\frac{1}{2}", "\\frac{2}{3}")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_workers():
    """A child forked after the parent used the pool must not talk to the parent's worker processes."""
    assert math_equivalent("2\\sqrt{3}", "\\sqrt{12}")  # the parent now holds an idle worker
    assert mathverify.workers._idle
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            ok = not mathverify.workers._idle and math_equivalent("x^2+2x+1", "(x+1)^2")
            os.write(write, b"1" if ok else b"0")
        finally:
            mathverify.workers.close()
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert math_equivalent("\\sqrt{8}", "2\\sqrt{2}")  # the parent's own worker still answers
