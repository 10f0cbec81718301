"""Rollouts -> weighted samples: one per turn, RISE's weights, filters, de-duplication, files, windows."""

from __future__ import annotations

import json
import math

import pytest

from riselm.jsonl import DataError, write_jsonl
from riselm.rollout.episode import Episode, Turn
from riselm.settings import SamplesSettings
from riselm.training.samples import (
    TrainingSample,
    first_turn_samples,
    keep_turn,
    load_training_samples,
    read_samples,
    reward_weight,
    samples_from_episodes,
)

RETRY = "Your answer is incorrect. Please try again."


def episode(rewards, responses=None, eid="p1", sample=0) -> Episode:
    responses = responses or [f"attempt {i} \\boxed{{{i}}}" for i in range(len(rewards))]
    turns = [
        Turn(response=resp, pred=None, reward=r, feedback=RETRY if i < len(rewards) - 1 else None)
        for i, (r, resp) in enumerate(zip(rewards, responses))
    ]
    return Episode(id=eid, task="toy", mode="collect", prompt="What is 2+2?", turns=turns, sample=sample)


# ---- weights and filters ----------------------------------------------------------------------


def test_reward_weight_matches_rise_defaults():
    assert reward_weight(1.0) == pytest.approx(12.1825, rel=1e-4)
    assert reward_weight(0.0) == 1.0
    assert reward_weight(-1.0) == pytest.approx(0.0821, rel=1e-3)
    assert reward_weight(1.0, tau=1.0) == pytest.approx(math.e)
    with pytest.raises(ValueError):
        reward_weight(1.0, tau=0.0)


def test_one_sample_per_turn_with_prefix_and_weight():
    samples = samples_from_episodes([episode([0.0, 0.0, 1.0])])
    assert [s.turn for s in samples] == [0, 1, 2]
    last = samples[2]
    assert [m["role"] for m in last.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert last.messages[0]["content"] == "What is 2+2?"
    assert last.messages[2]["content"] == RETRY
    assert last.response == "attempt 2 \\boxed{2}"
    assert last.weight == pytest.approx(reward_weight(1.0))
    assert samples[0].messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "attempt 0 \\boxed{0}"},
    ]
    assert samples[0].weight == 1.0 and samples[0].episode_id == "p1"


@pytest.mark.parametrize(
    "rewards, filter, kept",
    [
        ([0.0, 0.0, 1.0], "all", [0, 1, 2]),
        ([0.0, 0.0, 1.0], "better", [2]),
        ([0.0, 0.0, 1.0], "best", [0, 1, 2]),
        ([0.0, 0.0, 1.0], "success", [2]),
        ([-1.0, 0.0, 0.0], "better", [1]),  # first turn: compared with reward 0, -1 is not better
        ([1.0], "better", [0]),  # a correct first answer is better than nothing
        ([0.0], "better", []),
        ([1.0, 0.0, 1.0], "best", [0, 2]),  # turn 1 fell below turn 0
        ([0.0, -1.0, 0.0], "best", [0, 2]),
    ],
)
def test_filters(rewards, filter, kept):
    samples = samples_from_episodes([episode(rewards)], SamplesSettings(filter=filter))
    assert [s.turn for s in samples] == kept
    assert [t for t in range(len(rewards)) if keep_turn(rewards, t, filter)] == kept


def test_unknown_filter_is_an_error():
    with pytest.raises(ValueError, match="filter"):
        samples_from_episodes([episode([0.0])], SamplesSettings(filter="good"))


def test_dedup_drops_identical_conversations_only():
    same = [episode([0.0, 1.0], sample=0), episode([0.0, 1.0], sample=1)]
    assert len(samples_from_episodes(same, SamplesSettings(dedup=False))) == 4
    assert len(samples_from_episodes(same)) == 2
    different = [episode([0.0, 1.0]), episode([0.0, 1.0], responses=["other", "attempt 1 \\boxed{1}"])]
    assert len(samples_from_episodes(different)) == 4


def test_turn_after_missing_feedback_is_a_data_error():
    bad = episode([0.0, 1.0])
    bad.turns[0].feedback = None
    with pytest.raises(DataError, match="turn 2 follows a turn without 'feedback'"):
        samples_from_episodes([bad])


# ---- files ------------------------------------------------------------------------------------


def test_samples_file_round_trip_and_episode_files(tmp_path):
    samples = samples_from_episodes([episode([0.0, 1.0])])
    path = tmp_path / "samples.jsonl"
    write_jsonl(path, (s.to_dict() for s in samples))
    assert read_samples(path) == samples
    assert load_training_samples(path) == samples

    episodes_path = tmp_path / "episodes.jsonl"
    episodes_path.write_text(json.dumps(episode([0.0, 0.0, 1.0]).to_dict()) + "\n")
    from_file = load_training_samples(episodes_path, SamplesSettings(tau=1.0, filter="success"))
    assert [(s.turn, s.weight) for s in from_file] == [(2, pytest.approx(math.e))]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [{"role": "user", "content": "q"}], "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "must be an assistant"),
        ({"messages": "hi", "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "non-empty list"),
        ({"messages": [{"role": "assistant", "content": "a"}], "reward": 1, "weight": -2, "episode_id": "a", "turn": 0}, "non-negative"),
        ({"messages": [{"role": "assistant"}], "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "string 'role' and 'content'"),
        ({"messages": [{"role": "assistant", "content": "a"}], "reward": 1, "episode_id": "a", "turn": 0}, "missing field"),
    ],
)
def test_bad_sample_rows_name_file_and_line(tmp_path, row, message):
    good = TrainingSample([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], 1.0, 1.0, "a", 0)
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(good.to_dict()) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"samples.jsonl:2: .*{message}"):
        read_samples(path)


def test_unknown_row_kind_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "hello"}\n')
    with pytest.raises(DataError, match="x.jsonl:1: expected an episode"):
        load_training_samples(path)


