"""Training: rollouts -> weighted samples (`samples`), samples -> token ids (`tokenize`), the weighted
trainer (`trainer`), boost data (`boost`).

The trainer names are imported on first use, so that building samples does not load transformers.
"""

from __future__ import annotations

from riselm.settings import LoraSettings, TrainSettings
from riselm.training.boost import boost_samples, corrupt_numbers, wrong_attempts_from_episodes
from riselm.training.samples import (
    TrainingSample,
    load_training_samples,
    read_samples,
    reward_weight,
    samples_from_episodes,
)
from riselm.training.tokenize import WeightedCollator, tokenize_sample, tokenize_samples

_TRAINER_NAMES = ("WeightedTrainer", "train_weighted", "train_from_file")


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from riselm.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'riselm.training' has no attribute {name!r}")


__all__ = [
    "LoraSettings",
    "TrainSettings",
    "TrainingSample",
    "WeightedCollator",
    "boost_samples",
    "corrupt_numbers",
    "load_training_samples",
    "read_samples",
    "reward_weight",
    "samples_from_episodes",
    "tokenize_sample",
    "tokenize_samples",
    "wrong_attempts_from_episodes",
    *_TRAINER_NAMES,
]
