"""`riselm run` end to end on a tiny model: every stage's files, the summary, resume, early config errors."""

import json
import math

import pytest

from riselm.config import ConfigError, load_config
from riselm.run.demo import demo_config, init_model, prepare_demo
from riselm.run.pipeline import run_pipeline

TINY = [
    "task.train_limit=6",
    "task.eval_limit=3",
    "task.options.train_size=50",
    "task.options.test_size=10",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "boost.history_turns=1",
    "boost.train.epochs=1",
    "boost.train.batch_size=4",
    "train.epochs=1",
    "train.batch_size=4",
    "train.warmup_ratio=0",  # a warm-up step starts at rate 0: with one or two steps nothing would train
    "iterations=1",
    "collect.max_turns=2",
    "collect.schedule=[{model: learner, n: 1}, {model: learner, n: 2}]",
    "collect.sampling.max_new_tokens=12",
    "eval.turns=2",
    "eval.parallel_samples=2",
    "eval.sampling.max_new_tokens=12",
    "learner.batch_size=16",
    "threads=1",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = prepare_demo(out, TINY)
    stages = run_pipeline(cfg, show_progress=False)
    return out, cfg, stages


def test_every_stage_writes_its_folder(finished_run):
    out, _, stages = finished_run
    assert [s.name for s in stages] == ["boost", "iter1"]
    for path in [
        "config.yaml",
        "boost/samples.jsonl",
        "boost/train/final/config.json",
        "boost/eval/episodes.sequential.jsonl",
        "boost/eval/episodes.parallel.jsonl",
        "iter1/collect/episodes.jsonl",
        "iter1/samples.jsonl",
        "iter1/train/final/config.json",
        "iter1/eval/metrics.json",
        "summary.md",
        "summary.png",
    ]:
        assert (out / path).exists(), path


def test_summary_has_table_keys_per_stage(finished_run):
    out, _, _ = finished_run
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["boost", "iter1"]
    assert summary["keys"] == ["m1@t1", "m2@t1", "m1@t2", "p1@t2"]  # the turns and samples that were run
    for stage in summary["stages"]:  # each number equals an independent count over the stage's episodes
        sequential = [json.loads(line) for line in (out / stage["name"] / "eval/episodes.sequential.jsonl").read_text().splitlines()]
        right = [[turn["reward"] >= 1 for turn in e["turns"]] for e in sequential]
        assert len(right) == 3 and all(len(r) == 2 for r in right)
        assert stage["m1@t1"] == pytest.approx(100 * sum(r[0] for r in right) / 3)
        assert stage["p1@t2"] == pytest.approx(100 * sum(any(r) for r in right) / 3)
        assert stage["m1@tk"][0] == stage["m1@t1"] and len(stage["m1@tk"]) == 2
    assert "| stage | m1@t1 | m2@t1 | m1@t2 | p1@t2 |" in (out / "summary.md").read_text()


def test_each_stage_trains_the_model_the_next_one_uses(finished_run):
    from transformers import AutoModelForCausalLM

    out, cfg, stages = finished_run
    init, boost, iter1 = (
        AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (cfg.model, out / "boost/train/final", out / "iter1/train/final")
    )
    assert max((boost[k] - init[k]).abs().max() for k in init) > 1e-4  # the boost trained
    assert max((iter1[k] - boost[k]).abs().max() for k in init) > 1e-6  # iteration 1 trained on from the boost
    assert [s.model for s in stages] == [str(out / "boost/train/final"), str(out / "iter1/train/final")]
    collected = [json.loads(line) for line in (out / "iter1/collect/episodes.jsonl").read_text().splitlines()]
    assert len(collected) == 6 and all(e["turns"] for e in collected)


def test_rerun_resumes_without_redoing_work(finished_run):
    out, cfg, _ = finished_run
    collected = (out / "iter1/collect/episodes.jsonl").read_text()
    model_mtime = (out / "iter1/train/final/config.json").stat().st_mtime
    # lose the last stage's evaluation, as a crash during it would
    (out / "iter1/eval/episodes.parallel.jsonl").unlink()
    (out / "iter1/eval/metrics.json").unlink()
    stages = run_pipeline(cfg, show_progress=False)
    assert (out / "iter1/collect/episodes.jsonl").read_text() == collected
    assert (out / "iter1/train/final/config.json").stat().st_mtime == model_mtime
    assert (out / "iter1/eval/episodes.parallel.jsonl").exists()
    assert stages[-1].parallel["samples"] == 2


def test_an_unevaluated_boost_is_trained_and_timed_in_the_next_row(tmp_path):
    cfg = prepare_demo(tmp_path, [*TINY, "eval.boost=false", "eval.turns=1", "eval.parallel_samples=0"])
    stages = run_pipeline(cfg, show_progress=False)
    assert [s.name for s in stages] == ["iter1"]
    assert (tmp_path / "boost/train/final/config.json").exists() and not (tmp_path / "boost/eval").exists()
    assert stages[0].model == str(tmp_path / "iter1/train/final")
    assert list(stages[0].seconds) == ["boost", "collect", "train", "eval"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["iter1"] and "boost" in summary["stages"][0]["seconds"]


def test_the_demo_starts_from_a_given_model(finished_run, tmp_path):
    out, _, _ = finished_run
    boosted = out / "boost" / "train" / "final"
    cfg = prepare_demo(tmp_path / "again", [*TINY, f"model={boosted}", "boost.enabled=false"])
    assert cfg.model == str(boosted)
    assert not (tmp_path / "again" / "init").exists()  # no from-scratch model written


def test_missing_model_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model"):
        load_config(None, [f"out={tmp_path / 'run'}", f"model={tmp_path / 'no-such-model'}"])
    assert not (tmp_path / "run").exists()


def test_unknown_task_fails_before_any_work(tmp_path):
    cfg = load_config(None, [f"out={tmp_path / 'run'}", "task.name=chess"], check_models=False)
    with pytest.raises(ValueError, match="known tasks"):
        run_pipeline(cfg, show_progress=False)


@pytest.mark.parametrize("method", ["rise", "rise_success", "filtered_sft", "single_turn_rwr"])
def test_each_method_builds_the_samples_it_claims(tmp_path, method):
    from riselm.jsonl import write_jsonl
    from riselm.rollout.episode import Episode, Turn
    from riselm.run.context import Run
    from riselm.run.pipeline import build_samples
    from riselm.settings import RunSettings
    from tests.toy import ToyTask

    retry = "Try again."
    episodes = [
        Episode("p1", "toy", "collect", "Q1", [Turn("a", "1", 0.0, feedback=retry), Turn("b", "2", 1.0)]),
        Episode("p2", "toy", "collect", "Q2", [Turn("c", "4", 1.0)]),
        Episode("p2", "toy", "collect", "Q2", [Turn("d", "5", 0.0)], sample=1),
    ]
    write_jsonl(tmp_path / "collect" / "episodes.jsonl", [e.to_dict() for e in episodes])
    run = Run(RunSettings(method=method, samples={"tau": 0.5}), ToyTask(), [], [], tmp_path, show_progress=False)
    samples = build_samples(run, [tmp_path / "collect"], tmp_path / "samples.jsonl")
    got = [(s.episode_id, s.response, len(s.messages), round(s.weight, 4)) for s in samples]
    e2 = round(math.exp(2), 4)
    expected = {
        "rise": [("p1", "a", 2, 1.0), ("p1", "b", 4, e2), ("p2", "c", 2, e2), ("p2", "d", 2, 1.0)],
        "rise_success": [("p1", "b", 4, e2), ("p2", "c", 2, e2)],
        "filtered_sft": [("p2", "c", 2, 1.0)],  # correct first answers only, weight 1
        "single_turn_rwr": [("p1", "a", 2, 1.0), ("p2", "c", 2, e2), ("p2", "d", 2, 1.0)],  # every first answer
    }[method]
    assert got == expected
    assert (tmp_path / "samples.jsonl").exists()


def test_single_turn_methods_collect_several_first_turns_a_problem(tmp_path):
    from riselm.rollout.episode import read_episodes

    overrides = [o for o in TINY if not o.startswith("boost.")] + [
        "method=single_turn_rwr",
        "boost.enabled=false",
        "collect.episodes_per_problem=3",
        "collect.max_turns=4",
    ]
    cfg = prepare_demo(tmp_path, overrides)
    stages = run_pipeline(cfg, show_progress=False)
    episodes = read_episodes(tmp_path / "iter1/collect/episodes.jsonl")
    assert sorted({e.sample for e in episodes}) == [0, 1, 2] and len(episodes) == 6 * 3
    assert all(len(e.turns) == 1 for e in episodes)  # first turns only, whatever collect.max_turns says
    assert [s.name for s in stages] == ["iter1"]


def test_a_dead_expert_server_is_named_before_any_work(tmp_path):
    import socket
    import time

    from riselm.generation.errors import BackendUnavailable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = prepare_demo(
        tmp_path,
        TINY
        + [
            f"experts={{teacher: {{backend: openai, model: big, base_url: 'http://127.0.0.1:{port}/v1'}}}}",
            "collect.schedule=[{model: learner, n: 1}, {model: teacher, n: 2}]",
        ],
    )
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match=rf"127.0.0.1:{port}.*'big'"):
        run_pipeline(cfg, show_progress=False)
    assert time.perf_counter() - started < 15 and not (tmp_path / "boost").exists()


@pytest.fixture
def recorded_iterations(tmp_path, monkeypatch):
    """Run 2 iterations with training replaced by a recorder (a copy of the model it starts from).

    The untrained model rarely stops before max_new_tokens, and truncated turns are not trained:
    the long limit leaves every episode a finished turn or two (the same ones every run: seeded)."""
    import shutil

    import riselm.run.pipeline as pipeline

    calls = []

    def fake_train(run, learner, settings, samples, init_model, train_dir):
        calls.append({"init": str(init_model), "episodes": sorted({(s.episode_id, s.sample) for s in samples}), "dir": train_dir})
        shutil.copytree(init_model, train_dir / "final", dirs_exist_ok=True)
        return str(train_dir / "final")

    collected = []
    real_collect = pipeline.collect_stage

    def spy_collect(run, learner, model, collect_dir, iteration):
        collected.append((str(model), iteration))
        return real_collect(run, learner, model, collect_dir, iteration)

    monkeypatch.setattr(pipeline, "train_stage", fake_train)
    monkeypatch.setattr(pipeline, "collect_stage", spy_collect)

    def run(*overrides):
        base = [o for o in TINY if not o.startswith("boost.") and o != "iterations=1"]
        overrides = base + ["boost.enabled=false", "iterations=2", "collect.limit=3", "collect.sampling.max_new_tokens=400", *overrides]
        _, shape = demo_config(tmp_path / "run", overrides)
        init_model(tmp_path / "strong", {**shape, "hidden_size": 24})  # weak-to-strong's other model
        cfg = prepare_demo(tmp_path / "run", overrides)
        run_pipeline(cfg, show_progress=False)
        return cfg, calls, collected

    return run


def test_init_from_previous_or_base(recorded_iterations):
    cfg, calls, _ = recorded_iterations()
    assert [c["init"] for c in calls] == [cfg.model, str(calls[0]["dir"] / "final")]


def test_init_from_base_trains_every_iteration_from_the_start_model(recorded_iterations):
    cfg, calls, _ = recorded_iterations("init_from=base")
    assert [c["init"] for c in calls] == [cfg.model, cfg.model]


def test_aggregate_trains_on_the_episodes_of_every_iteration_so_far(recorded_iterations):
    _, calls, _ = recorded_iterations("aggregate=true")
    first, second = (set(c["episodes"]) for c in calls)
    assert first == {("p0", 0), ("p1", 0), ("p2", 0)} or len(first) == 3
    assert first < second and len(second) == 6  # iteration 2 collected 3 new problems and trains on all 6


def test_without_aggregate_each_iteration_trains_on_its_own_new_slice(recorded_iterations):
    _, calls, collected = recorded_iterations()
    first, second = (set(c["episodes"]) for c in calls)
    assert len(first) == len(second) == 3 and not first & second  # collect.limit rotates through the problems
    assert [k for _, k in collected] == [1, 2]


def test_weak_to_strong_collects_with_the_model_and_trains_train_model(recorded_iterations, tmp_path):
    cfg, calls, collected = recorded_iterations(f"train_model={tmp_path / 'strong'}")
    assert [m for m, _ in collected] == [cfg.model, cfg.model]  # the weak model collects every iteration
    assert [c["init"] for c in calls] == [str(tmp_path / "strong"), str(calls[0]["dir"] / "final")]


def test_boost_from_the_models_own_wrong_answers(tmp_path):
    from riselm.rollout.episode import read_episodes
    from riselm.training.samples import read_samples

    overrides = TINY + ["iterations=0", "boost.wrong_attempts=own", "boost.own_samples=2", "eval.turns=1", "eval.parallel_samples=0"]
    cfg = prepare_demo(tmp_path, overrides)
    run_pipeline(cfg, show_progress=False)
    episodes = read_episodes(tmp_path / "boost/collect/episodes.jsonl")
    assert len(episodes) == 6 * 2 and all(len(e.turns) == 1 for e in episodes)
    assert (tmp_path / "boost/collect/DONE").exists()
    own = {(e.id, e.turns[0].response) for e in episodes if not e.turns[0].correct and e.turns[0].response.strip()}
    attempts = [(s.episode_id, s.messages[1]["content"]) for s in read_samples(tmp_path / "boost/samples.jsonl") if s.turn == 1]
    assert attempts and set(attempts) <= own  # the untrained model is always wrong: every attempt is its own
