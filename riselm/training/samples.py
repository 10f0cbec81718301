"""From rollouts to weighted training samples (spec §3): which turns are trained, and with what weight.

RISE trains on every turn of every collected episode: the sample of turn t is the conversation up to
and including action t, only that last assistant message is trained on, and its loss is weighted by
`exp(reward / tau)`, so wrong actions are kept with a small weight (reward-weighted regression)
instead of being filtered out (`samples.wrong_weight` scales the weight of turns that are not correct,
`samples.normalize` divides the weights by their mean so that tau changes the mix, not the step
size). Turning samples into token ids is riselm.training.tokenize.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from riselm.generation.base import Conversation
from riselm.jsonl import DataError, iter_jsonl
from riselm.rollout.episode import Episode, read_episodes
from riselm.settings import SamplesSettings
from riselm.tasks.base import is_correct

logger = logging.getLogger(__name__)

FILTERS: tuple[str, ...] = ("all", "better", "best", "success")
EPISODE_WINDOW: Final = "episode"  # build each sample with the context window its episode was generated with


@dataclass
class TrainingSample:
    messages: Conversation  # the conversation up to and including the trained action (the last message)
    reward: float  # the task's reward for that action
    weight: float  # the loss weight, exp(reward / tau) for RISE samples, 1.0 for boost samples
    episode_id: str  # the problem id of the episode (or boost conversation) it comes from
    turn: int  # 0-based index of the trained action within its episode
    sample: int = 0  # the episode's index among its problem's episodes: (episode_id, sample) names the episode

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingSample:
        return cls(
            messages=d["messages"],
            reward=float(d["reward"]),
            weight=float(d["weight"]),
            episode_id=str(d["episode_id"]),
            turn=int(d["turn"]),
            sample=int(d.get("sample", 0)),
        )


def reward_weight(reward: float, tau: float = 0.4) -> float:
    """RISE's loss weight exp(r / tau): correct (1) ≈ 12.2, wrong (0) = 1, unparsable (-1) ≈ 0.08 at tau 0.4."""
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    return math.exp(reward / tau)


def sample_weight(reward: float, settings: SamplesSettings) -> float:
    """The loss weight of a turn: exp(r / tau), times `wrong_weight` when the turn is not correct."""
    weight = reward_weight(reward, settings.tau)
    return weight if is_correct(reward) else settings.wrong_weight * weight


def normalized(samples: list[TrainingSample], settings: SamplesSettings) -> list[TrainingSample]:
    """With `settings.normalize`, the samples with weights divided by their mean (mean weight 1); else as they are."""
    total = sum(s.weight for s in samples)
    if not settings.normalize or not samples or total == 0:
        return samples
    scale = len(samples) / total
    for sample in samples:
        sample.weight *= scale
    return samples


def keep_turn(rewards: Sequence[float], t: int, filter: str) -> bool:
    """Whether turn t (0-based) of an episode with these per-turn rewards passes `filter`.

    - all: every turn.
    - better: r_t > r_{t-1}. The first turn is compared with an empty attempt of reward 0, so it is
      kept only when its reward is positive (a correct first answer); a wrong first answer has
      improved on nothing.
    - best: r_t >= every earlier reward; the first turn always passes (it has no earlier turn).
    - success: the action is correct.
    """
    r = rewards[t]
    if filter == "all":
        return True
    if filter == "better":
        previous = rewards[t - 1] if t > 0 else 0.0
        return r > previous
    if filter == "best":
        return all(r >= earlier for earlier in rewards[:t])
    if filter == "success":
        return is_correct(r)
    raise ValueError(f"unknown sample filter {filter!r}; known: {', '.join(FILTERS)}")


