"""`method: online`: after the optional boost, steps of roll out -> credit -> update on the live policy.

Each step takes the next `problems_per_step` training problems (a fresh permutation per pass over
them, fixed by the run seed), rolls out `episodes_per_problem` episodes of each with the one rollout
engine (the same multi-turn loop as evaluation), credits every turn (riselm.online.batch) and updates
the policy (riselm.online.update). Every `eval_every` steps and at the end the live model is
evaluated exactly as every other stage. With `context: fresh` the candidates after a wrong turn are
sampled from the question alone and trained after the history (riselm.online.batch).

Generation: with the hf backend it happens in this process with the live weights (nothing is saved
or reloaded between steps). With vllm, the engine is handed the new weights every `sync_every`
steps by saving them and restarting it (`VLLMGenerator.reload`), and the run says so: vLLM's
in-place weight reload returned wrong tokens on CPU (riselm.generation.vllm).

Faults: every `save_every` steps a checkpoint holds the model, the optimizer, the schedule, the
random states and the step; a killed run resumes from the last complete one and ends with the same
result as an uninterrupted one (the problems and seeds of a step depend only on the run seed and the
step). A NaN loss or a batch with nothing to train on stops the run with the step's number.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from riselm.checkpoints import checkpoint_dir, checkpoints, last_complete_checkpoint, mark_complete, publish
from riselm.evaluation.evaluate import evaluate
from riselm.generation.base import prompt_ids
from riselm.online.batch import action_rows
from riselm.online.update import PolicyUpdater
from riselm.rollout.engine import RolloutSpec, Step, conversation_seed, rollout
from riselm.rollout.episode import Episode
from riselm.run.context import Run
from riselm.run.monitor import Monitor, rollout_stats
from riselm.rundir import FINAL_PARTIAL, ONLINE_PREFIX
from riselm.tasks.base import Problem

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2


def step_problems(problems: Sequence[Problem], step: int, size: int, seed: int) -> list[Problem]:
    """The problems of a 0-based step: consecutive slices of one seeded permutation per pass over the data."""
    chosen = []
    for index in range(step * size, (step + 1) * size):
        epoch, position = divmod(index, len(problems))
        order = list(range(len(problems)))
        random.Random(f"{seed}:online:{epoch}").shuffle(order)
        chosen.append(problems[order[position]])
    return chosen


def step_spec(run: Run, step: int) -> RolloutSpec:
    s = run.settings.online
    return RolloutSpec(
        mode="online",
        turns=s.turns,
        stop_when_correct=s.stop_when_correct,
        episodes_per_problem=s.episodes_per_problem,
        window=s.window,
        sampling=s.sampling,
        seed=conversation_seed(run.settings.seed, "online-step", 0, step),
        chunk_size=s.problems_per_step,
        keep_candidates=True,
    )


def group_by_problem(episodes: Sequence[Episode]) -> list[list[Episode]]:
    groups: dict[str, list[Episode]] = {}
    for episode in episodes:
        groups.setdefault(episode.id, []).append(episode)
    return list(groups.values())


def online_stage(run: Run, start_model: str) -> str:
    """Train `start_model` online into the run's online/ folder; returns the final model's directory.

    The live policy is evaluated into online/eval-step{N} every `eval_every` steps (RunLayout); the
    final model is evaluated by the caller like every other stage's.
    """
    from transformers import AutoTokenizer

    from riselm.models import load_causal_lm, resolve_model_dir

    s = run.settings.online
    layout = run.layout
    stage_dir = layout.online_dir
    final = layout.model("online")
    if final.exists():
        return str(final)
    start_dir = resolve_model_dir(start_model)
    model = load_causal_lm(start_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(start_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    updater = PolicyUpdater(model, s, pad_id, temperature=s.sampling.temperature)
    done = _resume(stage_dir, model, updater)
    generator = _policy_generator(run, model, tokenizer)
    monitor = Monitor(layout, s.report_to, done, run.show_progress, s.steps)
    schedule = [Step(generator, n, source="learner", context=s.context) for n in s.candidates]

    def history_ids(episode: Episode, t: int) -> list[int]:  # where a fresh turn's action is trained
        return prompt_ids(tokenizer, episode.messages(upto=t, window=s.window))

    try:
        if _evaluates_at(s, done):  # killed during the evaluation after its checkpoint: finish it first
            _evaluate_live(run, generator, done)
        for step in range(done, s.steps):
            number = step + 1
            timings: dict[str, float] = {}
            start = time.perf_counter()
            problems = step_problems(run.train_problems, step, s.problems_per_step, run.settings.seed)
            tokens_before = generator.stats.generated_tokens
            episodes = rollout(run.task, problems, schedule, step_spec(run, step), show_progress=False, timings=timings)
            rows = action_rows(group_by_problem(episodes), s.credit, s.train_candidates == "chosen", history_ids)
            update_start = time.perf_counter()
            stats = updater.step(rows, number)
            timings["update"] = time.perf_counter() - update_start
            generated = generator.stats.generated_tokens - tokens_before
            row = {**rollout_stats(episodes, s.turns), **stats, "actions": len(rows)}
            row.update({f"{k}_s": round(v, 3) for k, v in timings.items()}, step_s=round(time.perf_counter() - start, 3))
            row["tokens_per_s"] = generated / timings["generate"] if timings.get("generate") else 0.0
            monitor.log(number, row)
            if number % s.sync_every == 0 and run.settings.learner.backend != "hf":  # hf samples from the live weights
                _sync(generator, model, tokenizer, layout.online_sync)
            if number % s.save_every == 0 and number < s.steps:
                _save(stage_dir, number, model, tokenizer, updater)
            if _evaluates_at(s, number):
                _evaluate_live(run, generator, number)
        partial = stage_dir / FINAL_PARTIAL
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        publish(partial, final)
    finally:
        monitor.close()
        generator.close()
    for checkpoint in checkpoints(stage_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)
    return str(final)


def _evaluates_at(settings, number: int) -> bool:
    """Whether the live policy is evaluated after step `number` (the final model is evaluated by the caller)."""
    return bool(settings.eval_every) and 0 < number < settings.steps and number % settings.eval_every == 0


def _evaluate_live(run: Run, generator, number: int) -> None:
    evaluate(
        run.task,
        generator,
        run.layout.online_eval_dir(number),
        run.settings.eval,
        problems=run.eval_problems,
        seed=run.settings.seed,
        show_progress=False,
        title=f"{ONLINE_PREFIX}{number}: {run.task.name}",
    )


def _policy_generator(run: Run, model, tokenizer):
    """The live policy on the hf backend, or a vLLM engine synced every `sync_every` steps."""
    learner = run.settings.learner
    if learner.backend == "hf":
        from riselm.generation.hf import HFGenerator

        logger.info("online: generation uses the live weights (hf backend, in this process)")
        return HFGenerator(model, tokenizer, batch_size=learner.batch_size, name="policy")
    if learner.backend == "vllm":
        from riselm.generators import build

        logger.warning(
            "online: the vLLM engine takes new weights by a restart every %d steps (online.sync_every); "
            "vLLM's in-place weight reload is not used (it returned wrong tokens on CPU)",
            run.settings.online.sync_every,
        )
        path = run.layout.online_sync
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return build(learner, str(path))
    raise ValueError(f"method online needs learner.backend hf or vllm (the sampled token ids), got {learner.backend!r}")


def _sync(generator, model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    generator.reload(path)


def _save(stage_dir: Path, step: int, model, tokenizer, updater: PolicyUpdater) -> None:
    """A complete, resumable checkpoint of `step`; older ones beyond the last KEEP_CHECKPOINTS go."""
    path = checkpoint_dir(stage_dir, step)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    state = {"step": step, **updater.state_dict(), "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    torch.save(state, path / "online_state.pt")
    mark_complete(path)
    complete = checkpoints(stage_dir)
    for old in complete[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(stage_dir: Path, model, updater: PolicyUpdater) -> int:
    """Load the last complete checkpoint into `model` and `updater`; returns its step (0: none)."""
    path = last_complete_checkpoint(stage_dir)
    if path is None:
        return 0
    from riselm.models import load_causal_lm

    saved = load_causal_lm(path, dtype=torch.float32)
    model.load_state_dict(saved.state_dict())
    del saved
    state = torch.load(path / "online_state.pt", weights_only=False)
    updater.load_state_dict(state)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    logger.info("online: resuming after step %d from %s", state["step"], path)
    return int(state["step"])
