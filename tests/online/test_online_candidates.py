"""Turns that sampled several candidates: the credit settings apply to them, values checked by hand.

One problem, two episodes, `online.candidates: [1, 3]` (turn 1 alone, three candidates later):

    episode A: turn 1 reward 0; turn 2 candidates [0, 1, -1] (continued with 1); turn 3 [1, 0, 1] (with the first 1)
    episode B: turn 1 reward 1; turn 2 candidates [1, 0, 0] (continued with the first); it ends there

Candidates are told apart by their token ids: row k of a turn holds candidate k's ids.
"""

from __future__ import annotations

import math

import pytest

from riselm.online.batch import OnlineError, action_rows
from riselm.rollout.episode import Candidate, Episode, Turn
from riselm.settings import CreditSettings

PROMPT = (1, 2, 3)


def turn(rewards: list[float], chosen: int, turn_index: int, episode: int) -> Turn:
    texts = [f"e{episode} t{turn_index} c{k}" for k in range(len(rewards))]
    candidates = [Candidate(texts[k], r, None, (100 * episode + 10 * turn_index + k,)) for k, r in enumerate(rewards)]
    return Turn(texts[chosen], None, rewards[chosen], prompt_ids=PROMPT + (turn_index,), candidates=candidates, num_candidates=len(rewards))


EPISODE_A = Episode(
    "p",
    "toy",
    "online",
    prompt="q",
    sample=0,
    turns=[turn([0.0], 0, 1, 0), turn([0.0, 1.0, -1.0], 1, 2, 0), turn([1.0, 0.0, 1.0], 0, 3, 0)],
)
EPISODE_B = Episode("p", "toy", "online", prompt="q", sample=1, turns=[turn([1.0], 0, 1, 1), turn([1.0, 0.0, 0.0], 0, 2, 1)])


def advantages(credit: CreditSettings, chosen_only: bool = False) -> dict[int, float]:
    """The advantage of each row, by the (unique) id of the candidate it trains."""
    rows = action_rows([[EPISODE_A, EPISODE_B]], credit, chosen_only=chosen_only)
    by_id = {row.action_ids[0]: row.advantage for row in rows}
    assert len(by_id) == len(rows)
    return by_id


def assert_values(actual: dict[int, float], expected: dict[int, float]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-12), (key, actual[key], value)


# Shaping α = 0.5, discount γ = 0.5, return-to-go.
#   A: rewards [0, 1, 1] -> shaped [0, 1.5, 1] -> R = [0 + .5·1.5 + .25·1, 1.5 + .5·1, 1] = [1.0, 2.0, 1.0]
#   B: rewards [1, 1]    -> shaped [1, 1]      -> R = [1.5, 1.0]
# Turn 1 (one candidate each): leave-one-out over the other episode: A 1.0 − 1.5, B 1.5 − 1.0.
# A turn 2 (after 0): values [0, R_2 = 2.0, −1 + .5·(−1) = −1.5]
# A turn 3 (after 1): values [R_3 = 1.0, 0 + .5·(−1) = −0.5, 1 + 0 = 1.0]
# B turn 2 (after 1): values [R_2 = 1.0, −0.5, −0.5]
VALUES = {
    21: 2.0,
    20: 0.0,
    22: -1.5,
    30: 1.0,
    31: -0.5,
    32: 1.0,
    120: 1.0,
    121: -0.5,
    122: -0.5,
}
SIBLINGS = {0: [21, 20, 22], 1: [30, 31, 32], 2: [120, 121, 122]}
RTG = CreditSettings(returns="return_to_go", discount=0.5, improvement_bonus=0.5)


def leave_one_out(values: dict[int, float]) -> dict[int, float]:
    out = {}
    for ids in SIBLINGS.values():
        for i in ids:
            peers = [values[j] for j in ids if j != i]
            out[i] = values[i] - sum(peers) / len(peers)
    return out


def test_return_to_go_with_the_sibling_baseline():
    expected = {10: 1.0 - 1.5, 110: 1.5 - 1.0, **leave_one_out(VALUES)}
    # written out for turn 2 of A: 2.0 − (0 − 1.5)/2 = 2.75 for the continued candidate
    assert expected[21] == pytest.approx(2.75) and expected[20] == pytest.approx(-0.25) and expected[22] == pytest.approx(-2.5)
    assert_values(advantages(RTG), expected)


def test_reward_only_gives_the_continued_candidate_no_continuation():
    credit = RTG.model_copy(update={"returns": "reward"})
    values = {**VALUES, 21: 1.5}  # r'(c*) = 1 + .5·(1 − 0), nothing after; turns 3 and B's 2 end the episodes
    expected = {10: 0.0 - 1.0, 110: 1.0 - 0.0, **leave_one_out(values)}
    assert_values(advantages(credit), expected)


def test_no_baseline_gives_the_values_themselves():
    credit = RTG.model_copy(update={"baseline": "none"})
    assert_values(advantages(credit), {10: 1.0, 110: 1.5, **VALUES})


def test_std_scaling_divides_by_the_siblings_std():
    credit = RTG.model_copy(update={"scale_by_std": True})
    unscaled = leave_one_out(VALUES)
    expected = {10: 1.0 - 1.5, 110: 1.5 - 1.0}  # one peer episode: never scaled
    for ids in SIBLINGS.values():
        for i in ids:
            a, b = (VALUES[j] for j in ids if j != i)
            std = abs(a - b) / math.sqrt(2)  # the sample std of two values
            expected[i] = unscaled[i] / std if std > credit.eps else unscaled[i]
    assert_values(advantages(credit), expected)


def test_chosen_only_trains_the_continued_candidates_with_the_episode_credit():
    rows = action_rows([[EPISODE_A, EPISODE_B]], RTG, chosen_only=True)
    # one row per turn, holding the candidate the episode continued with, credited as a turn of its
    # episode: leave-one-out over the other episode at the same turn (A's turn 3 has no peer: baseline 0)
    assert [(r.action_ids[0], r.turn) for r in rows] == [(10, 0), (21, 1), (30, 2), (110, 0), (120, 1)]
    expected = [1.0 - 1.5, 2.0 - 1.0, 1.0, 1.5 - 1.0, 1.0 - 2.0]
    assert [r.advantage for r in rows] == pytest.approx(expected, abs=1e-12)


def test_a_turn_whose_action_is_none_of_its_candidates_is_an_error():
    bad = Episode("p", "toy", "online", prompt="q", turns=[turn([0.0, 1.0], 1, 1, 0)])
    bad.turns[0].response = "something else"
    with pytest.raises(OnlineError, match="turn 1's action is none of its 2 candidates"):
        action_rows([[bad]], RTG)