def test_samples_use_the_collection_window():
    turns = [Turn(f"attempt {i} \\boxed{{{i}}}", str(i), 0.0, feedback="Try again.") for i in range(3)]
    turns[-1].feedback = None
    episode = Episode(id="w", task="toy", mode="collect", prompt="q", turns=turns)
    windowed = samples_from_episodes([episode], window=2)
    assert [len(s.messages) for s in windowed] == [2, 4, 4]  # turn 3 sees only the question and attempt 2
    assert windowed[2].messages[1]["content"] == "attempt 1 \\boxed{1}"


def test_samples_use_each_episodes_own_window_unless_told_otherwise(tmp_path, caplog):
    turns = [Turn(f"attempt {i}", str(i), 0.0, feedback="Try again.") for i in range(3)]
    turns[-1].feedback = None
    episode = Episode(id="w", task="toy", mode="collect", prompt="q", turns=turns, window=2)
    assert [len(s.messages) for s in samples_from_episodes([episode])] == [2, 4, 4]
    assert [len(s.messages) for s in samples_from_episodes([episode], window=None)] == [2, 4, 6]
    path = tmp_path / "episodes.jsonl"
    write_jsonl(path, [episode.to_dict()])
    assert [len(s.messages) for s in load_training_samples(path)] == [2, 4, 4]
    with caplog.at_level("WARNING"):
        assert [len(s.messages) for s in load_training_samples(path, window=3)] == [2, 4, 6]
    assert "generated with context window 2" in caplog.text and "window 3 as asked" in caplog.text


def test_first_turn_samples_for_the_single_turn_baselines():
    def single(eid, sample, response, reward):
        return Episode(id=eid, task="toy", mode="collect", prompt=f"question {eid}", sample=sample, turns=[Turn(response, None, reward)])

    episodes = [
        single("a", 0, "right", 1.0),
        single("a", 1, "wrong", 0.0),
        single("a", 2, "right", 1.0),
        single("b", 0, "junk", -1.0),
        episode([0.0, 1.0], eid="c"),
    ]
    sft = first_turn_samples(episodes)  # filtered SFT: correct first answers, weight 1, duplicates once
    assert [(s.episode_id, s.response, s.weight) for s in sft] == [("a", "right", 1.0)]
    assert sft[0].messages == [{"role": "user", "content": "question a"}, {"role": "assistant", "content": "right"}]
    rwr = first_turn_samples(episodes, SamplesSettings(tau=0.5), weighted=True)  # every first answer, exp(r/tau)
    assert [(s.episode_id, s.response) for s in rwr] == [("a", "right"), ("a", "wrong"), ("b", "junk"), ("c", "attempt 0 \\boxed{0}")]
    assert [s.weight for s in rwr] == pytest.approx([math.exp(2), 1.0, math.exp(-2), 1.0])
    assert all(len(s.messages) == 2 and s.turn == 0 for s in rwr)  # single turn: no retry context


def test_truncated_turns_are_never_trained_but_stay_in_later_contexts():
    """A response cut at max_new_tokens would be closed with the end-of-turn token: it must not be trained."""
    cut = episode([0.0, 0.0, 1.0], ["a long answer that was cut", "attempt 1 \\boxed{1}", "attempt 2 \\boxed{4}"])
    cut.turns[0].truncated = True
    samples = samples_from_episodes([cut])
    assert [s.turn for s in samples] == [1, 2]
    assert samples[0].messages[1]["content"] == "a long answer that was cut"  # still in the context
    assert all(s.sample == cut.sample for s in samples)
    first = episode([1.0], ["cut mid-answer \\boxed{4}"], eid="p2")
    first.turns[0].truncated = True
    assert first_turn_samples([first]) == [] and first_turn_samples([first], weighted=True) == []


def test_wrong_weight_scales_every_turn_that_is_not_correct():
    samples = samples_from_episodes([episode([-1.0, 0.0, 1.0])], SamplesSettings(tau=0.5, wrong_weight=0.25))
    assert [s.weight for s in samples] == pytest.approx([0.25 * math.exp(-2), 0.25, math.exp(2)])
    single = first_turn_samples([episode([0.0], eid="w")], SamplesSettings(wrong_weight=0.25), weighted=True)
    assert [s.weight for s in single] == [0.25]


def test_normalized_weights_have_mean_one_and_keep_their_ratios():
    episodes = [episode([0.0, 0.0, 1.0]), episode([1.0], eid="p2")]
    plain = [s.weight for s in samples_from_episodes(episodes)]
    normal = [s.weight for s in samples_from_episodes(episodes, SamplesSettings(normalize=True))]
    assert sum(normal) == pytest.approx(len(normal)) and sum(plain) != pytest.approx(len(plain))
    assert [w / normal[0] for w in normal] == pytest.approx([w / plain[0] for w in plain])
    # tau changes the mix, not the mean
    sharper = [s.weight for s in samples_from_episodes(episodes, SamplesSettings(normalize=True, tau=0.2))]
    assert sum(sharper) == pytest.approx(len(sharper)) and sharper[2] > normal[2]
