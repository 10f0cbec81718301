"""riselm: RISE (Recursive IntroSpEction) for language models.

A model answers; told "that is wrong, try again" it should answer better, turn after turn, without
ever being told the right answer. riselm holds the tasks, generation backends, multi-turn rollouts,
reward-weighted training and the evaluation that measure and build that ability.

    from riselm import build_generator, collect, evaluate, get_task, run_pipeline, train_weighted

The entry points are imported on first use, so `import riselm` stays cheap.
"""

__version__ = "0.1.0"

_ENTRY_POINTS = {
    "build_generator": "riselm.generators",
    "collect": "riselm.rollout.collect",
    "evaluate": "riselm.evaluation.evaluate",
    "get_task": "riselm.tasks",
    "load_config": "riselm.config",
    "rollout": "riselm.rollout.engine",
    "run_pipeline": "riselm.run.pipeline",
    "train_weighted": "riselm.training.trainer",
}


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        import importlib

        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'riselm' has no attribute {name!r}")


__all__ = sorted(_ENTRY_POINTS)
