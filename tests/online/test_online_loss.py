"""Token-level losses: log-probs, reductions, the clipped policy gradient, KL, and AWR."""

from __future__ import annotations

import math

import pytest
import torch

from riselm.online.loss import (
    awr_loss,
    k3_kl,
    masked_reduce,
    per_token_advantages,
    policy_loss,
    token_entropy,
    token_logprobs,
)

B, L, V = 2, 9, 11

# Two padded rows, each a whole episode. Row 0: prompt 0-1, turn 0 at 2-3, retry 4, turn 1 at 5-7, pad 8.
# Row 1: prompt 0-2, turn 2 at 3-6 (one-turn episode), pad 7-8. Turn ids are global over the batch.
TURN_IDS = torch.tensor(
    [
        [-1, -1, 0, 0, -1, 1, 1, 1, -1],
        [-1, -1, -1, 2, 2, 2, 2, -1, -1],
    ]
)
MASK = TURN_IDS >= 0
TURN_ADV = torch.tensor([0.5, -1.0, 2.0])


def random_batch(seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=generator, dtype=torch.float32).to(dtype).requires_grad_()
    input_ids = torch.randint(0, V, (B, L), generator=generator)
    return logits, input_ids


def reference_logprobs(logits, input_ids):
    """The obvious implementation: full log_softmax, gather the next token, position 0 = 0."""
    log_p = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    picked = log_p.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.cat([picked.new_zeros(picked.shape[0], 1), picked], dim=1)


def grads(loss, tensor):
    return torch.autograd.grad(loss, tensor, retain_graph=True)[0]


# ---- token_logprobs and token_entropy -----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_token_logprobs_match_log_softmax_gather(chunk_size):
    logits, ids = random_batch()
    ours = token_logprobs(logits, ids, chunk_size=chunk_size)
    ref = reference_logprobs(logits, ids)
    assert ours.dtype == torch.float32 and ours.shape == (B, L)
    torch.testing.assert_close(ours, ref)
    assert torch.all(ours[:, 0] == 0)
    weights = torch.randn(B, L)  # any downstream loss: same gradient as the reference
    torch.testing.assert_close(grads((ours * weights).sum(), logits), grads((ref * weights).sum(), logits))


def test_token_logprobs_bfloat16_computes_in_float32():
    logits, ids = random_batch(dtype=torch.bfloat16)
    ours = token_logprobs(logits, ids, chunk_size=3)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference_logprobs(logits, ids))
    grad = grads(ours.sum(), logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, grads(reference_logprobs(logits, ids).sum(), logits), atol=1e-2, rtol=1e-2)


def test_token_logprobs_gradcheck_with_temperature():
    logits = torch.randn(1, 4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[1, 4, 0, 2]])
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, ids, temperature=0.7, chunk_size=2), (logits,))
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=0.7), reference_logprobs(logits / 0.7, ids).double())


def test_token_entropy():
    logits, _ = random_batch()
    log_p = torch.log_softmax(logits.detach(), dim=-1)
    expected = -(log_p.exp() * log_p).sum(-1)[:, :-1]
    ours = token_entropy(logits, chunk_size=5)
    torch.testing.assert_close(ours[:, 1:], expected)
    assert torch.all(ours[:, 0] == 0) and not ours.requires_grad


# ---- layout helpers and reductions ---------------------------------------------------------------


