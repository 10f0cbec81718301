"""Samples -> token ids whose trained span is exactly the final response, shared-prefix rows, batches."""

from __future__ import annotations

import pytest

from riselm.models import build_char_tokenizer
from riselm.training.samples import TrainingSample
from riselm.training.tokenize import (
    IGNORE_INDEX,
    TemplateError,
    WeightedCollator,
    render_final_turn,
    rows_of,
    tokenize_sample,
    tokenize_samples,
)
from tests.templates import llama3_tokenizer

RETRY = "Your answer is incorrect. Please try again."

# No generation prompt: add_generation_prompt is ignored, "Assistant: " only appears with the content.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
)


def chatml_tokenizer():
    return build_char_tokenizer()


def plain_tokenizer():
    tok = build_char_tokenizer(chat_template=PLAIN_TEMPLATE)
    tok.add_special_tokens({"eos_token": "</s>"})
    return tok


def bpe_plain_tokenizer():
    """A byte-level BPE that merges the space of "Assistant: " into the response's first word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["User: What is 2+2?\nAssistant: The answer is 4.</s>"] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = PLAIN_TEMPLATE
    return tok


CONVERSATION = [
    {"role": "system", "content": "Be careful."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is \\boxed{5}."},
    {"role": "user", "content": RETRY},
    {"role": "assistant", "content": "The answer is \\boxed{4}."},
]


def trained_text(tokenizer, row) -> str:
    ids = [i for i, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert ids == [label for label in row["labels"] if label != IGNORE_INDEX]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def context_text(tokenizer, row) -> str:
    ids = [i for i, label in zip(row["input_ids"], row["labels"]) if label == IGNORE_INDEX]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize(
    "make_tokenizer, end_of_turn",
    [
        (chatml_tokenizer, "<|im_end|>"),
        (llama3_tokenizer, "<|eot_id|>"),
        (plain_tokenizer, "</s>"),
        (bpe_plain_tokenizer, "</s>"),
    ],
    ids=["chatml", "llama3", "plain", "plain-bpe"],
)
@pytest.mark.parametrize("upto", [2, 4], ids=["turn1", "turn2"])
def test_trained_tokens_are_exactly_the_final_response_and_end_of_turn(make_tokenizer, end_of_turn, upto):
    tok = make_tokenizer()
    messages = CONVERSATION[: upto + 1]
    row = tokenize_sample(tok, messages, max_length=1024)
    assert trained_text(tok, row) == messages[-1]["content"] + end_of_turn
    # the trained span is one contiguous block at the end: nothing after the end-of-turn token
    labels = row["labels"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in labels[first:])
    # the context is what the model is given when generating that turn
    assert context_text(tok, row) == render_final_turn(tok, messages).context


def test_context_equals_the_generation_prompt_of_templates_that_have_one():
    for tok in (chatml_tokenizer(), llama3_tokenizer()):
        rendered = tok.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
        assert render_final_turn(tok, CONVERSATION).context == rendered
    llama = llama3_tokenizer()
    row = tokenize_sample(llama, CONVERSATION, max_length=1024)
    assert row["input_ids"][0] == llama.bos_token_id and row["input_ids"].count(llama.bos_token_id) == 1


def test_template_without_generation_prompt_keeps_the_header_in_the_context():
    tok = plain_tokenizer()
    turn = render_final_turn(tok, CONVERSATION)
    assert turn.context.endswith(f"User: {RETRY}\nAssistant: ")
    assert (turn.response, turn.end_of_turn) == ("The answer is \\boxed{4}.", "</s>")
    # add_generation_prompt adds nothing here, so the header must come from the marker rendering
    assert tok.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True).endswith(f"{RETRY}\n")


def test_llama3_trim_is_what_gets_trained():
    tok = llama3_tokenizer()
    messages = CONVERSATION[:1] + [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  padded answer \n"}]
    row = tokenize_sample(tok, messages, max_length=1024)
    assert trained_text(tok, row) == "padded answer<|eot_id|>"


def test_template_drift_is_a_clear_error():
    # The generation prompt opens with a line the training rendering does not have.
    drifting = "{% if add_generation_prompt %}GEN\n{% endif %}" + build_char_tokenizer().chat_template
    tok = build_char_tokenizer(chat_template=drifting)
    with pytest.raises(TemplateError, match="template drift"):
        tokenize_sample(tok, CONVERSATION, max_length=1024)


def test_template_that_hides_the_response_is_a_clear_error():
    tok = build_char_tokenizer(chat_template="{% for m in messages %}{{ m['role'] }}{% endfor %}")
    with pytest.raises(TemplateError, match="exactly once"):
        tokenize_sample(tok, CONVERSATION, max_length=1024)
    with pytest.raises(ValueError, match="last message must be the assistant"):
        tokenize_sample(chatml_tokenizer(), CONVERSATION[:-1], max_length=1024)


def test_truncation_cuts_the_context_from_the_left_and_keeps_the_response():
    tok = chatml_tokenizer()
    full = tokenize_sample(tok, CONVERSATION, max_length=10_000)
    trained = sum(label != IGNORE_INDEX for label in full["labels"])
    cut = tokenize_sample(tok, CONVERSATION, max_length=trained + 5)
    assert len(cut["input_ids"]) == trained + 5
    assert cut["input_ids"] == full["input_ids"][-(trained + 5) :]
    assert trained_text(tok, cut) == CONVERSATION[-1]["content"] + "<|im_end|>"
    # the response alone (plus one context token) does not fit: the sample is dropped
    assert tokenize_sample(tok, CONVERSATION, max_length=trained) is None


def test_tokenize_samples_drops_too_long_and_carries_weights():
    tok = chatml_tokenizer()
    short = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "a", 0)
    long = TrainingSample(CONVERSATION[:2] + [{"role": "assistant", "content": "x" * 200}], 1.0, 12.0, "b", 0)
    items = tokenize_samples(tok, [short, long, short], max_length=100)
    assert len(items) == 2 and [r["weight"] for r in items] == [1.0, 1.0]
    items = tokenize_samples(tok, [short, long], max_length=400)
    assert [(r["weight"], r["episode"]) for r in items] == [(1.0, "a\x1f0"), (12.0, "b\x1f0")]


def test_shared_prefix_rows_hold_every_turn_of_an_episode():
    tok = chatml_tokenizer()
    turn1 = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "ep", 0)
    turn2 = TrainingSample(CONVERSATION[:5], 1.0, 12.0, "ep", 1)
    other = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "other", 0)
    items = tokenize_samples(tok, [turn1, turn2, other], max_length=512)
    separate, shared = rows_of(items), rows_of(items, share_prefixes=True)
    assert len(separate) == 3 and len(shared) == 2
    row = next(r for r in shared if len(r["weights"]) == 2)
    assert row["input_ids"] == separate[1]["input_ids"]
    # each sample's trained tokens sit at the same positions, with the same labels, as in its own row
    for owner, alone in [(1, separate[0]), (0, separate[1])]:
        mine = [i for i, (label, o) in enumerate(zip(row["labels"], row["owners"])) if label != IGNORE_INDEX and o == owner]
        assert mine == [i for i, label in enumerate(alone["labels"]) if label != IGNORE_INDEX]
        assert [row["labels"][i] for i in mine] == [alone["labels"][i] for i in mine]
    assert sorted(row["weights"]) == [1.0, 12.0]


def test_shared_prefix_falls_back_to_own_row_when_truncated():
    tok = chatml_tokenizer()
    turn1 = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "ep", 0)
    turn2 = TrainingSample(CONVERSATION[:5], 1.0, 12.0, "ep", 1)
    length = len(tokenize_samples(tok, [turn2], max_length=512)[0]["input_ids"])
    rows = rows_of(tokenize_samples(tok, [turn1, turn2], max_length=length - 3), share_prefixes=True)
    assert len(rows) == 2  # turn 2 lost its first context tokens: turn 1 is no longer its prefix


def test_episodes_of_one_problem_share_rows_only_within_each_episode():
    """Two episodes (samples 0 and 1) of one problem: each shares its own turns, never the other's."""
    tok = chatml_tokenizer()
    other_history = [*CONVERSATION[:2], {"role": "assistant", "content": "A different first try."}, *CONVERSATION[3:5]]
    first = [TrainingSample(CONVERSATION[: 2 * t + 3], 0.0, 1.0, "q", t, sample=0) for t in range(2)]
    second = [TrainingSample(other_history[: 2 * t + 3], 0.0, 1.0, "q", t, sample=1) for t in range(2)]
    rows = rows_of(tokenize_samples(tok, first + second, max_length=512), share_prefixes=True)
    assert sorted(len(r["weights"]) for r in rows) == [2, 2]  # one row per episode, both turns in it


