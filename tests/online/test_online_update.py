"""A policy update on credited actions, checked against the documented objective.

Gradients are read where the optimizer would use them (its `step` is wrapped), and compared with
autograd on the formula written out by hand from an independent forward pass:

    pg, token_mean:  −Σ_{action tokens t} min(ρ_t·A_t, clip(ρ_t)·A_t) / (all action tokens of the minibatch)
    pg, turn_mean:   −Σ_{turns} mean_{t ∈ turn}(…) / (all turns of the minibatch)
    awr:             Σ_{turns} exp(A/τ)·mean_{t ∈ turn}(−log π_t) / (the turns that are not junk)

with ρ_t = π(t) / μ(t), μ the policy that sampled the tokens (its recorded log-probs).
"""

import copy
import dataclasses
import itertools
import math

import pytest
import torch

from riselm.generation.base import SamplingParams
from riselm.generation.hf import HFGenerator
from riselm.models import build_char_tokenizer, build_tiny_model
from riselm.online.batch import ActionRow, OnlineError, collate
from riselm.online.loss import token_entropy, token_logprobs
from riselm.online.update import PolicyUpdater
from riselm.settings import OnlineSettings

PROMPT_TEXT = "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"


def ids(tok, text):
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def row_logprobs(model, rows, pad, temperature=1.0):
    """Each row's action log-probs under `model` (an independent forward), [rows][tokens]."""
    batch = collate(rows, pad)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lp = token_logprobs(logits, batch.input_ids, temperature)
    return [tuple(lp[i][batch.action_mask[i]].tolist()) for i in range(len(rows))]


def sampled_by(model, rows, pad):
    """The rows as if `model` had sampled them: its log-probs recorded as the sampler's."""
    return [dataclasses.replace(r, logprobs=lp) for r, lp in zip(rows, row_logprobs(model, rows, pad))]


@pytest.fixture
def model_and_rows():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=5)
    prompt = ids(tok, PROMPT_TEXT)
    rows = [
        ActionRow(prompt, ids(tok, text), adv, 0)
        for text, adv in [("\\boxed{2}<|im_end|>", 1.0), ("\\boxed{3}<|im_end|>", -1.0), ("no idea", 0.5)]
    ]
    return model, sampled_by(model, rows, tok.pad_token_id), tok.pad_token_id


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def record_gradients(updater, move=False):
    """Wrap the optimizer's step: each call appends (weights before, gradients); `move` also steps."""
    calls = []
    real_step = updater.optimizer.step

    def step(*args, **kwargs):
        calls.append((weights(updater.model), [p.grad.detach().clone() for p in updater.model.parameters()]))
        if move:
            return real_step(*args, **kwargs)

    updater.optimizer.step = step
    return calls


def documented_gradient(model, rows, pad, objective="pg", reduction="token_mean", clip_eps=0.2, tau=0.4, count=None):
    """Autograd on the formula of the module docstring; `count`: the normaliser (default: all of `rows`)."""
    model.zero_grad(set_to_none=True)
    batch = collate(rows, pad)
    lp = token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.input_ids)
    terms = []
    for i, row in enumerate(rows):
        mine = lp[i][batch.action_mask[i]]
        if objective == "awr":
            terms.append(math.exp(row.advantage / tau) * (-mine).mean())
            continue
        ratio = torch.exp(mine - torch.tensor(row.logprobs))
        per_token = -torch.minimum(ratio * row.advantage, ratio.clamp(1 - clip_eps, 1 + clip_eps) * row.advantage)
        terms.append(per_token.sum() if reduction == "token_mean" else per_token.mean())
    if count is None:
        count = sum(len(r.action_ids) for r in rows) if objective == "pg" and reduction == "token_mean" else len(rows)
    (sum(terms) / count).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def assert_same(got, want):
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ---- defect 5: the normaliser counts every action of the minibatch ---------------------------------------


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["token_mean", "turn_mean"])
def test_zero_advantage_rows_count_in_the_normaliser_whatever_is_skipped(model_and_rows, kl_coef, reduction):
    """Two zero-advantage rows add no gradient but do count: the gradient is the documented one over all
    five rows, with or without a KL term (which is zero, with a zero gradient, at the reference)."""
    model, rows, pad = model_and_rows
    tok = build_char_tokenizer()
    zeros = sampled_by(
        model, [ActionRow(rows[0].prompt_ids, ids(tok, text), 0.0, 0) for text in ("\\boxed{5} and more<|im_end|>", "hm")], pad
    )
    updater = PolicyUpdater(model, OnlineSettings(kl_coef=kl_coef, reduction=reduction, max_grad_norm=0), pad)
    calls = record_gradients(updater)
    updater.step(rows + zeros, step=1)
    assert len(calls) == 1
    want = documented_gradient(model, rows + zeros, pad, reduction=reduction)
    assert_same(calls[0][1], want)
    # the same rows without the zero-advantage ones: the same sum over a smaller count
    fewer = documented_gradient(model, rows, pad, reduction=reduction)
    scale = sum(len(r.action_ids) for r in rows + zeros) / sum(len(r.action_ids) for r in rows) if reduction == "token_mean" else 5 / 3
    assert_same([g * scale for g in want], fewer)


