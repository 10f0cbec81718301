"""Hand-written run directories for the analysis tests (no model runs to make them)."""

from __future__ import annotations

import json

import pytest

from tests.analysis.helpers import episode, stage_row, write_jsonl, write_summary


@pytest.fixture
def rise_run(tmp_path, tiny_model_dir):
    """A 5-turn, 5-sample RISE run (boost, iter1) with collected episodes, samples and training configs."""
    run = tmp_path / "runs" / "rise"
    keys = ["m1@t1", "m5@t1", "m1@t5", "p1@t5"]
    write_summary(
        run,
        keys,
        [
            stage_row("boost", tiny_model_dir, keys, [10.0, 20.0, 15.0, 30.0], 5, {"boost": 60.0, "eval": 10.0}),
            stage_row("iter1", tiny_model_dir, keys, [20.0, 30.0, 35.0, 50.0], 5, {"collect": 30.0, "train": 40.0, "eval": 10.0}),
        ],
    )
    # 1 + 4 + 4 candidates in one episode, 1 in the other: 10 generated responses
    write_jsonl(
        run / "iter1" / "collect" / "episodes.jsonl",
        [
            episode("train-0", [0, 0, 1], mode="collect", candidates=[1, 4, 4], prompt="q0"),
            episode("train-1", [1], mode="collect", candidates=[1], prompt="q1"),
        ],
    )
    samples = {"boost": ["12", "345", "6"], "iter1": ["ab", "cdef"]}
    for stage, responses in samples.items():
        rows = [
            {
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": r}],
                "reward": 1.0,
                "weight": 1.0,
                "episode_id": "e",
                "turn": 0,
            }
            for r in responses
        ]
        write_jsonl(run / stage / "samples.jsonl", rows)
        config = {"epochs": 2.0 if stage == "iter1" else 1.0, "max_steps": -1, "max_length": 512}
        (run / stage / "train").mkdir(parents=True, exist_ok=True)
        (run / stage / "train" / "train_config.json").write_text(json.dumps(config))
    return run


@pytest.fixture
def online_run(tmp_path):
    """A 3-turn, 3-sample online run (base, online@2, online) with per-step metrics and a budget.json."""
    run = tmp_path / "runs2" / "rise"  # the same folder name as rise_run: labels must tell them apart
    keys = ["m1@t1", "m3@t1", "m1@t3", "p1@t3"]
    write_summary(
        run,
        keys,
        [
            stage_row("base", "smollm2", keys, [5.0, 8.0, 6.0, 12.0], 3, {"eval": 1.0}),
            stage_row("online@2", "policy", keys, [9.0, 12.0, 11.0, 20.0], 3),
            stage_row("online", run / "online" / "final", keys, [12.0, 15.0, 16.0, 25.0], 3, {"online": 10.0, "eval": 2.0}),
        ],
    )
    write_jsonl(run / "online" / "metrics.jsonl", [{"step": s, "actions": 8, "episodes": 4.0, "step_s": float(s)} for s in (1, 2, 3)])
    (run / "budget.json").write_text(json.dumps({"trained_tokens": 12345, "stages": {"base": {"wall_s": 5}}}))
    return run
