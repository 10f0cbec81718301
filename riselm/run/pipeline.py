"""`riselm run`: boost -> iteration 1 -> iteration 2 ... (or online RL), one resumable command.

Each iteration reads top to bottom: collect -> build samples -> train -> evaluate; the method
(`RunSettings.method`) decides which samples are built (RISE's, its success-only ablation, or the
single-turn baselines), and `method: online` replaces the iterations by online RL
(riselm.run.online). Every stage writes into its own folder of the run directory (riselm.rundir's
`RunLayout` names every path) and is skipped when its output is complete, so running the same
command again after a crash continues where it stopped (collection and evaluation resume inside
their episodes files, training from its last complete checkpoint). In a distributed run every
process runs these same calls (riselm.distributed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from riselm import distributed
from riselm.checkpoints import checkpoints
from riselm.config import ConfigError
from riselm.evaluation.evaluate import evaluate
from riselm.files import write_text_atomic
from riselm.generation.base import Generator
from riselm.generators import Learner, build_expert
from riselm.hardware import usable_cpus
from riselm.jsonl import write_jsonl
from riselm.methods import METHODS
from riselm.progress import timed
from riselm.rollout.collect import check_reference, collect
from riselm.rollout.engine import RolloutSpec, Step
from riselm.rollout.episode import Episode, read_episodes
from riselm.rollout.shards import sharded_rollout
from riselm.run.context import Run
from riselm.run.summary import StageResult, write_summary
from riselm.rundir import DONE_FILE, EPISODES_FILE, FINAL, METRICS_FILE, ONLINE_PREFIX, RunLayout, claim, iteration_stage
from riselm.settings import RunSettings, TrainSettings
from riselm.tasks import get_task
from riselm.tasks.base import Problem
from riselm.training.samples import TrainingSample


def run_pipeline(settings: RunSettings, show_progress: bool = True) -> list[StageResult]:
    """Run (or resume) the whole RISE loop; returns one result per evaluated stage.

    In each worker of a distributed run (riselm.distributed) the same calls run: rollouts are
    sharded, training is data-parallel, and only the main process writes shared files.
    """
    current = distributed.init(settings.distributed)
    try:
        return _run_stages(settings, show_progress and current.main, current)
    except BaseException as error:
        distributed.set_error(Path(settings.out), current, error)
        raise


def _run_stages(settings: RunSettings, show_progress: bool, current: distributed.World) -> list[StageResult]:
    run = start_run(settings, show_progress, current)
    stages: list[StageResult] = []
    model = settings.train_model or settings.model  # the lineage being trained
    with Learner(settings.learner) as learner:
        if settings.eval.base:
            stages.append(evaluate_stage(run, learner, model, "base"))
        boost_seconds: dict[str, float] = {}
        if settings.boost.enabled:
            with timed(boost_seconds, "boost"):
                model = boost_stage(run, learner, model)
            if settings.eval.boost:
                stages.append(evaluate_stage(run, learner, model, "boost", boost_seconds))
                boost_seconds = {}
        later = online(run, learner, model) if run.method.online else rise_iterations(run, learner, model)
        if later and boost_seconds:  # an unevaluated boost's time is shown in the next stage's row
            later[0].seconds = {**boost_seconds, **later[0].seconds}
        stages += later
    if current.main:
        write_summary(run.layout, stages, title=f"{settings.method} on {run.task.name} ({settings.model})")
    return stages


def rise_iterations(run: Run, learner: Learner, model: str) -> list[StageResult]:
    """RISE's iterations from `model`: collect -> build samples -> train -> evaluate, each in iter{k}/."""
    settings, stages = run.settings, []
    collector = settings.model if settings.train_model else None  # weak-to-strong: a fixed collector
    start_model = model
    layout = run.layout
    for k in range(1, settings.iterations + 1):
        stage = iteration_stage(k)
        seconds: dict[str, float] = {}
        with timed(seconds, "collect"):
            collect_stage(run, learner, collector or model, layout.collect_dir(k), k)
        with timed(seconds, "train"):
            samples = build_samples(run, [layout.collect_dir(i) for i in data_iterations(settings, k)], layout.samples(stage))
            init = model if settings.init_from == "previous" else start_model
            model = train_stage(run, learner, settings.train, samples, init, layout.train_dir(stage))
        stages.append(evaluate_stage(run, learner, model, stage, seconds))
    return stages


