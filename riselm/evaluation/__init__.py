"""Multi-turn evaluation: runs, metrics, reports."""

from riselm.evaluation.evaluate import EvalResult, evaluate, metrics_of_file
from riselm.evaluation.metrics import majority_vote, parallel_metrics, sequential_metrics, vote_groups
from riselm.settings import EvalSettings

__all__ = [
    "EvalResult",
    "EvalSettings",
    "evaluate",
    "majority_vote",
    "metrics_of_file",
    "parallel_metrics",
    "sequential_metrics",
    "vote_groups",
]
