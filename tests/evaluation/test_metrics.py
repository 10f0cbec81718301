"""Every metric against hand-computed expectations."""

from itertools import permutations

import pytest

from riselm.evaluation.metrics import (
    episode_metrics,
    majority_vote,
    parallel_metrics,
    pass_at_k,
    sequential_metrics,
    vote_groups,
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


def starts(a, b):
    """Deliberately asymmetric, like math-verify's verify(gold, pred): "1" is "12" but "12" is not "1"."""
    return b.startswith(a)


def near(a, b):
    """Deliberately non-transitive: 1~2 and 2~3, but not 1~3."""
    return abs(int(a) - int(b)) <= 1


def partition(answers, groups):
    return sorted(sorted(answers[i] for i in g) for g in groups)


@pytest.mark.parametrize(
    "answers, same_fn, expected_groups, winners",
    [
        # symmetric closure: "1" and "12" vote together whichever comes first
        (["1", "12", "12", "3", "3"], starts, [["1", "12", "12"], ["3", "3"]], {"1", "12"}),
        # connected components: 1~2~3 is one group of three, beating the pair of 9s
        (["1", "2", "3", "9", "9"], near, [["1", "2", "3"], ["9", "9"]], {"1", "2", "3"}),
    ],
)
def test_vote_groups_do_not_depend_on_the_order_of_answers(answers, same_fn, expected_groups, winners):
    """Comparing with a group's first member only made both the groups and the winner order-dependent."""
    for order in permutations(range(len(answers))):
        shuffled = [answers[i] for i in order]
        assert partition(shuffled, vote_groups(shuffled, same_fn)) == expected_groups, shuffled
        assert shuffled[majority_vote(shuffled, same_fn)] in winners, shuffled


def test_vote_groups_by_a_canonical_key_without_calling_same():
    def never(a, b):
        raise AssertionError("answers that both have a key are grouped by key alone")

    answers = ["2", "02", "3", "2.0", None, "3"]
    groups = vote_groups(answers, never, key=lambda a: int(float(a)))
    assert partition(answers, groups) == [["02", "2", "2.0"], ["3", "3"]]
    assert majority_vote(answers, never, key=lambda a: int(float(a))) == 3


def test_answers_without_a_key_are_compared_with_same_in_both_directions():
    key = lambda a: None if a.startswith("x") else a  # "x..." answers have no canonical form
    one_way = lambda a, b: a == b or (a, b) == ("7", "x1")  # "7" is "x1", not the other way round
    for answers in (["x1", "12", "7", "x1", "12"], ["12", "7", "x1", "12", "x1"]):
        assert partition(answers, vote_groups(answers, one_way, key=key)) == [["12", "12"], ["7", "x1", "x1"]]


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


def test_parallel_counts_each_problem_s_own_samples():
    """a has 4 samples, b only 2: nothing is cut to 2, and values at k > 2 count a alone."""
    episodes = par_episodes("a", [("1", 1), ("2", 0), ("2", 0), ("2", 0)]) + par_episodes("b", [("5", 1), ("6", 0)])
    m = parallel_metrics(episodes, same)
    assert m["num_problems"] == 2
    assert (m["samples"], m["samples_max"]) == (2, 4)
    assert m["sample_counts"] == {"2": 1, "4": 1}
    assert m["problems_at_k"] == {"1": 2, "2": 2, "3": 1, "4": 1}
    assert m["acc@t1"] == pytest.approx(100 * (1 / 4 + 1 / 2) / 2, abs=0.01)  # not (1/2 + 1/2) / 2
    assert m["pass@1"] == m["acc@t1"]
    assert m["pass@2"] == pytest.approx(100 * ((1 - 3 / 6) + 1.0) / 2, abs=0.01)  # a: 1 - C(3,2)/C(4,2)
    assert m["pass@3"] == pytest.approx(100 * (1 - 1 / 4), abs=0.01)  # a alone: 1 - C(3,3)/C(4,3)
    assert m["pass@4"] == 100.0
    assert (m["m1@t1"], m["m2@t1"], m["m3@t1"], m["m4@t1"]) == (100.0, 0.0, 0.0, 0.0)


def test_parallel_problem_without_any_sample_is_reported_not_divided_by():
    empty = [Episode(id="c", task="arithmetic", mode="parallel", prompt="q", sample=i, turns=[]) for i in range(3)]
    episodes = par_episodes("a", [("1", 1), ("2", 0)]) + empty
    m = parallel_metrics(episodes, same)
    assert m["num_problems"] == 2 and m["problems_without_samples"] == 1
    assert m["sample_counts"] == {"0": 1, "2": 1}
    assert (m["samples"], m["acc@t1"], m["pass@2"], m["m2@t1"]) == (2, 50.0, 100.0, 0.0)
    only_empty = parallel_metrics(empty, same)
    assert only_empty["num_problems"] == 1 and only_empty["samples"] == 0 and "acc@t1" not in only_empty


def test_even_parallel_counts_add_no_uneven_keys():
    m = parallel_metrics(par_episodes("a", [("1", 1), ("2", 0)]) + par_episodes("b", [("1", 1), ("1", 1)]), same)
    assert m["samples"] == 2 and not {"samples_max", "sample_counts", "problems_at_k"} & set(m)


def test_pass_at_k_estimator():
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 0, 3) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0


def test_episode_metrics_rejects_mixed_modes(four_episodes):
    with pytest.raises(ValueError, match="mix modes"):
        episode_metrics(four_episodes + par_episodes("a", [("1", 1)]), same)
    assert episode_metrics(four_episodes, same)["mode"] == "sequential"
