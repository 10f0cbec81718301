"""`riselm run` with `learner.backend: vllm` (CPU build): boost, evaluation, collection and training end to end,
the engine serving each stage's model and closed while training.

Skipped without vLLM; CI runs it in the vLLM virtual environment (.ci/run).
"""

import pytest

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.generation.vllm import VLLMGenerator  # noqa: E402
from riselm.rollout.episode import read_episodes  # noqa: E402
from riselm.run.demo import prepare_demo  # noqa: E402
from riselm.run.pipeline import run_pipeline  # noqa: E402

OVERRIDES = [
    "threads=1",
    "learner.backend=vllm",
    "task.train_limit=8",
    "task.eval_limit=3",
    "task.options.train_size=20",
    "task.options.test_size=4",
    "model.hidden_size=64",
    "model.num_layers=1",
    "model.num_heads=2",  # vLLM's CPU attention: head size 32
    "boost.history_turns=1",
    "boost.train.epochs=1",
    "boost.train.batch_size=4",
    "train.epochs=1",
    "train.batch_size=4",
    "train.warmup_ratio=0",
    "iterations=1",
    "collect.max_turns=2",
    "collect.schedule=[{model: learner, n: 1}, {model: learner, n: 2}]",
    "collect.sampling.max_new_tokens=8",
    "eval.turns=2",
    "eval.parallel_samples=2",
    "eval.sampling.max_new_tokens=8",
]


def test_a_run_on_the_vllm_backend_serves_each_stage_and_frees_the_engine_to_train(tmp_path, monkeypatch):
    engines, served, training_with_engine = [], [], []
    start = VLLMGenerator._start

    def starting(self, model_dir, *args, **kwargs):
        engines.append(self)
        served.append(str(model_dir))
        return start(self, model_dir, *args, **kwargs)

    import riselm.training.trainer as trainer

    train = trainer.train_weighted

    def training(*args, **kwargs):
        training_with_engine.append(sum(engine._llm is not None for engine in engines))
        return train(*args, **kwargs)

    monkeypatch.setattr(VLLMGenerator, "_start", starting)
    monkeypatch.setattr(trainer, "train_weighted", training)
    settings = prepare_demo(tmp_path, OVERRIDES)
    stages = run_pipeline(settings, show_progress=False)
    assert [s.name for s in stages] == ["boost", "iter1"]
    assert training_with_engine == [0, 0]  # no engine holds memory while a model trains
    boost, iter1 = str(tmp_path / "boost/train/final"), str(tmp_path / "iter1/train/final")
    # one engine start for the boost's evaluation and iteration 1's collection, one for iteration 1's evaluation
    assert served == [boost, iter1]
    assert len(read_episodes(tmp_path / "iter1/collect/episodes.jsonl")) == 8
    assert len(read_episodes(tmp_path / "iter1/eval/episodes.sequential.jsonl")) == 3
