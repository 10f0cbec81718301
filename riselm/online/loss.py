"""Token-level objectives for online multi-turn RL, trained on each turn's action tokens only.

Layout
------
A batch is B rows of L token ids (padded, or packed with several episodes per row). A row holds a
whole multi-turn episode: prompt, action 1, retry message, action 2, ... Every tensor below is
aligned with `input_ids`, position by position:

- `logprobs[b, l]` = log π(input_ids[b, l] | input_ids[b, :l]) (`token_logprobs`; position 0 is 0);
- `action_mask[b, l]` is True where input_ids[b, l] is a token of a model response (an action);
  prompt, retry messages, padding and the other rows of a pack are False;
- `turn_ids[b, l]` is the index of the turn that token belongs to, −1 where not an action. Ids are
  global over the batch (two turns never share an id, even in different rows), e.g. the order of
  `riselm.online.credit.flat_turns` (problem → episode → turn), so that per-turn values are a 1-D
  tensor `values[turn_id]`.

Reductions
----------
- "token_mean": sum over all action tokens of the batch / their number. A turn's log-probability is
  the *sum* of its tokens' log-probabilities, so this is the policy gradient Σ_t A_t·∇log π(a_t|s_t)
  up to one batch-wide factor: long and short turns are credited per token alike.
- "turn_mean": mean over each turn's tokens, then mean over the batch's turns: every turn counts the
  same whatever its length (RISE's offline loss, and `awr_loss`'s default). Dividing a turn by its own
  length biases the policy gradient towards long responses when A < 0 (each token of a long wrong
  answer is pushed down less), so `policy_loss` defaults to "token_mean".
`normalizer` replaces the batch's own count (tokens or turns): with gradient accumulation pass the
count of the whole optimizer step so that the micro-batch losses add up to the step's mean; a
constant (e.g. the maximum number of tokens) gives Dr. GRPO's length-unbiased form.

Precision
---------
`token_logprobs` and `token_entropy` compute in float32 (float64 stays float64) one chunk of
positions at a time, so the [B, L, V] logits (often bfloat16) are never copied whole to float32; the
backward pass recomputes the softmax chunk by chunk from the saved logits instead of keeping float32
activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Reduction = Literal["token_mean", "turn_mean"]

_CHUNK_ELEMENTS = 1 << 25  # float32 elements per chunk (128 MiB): bounds the temporary copy


def _chunk_rows(vocab_size: int, chunk_size: int | None) -> int:
    """Positions per chunk: `chunk_size`, or as many as fit in `_CHUNK_ELEMENTS` float32 values."""
    return chunk_size if chunk_size is not None else max(1, _CHUNK_ELEMENTS // max(1, vocab_size))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision logits, float64 kept (exact gradient checks)."""
    return torch.promote_types(dtype, torch.float32)


class _SelectedLogProb(torch.autograd.Function):
    """log softmax(x / T)[target] per row of x [N, V], chunked; the backward recomputes the softmax."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float, rows: int):
        dtype = _compute_dtype(logits.dtype)
        out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for start in range(0, logits.shape[0], rows):
            x = logits[start : start + rows].to(dtype) / temperature
            lse[start : start + rows] = torch.logsumexp(x, dim=-1)
            chosen = x.gather(1, targets[start : start + rows, None]).squeeze(1)
            out[start : start + rows] = chosen - lse[start : start + rows]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.rows = temperature, rows
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        temperature, rows = ctx.temperature, ctx.rows
        for start in range(0, logits.shape[0], rows):
            x = logits[start : start + rows].to(lse.dtype) / temperature
            g = grad_out[start : start + rows, None].to(lse.dtype)
            # d/dx_j [x_target − lse(x)] = 1{j = target} − softmax(x)_j, then the 1/T of x / T.
            part = -torch.exp(x - lse[start : start + rows, None]) * g
            part.scatter_add_(1, targets[start : start + rows, None], g)
            grad[start : start + rows] = (part / temperature).to(grad.dtype)
        return grad, None, None, None


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Log-probability of each token given the previous ones: [B, L] float32 (float64 for float64 logits).

    logits [B, L, V] (position l predicts token l+1), input_ids [B, L]. Position 0 has no prediction
    and gets 0. `temperature` divides the logits first: use the sampling temperature so that the
    ratio to the sampling policy's log-probs is 1 on-policy. Differentiable; `chunk_size` positions
    are projected to float32 at a time (default: about 128 MiB of float32).
    """
    batch, length, vocab = logits.shape
    # Position l's logits score token l+1; the last position's target is a dummy (dropped below), so
    # the logits are used as a [B·L, V] view rather than sliced and copied.
    targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1).reshape(-1)
    flat = selected_logprobs(logits.reshape(-1, vocab), targets, temperature, chunk_size)
    next_token = flat.view(batch, length)[:, :-1]
    return torch.cat([next_token.new_zeros(batch, 1), next_token], dim=1)


def selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], row by row: logits [N, V], targets [N] -> [N].

    Differentiable, in float32 chunks like `token_logprobs` (which is this over every position)."""
    return _SelectedLogProb.apply(logits, targets.long(), temperature, _chunk_rows(logits.shape[-1], chunk_size))


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of the distribution each token was drawn from: [B, L], aligned like `token_logprobs`.

    For monitoring only (no gradient). entropy[b, l] is that of softmax(logits[b, l−1] / T); position 0
    gets 0.
    """
    batch, length, vocab = logits.shape
    previous = row_entropy(logits.reshape(-1, vocab), temperature, chunk_size).view(batch, length)[:, :-1]
    return torch.cat([previous.new_zeros(batch, 1), previous], dim=1)


@torch.no_grad()
def row_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) for each row of logits [N, V]: [N], in float32 chunks."""
    dtype = _compute_dtype(logits.dtype)
    out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
    rows = _chunk_rows(logits.shape[-1], chunk_size)
    for start in range(0, logits.shape[0], rows):
        log_p = torch.log_softmax(logits[start : start + rows].to(dtype) / temperature, dim=-1)
        out[start : start + rows] = -(log_p.exp() * log_p).sum(-1)
    return out


def per_token_advantages(
    turn_values: torch.Tensor | Sequence[float], turn_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Expand per-turn values [N] to tokens [B, L]: token l gets values[turn_ids[l]], 0 where turn_ids < 0."""
    values = torch.as_tensor(turn_values, dtype=dtype, device=turn_ids.device)
    if turn_ids.numel() and int(turn_ids.max()) >= values.numel():
        raise ValueError(f"turn id {int(turn_ids.max())} has no value (only {values.numel()} turns)")
    return torch.where(turn_ids >= 0, values[turn_ids.clamp(min=0)], values.new_zeros(()))


def _check_layout(per_token: torch.Tensor, action_mask: torch.Tensor, turn_ids: torch.Tensor | None) -> None:
    """Shapes agree, and every action token belongs to a turn (a mask/turn-id mismatch is a silent bug)."""
    if action_mask.shape != per_token.shape:
        raise ValueError(f"action_mask {tuple(action_mask.shape)} != logprobs {tuple(per_token.shape)}")
    if turn_ids is not None:
        if turn_ids.shape != per_token.shape:
            raise ValueError(f"turn_ids {tuple(turn_ids.shape)} != logprobs {tuple(per_token.shape)}")
        if bool((turn_ids[action_mask] < 0).any()):
            raise ValueError("an action token has turn id -1")