def test_per_token_advantages():
    adv = per_token_advantages(TURN_ADV, TURN_IDS)
    expected = torch.tensor([[0, 0, 0.5, 0.5, 0, -1, -1, -1, 0], [0, 0, 0, 2, 2, 2, 2, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(adv, expected)
    with pytest.raises(ValueError, match="no value"):
        per_token_advantages([1.0, 2.0], TURN_IDS)


def test_reductions_by_hand():
    values = torch.arange(B * L, dtype=torch.float32).view(B, L)
    # action tokens: row 0 → 2, 3 (turn 0), 5, 6, 7 (turn 1); row 1 → 12, 13, 14, 15 (turn 2)
    token_mean = (2 + 3 + 5 + 6 + 7 + 12 + 13 + 14 + 15) / 9
    turn_mean = (2.5 + 6.0 + 13.5) / 3
    assert masked_reduce(values, MASK, "token_mean").item() == pytest.approx(token_mean)
    assert masked_reduce(values, MASK, "turn_mean", TURN_IDS).item() == pytest.approx(turn_mean)
    assert masked_reduce(values, MASK, "turn_mean", TURN_IDS, normalizer=6).item() == pytest.approx(22 / 6)
    with pytest.raises(ValueError, match="turn_ids"):
        masked_reduce(values, MASK, "turn_mean")
    with pytest.raises(ValueError, match="turn id -1"):
        masked_reduce(values, MASK, "turn_mean", torch.full_like(TURN_IDS, -1))


def test_masked_positions_never_leak_nan_or_inf():
    values = torch.full((B, L), float("nan"))
    values[MASK] = 1.0
    values.requires_grad_()
    for reduction in ("token_mean", "turn_mean"):
        loss = masked_reduce(values, MASK, reduction, TURN_IDS)
        assert loss.item() == 1.0
        assert torch.isfinite(grads(loss, values)).all()


@pytest.mark.parametrize("reduction", ["token_mean", "turn_mean"])
def test_normalizer_makes_micro_batches_add_up(reduction):
    # gradient accumulation: each row as its own micro-batch, normalised by the whole step's count
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    adv = per_token_advantages(TURN_ADV, TURN_IDS)
    whole, _ = policy_loss(lp, lp.detach(), adv, MASK, reduction=reduction, turn_ids=TURN_IDS)
    count = int(MASK.sum()) if reduction == "token_mean" else 3
    parts = [
        policy_loss(
            lp[i : i + 1],
            lp[i : i + 1].detach(),
            adv[i : i + 1],
            MASK[i : i + 1],
            reduction=reduction,
            turn_ids=TURN_IDS[i : i + 1],
            normalizer=count,
        )[0]
        for i in range(B)
    ]
    torch.testing.assert_close(sum(parts), whole)


# ---- policy_loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["token_mean", "turn_mean"])
def test_ratio_one_gives_the_plain_policy_gradient(reduction):
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    adv = per_token_advantages(TURN_ADV, TURN_IDS)
    loss, stats = policy_loss(lp, lp.detach(), adv, MASK, reduction=reduction, turn_ids=TURN_IDS)
    plain = masked_reduce(-adv * lp, MASK, reduction, TURN_IDS)  # REINFORCE's surrogate −A·log π
    torch.testing.assert_close(loss, masked_reduce(-adv, MASK, reduction, TURN_IDS))  # value at ρ = 1: −A
    torch.testing.assert_close(grads(loss, logits), grads(plain, logits))
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["clip_fraction"].item() == 0.0


@pytest.mark.parametrize("reduction", ["token_mean", "turn_mean"])
def test_zero_advantages_give_zero_gradient(reduction):
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    old = lp.detach() + 0.3 * torch.randn(B, L, generator=torch.Generator().manual_seed(1))
    loss, _ = policy_loss(lp, old, torch.zeros(B, L), MASK, reduction=reduction, turn_ids=TURN_IDS)
    assert loss.item() == 0.0
    assert torch.all(grads(loss, logits) == 0)


def test_only_action_tokens_carry_gradient():
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    ref = lp.detach() - 0.5
    loss, _ = policy_loss(
        lp,
        lp.detach() + 0.05,
        per_token_advantages(TURN_ADV, TURN_IDS),
        MASK,
        ref_logprobs=ref,
        kl_coef=0.1,
        reduction="turn_mean",
        turn_ids=TURN_IDS,
    )
    grad = grads(loss, logits)
    # the logits at position l predict token l+1: they get a gradient iff token l+1 is an action token
    predicts_action = torch.cat([MASK[:, 1:], torch.zeros(B, 1, dtype=torch.bool)], dim=1)
    has_grad = grad.abs().sum(-1) > 0
    assert torch.equal(has_grad, predicts_action)


def test_clipping_zeroes_the_gradient_only_in_the_advantage_direction():
    lp_values = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    old = lp_values - torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))  # ratios 1.5, 0.5, 1.5, 0.5
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    lp = lp_values.clone().requires_grad_()
    loss, stats = policy_loss(lp, old, adv, mask, clip_eps=0.2)
    grad = grads(loss, lp)[0]
    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0: clipped, no gradient
    assert grad[0] == 0 and grad[1] == 0
    # ratio above the range with A < 0, or below with A > 0: not clipped, gradient −A·ρ / N
    torch.testing.assert_close(grad[2], torch.tensor(1.0 * 1.5 / 4))
    torch.testing.assert_close(grad[3], torch.tensor(-1.0 * 0.5 / 4))
    assert stats["clip_fraction"].item() == 0.5
    assert stats["ratio_mean"].item() == pytest.approx(1.0)


def test_kl_is_zero_when_equal_to_reference_and_positive_otherwise():
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    adv = per_token_advantages(TURN_ADV, TURN_IDS)
    base, _ = policy_loss(lp, lp.detach(), adv, MASK)
    same, stats = policy_loss(lp, lp.detach(), adv, MASK, ref_logprobs=lp.detach(), kl_coef=1.0)
    assert stats["kl_mean"].item() == 0.0
    torch.testing.assert_close(same, base)
    torch.testing.assert_close(grads(same, logits), grads(base, logits))  # k3's gradient is 0 at d = 0
    shifted, stats = policy_loss(lp, lp.detach(), adv, MASK, ref_logprobs=lp.detach() - 0.5, kl_coef=1.0)
    expected_kl = math.exp(-0.5) + 0.5 - 1
    assert stats["kl_mean"].item() == pytest.approx(expected_kl, rel=1e-5)  # the monitored value: k3
    assert (shifted - base).item() == pytest.approx(0.5 * 0.5**2, rel=1e-5)  # the penalty: ½(log π − log π_ref)²


@pytest.mark.parametrize("sampler", ["on_policy", "stale"])
def test_the_kl_penalty_has_the_gradient_of_kl_from_the_policy_to_the_reference(sampler):
    """Exact check on a categorical policy over 6 tokens: the penalty's expected gradient, every token
    weighted by the probability the sampler draws it with, is autograd's gradient of the exact
    KL(π‖π_ref) = Σ_a π(a)·(log π(a) − log π_ref(a)). k3's gradient is that of KL(π_ref‖π) (fails);
    without the importance weight the stale sampler's expectation is another gradient (fails)."""
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    log_ref = torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    log_pi = torch.log_softmax(theta, -1)
    exact = (log_pi.exp() * (log_pi - log_ref)).sum()
    want = torch.autograd.grad(exact, theta, retain_graph=True)[0]
    # the sampler: the policy itself, or an older policy (a stale engine, a later minibatch)
    log_mu = log_pi.detach() if sampler == "on_policy" else torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), -1)
    # one position per vocabulary token, as if that token had been sampled there; zero advantages
    # leave the KL term alone, and normalizer=1 keeps each token's penalty unscaled
    expected = 0.0
    for token in range(6):
        only = torch.zeros(1, 6, dtype=torch.bool)
        only[0, token] = True
        loss, _ = policy_loss(log_pi[None], log_mu[None], torch.zeros(1, 6), only, ref_logprobs=log_ref[None], kl_coef=1.0, normalizer=1.0)
        expected = expected + log_mu[token].exp() * loss
    got = torch.autograd.grad(expected, theta)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_k3_kl_masks_infinite_positions():
    lp = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    kl = k3_kl(lp, torch.tensor([[-2.0, float("-inf")]]), torch.tensor([[True, False]]))
    assert kl[0, 1] == 0 and kl[0, 0].item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert torch.isfinite(grads(kl.sum(), lp)).all()


