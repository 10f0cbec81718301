"""A policy update on credited actions: no signal leaves the weights alone, KL starts at zero, NaN stops the run."""

import pytest
import torch

from riselm.models import build_char_tokenizer, build_tiny_model
from riselm.online.batch import ActionRow, OnlineError
from riselm.online.update import PolicyUpdater
from riselm.settings import OnlineSettings


@pytest.fixture
def model_and_rows():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=5)
    prompt = tuple(tok("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    rows = [ActionRow(prompt, tuple(tok(text, add_special_tokens=False)["input_ids"]), adv, 0)
            for text, adv in [("\\boxed{2}<|im_end|>", 1.0), ("\\boxed{3}<|im_end|>", -1.0), ("no idea", 0.5)]]
    return model, rows, tok.pad_token_id


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_a_batch_whose_advantages_are_all_zero_leaves_the_weights_unchanged(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=1e-2), pad)
    updater.step(rows, step=1)  # a real update first, so that AdamW has momentum
    before = weights(model)
    stats = updater.step([ActionRow(r.prompt_ids, r.action_ids, 0.0, 0) for r in rows], step=2)
    assert stats["updated"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_kl_is_zero_before_the_first_update_and_grows_after(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=5e-2, kl_coef=0.1), pad)
    first = updater.step(rows, step=1)
    second = updater.step(rows, step=2)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7) and second["kl"] > 1e-6


@pytest.mark.parametrize("objective", ["pg", "awr"])
def test_the_update_moves_the_policy_toward_positive_advantages(model_and_rows, objective):
    from riselm.online.batch import collate
    from riselm.online.loss import token_logprobs

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


def test_several_updates_per_batch_use_ratios_against_the_sampler(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(learning_rate=1e-2, updates_per_batch=3), pad)
    stats = updater.step(rows, step=1)
    assert stats["updated"] == 1.0 and stats["action_tokens"] > 0


def test_a_nan_loss_and_an_empty_batch_stop_with_the_step(model_and_rows):
    model, rows, pad = model_and_rows
    updater = PolicyUpdater(model, OnlineSettings(), pad)
    with pytest.raises(OnlineError, match="step 7: the batch holds no sampled action"):
        updater.step([], step=7)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(OnlineError, match="step 3: the loss is nan"):
        updater.step(rows, step=3)
