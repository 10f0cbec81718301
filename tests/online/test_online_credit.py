"""Per-turn advantages, checked against values computed by hand (written out in each test)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from riselm.online.credit import (
    CreditSettings,
    flat_turns,
    returns_to_go,
    shaped_rewards,
    turn_advantages,
)

# One problem, three episodes of 2, 1 and 3 turns (the third starts with an unparsable answer, −1).
PROBLEM = [[0.0, 1.0], [1.0], [-1.0, 0.0, 1.0]]


def close(actual, expected):
    """Nested lists equal up to float rounding."""
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        if isinstance(e, list):
            close(a, e)
        else:
            assert a == pytest.approx(e, abs=1e-12), (actual, expected)


def test_returns_to_go():
    close(returns_to_go([1.0, 2.0, 3.0], 1.0), [6.0, 5.0, 3.0])
    close(returns_to_go([1.0, 2.0, 3.0], 0.5), [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0])
    close(returns_to_go([1.0, 2.0, 3.0], 0.0), [1.0, 2.0, 3.0])
    assert returns_to_go([], 1.0) == []


def test_shaped_rewards_improvement_and_regression():
    off = CreditSettings()
    assert shaped_rewards([0, 1, 0, 1], off) == [0, 1, 0, 1]
    bonus = CreditSettings(improvement_bonus=0.5)
    # r'_2 = 1 + 0.5·(1 − 0), r'_3 = 0 + 0.5·(0 − 1), r'_4 = 1 + 0.5·1
    close(shaped_rewards([0, 1, 0, 1], bonus), [0, 1.5, -0.5, 1.5])
    both = CreditSettings(improvement_bonus=0.5, regression_penalty=0.25)
    close(shaped_rewards([0, 1, 0, 1], both), [0, 1.5, -0.75, 1.5])  # turn 3 turned right into wrong
    # unparsable (−1) then wrong (0) is an improvement; right then unparsable is a regression.
    close(shaped_rewards([-1, 0], bonus), [-1, 0.5])
    close(shaped_rewards([1, -1], both), [1, -1 + 0.5 * (-2) - 0.25])
    # the first turn is never shaped
    close(shaped_rewards([1], both), [1])


def test_regression_uses_correct_threshold():
    settings = CreditSettings(regression_penalty=1.0, correct_threshold=0.5)
    close(shaped_rewards([0.6, 0.4], settings), [0.6, 0.4 - 1.0])
    close(shaped_rewards([0.4, 0.3], settings), [0.4, 0.3])
    # still correct (0.9 ≥ 0.5) although the shaped value drops below the threshold: no penalty
    steep = CreditSettings(improvement_bonus=5.0, regression_penalty=1.0, correct_threshold=0.5)
    close(shaped_rewards([1.0, 0.9], steep), [1.0, 0.9 + 5.0 * (0.9 - 1.0)])


def test_leave_one_out_return_to_go_gamma_1():
    # returns: [1, 1], [1], [0, 1, 1].
    # turn 1: peers of e1 {1, 0} → 1 − 0.5; e2 likewise; e3: peers {1, 1} → 0 − 1.
    # turn 2: e1 and e3 both return 1 → 0.  turn 3: only e3 reached it → baseline 0 → 1.
    close(turn_advantages([PROBLEM]), [[[0.5, 0.0], [0.5], [-1.0, 0.0, 1.0]]])


def test_leave_one_out_return_to_go_gamma_half():
    # returns: e1 [0 + 0.5·1, 1] = [0.5, 1]; e2 [1]; e3 [−1 + 0.5·0 + 0.25·1, 0 + 0.5·1, 1] = [−0.75, 0.5, 1].
    # turn 1: e1 0.5 − (1 − 0.75)/2 = 0.375; e2 1 − (0.5 − 0.75)/2 = 1.125; e3 −0.75 − (0.5 + 1)/2 = −1.5.
    # turn 2: e1 1 − 0.5 = 0.5; e3 0.5 − 1 = −0.5.  turn 3: e3 alone → 1.
    expected = [[[0.375, 0.5], [1.125], [-1.5, -0.5, 1.0]]]
    close(turn_advantages([PROBLEM], CreditSettings(discount=0.5)), expected)


def test_reward_mode_judges_each_turn_alone():
    # turn 1 rewards {0, 1, −1}: e1 0 − 0 = 0; e2 1 − (−0.5) = 1.5; e3 −1 − 0.5 = −1.5.
    # turn 2 rewards {1, 0}: e1 1 − 0 = 1; e3 0 − 1 = −1.  turn 3: e3 alone → 1.
    expected = [[[0.0, 1.0], [1.5], [-1.5, -1.0, 1.0]]]
    close(turn_advantages([PROBLEM], CreditSettings(returns="reward")), expected)
    # γ = 0 is the same thing
    close(turn_advantages([PROBLEM], CreditSettings(discount=0.0)), expected)


def test_no_baseline_is_the_raw_return():
    close(turn_advantages([PROBLEM], CreditSettings(baseline="none")), [[[1, 1], [1], [0, 1, 1]]])


def test_shaping_enters_the_returns():
    # α = 0.5, β = 0.25. e1 [0, 1] → r' [0, 1.5] → R [1.5, 1.5];
    # e2 [1, 0] → r' [1, −0.75] → R [0.25, −0.75].
    # turn 1: e1 1.5 − 0.25 = 1.25; e2 0.25 − 1.5 = −1.25.  turn 2: e1 1.5 + 0.75 = 2.25; e2 −2.25.
    settings = CreditSettings(improvement_bonus=0.5, regression_penalty=0.25)
    close(turn_advantages([[[0, 1], [1, 0]]], settings), [[[1.25, 2.25], [-1.25, -2.25]]])


def test_problems_are_independent_and_a_lone_episode_gets_its_return():
    # the second problem has one episode: no peers anywhere → baseline 0
    out = turn_advantages([PROBLEM, [[0.0, 1.0]]])
    close(out, [[[0.5, 0.0], [0.5], [-1.0, 0.0, 1.0]], [[1.0, 1.0]]])


def test_std_scaling_leave_one_out():
    # 4 episodes, γ = 1: returns e1 [1], e2 [1, 1], e3 [0, 0], e4 [0, 0].
    problem = [[1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    # turn 1 returns {1, 1, 0, 0}. e1's peers {1, 0, 0}: mean 1/3, sample std √(1/3) → (2/3)/√(1/3) = 2/√3.
    # e3's peers {1, 1, 0}: mean 2/3, std √(1/3) → −(2/3)/√(1/3) = −2/√3.
    # turn 2 (e2, e3, e4 reached it): returns {1, 0, 0}. e2's peers {0, 0}: std 0 → not scaled: 1 − 0 = 1.
    # e3's peers {1, 0}: mean 1/2, std √(1/2) → −0.5/√0.5 = −√0.5.
    s = 2 / math.sqrt(3)
    expected = [[[s], [s, 1.0], [-s, -math.sqrt(0.5)], [-s, -math.sqrt(0.5)]]]
    close(turn_advantages([problem], CreditSettings(scale_by_std=True)), expected)
    unscaled = [[[2 / 3], [2 / 3, 1.0], [-2 / 3, -0.5], [-2 / 3, -0.5]]]
    close(turn_advantages([problem], CreditSettings(scale_by_std=False)), unscaled)


def test_std_scaling_needs_two_peers():
    # two episodes: each has a single peer → never scaled
    problem = [[0.0, 1.0], [1.0]]
    scaled = turn_advantages([problem], CreditSettings(scale_by_std=True))
    close(scaled, turn_advantages([problem], CreditSettings()))
    close(scaled, [[[0.0, 1.0], [0.0]]])


def test_shape_is_kept_with_empty_episodes_and_problems():
    assert turn_advantages([]) == []
    assert turn_advantages([[]]) == [[]]
    assert turn_advantages([[[], [1.0]]]) == [[[], [1.0]]]


def test_flat_turns_order():
    assert flat_turns([[[1, 2], [3]], [[4, 5, 6]]]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_settings_are_validated_and_frozen():
    with pytest.raises(ValidationError):
        CreditSettings(discount=1.5)
    with pytest.raises(ValidationError):
        CreditSettings(improvement_bonus=-0.1)
    with pytest.raises(ValidationError):
        CreditSettings(baseline="group_mean")
    with pytest.raises(ValidationError):
        CreditSettings(discont=0.5)  # a typo is an error, not a silently ignored setting
    with pytest.raises(ValidationError):
        CreditSettings().discount = 0.5


def test_non_finite_rewards_are_rejected():
    with pytest.raises(ValueError, match="finite"):
        turn_advantages([[[0.0, float("nan")]]])
