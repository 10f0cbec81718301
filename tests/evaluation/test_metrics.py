"""Every metric against hand-computed expectations."""

import pytest

from riselm.evaluation.metrics import (
    episode_metrics,
    majority_vote,
    parallel_metrics,
    pass_at_k,
    sequential_metrics,
)
from riselm.rollout.episode import Episode, Turn


def same(a, b):
    return float(a) == float(b)


def seq_episode(pid, turns):
    """turns: list of (pred, reward)."""
    return Episode(id=pid, task="arithmetic", mode="sequential", prompt="q", turns=[Turn("r", p, r) for p, r in turns])


def test_majority_vote_plurality_wins():
    assert majority_vote(["1", "2", "2", None], same) == 2


def test_majority_vote_groups_by_equivalence():
    assert majority_vote(["0.50", "7", "0.5"], same) == 2


def test_majority_vote_tie_goes_to_most_recent():
    assert majority_vote(["1", "2"], same) == 1
    assert majority_vote(["1", "2", "1", "2"], same) == 3
    assert majority_vote(["2", "1", "2", "1"], same) == 3


def test_majority_vote_null_never_wins_unless_all_null():
    assert majority_vote([None, None, "3"], same) == 2
    assert majority_vote([None, None], same) is None


@pytest.fixture
def four_episodes():
    return [
        seq_episode("e1", [("1", 1), ("1", 1), ("1", 1)]),
        seq_episode("e2", [("5", 0), ("7", 1), ("7", 1)]),
        seq_episode("e3", [("3", 1), ("4", 0), ("4", 0)]),
        seq_episode("e4", [(None, 0), ("2", 0), ("9", 1)]),
    ]


def test_sequential_accuracy_per_turn(four_episodes):
    m = sequential_metrics(four_episodes, same)
    assert (m["acc@t1"], m["acc@t2"], m["acc@t3"]) == (50.0, 50.0, 75.0)


def test_sequential_p1_any_turn_correct(four_episodes):
    m = sequential_metrics(four_episodes, same)
    assert (m["p1@t1"], m["p1@t2"], m["p1@t3"]) == (50.0, 75.0, 100.0)


def test_sequential_m1_majority_over_turns(four_episodes):
    # e2 at k=2: tie 5/7 -> most recent 7 (right); e3 at k=2: tie 3/4 -> 4 (wrong);
    # e4 at k=3: None never wins, tie 2/9 -> 9 (right).
    m = sequential_metrics(four_episodes, same)
    assert (m["m1@t1"], m["m1@t2"], m["m1@t3"]) == (50.0, 50.0, 75.0)


def test_sequential_transitions(four_episodes):
    m = sequential_metrics(four_episodes, same)
    assert (m["wrong->right@t2"], m["right->wrong@t2"]) == (1, 1)
    assert (m["wrong->right@t3"], m["right->wrong@t3"]) == (1, 0)
    assert m["no_answer_rate"] == pytest.approx(100 / 12, abs=0.01)


def par_episodes(pid, preds_rewards):
    return [
        Episode(id=pid, task="arithmetic", mode="parallel", prompt="q", sample=i, turns=[Turn("r", p, r)])
        for i, (p, r) in enumerate(preds_rewards)
    ]


def test_parallel_majority_and_pass_at_k():
    episodes = par_episodes("a", [("1", 1), ("2", 0), ("2", 0), ("1", 1)]) + par_episodes("b", [("5", 1)] * 4)
    m = parallel_metrics(list(reversed(episodes)), same)  # file order must not matter: samples sort by index
    assert m["samples"] == 4
    assert (m["m1@t1"], m["m2@t1"], m["m3@t1"], m["m4@t1"]) == (100.0, 50.0, 50.0, 100.0)
    assert m["acc@t1"] == 75.0
    assert m["pass@1"] == 75.0
    assert m["pass@2"] == pytest.approx(100 * (1 - 1 / 6 + 1) / 2, abs=0.01)
    assert m["pass@3"] == 100.0


def test_pass_at_k_estimator():
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 0, 3) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0


def test_episode_metrics_rejects_mixed_modes(four_episodes):
    with pytest.raises(ValueError, match="mix modes"):
        episode_metrics(four_episodes + par_episodes("a", [("1", 1)]), same)
    assert episode_metrics(four_episodes, same)["mode"] == "sequential"
