"""Tokens in, tokens out: online training rows hold exactly the ids the policy conditioned on and sampled."""

import pytest
import torch

from riselm.generation.hf import HFGenerator
from riselm.models import build_char_tokenizer, build_tiny_model
from riselm.online.batch import action_rows, collate
from riselm.rollout.engine import RolloutSpec, Step, rollout
from riselm.settings import CreditSettings, SamplingSettings
from tests.templates import llama3_tokenizer
from tests.toy import ToyTask, toy_problems


def chatml():
    return build_char_tokenizer()


def llama3():
    return llama3_tokenizer(eos_is_eot=True)


def rolled_out(tok, turns: int, temperature: float, max_new_tokens: int, context: str = "history"):
    """A tiny model and its online rollout of 2 toy problems x 2 episodes (kept candidates): turn 1
    alone, then 2 candidates a turn, sampled with the history or fresh."""
    model = build_tiny_model(tok, arch="llama", hidden_size=32, num_layers=2, num_heads=2, seed=3)
    sampler = HFGenerator(model, tok, batch_size=8)
    spec = RolloutSpec(
        mode="online",
        turns=turns,
        stop_when_correct=False,
        episodes_per_problem=2,
        keep_candidates=True,
        sampling=SamplingSettings(temperature=temperature, max_new_tokens=max_new_tokens),
        seed=1,
    )
    schedule = [Step(sampler), Step(sampler, n=2, context=context)]
    return model, rollout(ToyTask(), toy_problems(2), schedule, spec, show_progress=False)


@pytest.mark.parametrize("make_tokenizer", [chatml, llama3], ids=["chatml", "llama3"])
def test_rows_are_the_prompt_ids_and_the_sampled_ids(make_tokenizer):
    tok = make_tokenizer()
    model, episodes = rolled_out(tok, turns=3, temperature=0, max_new_tokens=12)
    rows = action_rows([episodes[:2], episodes[2:]], CreditSettings())
    assert len(rows) == 2 * 2 * (1 + 2 + 2)  # per episode: turn 1 alone, turns 2 and 3 with two candidates
    for episode in episodes:
        for t, turn in enumerate(episode.turns):
            # the prompt is the chat rendered for that turn, as the backend tokenized it for sampling
            expected = tok.apply_chat_template(episode.messages(upto=t), add_generation_prompt=True, tokenize=True, return_dict=False)
            assert list(turn.prompt_ids) == list(expected)
            for candidate in turn.candidates:
                assert tok.decode(candidate.token_ids, skip_special_tokens=True) == candidate.response
    batch = collate(rows, pad_id=tok.pad_token_id)
    for i, row in enumerate(rows):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        assert ids == list(row.prompt_ids + row.action_ids)
        assert batch.input_ids[i][batch.action_mask[i]].tolist() == list(row.action_ids)
    # greedy sampling: teacher-forced on its row, the model's argmax at every action position is the
    # token it sampled there, so the row holds exactly the context the action was sampled in
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    predicted = logits[:, :-1].argmax(-1)
    targets = batch.input_ids[:, 1:]
    trained = batch.action_mask[:, 1:]
    assert torch.equal(predicted[trained], targets[trained])


def test_rows_carry_the_log_probs_the_sampler_drew_their_tokens_with():
    """Rolled out as the online loop does (keep_candidates): every row (candidates included) holds the sampler's
    log-prob of each action token, and `collate` puts them where the training forward scores that token."""
    from riselm.online.loss import token_logprobs

    tok = chatml()
    model, episodes = rolled_out(tok, turns=2, temperature=0.8, max_new_tokens=8)
    rows = action_rows([episodes[:2], episodes[2:]], CreditSettings())
    assert len(rows) == 2 * 2 * (1 + 2) and all(r.logprobs is not None for r in rows)
    batch = collate(rows, pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = token_logprobs(logits, batch.input_ids, temperature=0.8)
    torch.testing.assert_close(batch.old_logprobs[batch.action_mask], expected[batch.action_mask], rtol=1e-4, atol=1e-5)
    assert torch.all(batch.old_logprobs[~batch.action_mask] == 0)


def test_rendering_the_chat_again_would_not_give_the_sampled_ids():
    """Why rows are not rebuilt from text: Llama-3's template trims messages, so a sampled answer with
    trailing whitespace re-renders as other tokens than those sampled (and the next turn's prompt too)."""
    tok = llama3()
    sampled = "The answer is 4.  "
    conversation = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": sampled}]
    rendered = tok.apply_chat_template(conversation, tokenize=False)
    assert sampled not in rendered and sampled.strip() in rendered


def test_fresh_turns_are_sampled_from_the_question_and_trained_after_the_history():
    """`online.context: fresh`: after a wrong turn the candidates' recorded prompt is the question alone,
    and their rows hold the history's prompt (rendered, as no sampler saw it) before the sampled ids."""
    from riselm.generation.base import prompt_ids
    from riselm.online.batch import OnlineError

    tok = chatml()
    _, episodes = rolled_out(tok, turns=3, temperature=1.0, max_new_tokens=8, context="fresh")
    fresh = [(e, t) for e in episodes for t, turn in enumerate(e.turns) if turn.context == "fresh"]
    assert len(fresh) >= 4  # the untrained model's turns are wrong, so its later turns are fresh
    question = {e.id: prompt_ids(tok, e.messages(upto=0)) for e in episodes}
    for e, t in fresh:
        assert list(e.turns[t].prompt_ids) == question[e.id]

    def history_ids(episode, t):
        return prompt_ids(tok, episode.messages(upto=t))

    rows = action_rows([episodes[:2], episodes[2:]], CreditSettings(), history_ids=history_ids)
    for e, t in fresh:
        history = tuple(history_ids(e, t))
        assert len(history) > len(question[e.id])  # the failed attempt and the retry message are in it
        ids = {c.token_ids for c in e.turns[t].candidates}
        trained = [r for r in rows if r.turn == t and r.action_ids in ids and r.prompt_ids == history]
        assert len(trained) == len(e.turns[t].candidates)
    assert not any(r.turn > 0 and r.prompt_ids in question.values() for r in rows)
    with pytest.raises(OnlineError, match="sampled fresh"):
        action_rows([episodes[:2], episodes[2:]], CreditSettings())