def masked_reduce(
    per_token: torch.Tensor,
    action_mask: torch.Tensor,
    reduction: Reduction = "token_mean",
    turn_ids: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, L] over the action tokens to a scalar (see "Reductions" above).

    Masked positions never contribute, not even NaN or inf. `turn_ids` [B, L] is needed by
    "turn_mean". `normalizer` replaces the count of action tokens ("token_mean") or turns ("turn_mean").
    """
    mask = action_mask.bool()
    _check_layout(per_token, mask, turn_ids)
    if reduction == "token_mean":
        total = torch.where(mask, per_token, per_token.new_zeros(())).sum()
        count = normalizer if normalizer is not None else mask.sum().clamp(min=1)
        return total / count
    if reduction != "turn_mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    if turn_ids is None:
        raise ValueError('reduction "turn_mean" needs turn_ids')
    values = per_token[mask]
    _, turn = torch.unique(turn_ids[mask], return_inverse=True)  # compact ids 0..n_turns-1
    n_turns = int(turn.max()) + 1 if turn.numel() else 0
    sums = values.new_zeros(n_turns).index_add(0, turn, values)
    counts = torch.bincount(turn, minlength=n_turns).to(values.dtype)
    count = normalizer if normalizer is not None else max(n_turns, 1)
    return (sums / counts).sum() / count


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_ref): exp(d) − d − 1, d = ref − logprobs (≥ 0, 0 when equal).

    For monitoring the KL's value: unbiased for KL(π‖π_ref) on tokens sampled from π, and never
    negative unlike log π − log π_ref. Not a penalty to differentiate: its expected gradient,
    E_π[(1 − π_ref/π)·∇log π] = −Σ π_ref·∇log π, is that of KL(π_ref‖π), the other direction
    (`kl_penalty` has the right one). ref_logprobs is detached. With `action_mask`, masked positions
    get exactly 0 (and no NaN gradient even if they hold −inf).
    """
    d = ref_logprobs.detach() - logprobs
    if action_mask is not None:
        d = torch.where(action_mask.bool(), d, d.new_zeros(()))
    return torch.exp(d) - d - 1


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, old_logprobs: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Per-token penalty whose expected gradient is that of KL(π‖π_ref): sg(π/μ)·½(log π − log π_ref)².

    The tokens were sampled from μ (`old_logprobs`, the sampler). With d = log π − log π_ref,
    ∇KL(π‖π_ref) = Σ_a π(a)·(d(a) + 1)·∇log π(a) = E_π[d·∇log π], since Σ_a π(a)·∇log π(a) = 0; and
    ∇½d² = d·∇log π (k2, the "squared log-ratio" estimator). On tokens drawn from μ the detached
    weight ρ = π/μ turns E_μ into E_π, so the penalty stays the KL's gradient in off-policy
    minibatches (ρ = 1 on-policy). The weight is not clipped: it multiplies a penalty, not a reward
    the policy could exploit. ½d² is ≥ 0 and 0 where π = π_ref; its value is not an unbiased KL
    estimate (`k3_kl` is, for monitoring). Masked positions get exactly 0, whatever they hold.
    """
    mask = action_mask.bool()
    zero = logprobs.new_zeros(())
    d = torch.where(mask, logprobs - ref_logprobs.detach(), zero)
    weight = torch.exp(torch.where(mask, logprobs.detach() - old_logprobs.detach(), zero))
    return weight * 0.5 * d.square()


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    clip_eps: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    reduction: Reduction = "token_mean",
    turn_ids: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped policy gradient over action tokens, plus an optional KL(π‖π_ref) penalty.

    All tensors [B, L] (see the module's layout). Per action token, with ρ = exp(logprobs − old_logprobs):

        loss = −min(ρ·A, clip(ρ, 1 − clip_eps, 1 + clip_eps)·A) + kl_coef·sg(ρ)·½(logprobs − ref_logprobs)²

    (`kl_penalty`: its expected gradient is that of KL(π‖π_ref) whichever policy sampled the tokens).

    old_logprobs are the sampling policy's (detached here), `advantages` each token's turn advantage
    (`per_token_advantages`; detached), ref_logprobs the reference policy's (detached, optional).
    Reduced by `masked_reduce(reduction, turn_ids, normalizer)`. Returns (loss, stats); stats are
    detached scalars averaged over action tokens: ratio_mean, clip_fraction (tokens whose clipped
    term is active, so their gradient is 0), pg_loss (the reduced clipped term alone) and kl_mean
    (the k3 estimate of KL(π‖π_ref)'s value, `k3_kl`; 0 without a reference).
    """
    others: dict[str, torch.Tensor | None] = {"old_logprobs": old_logprobs, "advantages": advantages, "action_mask": action_mask}
    others["ref_logprobs"] = ref_logprobs
    for name, tensor in others.items():
        if tensor is not None and tensor.shape != logprobs.shape:  # broadcasting would hide a layout bug
            raise ValueError(f"{name} {tuple(tensor.shape)} != logprobs {tuple(logprobs.shape)}")
    mask = action_mask.bool()
    zero = logprobs.new_zeros(())
    # Masked positions may hold anything (padding, −inf): zero them before exp so they stay finite.
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(mask, advantages.detach().to(logprobs.dtype), zero)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    pg = -torch.minimum(unclipped, clipped)
    per_token = pg
    kl = torch.zeros_like(pg)
    if ref_logprobs is not None:
        kl = k3_kl(logprobs.detach(), ref_logprobs, mask)
        if kl_coef:
            per_token = pg + kl_coef * kl_penalty(logprobs, ref_logprobs, old_logprobs, mask)
    loss = masked_reduce(per_token, mask, reduction, turn_ids, normalizer)
    with torch.no_grad():
        count = mask.sum().clamp(min=1)
        stats = {
            "ratio_mean": torch.where(mask, ratio, zero).sum() / count,
            "clip_fraction": (mask & (clipped < unclipped)).sum() / count,
            "pg_loss": masked_reduce(pg, mask, reduction, turn_ids, normalizer),
            "kl_mean": kl.sum() / count,
        }
    return loss, stats


