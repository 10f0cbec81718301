from riselm.rollout.degenerate import is_degenerate


def test_loops_long_words_and_empty_are_degenerate():
    assert is_degenerate("The answer is " + "so " * 30)
    assert is_degenerate("x" * 200)
    assert is_degenerate("   ")


def test_ordinary_answers_are_not():
    assert not is_degenerate("3 + 4 = 7, so the answer is \\boxed{7}.")
    assert not is_degenerate("1000000 cells ...... are many \\boxed{\\frac{\\sqrt{3}}{2}}")