# ---- awr_loss ------------------------------------------------------------------------------------


def test_awr_with_zero_advantages_is_the_plain_turn_mean_nll():
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    loss, stats = awr_loss(lp, torch.zeros(3), MASK, TURN_IDS, tau=0.4)
    plain = masked_reduce(-lp, MASK, "turn_mean", TURN_IDS)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(grads(loss, logits), grads(plain, logits))
    assert stats["weight_mean"].item() == pytest.approx(1.0)


def test_awr_is_rise_reward_weighted_regression():
    # RISE offline: each sample (turn) weighted exp(r/τ) on its mean token CE, mean over samples.
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    rewards, tau = torch.tensor([0.0, 1.0, -1.0]), 0.4
    loss, _ = awr_loss(lp, rewards, MASK, TURN_IDS, tau=tau, max_weight=None)
    per_turn_ce = [-lp[TURN_IDS == n].mean() for n in range(3)]
    expected = sum(math.exp(r / tau) * ce for r, ce in zip(rewards.tolist(), per_turn_ce)) / 3
    torch.testing.assert_close(loss, expected)
    # per-token advantages give the same loss as per-turn ones
    per_token, _ = awr_loss(lp, per_token_advantages(rewards, TURN_IDS), MASK, TURN_IDS, tau=tau, max_weight=None)
    torch.testing.assert_close(per_token, loss)


def test_awr_weights_are_clamped_and_detached():
    logits, ids = random_batch()
    lp = token_logprobs(logits, ids)
    adv = torch.tensor([100.0, 0.0, -1.0], requires_grad=True)  # exp(100/0.5) would overflow
    loss, stats = awr_loss(lp, adv, MASK, TURN_IDS, tau=0.5, max_weight=20.0)
    per_turn_ce = [-lp[TURN_IDS == n].mean() for n in range(3)]
    expected = (20.0 * per_turn_ce[0] + per_turn_ce[1] + math.exp(-2.0) * per_turn_ce[2]) / 3
    torch.testing.assert_close(loss, expected)
    assert stats["weight_clipped_fraction"].item() == pytest.approx(2 / 9)  # turn 0's two tokens
    assert torch.autograd.grad(loss, adv, allow_unused=True)[0] is None


def test_policy_loss_rejects_misaligned_tensors():
    lp = torch.zeros(B, L)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, lp, torch.zeros(B, 1), MASK)  # would broadcast silently
    with pytest.raises(ValueError, match="action_mask"):
        policy_loss(lp, lp, lp, MASK[:, :-1])
