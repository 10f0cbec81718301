"""Online multi-turn RL's mathematics ("method: online"): per-turn credit (`credit`), batches of
credited actions (`batch`), token-level losses (`loss`) and the policy update (`update`). The stage
that rolls out, updates, saves and evaluates is riselm.run.online.

`credit` and `loss` are pure and model-free: `credit` turns the rewards of G rolled-out episodes per problem
into one advantage per turn (leave-one-out baseline per turn index, unbiased whatever the number of
turns of each episode); `loss` turns per-turn advantages into a loss over each turn's action tokens
(PPO-style clipped policy gradient, or advantage-weighted regression, the online form of RISE's
reward-weighted regression).
"""

from riselm.online.credit import (
    CreditSettings,
    candidate_advantages,
    episode_returns,
    flat_turns,
    returns_to_go,
    shaped_rewards,
    turn_advantages,
)
from riselm.online.loss import (
    awr_loss,
    awr_weights,
    k3_kl,
    kl_penalty,
    masked_reduce,
    per_token_advantages,
    policy_loss,
    token_entropy,
    token_logprobs,
)

__all__ = [
    "CreditSettings",
    "awr_loss",
    "awr_weights",
    "candidate_advantages",
    "episode_returns",
    "flat_turns",
    "k3_kl",
    "kl_penalty",
    "masked_reduce",
    "per_token_advantages",
    "policy_loss",
    "returns_to_go",
    "shaped_rewards",
    "token_entropy",
    "token_logprobs",
    "turn_advantages",
]