def samples_from_episodes(
    episodes: Iterable[Episode],
    settings: SamplesSettings = SamplesSettings(),
    window: int | Literal["episode"] | None = EPISODE_WINDOW,
) -> list[TrainingSample]:
    """One weighted sample per turn of every episode (spec §3), filtered and optionally de-duplicated.

    `window`: the context window of each sample (the question plus the last window-1 attempts), by
    default the one each episode was generated with, so that a sample conditions on exactly what the
    model saw; an int or None (the whole history) overrides it.

    De-duplication drops a sample whose whole conversation (prompt messages and response) equals an
    earlier one, e.g. identical greedy rollouts of one problem; the first one is kept.

    A truncated turn (generation stopped at max_new_tokens) is never trained: the trainer closes
    every trained response with the end-of-turn token, which would teach the model to stop in the
    middle of an answer. It stays in the context of the episode's later turns, as the model saw it.
    """
    if settings.filter not in FILTERS:
        raise ValueError(f"unknown sample filter {settings.filter!r}; known: {', '.join(FILTERS)}")
    samples: list[TrainingSample] = []
    seen: set[str] = set()
    for episode in episodes:
        rewards = [turn.reward for turn in episode.turns]
        context_window = episode.window if window == EPISODE_WINDOW else window
        for t, turn in enumerate(episode.turns):
            if t > 0 and episode.turns[t - 1].feedback is None:
                where = episode.origin or f"episode {episode.id!r} (sample {episode.sample})"
                raise DataError(
                    f"{where}: turn {t + 1} follows a turn without 'feedback'; every turn but the last needs "
                    "the user message that came after it"
                )
            if turn.truncated or not keep_turn(rewards, t, settings.filter):
                continue
            messages = episode.messages(upto=t, window=context_window) + [{"role": "assistant", "content": turn.response}]
            if settings.dedup:
                key = json.dumps(messages, ensure_ascii=False)
                if key in seen:
                    continue
                seen.add(key)
            samples.append(
                TrainingSample(
                    messages=messages,
                    reward=turn.reward,
                    weight=sample_weight(turn.reward, settings),
                    episode_id=episode.id,
                    turn=t,
                    sample=episode.sample,
                )
            )
    return normalized(samples, settings)


def first_turn_samples(
    episodes: Iterable[Episode], settings: SamplesSettings = SamplesSettings(), weighted: bool = False
) -> list[TrainingSample]:
    """Single-turn samples from the first turn of every episode: the prompt and the learner's own answer.

    The two single-turn baselines of the paper's comparisons: `weighted=False` is filtered SFT
    (STaR / rejection-sampling fine-tuning): correct answers only, weight 1. `weighted=True` is
    single-turn reward-weighted regression on the same correct and wrong answers, weight exp(r/tau)
    (the rebuttal's Table 4). De-duplication and truncated turns as in `samples_from_episodes`.
    """
    samples: list[TrainingSample] = []
    seen: set[str] = set()
    for episode in episodes:
        if not episode.turns or episode.turns[0].truncated or not (weighted or episode.turns[0].correct):
            continue
        turn = episode.turns[0]
        messages = episode.messages(upto=0) + [{"role": "assistant", "content": turn.response}]
        key = json.dumps(messages, ensure_ascii=False)
        if settings.dedup and key in seen:
            continue
        seen.add(key)
        weight = sample_weight(turn.reward, settings) if weighted else 1.0
        samples.append(
            TrainingSample(messages=messages, reward=turn.reward, weight=weight, episode_id=episode.id, turn=0, sample=episode.sample)
        )
    return normalized(samples, settings)


def read_samples(path: str | Path) -> list[TrainingSample]:
    """Read a samples JSONL file (one TrainingSample per line), checking every row."""
    samples = []
    for lineno, row in iter_jsonl(path, required=("messages", "reward", "weight", "episode_id", "turn")):
        problem = _sample_row_problem(row)
        if problem:
            raise DataError(f"{path}:{lineno}: {problem}")
        samples.append(TrainingSample.from_dict(row))
    return samples


def _sample_row_problem(row: dict[str, Any]) -> str | None:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "expected 'messages' to be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return f"message {i} is not an object with string 'role' and 'content'"
    if messages[-1]["role"] != "assistant":
        return f"the last message (the trained one) must be an assistant message, got role {messages[-1]['role']!r}"
    try:
        weight = float(row["weight"])
        float(row["reward"])
        int(row["turn"])
    except (TypeError, ValueError):
        return "expected numeric 'reward' and 'weight' and an integer 'turn'"
    if not math.isfinite(weight) or weight < 0:
        return f"expected a finite, non-negative 'weight', got {row['weight']!r}"
    return None


def load_training_samples(
    path: str | Path, settings: SamplesSettings = SamplesSettings(), window: int | Literal["episode"] | None = EPISODE_WINDOW
) -> list[TrainingSample]:
    """Samples from an episodes file (weighted and filtered here) or a samples file (used as written).

    The kind is told by the first row: episodes have 'turns', samples have 'messages'. With an
    explicit `window` that differs from the one the episodes were generated with, a warning says so.
    """
    rows = iter_jsonl(path)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: no rows; expected episodes (with 'turns') or training samples (with 'messages')")
    lineno, row = first
    if "turns" in row:
        episodes = read_episodes(path)
        if window != EPISODE_WINDOW:
            generated = sorted({str(e.window) for e in episodes if e.window != window})
            if generated:
                logger.warning(
                    "%s: episodes were generated with context window %s; building samples with window %s as asked",
                    path,
                    " and ".join(generated),
                    window,
                )
        return samples_from_episodes(episodes, settings, window)
    if "messages" in row:
        return read_samples(path)
    raise DataError(f"{path}:{lineno}: expected an episode (with 'turns') or a training sample (with 'messages')")
