"""Episodes files: the minimal documented row is enough for metrics; bad rows name file, line and field."""

import json

import pytest

from riselm.evaluation.evaluate import metrics_of_file
from riselm.jsonl import DataError
from riselm.rollout.episode import Episode, Turn, read_episodes
from riselm.training.samples import load_training_samples


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MINIMAL = [
    {
        "id": "q1",
        "task": "gsm8k",
        "mode": "sequential",
        "turns": [{"response": "a", "pred": "3", "reward": 0}, {"response": "b", "pred": "4", "reward": 1}],
    },
    {
        "id": 2,
        "task": "gsm8k",
        "mode": "sequential",
        "turns": [{"response": "c", "pred": None, "reward": 0.0}, {"response": "d", "pred": "9", "reward": 1.0}],
    },
]


def test_metrics_accept_the_minimal_rows_of_another_tool(tmp_path):
    metrics = metrics_of_file(write(tmp_path / "e.jsonl", MINIMAL))
    assert metrics["num_problems"] == 2 and metrics["acc@t1"] == 0.0 and metrics["acc@t2"] == 100.0
    assert metrics["p1@t2"] == 100.0 and metrics["wrong->right@t2"] == 2


def test_the_task_named_in_the_file_decides_answer_equivalence(tmp_path):
    turns = [
        {"response": "", "pred": "4", "reward": 1},
        {"response": "", "pred": "4.0", "reward": 1},
        {"response": "", "pred": "5", "reward": 0},
    ]
    row = {"id": "q", "mode": "sequential", "turns": turns}
    gsm8k = metrics_of_file(write(tmp_path / "a.jsonl", [dict(row, task="gsm8k")]))
    unknown = metrics_of_file(write(tmp_path / "b.jsonl", [dict(row, task="their-task")]))
    assert gsm8k["m1@t3"] == 100.0  # 4 and 4.0 are one answer, outvoting 5
    assert unknown["m1@t3"] == 0.0  # three different strings: the latest, 5, wins the tie


@pytest.mark.parametrize(
    "row, message",
    [
        ({"task": "gsm8k", "mode": "sequential", "turns": []}, "missing field(s) 'id'"),
        (
            {"id": "x", "task": "gsm8k", "mode": "sequential", "turns": [{"response": "a", "pred": "1"}]},
            "turn 1: missing field(s) 'reward'",
        ),
        (
            {"id": "x", "task": "gsm8k", "mode": "sequential", "turns": [{"response": "a", "pred": "1", "reward": "high"}]},
            "'reward' must be a finite number",
        ),
        ({"id": "x", "task": "gsm8k", "mode": "sequential", "turns": "abc"}, "'turns' must be a list"),
        ({"id": "x", "task": "gsm8k", "mode": "sequential", "turns": [], "sample": "first"}, "'sample' must be int"),
    ],
)
def test_a_bad_row_names_the_file_the_line_and_the_field(tmp_path, row, message):
    path = write(tmp_path / "e.jsonl", [MINIMAL[0], row])
    with pytest.raises(DataError) as error:
        read_episodes(path)
    assert f"{path}:2" in str(error.value) and message in str(error.value)


def test_training_needs_the_prompt_and_says_where_it_is_missing(tmp_path):
    path = write(tmp_path / "e.jsonl", MINIMAL)
    with pytest.raises(DataError, match=rf"{path}:1: missing field 'prompt'"):
        load_training_samples(path)


def test_a_directory_is_not_an_episodes_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_episodes(tmp_path)


def test_round_trip_keeps_every_field():
    episode = Episode(
        id="p",
        task="toy",
        mode="collect",
        prompt="Q",
        sample=2,
        window=2,
        seed=5,
        sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 9},
        turns=[Turn("r", "1", 0.0, feedback="again", source="learner", num_candidates=4, num_tokens=3, truncated=True)],
    )
    assert Episode.from_dict(json.loads(json.dumps(episode.to_dict()))) == episode
    assert "origin" not in episode.to_dict()
