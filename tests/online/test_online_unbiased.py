"""The leave-one-out per-turn baseline gives an unbiased policy gradient when episode lengths vary.

Toy environment: at each turn the policy picks an outcome (correct 1, wrong 0, and in the exact test
unparsable −1) from a softmax over per-turn logits θ_t; the episode stops at its first correct turn
or after K turns, so its number of turns depends on its own actions. The estimator of one group of G
episodes is (1/G)·Σ_g Σ_t A_{g,t}·∇log π(a_{g,t}); its expectation must equal ∇J with
J = E[Σ_t r'_t] (γ = 1). The GRPO-style baseline that includes the episode itself in the per-turn
mean is shown to be biased: its turn-1 part is shrunk by exactly (G−1)/G and its turn-2 part by a
different factor, so no rescaling repairs it.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from riselm.online.credit import (
    CreditSettings,
    episode_returns,
    shaped_rewards,
    turn_advantages,
)


def outcomes(max_turns: int, values=(1.0, 0.0, -1.0)) -> list[list[float]]:
    """Every reward sequence of an episode that stops at its first correct turn (1) or after max_turns."""
    wrong = [v for v in values if v != 1.0]
    found = [[1.0]]
    for prefix_len in range(1, max_turns):
        for prefix in itertools.product(wrong, repeat=prefix_len):
            found.append([*prefix, 1.0])
    found.extend(list(p) for p in itertools.product(wrong, repeat=max_turns))
    return found


VALUES = (1.0, 0.0, -1.0)  # column of each outcome in θ_t's logits


def turn_log_probs(theta: torch.Tensor, episodes: list[list[float]]) -> torch.Tensor:
    """log π(a_t) for every episode and turn: [n_episodes, K], 0 after an episode's end."""
    log_pi = torch.log_softmax(theta, dim=-1)
    rows = []
    for rewards in episodes:
        row = [log_pi[t, VALUES.index(r)] for t, r in enumerate(rewards)]
        row += [theta.new_zeros(())] * (theta.shape[0] - len(rewards))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def self_inclusive_advantages(episodes: list[list[float]], settings: CreditSettings) -> list[list[float]]:
    """The biased peer: the baseline of turn t is the mean over ALL episodes that reached t, itself included."""
    returns = [episode_returns(r, settings) for r in episodes]
    out = [[0.0] * len(r) for r in returns]
    for t in range(max(len(r) for r in returns)):
        reached = [g for g, r in enumerate(returns) if len(r) > t]
        mean = sum(returns[g][t] for g in reached) / len(reached)
        for g in reached:
            out[g][t] = returns[g][t] - mean
    return out


def expected_estimate(theta: torch.Tensor, group_size: int, credit) -> torch.Tensor:
    """E[(1/G)·Σ_g Σ_t A_{g,t}·∇log π(a_{g,t})], exactly, by enumerating every group of G episodes."""
    episodes = outcomes(theta.shape[0])
    log_pi = turn_log_probs(theta, episodes)
    prob = log_pi.sum(1).exp().detach().tolist()
    coef = [[0.0] * theta.shape[0] for _ in episodes]  # Σ over groups of P(group)·A/G per (episode, turn)
    for group in itertools.product(range(len(episodes)), repeat=group_size):
        weight = math.prod(prob[o] for o in group) / group_size
        advantages = credit([episodes[o] for o in group])
        for g, o in enumerate(group):
            for t, a in enumerate(advantages[g]):
                coef[o][t] += weight * a
    surrogate = (torch.tensor(coef, dtype=theta.dtype) * log_pi).sum()
    return torch.autograd.grad(surrogate, theta)[0]


def true_gradient(theta: torch.Tensor, settings: CreditSettings) -> torch.Tensor:
    """∇J, J = Σ over episodes of P(episode)·Σ_t r'_t (the shaped rewards), by autograd of the exact sum."""
    episodes = outcomes(theta.shape[0])
    prob = turn_log_probs(theta, episodes).sum(1).exp()
    total = torch.tensor([sum(shaped_rewards(r, settings)) for r in episodes], dtype=theta.dtype)
    return torch.autograd.grad((prob * total).sum(), theta)[0]


