"""The weighted trainer: the loss is exactly spec §3's, weights reach the gradient, training runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from riselm.hardware import resolve_precision
from riselm.models import build_tiny_model
from riselm.rollout.episode import Episode, Turn
from riselm.settings import LoraSettings, RunSettings, TrainSettings
from riselm.training.samples import TrainingSample
from riselm.training.tokenize import EpisodeOrder, WeightedCollator, tokenize_samples
from riselm.training.trainer import WeightedTrainer, train_from_file, train_weighted, training_arguments


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads on a shared machine spin for seconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(tok, seed: int = 0):
    return build_tiny_model(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=seed)


def make_samples() -> list[TrainingSample]:
    """Four samples of different lengths and weights (a correct, a wrong and an unparsable action…)."""

    def conv(question, answer, history=()):
        messages = [{"role": "user", "content": question}]
        for wrong in history:
            messages += [{"role": "assistant", "content": wrong}, {"role": "user", "content": "Try again."}]
        return messages + [{"role": "assistant", "content": answer}]

    return [
        TrainingSample(conv("2+2?", "\\boxed{4}"), 1.0, 12.18, "a", 0),
        TrainingSample(conv("3+5?", "It is \\boxed{9} I think.", ["\\boxed{7}"]), 0.0, 1.0, "b", 1),
        TrainingSample(conv("10-3?", "seven"), -1.0, 0.08, "c", 0),
        TrainingSample(conv("6*7?", "6*7 = 42, so \\boxed{42}", ["\\boxed{41}", "\\boxed{43}"]), 1.0, 3.0, "d", 2),
    ]


def config(**overrides) -> TrainSettings:
    """Plain SGD with a constant rate, no clipping and no decay: the update is -lr × gradient."""
    base = dict(
        optimizer="sgd",
        learning_rate=0.5,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        batch_size=4,
        grad_accum=1,
        gradient_checkpointing=False,
        logging_steps=1,
        precision="fp32",  # exact comparisons: bf16 (what auto picks on a CPU with AVX512-BF16) rounds
    )
    return TrainSettings(**{**base, **overrides})


def make_trainer(model, tmp_path, tok):
    return WeightedTrainer(model=model, args=training_arguments(config(), tmp_path), data_collator=WeightedCollator(tok.pad_token_id))


def batch(tok, samples, pack=False, weights=None, share_prefixes=False):
    items = tokenize_samples(tok, samples, max_length=512)
    if weights is not None:
        items = [{**r, "weight": w} for r, w in zip(items, weights)]
    return WeightedCollator(tok.pad_token_id, pack=pack, share_prefixes=share_prefixes)(items)


def grads(trainer, model, inputs) -> list[torch.Tensor]:
    model.zero_grad()
    trainer.compute_loss(model, inputs).backward()
    return [p.grad.clone() for p in model.parameters()]


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---- the loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_loss_is_mean_over_samples_of_weight_times_mean_token_ce(tmp_path, char_tokenizer, pack):
    tok, samples = char_tokenizer, make_samples()
    model = make_model(tok)
    loss = make_trainer(model, tmp_path, tok).compute_loss(model, batch(tok, samples, pack=pack))
    expected = []
    for row, sample in zip(tokenize_samples(tok, samples, 512), samples):
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        expected.append(sample.weight * out.loss)  # the model's own loss: mean CE over the trained tokens
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_shared_prefix_rows_give_the_same_loss_and_gradients_as_one_row_per_turn(tmp_path, char_tokenizer, pack):
    tok = char_tokenizer
    history = [
        {"role": "user", "content": "6*7?"},
        {"role": "assistant", "content": "\\boxed{41}"},
        {"role": "user", "content": "Try again."},
        {"role": "assistant", "content": "\\boxed{43}"},
        {"role": "user", "content": "Try again."},
        {"role": "assistant", "content": "6*7 = 42, \\boxed{42}"},
    ]
    turns = [TrainingSample(history[: 2 * t + 2], r, w, "d", t) for t, (r, w) in enumerate([(0, 1.0), (0, 0.5), (1, 12.18)])]
    samples = turns + make_samples()[:2]
    model = make_model(tok)
    trainer = make_trainer(model, tmp_path, tok)
    separate, shared = batch(tok, samples, pack=pack), batch(tok, samples, pack=pack, share_prefixes=True)
    assert shared["input_ids"].numel() < separate["input_ids"].numel()
    assert len(shared["sample_weights"]) == len(separate["sample_weights"]) == 5
    assert trainer.compute_loss(model, shared).item() == pytest.approx(trainer.compute_loss(model, separate).item(), rel=1e-5)
    for a, b in zip(grads(trainer, model, shared), grads(trainer, model, separate)):
        assert torch.allclose(a, b, atol=1e-6)


def episode_samples(episodes: int = 6) -> list[TrainingSample]:
    """The samples of RISE episodes of 1 to 3 turns (every turn trained), as `samples_from_episodes` makes them."""
    out = []
    for e in range(episodes):
        history = [{"role": "user", "content": f"{e}*7?"}]
        for t in range(1 + e % 3):
            history = history + [{"role": "assistant", "content": f"try {t}: \\boxed{{{7 * e + t}}}"}]
            out.append(TrainingSample(list(history), float(t == e % 3), [1.0, 12.18][t == e % 3], f"p{e}", t))
            history = history + [{"role": "user", "content": "Try again."}]
    return out


@pytest.mark.parametrize("epochs", [1, 2])
def test_sharing_prefixes_takes_the_same_steps_and_ends_with_the_same_weights(tmp_path, char_tokenizer, epochs):
    """batch_size counts samples: with shared rows the run takes as many steps, over the same samples, to the same weights."""
    tok, samples = char_tokenizer, episode_samples()
    assert len(samples) == 12
    runs = {}
    for share in (False, True):
        model, counter = make_model(tok), CountSteps()
        cfg = config(batch_size=4, grad_accum=1, epochs=epochs, share_prefixes=share, save_steps=1000, learning_rate=0.2)
        train_weighted(model, samples, tmp_path / str(share), cfg, tokenizer=tok, callbacks=[counter])
        runs[share] = (params(model), counter.steps)
    assert runs[False][1] == runs[True][1] == 3 * epochs  # 12 samples, 4 a step
    start = params(make_model(tok))
    assert max((a - b).abs().max() for a, b in zip(runs[True][0], start)) > 1e-3
    for a, b in zip(runs[False][0], runs[True][0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_episode_order_keeps_episodes_together_and_reshuffles_each_epoch(char_tokenizer):
    items = tokenize_samples(char_tokenizer, episode_samples(), max_length=512)
    order = EpisodeOrder(items, seed=3)
    first = list(order)
    assert sorted(first) == list(range(len(items)))
    episodes = [items[i]["episode"] for i in first]
    assert all(episodes.index(e) + episodes.count(e) - 1 == len(episodes) - 1 - episodes[::-1].index(e) for e in set(episodes))
    order.set_epoch(1)
    assert list(order) != first and sorted(order) == sorted(first)
    assert list(EpisodeOrder(items, seed=3)) == first  # the seed and the epoch alone decide


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tmp_path, char_tokenizer):
    tok, samples = char_tokenizer, make_samples()
    model = make_model(tok)
    trainer = make_trainer(model, tmp_path, tok)
    padded, packed = batch(tok, samples), batch(tok, samples, pack=True)
    assert packed["input_ids"].shape[0] == 1 and padded["input_ids"].shape[0] == 4
    assert trainer.compute_loss(model, packed).item() == pytest.approx(trainer.compute_loss(model, padded).item(), rel=1e-5)
    for a, b in zip(grads(trainer, model, packed), grads(trainer, model, padded)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_head_projects_only_trained_positions_with_the_full_logits_gradient(tmp_path, char_tokenizer, pack):
    """The output head sees one row per trained token, and the gradient is the one of the model's own loss."""
    tok, samples = char_tokenizer, make_samples()
    model = make_model(tok)
    trainer = make_trainer(model, tmp_path, tok)
    inputs = batch(tok, samples, pack=pack)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    got = grads(trainer, model, inputs)
    assert seen == [torch.Size([int((inputs["labels"][:, 1:] != -100).sum()), model.config.hidden_size])]
    model.zero_grad()
    expected = []
    for row, sample in zip(tokenize_samples(tok, samples, 512), samples):  # full [1, L, V] logits, one row each
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        expected.append(sample.weight * out.loss)
    torch.stack(expected).mean().backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_doubling_a_weight_doubles_that_samples_gradient(tmp_path, char_tokenizer):
    tok, samples = char_tokenizer, make_samples()[:2]
    model = make_model(tok)
    trainer = make_trainer(model, tmp_path, tok)
    g1 = grads(trainer, model, batch(tok, samples, weights=[1.0, 3.0]))
    g2 = grads(trainer, model, batch(tok, samples, weights=[2.0, 6.0]))
    only_first = grads(trainer, model, batch(tok, samples, weights=[1.0, 0.0]))
    only_second = grads(trainer, model, batch(tok, samples, weights=[0.0, 3.0]))
    assert any(g.abs().sum() > 0 for g in only_first)
    for a, b, c, d in zip(g1, g2, only_first, only_second):
        torch.testing.assert_close(b, 2 * a, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a, c + d, rtol=1e-4, atol=1e-7)  # each sample adds its weighted share