def start_run(settings: RunSettings, show_progress: bool = True, current: distributed.World = distributed.World()) -> Run:
    """Set the CPU threads, load the task and its problems, save the validated config into the run directory."""
    if settings.threads:
        set_cpu_threads(settings.threads, distributed.processes_per_node(settings.distributed))
    if METHODS[settings.method].online and current.size > 1:
        raise ConfigError("method online runs in one process; set distributed.processes=1")
    if settings.distributed.strategy != "ddp" and not _has_gpu():
        raise ConfigError(f"distributed.strategy {settings.distributed.strategy!r} shards the model over GPUs; use ddp on CPU")
    try:
        task = get_task(settings.task.name, **settings.task.options)
    except ValueError as e:
        raise ConfigError(f"task: {e}") from None
    check_expert_servers(settings)
    t = settings.task
    train_problems = task.load(t.train_split, t.train_data, t.train_limit)
    eval_problems = task.load(t.eval_split, t.eval_data, t.eval_limit)
    if METHODS[settings.method].uses_experts and settings.iterations:
        try:  # before the boost, not after it
            check_reference(task, train_problems, settings.collect.schedule)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    out = Path(settings.out)
    if current.main:
        claim_run(out, settings)  # a library call into another run's directory stops here too
        write_text_atomic(RunLayout(out).config, yaml.safe_dump(settings.model_dump(), sort_keys=False))
    current.barrier()
    return Run(settings, task, train_problems, eval_problems, out, show_progress, current)


def check_expert_servers(settings: RunSettings) -> None:
    """Ask every expert server the schedule uses whether it is up and serves its model, before any work."""
    if not METHODS[settings.method].uses_experts:
        return
    named = {step.model for step in settings.collect.schedule}
    for name, expert in settings.experts.items():
        if expert.backend == "openai" and name in named:
            from riselm.generation.openai_compat import OpenAIGenerator

            generator = build_expert(expert)
            assert isinstance(generator, OpenAIGenerator)  # what backend openai builds
            try:
                generator.check()
            finally:
                generator.close()


# ---- stages ------------------------------------------------------------------------------------


def boost_stage(run: Run, learner: Learner, model: str) -> str:
    """SFT on the task's gold solutions (with earlier wrong attempts in context when configured)."""
    from riselm.training.boost import boost_samples, wrong_attempts_from_episodes

    boost = run.settings.boost
    chosen = run.train_problems[: boost.limit] if boost.limit else run.train_problems
    wrong_attempt = None  # boost_samples' default: the gold solution with a corrupted answer
    if boost.wrong_attempts == "own" and boost.history_turns:
        wrong_attempt = wrong_attempts_from_episodes(own_attempts(run, learner, model, chosen))
    run.stage("boost")
    samples = boost_samples(
        run.task,
        chosen,
        with_history_turns=boost.history_turns,
        wrong_attempt=wrong_attempt,
        seed=run.settings.seed,
        every_depth=boost.every_depth,
    )
    if run.world.main:
        write_jsonl(run.layout.samples("boost"), (s.to_dict() for s in samples))
    return train_stage(run, learner, boost.train, samples, model, run.layout.train_dir("boost"))


def own_attempts(run: Run, learner: Learner, model: str, problems: Sequence[Problem]) -> list[Episode]:
    """`boost.own_samples` first answers of `model` to each boost problem (boost/collect/), whose wrong
    ones become the boost's wrong attempts; resumes inside the episodes file."""
    collect_dir = run.layout.collect_dir("boost")
    episodes_path = collect_dir / EPISODES_FILE
    if (collect_dir / DONE_FILE).exists():
        return read_episodes(episodes_path)
    run.stage(f"collect ({collect_dir})")
    settings = run.settings
    spec = RolloutSpec(
        mode="collect",
        turns=1,
        stop_when_correct=True,
        episodes_per_problem=settings.boost.own_samples,
        sampling=settings.collect.sampling,
        seed=settings.seed,
        chunk_size=settings.collect.chunk_size,
        stage="boost",
    )
    episodes = sharded_rollout(run.task, problems, [Step(learner.at(model))], spec, episodes_path, run.show_progress)
    if run.world.main:
        write_text_atomic(collect_dir / DONE_FILE, "")
    return episodes


def collect_stage(run: Run, learner: Learner, model: str, collect_dir: Path, iteration: int) -> list[Episode]:
    """On-policy rollouts of `model` with the configured improvers (seeds and problems of `iteration`); resumes inside the episodes file."""
    episodes_path = collect_dir / EPISODES_FILE
    if (collect_dir / DONE_FILE).exists():
        return read_episodes(episodes_path)
    run.stage(f"collect ({collect_dir})")
    settings = run.settings
    collect_settings = settings.collect
    if run.method.first_turns_only:  # the single-turn baselines sample first turns only
        collect_settings = collect_settings.model_copy(update={"max_turns": 1})
    generators: dict[str, Generator] = {"learner": learner.at(model)}
    named = {step.model for step in settings.collect.schedule}
    experts = {name: build_expert(expert) for name, expert in settings.experts.items() if name in named}
    try:
        episodes = collect(
            run.task,
            {**generators, **experts},
            run.train_problems,
            episodes_path,
            collect_settings,
            settings.seed,
            run.show_progress,
            iteration=iteration,
        )
    finally:
        for expert in experts.values():
            expert.close()
    if run.world.main:
        write_text_atomic(collect_dir / DONE_FILE, "")
    return episodes


