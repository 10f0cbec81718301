"""Per-turn credit assignment for online multi-turn RL: one advantage per turn of every episode.

Setting
-------
For each training problem the current policy rolls out G episodes. Episode g has T_g turns
(1 ≤ T_g ≤ K); turn t's action a_t is one whole response and gets the task's reward r_t (1 correct,
0 wrong, possibly a negative reward when the response has no final answer). Episodes may have
different numbers of turns: when an episode stops at its first correct turn, T_g depends on the
episode's own actions.

Layout
------
`turn_advantages` takes rewards grouped problem → episode → turn (`rewards[i][g][t]`) and returns
advantages of exactly the same nested shape. Episodes of one problem must be grouped together
because they are each other's baseline; nothing crosses problems. `flat_turns` flattens such a nested
list problem-major, then episode, then turn: the order the token-level losses (riselm.online.loss)
index turns with `turn_ids`.

Formulas (t counts from 1)
--------------------------
1. Shaping (`shaped_rewards`)::

       r'_1 = r_1
       r'_t = r_t + α·(r_t − r_{t−1}) − β·[r_{t−1} correct and r_t not]        (t > 1)

   α (`improvement_bonus`) is SCoRe's progress bonus: it pays for *changing* a wrong answer into a
   right one, not only for being right, so the policy cannot collect most of the reward by
   repeating a good first answer. β (`regression_penalty`) punishes turning a right answer wrong,
   the failure mode a "try again" message invites when the episode continues after a correct turn.
   "Correct" means reward ≥ `correct_threshold`.

2. Returns (`returns_to_go`): with `returns="return_to_go"`, R_t = Σ_{k=t..T_g} γ^{k−t}·r'_k over the
   episode's *own* remaining turns (γ = `discount`): a turn is credited with what follows it, since a
   wrong but useful first attempt changes the context of the next one. With `returns="reward"`,
   R_t = r'_t: each turn is judged alone (identical to γ = 0).

3. Baseline (`baseline="leave_one_out"`): let P(g, t) be the other episodes of the same problem that
   reached turn t (T_h ≥ t, h ≠ g). Then

       b_{g,t} = mean_{h ∈ P(g,t)} R_{h,t}          (0 when P(g,t) is empty)
       A_{g,t} = R_{g,t} − b_{g,t}

   With `baseline="none"`, A_{g,t} = R_{g,t} (plain REINFORCE).

4. Optional scaling (`scale_by_std`): A_{g,t} /= std_{h ∈ P(g,t)} R_{h,t} (sample std, ddof 1), only
   when |P(g,t)| ≥ 2 and that std exceeds `eps`; otherwise the advantage is left unscaled.

5. Several candidates from one state (`candidate_advantages`, `online.candidates` > 1): turn t of an
   episode sampled c_1..c_n from the same prompt and continued with one of them, c*. Each candidate
   gets a value, then the same baseline and scaling as above with its n − 1 siblings as the peers::

       V(c*) = R_t = r'(c*) + γ·R_{t+1}     (return_to_go; R_{t+1} = 0 when the episode ended at t)
       V(c_j) = r'(c_j)                     (j ≠ *: a candidate that is not continued ends its branch)
       A(c_j) = V(c_j) − mean_{k ≠ j} V(c_k)    (baseline "leave_one_out"; "none": A = V)

   r'(c) is c's shaped reward after the episode's action at t − 1 (formula 1). With returns="reward",
   V(c*) = r'(c*) too. The siblings share the state exactly, so they replace the other episodes as
   the baseline. Giving the non-continued candidates no continuation is a choice: their branches end,
   so their return is what they earned. It favours c* by γ·R_{t+1} (c* is the best candidate by
   reward anyway); estimating their continuation would need rolling them out.

Why the leave-one-out baseline per turn index is unbiased
---------------------------------------------------------
The policy gradient of J = E[Σ_t r'_t] is E[Σ_{t ≤ T_g} ∇log π(a_{g,t} | s_{g,t})·R_{g,t}] (γ = 1;
a turn cannot affect earlier rewards). Subtracting b_{g,t} keeps it unbiased iff
E[1{T_g ≥ t}·∇log π(a_{g,t} | s_{g,t})·b_{g,t}] = 0. The G episodes of a problem are sampled
independently, so b_{g,t}, a function of the other episodes only (their returns and which of them
reached turn t), is independent of everything episode g does. Conditioning on s_{g,t} (which decides
1{T_g ≥ t}) and on the other episodes, the expectation of the score ∇log π(a_{g,t} | s_{g,t}) is 0,
hence the product has expectation 0, whatever the number of turns of each episode.
The baselines that peers use are not: a baseline that includes the episode itself (GRPO's group
mean, or a per-turn-index mean over all episodes that reached the turn) correlates with the
episode's own action, which shrinks every advantage by (n−1)/n, and when n (the number of episodes
that reached turn t) itself depends on the actions, no single rescaling removes the bias.
One sequence-level advantage per episode (TRL's GRPO) credits every turn with the whole episode's
outcome, earlier rewards included.

An empty peer set gives b = 0: a constant is independent of the action, so this is still unbiased,
but the advantage is then the raw return, whose variance is larger (with positive rewards every
such turn is pushed up, only by how much differs). Peers at turn t may have reached it through other
histories, so b_{g,t} estimates E[R_t | turn t reached], not the value of s_{g,t}: that too costs
variance, never bias.

Std scaling divides by a quantity independent of episode g, so the expected gradient of each
(problem, turn) term is the unscaled one times a positive constant: the direction of each term is
kept but problems and turns are re-weighted (low-variance problems count more), i.e. it follows
the gradient of a re-weighted objective rather than of J. It is off by default. With γ < 1 the
estimate is the usual discounted-return surrogate, not the gradient of the undiscounted J either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from riselm.settings import CreditSettings


def shaped_rewards(rewards: Sequence[float], settings: CreditSettings) -> list[float]:
    """r'_t of one episode: the improvement bonus α and the regression penalty β applied to `rewards`."""
    shaped = []
    for t, reward in enumerate(rewards):
        reward = float(reward)
        value = reward
        if t > 0:
            previous = float(rewards[t - 1])
            value += settings.improvement_bonus * (reward - previous)
            # judged on the task's rewards, not on the shaped value
            if previous >= settings.correct_threshold > reward:
                value -= settings.regression_penalty
        shaped.append(value)
    return shaped