# ---- training ---------------------------------------------------------------------------------


def test_zero_weights_change_nothing_and_weights_one_do(tmp_path, char_tokenizer):
    tok = char_tokenizer
    zero = [TrainingSample(s.messages, s.reward, 0.0, s.episode_id, s.turn) for s in make_samples()]
    model = make_model(tok)
    before = params(model)
    train_weighted(model, zero, tmp_path / "zero", config(max_steps=2), tokenizer=tok)
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))

    final = train_weighted(model, make_samples(), tmp_path / "one", config(max_steps=2), tokenizer=tok)
    after = params(model)
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert all(torch.equal(a, b) for a, b in zip(after, params(reloaded)))
    assert AutoTokenizer.from_pretrained(final).chat_template == tok.chat_template
    assert json.loads((tmp_path / "one" / "train_config.json").read_text())["optimizer"] == "sgd"


@pytest.mark.parametrize("micro, pack", [(1, False), (2, True)], ids=["micro1-padded", "micro2-packed"])
def test_gradient_accumulation_gives_the_full_batch_update(tmp_path, char_tokenizer, micro, pack):
    """One step of 4 samples, as 4/micro accumulated micro-batches, equals -lr × the full batch's gradient."""
    tok, samples = char_tokenizer, make_samples()
    reference = make_model(tok)
    expected = [
        p - 0.5 * g for p, g in zip(params(reference), grads(make_trainer(reference, tmp_path, tok), reference, batch(tok, samples)))
    ]

    model = make_model(tok)
    cfg = config(batch_size=micro, grad_accum=4 // micro, packing=pack, max_steps=1)
    train_weighted(model, samples, tmp_path / "run", cfg, tokenizer=tok)
    for a, b in zip(params(model), expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def interrupted_and_straight(tmp_path, tok):
    """A run stopped after step 2 of 4 (checkpoint-2 saved), and the same run uninterrupted."""
    samples = make_samples() * 2
    cfg = config(optimizer="adamw_torch", learning_rate=1e-2, batch_size=2, save_steps=2)
    straight = make_model(tok)
    train_weighted(straight, samples, tmp_path / "straight", cfg, tokenizer=tok)
    run = tmp_path / "interrupted"
    train_weighted(make_model(tok), samples, run, cfg, tokenizer=tok, callbacks=[StopAt(2)])
    return run, straight, samples, cfg


def resume(run, samples, cfg, tok):
    counter = CountSteps()
    resumed = make_model(tok)  # fresh weights: the checkpoint must supply the trained ones
    final = train_weighted(resumed, samples, run, cfg, tokenizer=tok, callbacks=[counter])
    return resumed, final, counter.steps


def test_resume_from_checkpoint_continues_where_it_stopped(tmp_path, char_tokenizer):
    run, straight, samples, cfg = interrupted_and_straight(tmp_path, char_tokenizer)
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-4").exists()
    resumed, _, steps = resume(run, samples, cfg, char_tokenizer)
    assert steps == 2  # steps 3 and 4 only
    for a, b in zip(params(resumed), params(straight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_cut_short_is_skipped_and_a_half_written_final_never_counts(tmp_path, char_tokenizer):
    from riselm.checkpoints import COMPLETE_MARK

    run, straight, samples, cfg = interrupted_and_straight(tmp_path, char_tokenizer)
    assert (run / "checkpoint-2" / COMPLETE_MARK).exists()
    # a later save killed half way (or out of disk): a checkpoint without its mark and trainer state,
    # and a final model that never got renamed into place
    broken = run / "checkpoint-3"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"torn")
    (run / "final").rename(run / "final.partial")
    resumed, final, steps = resume(run, samples, cfg, char_tokenizer)
    assert steps == 2 and not broken.exists()  # resumed from step 2; the torn checkpoint is gone
    assert final == run / "final" and not (run / "final.partial").exists()
    for a, b in zip(params(resumed), params(straight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_lora_training_saves_an_adapter_or_a_merged_model_that_changes_outputs(tmp_path, char_tokenizer, merge):
    from peft import PeftModel

    tok = char_tokenizer
    cfg = config(
        optimizer="adamw_torch",
        learning_rate=5e-2,
        max_steps=3,
        gradient_checkpointing=True,
        lora=LoraSettings(r=4, alpha=8, merge=merge),
    )
    final = train_weighted(make_model(tok), make_samples(), tmp_path / "lora", cfg, tokenizer=tok)
    inputs = batch(tok, make_samples()[:1])["input_ids"]
    base_logits = make_model(tok)(input_ids=inputs).logits
    if merge:
        assert not (final / "adapter_config.json").exists()
        trained = AutoModelForCausalLM.from_pretrained(final)
    else:
        assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
        trained = PeftModel.from_pretrained(make_model(tok), final)
    logits = trained(input_ids=inputs).logits
    assert (logits - base_logits).abs().max() > 1e-3


def test_train_from_episodes_file_with_a_model_path(tmp_path, char_tokenizer, tiny_model_dir):
    turns = [
        Turn("\\boxed{5}", "5", 0.0, feedback="Try again."),
        Turn("\\boxed{4}", "4", 1.0),
    ]
    episodes = tmp_path / "episodes.jsonl"
    episodes.write_text(json.dumps(Episode("p", "toy", "collect", "2+2?", turns).to_dict()) + "\n")
    before = params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    final = train_from_file(episodes, tiny_model_dir, tmp_path / "out", config(batch_size=2, max_steps=1))
    after = params(AutoModelForCausalLM.from_pretrained(final))
    assert not all(torch.equal(a, b) for a, b in zip(before, after))


def test_config_checks_and_run_config_sections():
    with pytest.raises(ValueError, match="learnin_rate"):
        TrainSettings(learnin_rate=1e-5)
    args = training_arguments(TrainSettings(), "/tmp/unused")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate) == (8, 8, 1e-5)
    assert args.bf16 == (resolve_precision("auto") == "bf16")  # auto: bf16 where the hardware has it natively
    assert training_arguments(TrainSettings(precision="fp32"), "/tmp/unused").bf16 is False
    assert training_arguments(TrainSettings(precision="bf16"), "/tmp/unused").bf16 is True
    # a run config's train: section, as YAML gives it, is TrainSettings
    section = {"learning_rate": 2e-5, "grad_accum": 2, "lora": {"r": 4, "alpha": 8}, "packing": True}
    for cfg in (RunSettings.model_validate({"train": section}).train, TrainSettings.model_validate(section)):
        assert (cfg.learning_rate, cfg.grad_accum, cfg.lora.r, cfg.lora.merge, cfg.packing) == (2e-5, 2, 4, True, True)
    with pytest.raises(ValueError, match="rank"):
        TrainSettings.model_validate({"lora": {"rank": 4}})


def test_samples_that_cannot_share_a_row_are_shuffled_apart(char_tokenizer):
    """Two boost conversations of one problem (not prefixes of each other, same gold answer) are not kept
    together: batches of such pairs trained the demo's boost to 1.5% instead of 12.5%."""
    samples = []
    for p in range(20):
        alone = [{"role": "user", "content": f"{p}+1?"}, {"role": "assistant", "content": f"\\boxed{{{p + 1}}}"}]
        after = [alone[0], {"role": "assistant", "content": "\\boxed{0}"}, {"role": "user", "content": "Again."}, alone[1]]
        samples += [TrainingSample(alone, 1.0, 1.0, f"p{p}", 0), TrainingSample(after, 1.0, 1.0, f"p{p}", 1)]
    items = tokenize_samples(char_tokenizer, samples, max_length=512)
    order = [items[i]["episode"] for i in EpisodeOrder(items, seed=0)]
    adjacent = sum(a == b for a, b in zip(order, order[1:]))
    assert adjacent < 6  # shuffled like independent samples (about one adjacent pair expected), not 20
