"""One policy update from a batch of credited actions: the clipped policy gradient or AWR, on the live model.

The model is the one the HF backend generates with, so the next step samples from the updated
weights without saving or reloading anything. The batch is split into `minibatches` groups, each one
optimizer step, and passed over `updates_per_batch` times. Each minibatch's loss is the documented
mean over *all* its actions (its action tokens for token_mean, its turns otherwise): gradients
accumulate over micro-batches of `micro_batch` rows, each normalised by that whole-minibatch count,
so the update depends neither on the micro-batch size nor on what is skipped for speed (with
kl_coef 0, rows of zero advantage have a zero gradient and get no forward pass, but still count).

Ratios: the policy gradient's importance ratios, in every pass, are taken against the log-probs the
sampler recorded for the tokens it drew (`ActionRow.logprobs`, from the rollout's candidates), never
against the training model's own: the engine may serve older weights (vLLM with sync_every > 1) and
computes with other kernels. For awr, junk rows (loops, absurd words) are no part of the batch:
never imitated, and not counted either.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence

import torch

from riselm.online.batch import ActionRow, OnlineError, RowBatch, collate
from riselm.online.loss import awr_loss, k3_kl, per_token_advantages, policy_loss, row_entropy, selected_logprobs
from riselm.settings import OnlineSettings
from riselm.training.trainer import head_on_positions


class PolicyUpdater:
    """The optimizer and (optional) frozen reference of an online run; the learning rate is a function of the step."""

    def __init__(self, model, settings: OnlineSettings, pad_id: int, temperature: float = 1.0):
        self.model = model
        self.settings = settings
        self.pad_id = pad_id
        self.temperature = max(temperature, 1e-6)  # log-probs of the distribution actions were sampled from
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.reference = None
        if settings.kl_coef > 0 or settings.monitor_kl:  # the model the online stage starts from, frozen
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def learning_rate(self, step: int) -> float:
        """The rate of 1-based `step`: a linear warm-up over `warmup_steps`, then constant."""
        return self.settings.learning_rate * min(1.0, step / (self.settings.warmup_steps + 1))

    def step(self, rows: Sequence[ActionRow], step: int) -> dict[str, float]:
        """Update on `rows`; returns the step's training statistics. Raises OnlineError naming `step`.

        The rows are split into `minibatches` groups (a seeded shuffle), each one optimizer step, and
        the whole batch is passed over `updates_per_batch` times (see the module docstring).
        Statistics: loss (mean over minibatches, first pass), entropy, kl and ratio (π/μ) averaged
        over the action tokens that had a forward pass in the first pass, action_tokens (all of them).
        """
        if not rows or not any(r.action_ids for r in rows):
            raise OnlineError(f"step {step}: the batch holds no sampled action to train on (every episode was empty)")
        s = self.settings
        sampled = rows
        if s.objective == "awr":  # every weight is positive: imitating junk (loops) is how a policy collapses
            rows = [r for r in rows if not r.junk]
        else:
            missing = sum(r.logprobs is None for r in rows)
            if missing:
                raise OnlineError(
                    f"step {step}: {missing} of {len(rows)} actions have no log-probs from the sampler; the policy "
                    "gradient's ratios need them (roll out with keep_candidates on the hf or vllm backend)"
                )
        groups = self._minibatches(rows, step)
        if not any(batches for _, batches in groups):  # nothing to train: still measure entropy and KL
            sample = collate(list(sampled[: s.micro_batch]), self.pad_id, self.model.device)
            return self._no_update(rows, sample, step)
        reference = [[self._logprobs(self.reference, b) if self.reference is not None else None for b in batches] for _, batches in groups]
        totals: dict[str, float] = {}
        steps = 0
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.learning_rate(step)
        self.model.train()
        try:
            for epoch in range(s.updates_per_batch):
                for (normalizer, batches), ref_lps in zip(groups, reference):
                    if not batches:  # no gradient at all: AdamW's momentum and decay would still move the weights
                        continue
                    self.optimizer.zero_grad(set_to_none=True)
                    for batch, ref_lp in zip(batches, ref_lps):
                        for key, value in self._backward(batch, ref_lp, normalizer, step, monitor=epoch == 0).items():
                            totals[key] = totals.get(key, 0.0) + value
                    if s.max_grad_norm > 0:
                        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm))
                    self.optimizer.step()
                    steps += 1
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()
        forwarded = sum(b.action_tokens for _, batches in groups for b in batches)
        out = {key.removesuffix("_sum"): value / max(forwarded, 1) for key, value in totals.items() if key.endswith("_sum")}
        out.update(loss=totals.get("loss", 0.0) / max(len(groups), 1), updated=float(steps > 0), lr=self.learning_rate(step))
        out.update(action_tokens=float(sum(len(r.action_ids) for r in rows)), optimizer_steps=float(steps))
        if "grad_norm" in totals:
            out["grad_norm"] = totals["grad_norm"]
        return out

    @torch.no_grad()
    def _no_update(self, rows: Sequence[ActionRow], sample: RowBatch, step: int) -> dict[str, float]:
        """The statistics of a step without any gradient: entropy and KL measured on `sample`."""
        logprobs, logits = self._forward(self.model, sample)
        ref_lp = self._logprobs(self.reference, sample) if self.reference is not None else None
        stats = self._monitor(logits, logprobs, sample, ref_lp)
        out = {key.removesuffix("_sum"): value / max(sample.action_tokens, 1) for key, value in stats.items()}
        out.update(loss=0.0, updated=0.0, lr=self.learning_rate(step), action_tokens=float(sum(len(r.action_ids) for r in rows)))
        out["optimizer_steps"] = 0.0
        return out

    def _minibatches(self, rows: Sequence[ActionRow], step: int) -> list[tuple[float, list[RowBatch]]]:
        """`minibatches` groups of rows (a shuffle seeded by the step): each group's normaliser, over all of
        its rows, and the micro-batches (of similar lengths) of the rows that need a forward pass."""
        s = self.settings
        order = list(rows)
        random.Random(step).shuffle(order)
        count = min(s.minibatches, len(order))
        out = []
        for group in (order[i::count] for i in range(count)):
            if s.objective == "pg" and s.reduction == "token_mean":
                normalizer = float(sum(len(r.action_ids) for r in group))
            else:
                normalizer = float(len(group))
            if s.objective == "pg" and s.kl_coef == 0:  # a zero advantage gives a zero gradient: skip its compute
                group = [r for r in group if r.advantage != 0]
            group = sorted(group, key=lambda r: len(r.prompt_ids) + len(r.action_ids))  # less padding
            batches = [collate(group[i : i + s.micro_batch], self.pad_id, self.model.device) for i in range(0, len(group), s.micro_batch)]
            out.append((normalizer, batches))
        return out

    def _backward(self, batch: RowBatch, ref_lp, normalizer: float, step: int, monitor: bool) -> dict[str, float]:
        s = self.settings
        logprobs, logits = self._forward(self.model, batch)
        if s.objective == "pg":
            assert batch.old_logprobs is not None  # update() checked that every pg row has the sampler's log-probs
            advantages = per_token_advantages(batch.advantages, batch.turn_ids)
            loss, pg_stats = policy_loss(
                logprobs,
                batch.old_logprobs,
                advantages,
                batch.action_mask,
                clip_eps=s.clip_eps,
                ref_logprobs=ref_lp,
                kl_coef=s.kl_coef if ref_lp is not None else 0.0,
                reduction=s.reduction,
                turn_ids=batch.turn_ids,
                normalizer=normalizer,
            )
        else:
            loss, _ = awr_loss(
                logprobs,
                batch.advantages,
                batch.action_mask,
                batch.turn_ids,
                tau=s.awr_tau,
                max_weight=s.awr_max_weight,
                normalizer=normalizer,
            )
        if not math.isfinite(float(loss.detach())):
            raise OnlineError(
                f"step {step}: the loss is {float(loss.detach())}; the update would corrupt the model "
                "(lower online.learning_rate, or raise online.awr_tau for awr)"
            )
        loss.backward()
        if not monitor:
            return {}
        stats = {"loss": float(loss.detach()), **self._monitor(logits.detach(), logprobs.detach(), batch, ref_lp)}
        if s.objective == "pg":
            stats["ratio_sum"] = float(pg_stats["ratio_mean"]) * batch.action_tokens
        return stats

    def _monitor(self, logits: torch.Tensor, logprobs: torch.Tensor, batch: RowBatch, ref_lp) -> dict[str, float]:
        """Sums over the batch's action tokens of the entropy and (with a reference) the k3 KL estimate.

        `logits` are the action tokens' [N, V] (`_forward`)."""
        mask = batch.action_mask
        stats = {"entropy_sum": float(row_entropy(logits, self.temperature).sum())}
        if ref_lp is not None:
            stats["kl_sum"] = float(k3_kl(logprobs, ref_lp, mask)[mask].sum())
        return stats

    @torch.no_grad()
    def _logprobs(self, model, batch: RowBatch) -> torch.Tensor:
        return self._forward(model, batch)[0]

    def _forward(self, model, batch: RowBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-prob of each action token, [B, L] aligned like `token_logprobs` (0 off the actions),
        and the logits [N, V] that scored the N action tokens, in the batch's row-major order.

        Only the positions that predict an action token go through the output head (the prompts and
        the retry messages need no logits)."""
        mask = batch.action_mask
        predicting = torch.zeros_like(mask)
        predicting[:, :-1] = mask[:, 1:]  # position l predicts token l + 1
        with head_on_positions(model, predicting):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        scored = selected_logprobs(logits, batch.input_ids[mask], self.temperature)
        # row-major order: the positions predicting[b, l] and the action tokens mask[b, l + 1] pair up one to one
        logprobs = torch.zeros(mask.shape, dtype=scored.dtype, device=scored.device).masked_scatter(mask, scored)
        return logprobs, logits
