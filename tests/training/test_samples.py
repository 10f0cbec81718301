"""Rollouts -> weighted samples, and samples -> token ids whose trained span is exactly the final response."""

from __future__ import annotations

import json
import math

import pytest

from riselm.jsonl import DataError
from riselm.models import build_char_tokenizer
from riselm.rollout.episode import Episode, Turn
from riselm.training.samples import (
    IGNORE_INDEX,
    TemplateError,
    TrainingSample,
    WeightedCollator,
    generation_prompt,
    keep_turn,
    load_training_samples,
    read_samples,
    render_final_turn,
    reward_weight,
    samples_from_episodes,
    tokenize_sample,
    tokenize_samples,
    write_samples,
)

RETRY = "Your answer is incorrect. Please try again."

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# No generation prompt: add_generation_prompt is ignored, "Assistant: " only appears with the content.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
)


def episode(rewards, responses=None, eid="p1", sample=0) -> Episode:
    responses = responses or [f"attempt {i} \\boxed{{{i}}}" for i in range(len(rewards))]
    turns = [
        Turn(response=resp, pred=None, reward=r, feedback=RETRY if i < len(rewards) - 1 else None)
        for i, (r, resp) in enumerate(zip(rewards, responses))
    ]
    return Episode(id=eid, task="toy", mode="collect", prompt="What is 2+2?", turns=turns, sample=sample)


# ---- weights and filters ----------------------------------------------------------------------


def test_reward_weight_matches_rise_defaults():
    assert reward_weight(1.0) == pytest.approx(12.1825, rel=1e-4)
    assert reward_weight(0.0) == 1.0
    assert reward_weight(-1.0) == pytest.approx(0.0821, rel=1e-3)
    assert reward_weight(1.0, tau=1.0) == pytest.approx(math.e)
    with pytest.raises(ValueError):
        reward_weight(1.0, tau=0.0)


def test_one_sample_per_turn_with_prefix_and_weight():
    samples = samples_from_episodes([episode([0.0, 0.0, 1.0])])
    assert [s.turn for s in samples] == [0, 1, 2]
    last = samples[2]
    assert [m["role"] for m in last.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert last.messages[0]["content"] == "What is 2+2?"
    assert last.messages[2]["content"] == RETRY
    assert last.response == "attempt 2 \\boxed{2}"
    assert last.weight == pytest.approx(reward_weight(1.0))
    assert samples[0].messages == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "attempt 0 \\boxed{0}"},
    ]
    assert samples[0].weight == 1.0 and samples[0].episode_id == "p1"


@pytest.mark.parametrize(
    "rewards, filter, kept",
    [
        ([0.0, 0.0, 1.0], "all", [0, 1, 2]),
        ([0.0, 0.0, 1.0], "better", [2]),
        ([0.0, 0.0, 1.0], "best", [0, 1, 2]),
        ([0.0, 0.0, 1.0], "success", [2]),
        ([-1.0, 0.0, 0.0], "better", [1]),  # first turn: compared with reward 0, -1 is not better
        ([1.0], "better", [0]),  # a correct first answer is better than nothing
        ([0.0], "better", []),
        ([1.0, 0.0, 1.0], "best", [0, 2]),  # turn 1 fell below turn 0
        ([0.0, -1.0, 0.0], "best", [0, 2]),
    ],
)
def test_filters(rewards, filter, kept):
    samples = samples_from_episodes([episode(rewards)], filter=filter)
    assert [s.turn for s in samples] == kept
    assert [t for t in range(len(rewards)) if keep_turn(rewards, t, filter)] == kept


def test_unknown_filter_is_an_error():
    with pytest.raises(ValueError, match="unknown sample filter"):
        samples_from_episodes([episode([0.0])], filter="good")


def test_dedup_drops_identical_conversations_only():
    same = [episode([0.0, 1.0], sample=0), episode([0.0, 1.0], sample=1)]
    assert len(samples_from_episodes(same, dedup=False)) == 4
    assert len(samples_from_episodes(same)) == 2
    different = [episode([0.0, 1.0]), episode([0.0, 1.0], responses=["other", "attempt 1 \\boxed{1}"])]
    assert len(samples_from_episodes(different)) == 4


def test_turn_after_missing_feedback_is_a_data_error():
    bad = episode([0.0, 1.0])
    bad.turns[0].feedback = None
    with pytest.raises(DataError, match="turn 1 follows a turn without feedback"):
        samples_from_episodes([bad])


# ---- files ------------------------------------------------------------------------------------


