"""From rolled-out episodes to training rows: one row per sampled action, with its exact token ids.

Tokens in, tokens out: a row is the prompt ids the backend conditioned on when it sampled the action
(the chat rendered for that turn, recorded by the rollout) followed by the action's ids exactly as
sampled. Nothing is re-rendered or re-tokenized, so the ids trained on are the ids sampled whatever
the chat template does (a template that trims or rewrites earlier messages drifts when a
conversation is rendered again; tests/online/test_tokens.py). Only the action ids are trained.

Credit: the chosen actions of the G episodes of a problem get per-turn advantages from
riselm.online.credit (leave-one-out over the other episodes that reached the turn). A turn that
sampled n > 1 candidates from one state credits each candidate against the other candidates of that
state, with the same credit settings (`credit.candidate_advantages`: the continued candidate's value
is its return-to-go, the others' their own shaped reward), and every candidate, not only the chosen
one, is trained; with `chosen_only` only the continued candidates, credited as turns of their episodes.

Fresh turns (`online.context: fresh`): the candidates were sampled from the question alone, but the
action is trained where the episode placed it, after the history; that one prompt is rendered
(`history_ids`, the chat template the backends use), since no sampler conditioned on it. The row keeps
the fresh sampler's log-probs, which are not the policy's in that context (hence objective awr).

Behaviour log-probs: a row carries the log-prob the sampler gave each of its action tokens, as the
backend recorded it while sampling (`Candidate.logprobs`, from `Completion.logprobs`); the policy
gradient's importance ratios are taken against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from riselm.online.credit import candidate_advantages, episode_returns, turn_advantages
from riselm.rollout.degenerate import is_degenerate
from riselm.rollout.episode import Episode
from riselm.settings import CreditSettings


class OnlineError(RuntimeError):
    """An online run cannot go on (a NaN loss, nothing to train on); the message names the step."""


@dataclass(frozen=True)
class ActionRow:
    prompt_ids: tuple[int, ...]  # what the policy was conditioned on when it sampled the action
    action_ids: tuple[int, ...]  # the action exactly as sampled (end-of-turn token included)
    advantage: float  # the action's credit
    turn: int  # 0-based turn index in its episode
    junk: bool = False  # a degenerate response (loops, absurd words): never imitated (awr), only pushed down (pg)
    # the sampler's log-prob of each action token (the behaviour policy of the ratios); None if unknown
    logprobs: tuple[float, ...] | None = None


def action_rows(
    groups: Sequence[Sequence[Episode]],
    credit: CreditSettings,
    chosen_only: bool = False,
    history_ids: Callable[[Episode, int], Sequence[int]] | None = None,
) -> list[ActionRow]:
    """Every sampled action of the episodes (grouped by problem) with its advantage and the sampler's
    log-probs; with `chosen_only`, only the actions the episodes continued with (each credited as a
    turn of its episode). `history_ids(episode, t)`: the prompt ids of turn t after its history, for
    the turns sampled fresh (their recorded prompt is the question alone)."""
    advantages = turn_advantages([[[t.reward for t in e.turns] for e in episodes] for episodes in groups], credit)
    rows: list[ActionRow] = []

    def add(prompt: tuple[int, ...], candidate, advantage: float, t: int) -> None:
        junk = is_degenerate(candidate.response)
        rows.append(ActionRow(prompt, candidate.token_ids, advantage, t, junk, candidate.logprobs))

    for episodes, problem_advantages in zip(groups, advantages):
        for episode, episode_advantages in zip(episodes, problem_advantages):
            returns = episode_returns([turn.reward for turn in episode.turns], credit)
            for t, (turn, advantage) in enumerate(zip(episode.turns, episode_advantages)):
                if turn.prompt_ids is None or not turn.candidates or turn.candidates[0].token_ids is None:
                    raise OnlineError(
                        f"episode {episode.id!r}: turn {t + 1} has no token ids; online training needs a backend "
                        "that returns the sampled ids (hf or vllm)"
                    )
                prompt = turn.prompt_ids
                if turn.context == "fresh":
                    if history_ids is None:
                        raise OnlineError(f"episode {episode.id!r}: turn {t + 1} was sampled fresh; its rows need history_ids")
                    prompt = tuple(history_ids(episode, t))
                chosen = _chosen(episode, t)
                if len(turn.candidates) == 1 or chosen_only:
                    add(prompt, turn.candidates[chosen], advantage, t)
                    continue
                previous = episode.turns[t - 1].reward if t else None
                continuation = returns[t + 1] if t + 1 < len(returns) else 0.0
                values = candidate_advantages([c.reward for c in turn.candidates], chosen, previous, continuation, credit)
                for candidate, value in zip(turn.candidates, values):
                    add(prompt, candidate, value, t)
    return rows


def _chosen(episode: Episode, t: int) -> int:
    """The index of the candidate turn `t` continued with: the first whose text is the turn's action.

    (The rollout keeps the first best candidate, and identical texts have identical rewards.)
    """
    turn = episode.turns[t]
    candidates = turn.candidates or []
    for index, candidate in enumerate(candidates):
        if candidate.response == turn.response:
            return index
    raise OnlineError(
        f"episode {episode.id!r}: turn {t + 1}'s action is none of its {len(candidates)} candidates; "
        "online credit needs the action the episode continued with among the sampled candidates"
    )


@dataclass
class RowBatch:
    """Right-padded rows as tensors (B rows of length L)."""

    input_ids: torch.Tensor  # [B, L] prompt + action ids, padded
    attention_mask: torch.Tensor  # [B, L] 1 on real tokens
    action_mask: torch.Tensor  # [B, L] True on the action's tokens (the trained ones)
    turn_ids: torch.Tensor  # [B, L] the row's index on action tokens, -1 elsewhere
    advantages: torch.Tensor  # [B] one advantage per row
    # [B, L] the sampler's log-prob of each action token, aligned like `loss.token_logprobs` (0 elsewhere);
    # None when a row of the batch has none
    old_logprobs: torch.Tensor | None = None

    @property
    def action_tokens(self) -> int:
        return int(self.action_mask.sum())


def collate(rows: Sequence[ActionRow], pad_id: int, device: torch.device | str = "cpu") -> RowBatch:
    width = max(len(r.prompt_ids) + len(r.action_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    action = torch.zeros((len(rows), width), dtype=torch.bool)
    turn_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    known = all(r.logprobs is not None for r in rows)
    old = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        p, a = len(row.prompt_ids), len(row.action_ids)
        input_ids[i, : p + a] = torch.tensor(row.prompt_ids + row.action_ids)
        attention[i, : p + a] = 1
        action[i, p : p + a] = True
        turn_ids[i, p : p + a] = i
        if known and row.logprobs is not None:  # `known`: every row has them
            if len(row.logprobs) != a:
                raise OnlineError(f"an action of {a} tokens has {len(row.logprobs)} sampler log-probs")
            old[i, p : p + a] = torch.tensor(row.logprobs, dtype=torch.float32)
    advantages = torch.tensor([r.advantage for r in rows], dtype=torch.float32)
    return RowBatch(
        input_ids.to(device),
        attention.to(device),
        action.to(device),
        turn_ids.to(device),
        advantages.to(device),
        old.to(device) if known else None,
    )