THETA = [[0.2, 0.5, -1.0], [0.8, 0.1, -0.5], [-0.3, 0.4, 0.0]]


@pytest.mark.parametrize(
    "settings",
    [
        CreditSettings(),
        CreditSettings(baseline="none"),
        CreditSettings(improvement_bonus=0.5, regression_penalty=0.3),
    ],
    ids=["loo", "no-baseline", "shaped"],
)
@pytest.mark.parametrize("group_size", [1, 2, 3])
def test_leave_one_out_is_exactly_unbiased(settings, group_size):
    theta = torch.tensor(THETA[:2], dtype=torch.float64, requires_grad=True)  # K = 2 turns
    estimate = expected_estimate(theta, group_size, lambda eps: turn_advantages([eps], settings)[0])
    torch.testing.assert_close(estimate, true_gradient(theta, settings), atol=1e-12, rtol=0)


def test_leave_one_out_is_unbiased_over_three_turns():
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    settings = CreditSettings(improvement_bonus=0.5)
    estimate = expected_estimate(theta, 2, lambda eps: turn_advantages([eps], settings)[0])
    torch.testing.assert_close(estimate, true_gradient(theta, settings), atol=1e-12, rtol=0)


def test_self_inclusive_baseline_is_biased_and_no_rescaling_fixes_it():
    settings = CreditSettings()
    theta = torch.tensor(THETA[:2], dtype=torch.float64, requires_grad=True)
    truth = true_gradient(theta, settings)
    for group_size in (2, 3, 4):
        biased = expected_estimate(theta, group_size, lambda eps: self_inclusive_advantages(eps, settings))
        shrink = (group_size - 1) / group_size
        # turn 1 (every episode reached it): shrunk by exactly (G−1)/G, a bias that only fades with G
        torch.testing.assert_close(biased[0], shrink * truth[0], atol=1e-12, rtol=0)
        # turn 2 (reached by a random number of episodes): shrunk by another factor
        ratio = (biased[1] / truth[1]).abs()
        assert (ratio - shrink).abs().max() > 0.03, (group_size, ratio)


def sample_episode(rng: random.Random, p1: float, p2: float) -> list[float]:
    """The binary two-turn bandit: correct with p1 at turn 1, else a second turn correct with p2."""
    if rng.random() < p1:
        return [1.0]
    return [0.0, 1.0 if rng.random() < p2 else 0.0]


def group_estimate(episodes, advantages, p1, p2) -> tuple[float, float]:
    """(1/G)·Σ_g Σ_t A·∂log π/∂θ_t for Bernoulli logits: the score of turn t is (correct − p_t)."""
    grad = [0.0, 0.0]
    for rewards, adv in zip(episodes, advantages):
        for t, (r, a) in enumerate(zip(rewards, adv)):
            grad[t] += a * (r - (p1, p2)[t]) / len(episodes)
    return grad[0], grad[1]


def test_monte_carlo_two_turn_bandit():
    p1, p2, group_size, draws = 0.3, 0.6, 2, 4000
    # J = p1 + (1 − p1)·p2, with p_t = σ(θ_t), dp/dθ = p(1 − p):
    truth = (p1 * (1 - p1) * (1 - p2), (1 - p1) * p2 * (1 - p2))
    rng = random.Random(0)
    settings = CreditSettings()
    loo, grpo = [], []
    for _ in range(draws):
        group = [sample_episode(rng, p1, p2) for _ in range(group_size)]
        loo.append(group_estimate(group, turn_advantages([group], settings)[0], p1, p2))
        grpo.append(group_estimate(group, self_inclusive_advantages(group, settings), p1, p2))
    for k in range(2):
        values = [v[k] for v in loo]
        mean = sum(values) / draws
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (draws - 1) / draws)
        assert abs(mean - truth[k]) < 4 * stderr, (k, mean, truth[k], stderr)
        biased_mean = sum(v[k] for v in grpo) / draws
        assert abs(biased_mean - truth[k]) > 8 * stderr, (k, biased_mean, truth[k], stderr)