def test_samples_file_round_trip_and_episode_files(tmp_path):
    samples = samples_from_episodes([episode([0.0, 1.0])])
    path = tmp_path / "samples.jsonl"
    write_samples(path, samples)
    assert read_samples(path) == samples
    assert load_training_samples(path) == samples

    episodes_path = tmp_path / "episodes.jsonl"
    episodes_path.write_text(json.dumps(episode([0.0, 0.0, 1.0]).to_dict()) + "\n")
    from_file = load_training_samples(episodes_path, tau=1.0, filter="success")
    assert [(s.turn, s.weight) for s in from_file] == [(2, pytest.approx(math.e))]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [{"role": "user", "content": "q"}], "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "must be an assistant"),
        ({"messages": "hi", "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "non-empty list"),
        ({"messages": [{"role": "assistant", "content": "a"}], "reward": 1, "weight": -2, "episode_id": "a", "turn": 0}, "non-negative"),
        ({"messages": [{"role": "assistant"}], "reward": 1, "weight": 1, "episode_id": "a", "turn": 0}, "string 'role' and 'content'"),
        ({"messages": [{"role": "assistant", "content": "a"}], "reward": 1, "episode_id": "a", "turn": 0}, "missing field"),
    ],
)
def test_bad_sample_rows_name_file_and_line(tmp_path, row, message):
    good = TrainingSample([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], 1.0, 1.0, "a", 0)
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(good.to_dict()) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"samples.jsonl:2: .*{message}"):
        read_samples(path)


def test_unknown_row_kind_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "hello"}\n')
    with pytest.raises(DataError, match="x.jsonl:1: expected an episode"):
        load_training_samples(path)


# ---- tokenization: the trained span -------------------------------------------------------------


def chatml_tokenizer():
    return build_char_tokenizer()


def llama3_tokenizer():
    tok = build_char_tokenizer(chat_template=LLAMA3_TEMPLATE)
    tok.add_special_tokens(
        {"bos_token": "<|begin_of_text|>", "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    return tok


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
    assert context_text(tok, row) == generation_prompt(tok, messages[:-1])


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
    rows = tokenize_samples(tok, [short, long, short], max_length=100)
    assert len(rows) == 2 and [r["weights"] for r in rows] == [[1.0], [1.0]]
    rows = tokenize_samples(tok, [short, long], max_length=400)
    assert [r["weights"] for r in rows] == [[1.0], [12.0]]


def test_shared_prefix_rows_hold_every_turn_of_an_episode():
    tok = chatml_tokenizer()
    turn1 = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "ep", 0)
    turn2 = TrainingSample(CONVERSATION[:5], 1.0, 12.0, "ep", 1)
    other = TrainingSample(CONVERSATION[:3], 0.0, 1.0, "other", 0)
    separate = tokenize_samples(tok, [turn1, turn2, other], max_length=512)
    shared = tokenize_samples(tok, [turn1, turn2, other], max_length=512, share_prefixes=True)
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
    rows = tokenize_samples(tok, [turn1, turn2], max_length=length - 3, share_prefixes=True)
    assert len(rows) == 2  # turn 2 lost its first context tokens: turn 1 is no longer its prefix


# ---- batches ----------------------------------------------------------------------------------


def test_collator_pads_and_packs_with_sample_indices_and_weights():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "owners": [0, 0, 0], "weights": [2.0]},
        {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9], "owners": [0, 0], "weights": [0.5]},
    ]
    padded = WeightedCollator(pad_token_id=0)(rows)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert padded["sample_index"].tolist() == [[0, 0, 0], [1, 1, -1]]
    assert padded["sample_weights"].tolist() == [2.0, 0.5]

    packed = WeightedCollator(pad_token_id=0, pack=True)(rows)
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
    padded = WeightedCollator(pad_token_id=0)(rows)
    assert padded["sample_index"].tolist() == [[0, 1, 0, 0], [2, 2, -1, -1]]
    assert padded["sample_weights"].tolist() == [2.0, 3.0, 0.5]
    packed = WeightedCollator(pad_token_id=0, pack=True)(rows)
    assert packed["sample_index"].tolist() == [[0, 1, 0, 0, 2, 2]]


def test_samples_use_the_collection_window():
    turns = [Turn(f"attempt {i} \\boxed{{{i}}}", str(i), 0.0, feedback="Try again.") for i in range(3)]
    turns[-1].feedback = None
    episode = Episode(id="w", task="toy", mode="collect", prompt="q", turns=turns)
    windowed = samples_from_episodes([episode], window=2)
    assert [len(s.messages) for s in windowed] == [2, 4, 4]  # turn 3 sees only the question and attempt 2
    assert windowed[2].messages[1]["content"] == "attempt 1 \\boxed{1}"