# ---- batches ----------------------------------------------------------------------------------


def test_collator_pads_and_packs_with_sample_indices_and_weights():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "owners": [0, 0, 0], "weights": [2.0]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9], "owners": [0, 0], "weights": [0.5]},
    ]
    padded = WeightedCollator(pad_token_id=0).collate_rows(rows)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert padded["sample_index"].tolist() == [[0, 0, 0], [1, 1, -1]]
    assert padded["sample_weights"].tolist() == [2.0, 0.5]

    packed = WeightedCollator(pad_token_id=0, pack=True).collate_rows(rows)
    assert "attention_mask" not in packed
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert packed["sample_index"].tolist() == [[0, 0, 0, 1, 1]]
    assert packed["sample_weights"].tolist() == [2.0, 0.5]


def test_collator_numbers_several_samples_of_one_row():
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, 6, IGNORE_INDEX, 8], "owners": [0, 1, 0, 0], "weights": [2.0, 3.0]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9], "owners": [0, 0], "weights": [0.5]},
    ]
    padded = WeightedCollator(pad_token_id=0).collate_rows(rows)
    assert padded["sample_index"].tolist() == [[0, 1, 0, 0], [2, 2, -1, -1]]
    assert padded["sample_weights"].tolist() == [2.0, 3.0, 0.5]
    packed = WeightedCollator(pad_token_id=0, pack=True).collate_rows(rows)
    assert packed["sample_index"].tolist() == [[0, 1, 0, 0, 2, 2]]