def build_samples(run: Run, collect_dirs: Sequence[Path], samples_path: Path) -> list[TrainingSample]:
    """Weighted training samples from the collected episodes (of this iteration, or all so far), as the
    method builds them; written to `samples_path`."""
    episodes = [e for d in collect_dirs for e in read_episodes(d / EPISODES_FILE)]
    method, settings = run.settings.method, run.settings.samples
    samples = run.method.samples(episodes, settings)
    if not samples:
        truncated = sum(t.truncated for e in episodes for t in e.turns)
        raise ValueError(
            f"{samples_path.parent}: no training samples: the {len(episodes)} collected episodes leave none after "
            f"method={method!r} and samples.filter={settings.filter!r} ({truncated} of their turns were cut at "
            "max_new_tokens, and truncated turns are never trained)"
        )
    if run.world.main:
        write_jsonl(samples_path, (s.to_dict() for s in samples))
    return samples


def train_stage(
    run: Run, learner: Learner, settings: TrainSettings, samples: Sequence[TrainingSample], init_model: str, train_dir: Path
) -> str:
    """Reward-weighted training from `init_model`; returns the trained model's directory. Resumes from checkpoints.

    With several processes it is data-parallel (distributed.strategy) with the same loss over the global batch.
    """
    import shutil

    from riselm.models import resolve_model_dir
    from riselm.training.trainer import train_weighted

    final = train_dir / FINAL
    if final.exists():  # final/ appears only once complete (written under another name, then renamed)
        return str(final)
    run.stage(f"train ({train_dir})")
    learner.close()  # a generation engine may hold the memory training needs
    final = train_weighted(
        resolve_model_dir(init_model),
        samples,
        train_dir,
        settings,
        show_progress=run.show_progress,
        strategy=run.settings.distributed.strategy,
    )
    run.world.barrier()
    if run.world.main:
        for checkpoint in checkpoints(train_dir):  # final/ is complete: resume points are no longer needed
            shutil.rmtree(checkpoint, ignore_errors=True)
    return str(final)


def online(run: Run, learner: Learner, model: str) -> list[StageResult]:
    """Online multi-turn RL from `model`: the live policy's evaluations along the way, then the final one."""
    from riselm.run.online import online_stage

    seconds: dict[str, float] = {}
    learner.close()  # the online stage holds its own copy of the policy
    with timed(seconds, "online"):
        final = online_stage(run, model)
    along = [StageResult.from_metrics(path / METRICS_FILE, f"{ONLINE_PREFIX}{step}") for step, path in run.layout.online_evaluations()]
    return along + [evaluate_stage(run, learner, final, "online", seconds)]


def evaluate_stage(run: Run, learner: Learner, model: str, name: str, seconds: dict[str, float] | None = None) -> StageResult:
    """Sequential (and parallel) evaluation of stage `name`'s model; resumes inside its episodes files."""
    seconds = dict(seconds or {})
    eval_dir = run.layout.eval_dir(name)
    run.stage(f"evaluate ({eval_dir})")
    with timed(seconds, "eval"):
        result = evaluate(
            run.task,
            learner.at(model),
            eval_dir,
            run.settings.eval,
            problems=run.eval_problems,
            seed=run.settings.seed,
            show_progress=run.show_progress,
            title=f"{name}: {run.task.name}",
        )
    return StageResult(name, model, result.sequential, result.parallel, seconds)


# ---- helpers -----------------------------------------------------------------------------------


def claim_run(out: str | Path, settings: RunSettings, overwrite: bool = False) -> None:
    """Claim a run directory for `settings` (riselm.rundir.claim), reading an older riselm's record with
    today's defaults for the options it predates."""

    def as_today(recorded: dict) -> dict:
        return run_identity(RunSettings.model_validate({**recorded, "out": settings.out}))

    claim(out, run_identity(settings), overwrite, upgrade=as_today)


def run_identity(settings: RunSettings) -> dict:
    """What decides a run directory's content (riselm.rundir): every setting but the speed ones."""
    from riselm.rundir import NOT_CONTENT, data_identity, model_identity, without

    identity = without(settings.model_dump(), NOT_CONTENT["run"])
    identity["model"] = model_identity(settings.model, settings.out)
    identity["train_model"] = model_identity(settings.train_model, settings.out)
    for key in ("train_data", "eval_data"):
        identity["task"][key] = data_identity(settings.task.model_dump()[key])
    return identity


def set_cpu_threads(threads: int, processes: int = 1) -> None:
    """Use `threads` torch threads, never more than this process's share of the CPUs it may run on (a
    tiny model on a shared machine slows down many times over when threads outnumber the cores)."""
    import torch

    torch.set_num_threads(max(1, min(threads, usable_cpus() // processes)))


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def data_iterations(settings: RunSettings, k: int) -> list[int]:
    """The iterations whose collected data train iteration k."""
    return list(range(1, k + 1)) if settings.aggregate else [k]