def returns_to_go(rewards: Sequence[float], discount: float) -> list[float]:
    """R_t = Σ_{k ≥ t} discount^(k−t)·rewards[k] over one episode's own turns (same length as `rewards`)."""
    returns = [0.0] * len(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):  # backwards: R_t = r_t + γ·R_{t+1}
        running = float(rewards[t]) + discount * running
        returns[t] = running
    return returns


def episode_returns(rewards: Sequence[float], settings: CreditSettings) -> list[float]:
    """The per-turn returns R_t of one episode under `settings` (shaping, then reward or return-to-go)."""
    shaped = shaped_rewards(rewards, settings)
    if settings.returns == "reward":
        return shaped
    return returns_to_go(shaped, settings.discount)


def turn_advantages(
    episode_rewards: Sequence[Sequence[Sequence[float]]], settings: CreditSettings | None = None
) -> list[list[list[float]]]:
    """Advantages A[i][g][t] for rewards r[i][g][t] grouped problem i → episode g → turn t.

    Episodes may have any number of turns (zero included); the output has the same nested shape.
    Rewards must be finite. See the module docstring for the formulas and why they are unbiased.
    """
    settings = settings or CreditSettings()
    return [_problem_advantages(episodes, settings) for episodes in episode_rewards]


def _problem_advantages(episodes: Sequence[Sequence[float]], settings: CreditSettings) -> list[list[float]]:
    """The advantages of the episodes of one problem (they are each other's baseline)."""
    for rewards in episodes:
        if not all(math.isfinite(float(r)) for r in rewards):
            raise ValueError(f"rewards must be finite, got {list(rewards)}")
    returns = [episode_returns(rewards, settings) for rewards in episodes]
    advantages = [[0.0] * len(r) for r in returns]
    for t in range(max((len(r) for r in returns), default=0)):
        reached = [g for g, r in enumerate(returns) if len(r) > t]  # episodes that played turn t
        for g in reached:
            peers = [returns[h][t] for h in reached if h != g]
            advantages[g][t] = _advantage(returns[g][t], peers, settings)
    return advantages


def candidate_advantages(
    rewards: Sequence[float], chosen: int, previous: float | None, continuation: float, settings: CreditSettings
) -> list[float]:
    """Advantages of the candidates sampled from one state (formula 5 of the module docstring).

    rewards: each candidate's task reward; chosen: the index of the one the episode continued with;
    previous: the reward of the episode's action at the turn before (None at the first turn);
    continuation: R_{t+1}, the return of the episode's later turns (0 when it ended at this turn).
    """
    values = [shaped_rewards([r] if previous is None else [previous, r], settings)[-1] for r in rewards]
    if settings.returns == "return_to_go":
        values[chosen] += settings.discount * continuation
    return [_advantage(v, values[:j] + values[j + 1 :], settings) for j, v in enumerate(values)]


def _advantage(own_return: float, peer_returns: list[float], settings: CreditSettings) -> float:
    """One turn's advantage from its own return and the same turn's returns of the other episodes."""
    if settings.baseline == "none":
        advantage = own_return
    else:  # an empty peer set gives baseline 0 (still unbiased, larger variance)
        advantage = own_return - (sum(peer_returns) / len(peer_returns) if peer_returns else 0.0)
    if settings.scale_by_std and len(peer_returns) >= 2:
        std = _sample_std(peer_returns)
        if std > settings.eps:
            advantage /= std
    return advantage


def _sample_std(values: list[float]) -> float:
    """The sample standard deviation (ddof 1) of at least two values."""
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def flat_turns(nested: Sequence[Sequence[Sequence[float]]]) -> list[float]:
    """Flatten problem → episode → turn values in that order: turn n here is `turn_ids == n` in the losses."""
    return [float(value) for episodes in nested for turns in episodes for value in turns]