# ---- defect 6: ratios against the sampler's recorded log-probs -----------------------------------------


def test_ratios_are_taken_against_the_stale_sampler_that_drew_the_tokens():
    """The sampler serves weights older than the live policy (vLLM with sync_every > 1): the ratio is
    π_live / π_sampler on the sampled tokens, from the log-probs the sampler recorded while sampling."""
    tok = build_char_tokenizer()
    sampler_model = build_tiny_model(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=5)
    live = copy.deepcopy(sampler_model)
    with torch.no_grad():  # the live policy has moved on since the sampler got its weights
        g = torch.Generator().manual_seed(0)
        for p in live.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    temperature = 0.8
    sampler = HFGenerator(sampler_model, tok, batch_size=8)
    conversation = [{"role": "user", "content": "1+1?"}]
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=6, logprobs=True)
    completions = sampler.generate([conversation], params, seeds=[7])[0]
    rows = [ActionRow(c.prompt_ids, c.token_ids, adv, 0, logprobs=c.logprobs) for c, adv in zip(completions, [1.0, -0.5, 0.7])]

    # by hand: ρ_t = exp(log π_live − log π_sampler), both from independent forward passes
    before = row_logprobs(sampler_model, rows, tok.pad_token_id, temperature)
    after = row_logprobs(live, rows, tok.pad_token_id, temperature)
    settings = OnlineSettings(clip_eps=100.0, max_grad_norm=0, monitor_kl=False)
    stats = PolicyUpdater(live, settings, tok.pad_token_id, temperature=temperature).step(rows, step=1)
    ratios = [[math.exp(a - b) for a, b in zip(new, old)] for new, old in zip(after, before)]
    tokens = sum(len(r) for r in ratios)
    expected_ratio = sum(map(sum, ratios)) / tokens
    expected_loss = -sum(row.advantage * sum(r) for row, r in zip(rows, ratios)) / tokens
    assert abs(expected_ratio - 1) > 1e-2  # stale: far from 1
    assert stats["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert stats["ratio"] == pytest.approx(expected_ratio, rel=1e-4)


def test_every_pass_over_the_batch_takes_its_ratios_against_the_sampler(model_and_rows):
    """updates_per_batch=2: the second step's gradient is the clipped objective at the weights after the
    first step, with ratios against the sampler's log-probs (not 1, not against the weights of the step)."""
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=5e-2, updates_per_batch=2, max_grad_norm=0), pad)
    calls = record_gradients(updater, move=True)
    stats = updater.step(rows, step=1)
    assert len(calls) == 2 and stats["optimizer_steps"] == 2
    at_second, got = calls[1]
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(probe.parameters(), at_second):
            p.copy_(w)
    ratios = [math.exp(a - b) for new, old in zip(row_logprobs(probe, rows, pad), (r.logprobs for r in rows)) for a, b in zip(new, old)]
    assert max(abs(r - 1) for r in ratios) > 0.05  # the first step moved the policy
    assert_same(got, documented_gradient(probe, rows, pad))


def test_the_policy_gradient_needs_the_samplers_log_probs(model_and_rows):
    model, rows, pad = model_and_rows
    with pytest.raises(OnlineError, match="step 4: 1 of 3 actions have no log-probs from the sampler"):
        PolicyUpdater(model, OnlineSettings(), pad).step(rows[:2] + [dataclasses.replace(rows[2], logprobs=None)], step=4)


@pytest.mark.parametrize("sampling, key", [({"top_p": 0.9}, "online.sampling.top_p"), ({"temperature": 0}, "online.sampling.temperature")])
def test_online_rl_refuses_a_sampler_that_is_not_the_trained_policy(sampling, key):
    """The trained policy is softmax(logits / T): a nucleus sampler (or greedy decoding) is another policy."""
    from riselm.config import ConfigError, validate
    from riselm.settings import RunSettings

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(RunSettings, {"method": "online", "online": {"sampling": sampling}})


