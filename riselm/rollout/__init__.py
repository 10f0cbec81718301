"""Multi-turn rollouts: Turn/Episode records and files, the one rollout loop, RISE collection."""

from riselm.rollout.collect import collect
from riselm.rollout.engine import RolloutSpec, Step, conversation_seed, rollout
from riselm.rollout.episode import Episode, Turn, read_episodes

__all__ = ["Episode", "RolloutSpec", "Step", "Turn", "collect", "conversation_seed", "read_episodes", "rollout"]
