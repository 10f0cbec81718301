"""One policy update from a batch of credited actions: the clipped policy gradient or AWR, on the live model.

The model is the one the HF backend generates with, so the next step samples from the updated
weights without saving or reloading anything. Gradients accumulate over micro-batches of
`micro_batch` rows, normalised by the whole batch (its action tokens, or its rows), so the update
does not depend on the micro-batch size. With `updates_per_batch` > 1 the batch is used for several
optimizer steps and the policy gradient's ratios are taken against the sampling policy's
log-probs, computed once before the first of them.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Sequence

import torch

from riselm.online.batch import ActionRow, OnlineError, RowBatch, collate
from riselm.online.loss import awr_loss, k3_kl, per_token_advantages, policy_loss, token_entropy, token_logprobs
from riselm.settings import OnlineSettings


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
        the whole batch is passed over `updates_per_batch` times. With more than one optimizer step per
        batch, the policy gradient's ratios are taken against the log-probs before the first of them.
        """
        if not rows or not any(r.action_ids for r in rows):
            raise OnlineError(f"step {step}: the batch holds no sampled action to train on (every episode was empty)")
        s = self.settings
        if s.objective == "pg" and s.kl_coef == 0:  # a zero advantage gives a zero gradient: skip its compute
            rows = [r for r in rows if r.advantage != 0] or list(rows[:1])
        if s.objective == "awr":  # every weight is positive: imitating junk (loops) is how a policy collapses
            rows = [r for r in rows if not r.junk] or list(rows[:1])
        no_signal = s.objective == "pg" and s.kl_coef == 0 and all(r.advantage == 0 for r in rows)
        groups = self._minibatches(rows, step)
        several = s.updates_per_batch * len(groups) > 1
        old = [[self._logprobs(self.model, b) if several else None for b in g] for g in groups]
        reference = [[self._logprobs(self.reference, b) if self.reference is not None else None for b in g] for g in groups]
        totals: dict[str, float] = {}
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.learning_rate(step)
        self.model.train()
        try:
            for epoch in range(s.updates_per_batch):
                for batches, old_lps, ref_lps in zip(groups, old, reference):
                    self.optimizer.zero_grad(set_to_none=True)
                    normalizer = self._normalizer(batches)
                    for batch, old_lp, ref_lp in zip(batches, old_lps, ref_lps):
                        for key, value in self._backward(batch, old_lp, ref_lp, normalizer, step, monitor=epoch == 0).items():
                            totals[key] = totals.get(key, 0.0) + value
                    if no_signal:  # zero gradients: AdamW's momentum and decay would still move the weights
                        break
                    if s.max_grad_norm > 0:
                        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm))
                    self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()
        tokens = sum(b.action_tokens for g in groups for b in g)
        out = {key.removesuffix("_sum"): value / tokens for key, value in totals.items() if key.endswith("_sum")}
        out.update(loss=totals.get("loss", 0.0) / len(groups), updated=float(not no_signal), lr=self.learning_rate(step))
        out.update(action_tokens=float(tokens), optimizer_steps=float(0 if no_signal else s.updates_per_batch * len(groups)))
        if "grad_norm" in totals:
            out["grad_norm"] = totals["grad_norm"]
        return out

    def _minibatches(self, rows: Sequence[ActionRow], step: int) -> list[list[RowBatch]]:
        """`minibatches` groups of rows (a shuffle seeded by the step), each in micro-batches of similar lengths."""
        s = self.settings
        order = list(rows)
        random.Random(step).shuffle(order)
        count = min(s.minibatches, len(order))
        groups = [order[i::count] for i in range(count)]
        out = []
        for group in groups:
            group = sorted(group, key=lambda r: len(r.prompt_ids) + len(r.action_ids))  # less padding
            out.append([collate(group[i : i + s.micro_batch], self.pad_id, self.model.device) for i in range(0, len(group), s.micro_batch)])
        return out

    def _normalizer(self, batches: Sequence[RowBatch]) -> float:
        """What a minibatch's loss is averaged over: its action tokens, or its rows (turns)."""
        s = self.settings
        if s.objective == "pg" and s.reduction == "token_mean":
            return float(sum(b.action_tokens for b in batches))
        return float(sum(len(b.advantages) for b in batches))

    def _backward(self, batch: RowBatch, old_lp, ref_lp, normalizer: float, step: int, monitor: bool) -> dict[str, float]:
        s = self.settings
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logprobs = token_logprobs(logits, batch.input_ids, self.temperature)
        if s.objective == "pg":
            advantages = per_token_advantages(batch.advantages, batch.turn_ids)
            loss, _ = policy_loss(
                logprobs, logprobs.detach() if old_lp is None else old_lp, advantages, batch.action_mask,
                clip_eps=s.clip_eps, ref_logprobs=ref_lp, kl_coef=s.kl_coef if ref_lp is not None else 0.0,
                reduction=s.reduction, turn_ids=batch.turn_ids, normalizer=normalizer,
            )
        else:
            loss, _ = awr_loss(
                logprobs, batch.advantages, batch.action_mask, batch.turn_ids, tau=s.awr_tau,
                max_weight=s.awr_max_weight, normalizer=normalizer,
            )
        if not math.isfinite(float(loss.detach())):
            raise OnlineError(
                f"step {step}: the loss is {float(loss.detach())}; the update would corrupt the model "
                "(lower online.learning_rate, or raise online.awr_tau for awr)"
            )
        loss.backward()
        if not monitor:
            return {}
        mask = batch.action_mask
        stats = {"loss": float(loss.detach()), "entropy_sum": float(token_entropy(logits.detach(), self.temperature)[mask].sum())}
        if ref_lp is not None:
            stats["kl_sum"] = float(k3_kl(logprobs.detach(), ref_lp, mask)[mask].sum())
        return stats

    @torch.no_grad()
    def _logprobs(self, model, batch: RowBatch) -> torch.Tensor:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return token_logprobs(logits, batch.input_ids, self.temperature)
