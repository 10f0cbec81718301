"""`riselm demo`: the whole RISE loop on a 2-core CPU in minutes, with a model trained from scratch.

The learner is a tiny character-level Llama with random weights. The boost teaches it the synthetic
arithmetic task from gold step-by-step solutions, in conversations that already hold earlier wrong
attempts followed by the retry message (a model boosted on single-turn data has never seen a second
turn, so its later turns would be garbage and best-of-N would have nothing to pick). Then two RISE
iterations: collect (turn 1 on-policy; after each wrong turn the best of 4 fresh attempts, sampled from
the question alone because the boosted model copies an attempt it sees; one more turn after a right
one), build exp(r/tau)-weighted samples, train, and evaluate 5 sequential turns against 5 parallel samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from riselm.config import apply_overrides, check_model_specs, validate
from riselm.settings import RunSettings

# The recipe, tuned so that RISE's effect shows within the time budget (benchmarks/results/demo.md).
DEMO_CONFIG = """
task:
  name: arithmetic
  # sums and differences: with sums alone the boosted model reached 89% at turn 1 and left later turns no room
  options: {digits: 3, operands: 2, ops: "+-", train_size: 10000, test_size: 500}
  eval_limit: 500
model: {hidden_size: 64, num_layers: 2, num_heads: 4}
learner: {backend: hf, batch_size: 1024, precision: fp32}  # fp32 everywhere: the same table on every CPU
threads: 2                  # a tiny model is dominated by per-op overhead: past two threads nothing is gained
boost:
  enabled: true
  history_turns: 1          # with the context window of 2 below, every turn after the first looks like this
  limit: 8000
  # 2 epochs: after 1 the model is still on a loss plateau whose end depends on the data order (seeds 0 and 1:
  # 0.2% and 1.5% first-turn accuracy after 1 epoch, 41% and 26% after 2; benchmarks/results/demo.md)
  train: {learning_rate: 5.0e-3, epochs: 2, batch_size: 16, grad_accum: 1, warmup_ratio: 0.05, max_length: 512,
          save_steps: 100000, logging_steps: 100, precision: fp32}
iterations: 2
collect:
  limit: 2000
  max_turns: 5
  window: 2                 # the question, the last attempt and the retry message
  # after a wrong turn, best of 4 drawn from the question alone (the boosted model copies its last attempt)
  schedule: [{model: learner, n: 1}, {model: learner, n: 4, context: fresh}]
  continue_after_correct: 1 # one more turn after a right one: evaluation asks again after right answers too
  sampling: {max_new_tokens: 80}
  chunk_size: 250
train: {learning_rate: 2.0e-3, epochs: 2, batch_size: 16, grad_accum: 1, warmup_ratio: 0.05, max_length: 512,
        save_steps: 100000, logging_steps: 100, precision: fp32}
eval: {turns: 5, parallel_samples: 5, window: 2, sampling: {max_new_tokens: 80}, chunk_size: 500}
online:                     # method=online: after the boost, 100 steps of online RL (benchmarks/results/online.md)
  steps: 100
  problems_per_step: 64
  episodes_per_problem: 1
  candidates: [4]           # 4 samples at every turn, credited against each other (they share the state)
  stop_when_correct: true
  turns: 5
  window: 2
  sampling: {max_new_tokens: 80}
  objective: pg
  learning_rate: 2.0e-4
  minibatches: 8
  warmup_steps: 5
  micro_batch: 256
  eval_every: 50
  save_every: 25
"""


# What `method=NAME` changes in the recipe, so that every method gets RISE's budget: the single-turn
# baselines sample 13 first turns of each of the 2,000 problems an iteration (26,000 responses, as
# RISE's collection generates about 26,000 with its best-of-4 improvements; benchmarks/results/demo.md).
METHOD_RECIPES = {
    "filtered_sft": ["collect.episodes_per_problem=13"],
    "single_turn_rwr": ["collect.episodes_per_problem=13"],
}


def demo_config(out: str | Path, overrides: Sequence[str] = ()) -> tuple[RunSettings, dict | None]:
    """The demo's run settings (with `overrides`) and the shape of its from-scratch model (None: `model=` given)."""
    method = next((o.partition("=")[2] for o in overrides if o.startswith("method=")), "rise")
    data = apply_overrides(yaml.safe_load(DEMO_CONFIG), METHOD_RECIPES.get(method, []) + list(overrides))
    shape = data.pop("model")
    data["out"] = str(out)
    # `model=PATH` starts from that model (e.g. another run's boost) instead of the from-scratch one
    data["model"] = shape if isinstance(shape, str) else str(Path(out) / "init")
    return validate(RunSettings, data, "demo config"), shape if isinstance(shape, dict) else None


def init_model(path: Path, shape: dict, seed: int = 0) -> Path:
    """Write the randomly initialised char-level model the demo starts from (once)."""
    if (path / "config.json").exists():
        return path
    from riselm.models import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, arch="llama", seed=seed, **shape)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prepare_demo(out: str | Path, overrides: Sequence[str] = (), overwrite: bool = False) -> RunSettings:
    """The demo's settings, with its from-scratch model written into `out` (once, after claiming `out`)."""
    from riselm.run.pipeline import claim_run

    settings, shape = demo_config(out, overrides)
    claim_run(out, settings, overwrite)
    if shape is not None:
        init_model(Path(settings.model), shape, seed=settings.seed)
    check_model_specs(settings)
    return settings


def run_demo(out: str | Path = "runs/demo", overrides: Sequence[str] = (), show_progress: bool = True):
    """Run (or resume) the demo into `out` in this process; returns the pipeline's stage results."""
    from riselm.run.pipeline import run_pipeline

    return run_pipeline(prepare_demo(out, overrides), show_progress=show_progress)
