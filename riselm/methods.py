"""The methods a run can follow its boost with (`method:` of a run config): the one table of them.

Each says what it trains on and which stages it runs; the pipeline asks the table and never compares
method names itself.

    rise             RISE's iterations: every turn of the collected episodes, weighted exp(r/τ) (the paper)
    rise_success     the same episodes, successful turns only (the paper's Fig. 3 ablation)
    filtered_sft     single-turn: the learner's correct first answers, weight 1 (STaR / RFT)
    single_turn_rwr  single-turn: every first answer, weighted exp(r/τ) (the rebuttal's Table 4)
    online           online multi-turn RL instead of the iterations (riselm.online)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from riselm.rollout.episode import Episode
from riselm.settings import SamplesSettings
from riselm.training.samples import TrainingSample, first_turn_samples, samples_from_episodes


@dataclass(frozen=True)
class Method:
    name: str
    online: bool = False  # online RL replaces the collect -> train iterations
    first_turns_only: bool = False  # collects, and trains on, first turns only (the single-turn baselines)
    filter: str | None = None  # replaces samples.filter
    weighted: bool = True  # exp(r/τ) weights; single-turn without: correct answers only, weight 1

    @property
    def uses_experts(self) -> bool:
        """Whether the collection schedule's improvers (experts included) are asked after a wrong turn."""
        return not (self.online or self.first_turns_only)

    def samples(self, episodes: Iterable[Episode], settings: SamplesSettings) -> list[TrainingSample]:
        """The weighted training samples this method builds from collected episodes."""
        if self.first_turns_only:
            return first_turn_samples(episodes, settings, weighted=self.weighted)
        if self.filter is not None:
            settings = settings.model_copy(update={"filter": self.filter})
        return samples_from_episodes(episodes, settings)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("rise"),
        Method("rise_success", filter="success"),
        Method("filtered_sft", first_turns_only=True, weighted=False),
        Method("single_turn_rwr", first_turns_only=True),
        Method("online", online=True),
    )
}