# ---- README: minibatches, junk is never imitated -------------------------------------------------------


def test_minibatches_are_optimizer_steps_on_their_own_rows(model_and_rows):
    """minibatches=2 over four rows: two optimizer steps, each the documented gradient of two of the rows
    (normalised by their own tokens), together all four."""
    model, rows, pad = model_and_rows
    tok = build_char_tokenizer()
    rows = rows + sampled_by(model, [ActionRow(rows[0].prompt_ids, ids(tok, "\\boxed{4}"), -0.3, 0)], pad)
    updater = PolicyUpdater(model, OnlineSettings(minibatches=2, max_grad_norm=0), pad)
    calls = record_gradients(updater)  # the weights do not move: both gradients at the same point
    assert updater.step(rows, step=1)["optimizer_steps"] == 2
    halves = {pair: documented_gradient(model, [rows[i] for i in pair], pad) for pair in itertools.combinations(range(4), 2)}

    def which(grads):
        found = [pair for pair, want in halves.items() if all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads, want))]
        assert len(found) == 1
        return set(found[0])

    first, second = which(calls[0][1]), which(calls[1][1])
    assert first | second == {0, 1, 2, 3}


@pytest.mark.parametrize("objective", ["pg", "awr"])
def test_junk_is_pushed_down_by_pg_and_never_imitated_by_awr(model_and_rows, objective):
    model, rows, pad = model_and_rows
    tok = build_char_tokenizer()
    junk = sampled_by(model, [ActionRow(rows[0].prompt_ids, ids(tok, "ababababab"), 0.8, 0, junk=True)], pad)
    settings = OnlineSettings(objective=objective, max_grad_norm=0, awr_max_weight=None)
    updater = PolicyUpdater(model, settings, pad)
    calls = record_gradients(updater)
    updater.step(rows + junk, step=1)
    trained = rows + junk if objective == "pg" else rows  # awr: as if the junk row were not there
    assert_same(calls[0][1], documented_gradient(model, trained, pad, objective=objective))
    before = weights(model)
    stats = PolicyUpdater(model, settings, pad).step(junk, step=2)  # nothing but junk
    if objective == "awr":
        assert stats["updated"] == 0.0 and all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    else:
        assert stats["updated"] == 1.0


# ---- no signal, KL, NaN ---------------------------------------------------------------------------------


def test_a_batch_whose_advantages_are_all_zero_leaves_the_weights_unchanged(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=1e-2), pad)
    updater.step(rows, step=1)  # a real update first, so that AdamW has momentum
    before = weights(model)
    stats = updater.step([dataclasses.replace(r, advantage=0.0) for r in rows], step=2)
    assert stats["updated"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_kl_is_zero_before_the_first_update_and_grows_after(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=5e-2, kl_coef=0.1), pad)
    first = updater.step(rows, step=1)
    second = updater.step(rows, step=2)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7) and second["kl"] > 1e-6


def test_the_entropy_statistic_is_the_mean_over_action_tokens_before_the_update(model_and_rows):
    """Only the action positions reach the output head, and the reported entropy is theirs, from full logits."""
    model, rows, pad = model_and_rows
    batch = collate(rows, pad)
    with torch.no_grad():
        entropy = token_entropy(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    stats = PolicyUpdater(model, OnlineSettings(learning_rate=1e-2, minibatches=1), pad).step(rows, step=1)
    assert seen and set(seen) == {batch.action_tokens}
    assert stats["entropy"] == pytest.approx(float(entropy[batch.action_mask].mean()), rel=1e-5)


@pytest.mark.parametrize("objective", ["pg", "awr"])
def test_the_update_moves_the_policy_toward_positive_advantages(model_and_rows, objective):
    model, rows, pad = model_and_rows
    batch = collate(rows, pad)

    def action_logprob():
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            return (token_logprobs(logits, batch.input_ids) * batch.action_mask).sum(-1)

    before = action_logprob()
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=1e-2, objective=objective, awr_tau=0.5), pad)
    for step in range(5):
        updater.step(rows, step + 1)
    change = action_logprob() - before
    assert change[0] > 0 and change[0] > change[1]  # the +1 action gained, more than the -1 action


def test_a_nan_loss_and_an_empty_batch_stop_with_the_step(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(), pad)
    with pytest.raises(OnlineError, match="step 7: the batch holds no sampled action"):
        updater.step([], step=7)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(OnlineError, match="step 3: the loss is nan"):
        updater.step(rows, step=3)