def awr_weights(advantages: torch.Tensor, tau: float, max_weight: float | None) -> torch.Tensor:
    """exp(A / tau), clamped to max_weight (None: no clamp), detached; clamped in log space so never inf."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    scaled = advantages.detach() / tau
    if max_weight is not None:
        scaled = scaled.clamp(max=math.log(max_weight))
    return torch.exp(scaled)


def awr_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    action_mask: torch.Tensor,
    turn_ids: torch.Tensor,
    tau: float = 1.0,
    max_weight: float | None = 20.0,
    reduction: Reduction = "turn_mean",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted regression: each turn's mean token NLL times exp(A/τ), mean over turns.

    logprobs, action_mask, turn_ids [B, L]; advantages either per turn [N] (indexed by turn id) or
    per token [B, L]. Weights exp(A/τ) are clamped to `max_weight` (AWR's default 20 keeps one lucky
    turn from dominating the batch) and detached: they select data, they are not optimised.

    This is RISE's offline loss in online form. The offline loss (riselm.training.trainer) weighs each
    sample (one turn's trained tokens) by exp(r/τ) on its mean token cross-entropy and averages over
    samples without normalising the weights. awr_loss with advantages = the rewards
    (CreditSettings(returns="reward", baseline="none")), max_weight=None and the default "turn_mean"
    reduction is exactly that loss; the online form replaces r by a leave-one-out advantage, so the
    weights stay around 1 (exp of a roughly zero-mean advantage) as the success rate changes.
    Unlike the policy gradient, turns with A < 0 still get a positive weight (< 1): they are
    imitated less, never pushed down.
    Returns (loss, stats): weight_mean (mean over turns), weight_clipped_fraction (action tokens at
    max_weight) and nll (the unweighted reduced NLL), all detached.
    """
    mask = action_mask.bool()
    if advantages.dim() == 1:
        advantages = per_token_advantages(advantages, turn_ids, dtype=logprobs.dtype)
    weights = awr_weights(torch.where(mask, advantages, advantages.new_zeros(())), tau, max_weight)
    nll = -logprobs
    loss = masked_reduce(weights.to(logprobs.dtype) * nll, mask, reduction, turn_ids, normalizer)
    with torch.no_grad():
        if max_weight is None:
            at_max = torch.zeros_like(mask)
        else:  # compared in log space: exp(log(max_weight)) need not round back to max_weight
            at_max = mask & (advantages.detach() / tau >= math.log(max_weight))
        stats = {
            "weight_mean": masked_reduce(weights, mask, "turn_mean", turn_ids),
            "weight_clipped_fraction": at_max.sum() / mask.sum().clamp(min=1),
            "nll": masked_reduce(nll, mask, reduction, turn_ids, normalizer),
        }
    return loss, stats
