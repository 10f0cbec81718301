"""`method: online` with the vLLM backend (CPU build): the engine takes new weights every `sync_every` steps.

Skipped without vLLM; CI runs it in the vLLM virtual environment (.ci/run).
"""

import json

import pytest

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.demo import demo_config, init_model  # noqa: E402
from riselm.pipeline import run_pipeline  # noqa: E402

OVERRIDES = [
    "method=online", "threads=1", "boost.enabled=false",
    "task.train_limit=8", "task.eval_limit=2", "task.options.train_size=20", "task.options.test_size=4",
    "model.hidden_size=64", "model.num_layers=1", "model.num_heads=2",  # vLLM's CPU attention: head size 32
    "learner.backend=vllm", "online.steps=2", "online.sync_every=1", "online.problems_per_step=2",
    "online.episodes_per_problem=2", "online.turns=2", "online.sampling.max_new_tokens=8",
    "online.learning_rate=1e-2", "eval.turns=1", "eval.parallel_samples=0", "eval.sampling.max_new_tokens=8",
]


def test_online_with_vllm_syncs_the_engine_and_trains(tmp_path, caplog):
    settings, shape = demo_config(tmp_path, OVERRIDES)
    init_model(tmp_path / "init", shape)
    with caplog.at_level("WARNING"):
        stages = run_pipeline(settings, show_progress=False)
    assert "takes new weights by a restart every 1 steps" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["action_tokens"] > 0 for r in rows)
    assert (tmp_path / "online" / "sync" / "config.json").exists() and (tmp_path / "online" / "final" / "config.json").exists()
    assert [s.name for s in stages] == ["online"]
