"""`method: online` with the vLLM backend (CPU build): the engine takes new weights every `sync_every` steps.

Skipped without vLLM; CI runs it in the vLLM virtual environment (.ci/run).
"""

import json

import pytest
import torch

pytest.importorskip("vllm", exc_type=ImportError)

from riselm.run.demo import prepare_demo  # noqa: E402
from riselm.run.pipeline import run_pipeline  # noqa: E402

OVERRIDES = [
    "method=online",
    "threads=1",
    "boost.enabled=false",
    "task.train_limit=8",
    "task.eval_limit=2",
    "task.options.train_size=20",
    "task.options.test_size=4",
    "model.hidden_size=64",
    "model.num_layers=1",
    "model.num_heads=2",  # vLLM's CPU attention: head size 32
    "learner.backend=vllm",
    "online.steps=2",
    "online.sync_every=1",
    "online.problems_per_step=2",
    "online.episodes_per_problem=2",
    "online.turns=2",
    "online.sampling.max_new_tokens=8",
    "online.learning_rate=1e-2",
    "eval.turns=1",
    "eval.parallel_samples=0",
    "eval.sampling.max_new_tokens=8",
]


def test_online_with_vllm_syncs_the_engine_and_trains(tmp_path, caplog):
    settings = prepare_demo(tmp_path, OVERRIDES)
    with caplog.at_level("WARNING"):
        stages = run_pipeline(settings, show_progress=False)
    assert "takes new weights by a restart every 1 steps" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["action_tokens"] > 0 for r in rows)
    assert (tmp_path / "online" / "sync" / "config.json").exists() and (tmp_path / "online" / "final" / "config.json").exists()
    assert [s.name for s in stages] == ["online"]


def test_after_each_sync_the_engine_serves_the_trained_weights(tmp_path, monkeypatch):
    """Right after every sync, the engine's log-probs of what it samples are those of the weights just
    trained (a transformers forward of the synced directory), not those of the starting model."""
    from transformers import AutoModelForCausalLM

    from riselm.generation.base import SamplingParams
    from riselm.generation.vllm import VLLMGenerator

    served = []
    real_reload = VLLMGenerator.reload

    def reload_and_sample(self, model):
        reloaded = real_reload(self, model)
        params = SamplingParams(temperature=1.0, max_new_tokens=8, logprobs=True)
        completion = self.generate([[{"role": "user", "content": "What is 2+3?"}]], params, seeds=[0])[0][0]
        served.append((AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), completion))
        return reloaded

    monkeypatch.setattr(VLLMGenerator, "reload", reload_and_sample)
    # awr always moves the weights (it imitates the samples); pg would not if every reward were equal
    settings = prepare_demo(tmp_path, OVERRIDES + ["online.objective=awr"])
    run_pipeline(settings, show_progress=False)
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "init", dtype=torch.float32)

    def logprobs(model, c):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([c.prompt_ids + c.token_ids])).logits[0, len(c.prompt_ids) - 1 : -1]
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)

    assert len(served) == 2  # online.steps=2, sync_every=1
    for synced, completion in served:
        got = torch.tensor(completion.logprobs)
        torch.testing.assert_close(got, logprobs(synced, completion), rtol=1e-3, atol=1e-3)
        assert (got - logprobs(start, completion)).abs().max() > 1e-2  # the starting weights give other log-probs
