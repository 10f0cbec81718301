"""From training samples to token ids and batches, with the tokenizer's own chat template.

Token ids come from the template collection and evaluation use (the reference code trained with a
different template than it sampled with; spec §8). The trained span is located by rendering the
conversation with a marker in place of the final response, so the method works for templates with
or without a generation prompt, and the token ids are checked against the prompt the model is given
at generation time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from riselm.generation.base import Conversation
from riselm.training.samples import TrainingSample

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a token that is not trained on (PyTorch cross-entropy's ignore_index)

# Stands in for the final response when rendering, to find where the template puts it.
_RESPONSE_MARKER = "\u2063RISELM-RESPONSE-MARKER\u2063"


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions [B, L] whose logits a loss needs: position p predicts token p + 1, so p counts when p + 1 is trained."""
    import torch

    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


class TemplateError(ValueError):
    """The chat template renders the conversation in a way the trained span cannot be located in."""


@dataclass(frozen=True)
class RenderedTurn:
    context: str  # everything the model is conditioned on, up to and including the assistant header
    response: str  # the final assistant message as the template renders it (trained)
    end_of_turn: str  # template text closing the turn, up to its end-of-turn token (trained)


def render_final_turn(tokenizer, messages: Conversation) -> RenderedTurn:
    """Split the rendered conversation into context, final response and end-of-turn text.

    Method: render the conversation once as it is and once with a marker in place of the final
    response. The text before the marker is the context (including the assistant header, such as
    "<|im_start|>assistant\\n" or "Assistant: "), the text after it is the closing template text.
    This works also for templates that ignore `add_generation_prompt`: for them the prompt used at
    generation time lacks the header, and the header stays in the (untrained) context.

    The closing text is cut after its first special token (ChatML's "<|im_end|>", Llama-3's
    "<|eot_id|>", "</s>"): what follows, like ChatML's newline, is not produced by the model before
    it stops, so it is not trained. A template whose closing text holds no special token trains it
    without its trailing whitespace.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the last message must be the assistant message to train on")
    full = _render(tokenizer, messages)
    marked = _render(tokenizer, list(messages[:-1]) + [{"role": "assistant", "content": _RESPONSE_MARKER}])
    if marked.count(_RESPONSE_MARKER) != 1:
        raise TemplateError("the chat template does not render the final assistant message exactly once")
    context, closing = marked.split(_RESPONSE_MARKER)
    if not (full.startswith(context) and full.endswith(closing) and len(full) >= len(context) + len(closing)):
        raise TemplateError(
            "the chat template renders the text around the final assistant message differently depending on "
            "its content; cannot locate the trained span"
        )
    prompt = _render(tokenizer, list(messages[:-1]), add_generation_prompt=True)
    if not context.startswith(prompt):
        raise TemplateError(
            "template drift: the prompt rendered for generation is not a prefix of the rendered training "
            f"conversation.\n  generation prompt ends: {prompt[-80:]!r}\n  training context ends:  {context[-80:]!r}"
        )
    response = full[len(context) : len(full) - len(closing)]
    return RenderedTurn(context=context, response=response, end_of_turn=_end_of_turn(tokenizer, closing))


def _render(tokenizer, messages: Conversation, add_generation_prompt: bool = False) -> str:
    if tokenizer.chat_template is None:
        raise TemplateError("the tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _special_tokens(tokenizer) -> set[str]:
    specials = set(tokenizer.all_special_tokens)
    specials.update(tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special)
    return {s for s in specials if s}


def _end_of_turn(tokenizer, closing: str) -> str:
    hits = [(closing.find(s), s) for s in _special_tokens(tokenizer) if s in closing]
    if not hits:
        return closing.rstrip()
    start, token = min(hits, key=lambda h: (h[0], -len(h[1])))
    return closing[: start + len(token)]


def _encode(tokenizer, text: str) -> list[int]:
    # The rendered template already holds any bos token, as in apply_chat_template(tokenize=True).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_sample(tokenizer, messages: Conversation, max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels of one sample: only the final response and its end-of-turn token are trained.

    The context is tokenized on its own, as a generation backend tokenizes the prompt, and the
    trained tokens are the rest of the tokenized conversation. When the tokenizer merges characters
    across the context/response boundary (e.g. "Assistant: " + "Hi" -> " Hi"), the response is
    tokenized on its own instead, and it must decode back to exactly the response text.

    Truncation keeps the whole trained span and cuts the context from the left. A sample whose
    trained span alone does not fit (with at least one context token) is dropped: None.
    """
    turn = render_final_turn(tokenizer, messages)
    context_ids = _encode(tokenizer, turn.context)
    full_ids = _encode(tokenizer, turn.context + turn.response + turn.end_of_turn)
    if full_ids[: len(context_ids)] == context_ids:
        target_ids = full_ids[len(context_ids) :]
    else:
        target_ids = _encode(tokenizer, turn.response + turn.end_of_turn)
        decoded = tokenizer.decode(target_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded != turn.response + turn.end_of_turn:
            raise TemplateError(
                "the tokenizer merges the assistant header with the response and the response does not "
                f"tokenize on its own either (decodes to {decoded[:60]!r}…)"
            )
    if not context_ids:
        raise TemplateError("the chat template renders nothing before the response; the first token cannot be trained")
    if not target_ids:
        raise TemplateError("the final assistant message renders to no tokens")
    room = max_length - len(target_ids)  # tokens left for the context
    if room < 1:
        return None
    context_ids = context_ids[-room:]
    return {
        "input_ids": context_ids + target_ids,
        "labels": [IGNORE_INDEX] * len(context_ids) + target_ids,
    }


def tokenize_samples(tokenizer, samples: Sequence[TrainingSample], max_length: int) -> list[dict[str, Any]]:
    """One tokenized item {input_ids, labels, weight, episode} per sample; samples that cannot fit are dropped (logged).

    `episode` identifies the episode (problem id and sample) the sample comes from: the samples of
    one episode may share a row in a batch (`rows_of`).
    """
    items: list[dict[str, Any]] = []
    for s in samples:
        tokenized = tokenize_sample(tokenizer, s.messages, max_length)
        if tokenized is not None:
            items.append({**tokenized, "weight": float(s.weight), "episode": f"{s.episode_id}\x1f{s.sample}"})
    dropped = len(samples) - len(items)
    if dropped:
        logger.warning("dropped %d of %d samples whose response alone exceeds max_length=%d", dropped, len(samples), max_length)
    return items


def rows_of(items: Sequence[dict[str, Any]], share_prefixes: bool = False) -> list[dict[str, Any]]:
    """Rows {input_ids, labels, owners, weights} holding these tokenized samples, each exactly once.

    A row normally holds one sample. With `share_prefixes`, samples of one episode whose token ids
    are a prefix of the episode's longest sample (the turns of a RISE rollout, the history turns of a
    boost problem) share the longest one's row: each keeps its own trained span, weight and
    per-sample mean, and since attention is causal its logits are exactly those of its own row, so
    the loss is unchanged while the shared context is computed once instead of once per turn.
    `owners` gives, for every token, the index (into `weights`) of the sample it trains.
    """
    if not share_prefixes:
        return [_row(item) for item in items]
    rows = []
    for chain in prefix_chains(items):
        row = _row(items[chain[0]])
        for i in chain[1:]:
            if not _add_span(row, items[i]):  # its trained span would overlap: a row of its own
                rows.append(_row(items[i]))
        rows.append(row)
    return rows


def prefix_chains(items: Sequence[dict[str, Any]]) -> list[list[int]]:
    """The items grouped into chains that can share a row: within an episode, the samples whose token
    ids are a prefix of the chain's longest (its first index). Every item is in exactly one chain."""
    by_episode: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_episode.setdefault(item["episode"], []).append(i)
    chains: list[list[int]] = []
    for members in by_episode.values():
        heads: list[list[int]] = []
        for i in sorted(members, key=lambda i: -len(items[i]["input_ids"])):
            ids = items[i]["input_ids"]
            chain = next((c for c in heads if items[c[0]]["input_ids"][: len(ids)] == ids), None)
            if chain is None:
                heads.append([i])
            else:
                chain.append(i)
        chains.extend(heads)
    return chains


def _row(item: dict[str, Any]) -> dict[str, Any]:
    n = len(item["input_ids"])
    return {"input_ids": list(item["input_ids"]), "labels": list(item["labels"]), "owners": [0] * n, "weights": [item["weight"]]}


def _add_span(row: dict[str, Any], item: dict[str, Any]) -> bool:
    """Mark a shorter sample's trained span inside `row` when its tokens are a prefix of the row's."""
    n = len(item["input_ids"])
    if row["input_ids"][:n] != item["input_ids"]:
        return False
    owner = len(row["weights"])
    trained = [i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX]
    if any(row["labels"][i] != IGNORE_INDEX for i in trained):
        return False  # the spans would overlap: never for distinct turns, but stay exact
    for i in trained:
        row["labels"][i] = item["labels"][i]
        row["owners"][i] = owner
    row["weights"].append(item["weight"])
    return True


# ---- batches ----------------------------------------------------------------------------------


class EpisodeOrder:
    """The order samples are trained in: a seeded shuffle of prefix chains, each chain's samples together.

    A torch sampler over `tokenize_samples` items, reshuffled every epoch (the Trainer calls
    `set_epoch`). Micro-batches are cut from this order by sample count, so `train.batch_size`
    counts samples whatever the rows look like, and a run with `share_prefixes` trains the same
    samples in the same steps as one without. Only samples that can share a row (`prefix_chains`:
    the turns of one rollout) are kept adjacent; every other sample is shuffled on its own, as a
    plain random sampler would. (Keeping a whole episode together puts e.g. both boost conversations
    of a problem, with the same gold solution, in one batch: measured on the demo's boost, first-turn
    accuracy 1.5% against 12.5% with samples shuffled apart.) The order depends only on the seed
    and the epoch, so several processes cut the same global batches from it.
    """

    def __init__(self, items: Sequence[dict[str, Any]], seed: int = 0):
        self.groups = [sorted(chain, key=lambda i: len(items[i]["input_ids"])) for chain in prefix_chains(items)]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(map(len, self.groups))

    def __iter__(self):
        order = list(range(len(self.groups)))
        random.Random(f"{self.seed}\x1f{self.epoch}").shuffle(order)
        return iter([i for g in order for i in self.groups[g]])


@dataclass
class WeightedCollator:
    """Batches tokenized samples into rows (`rows_of`), carrying each sample's weight and which sample every token belongs to.

    Padded (pack=False): rows right-padded to the longest, with an attention mask.
    Packed (pack=True): the batch's rows concatenated into one row without padding, with
    position_ids restarting at 0 for each row and no attention mask; transformers' attention
    (sdpa, eager, flash) then keeps the rows apart. The first token of every row is never a
    label, so no prediction crosses a row boundary.

    Both give `sample_index` (the sample each trained token belongs to; a row may train several
    samples with `share_prefixes`) and `sample_weights` (one per sample), from which the trainer
    forms the per-sample loss.
    """

    pad_token_id: int
    pack: bool = False
    share_prefixes: bool = False

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate_rows(rows_of(items, self.share_prefixes))

    def collate_rows(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        weights = torch.tensor([w for r in rows for w in r["weights"]], dtype=torch.float32)
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + len(r["weights"]))
        if self.pack:
            packed_ids, packed_labels, positions, owners = [], [], [], []
            for i, r in enumerate(rows):
                n = len(r["input_ids"])
                packed_ids += r["input_ids"]
                packed_labels += [IGNORE_INDEX] + list(r["labels"][1:])
                positions += list(range(n))
                owners += [offsets[i] + o for o in r["owners"]]
            return {
                "input_ids": torch.tensor([packed_ids]),
                "labels": torch.tensor([packed_labels]),
                "position_ids": torch.tensor([positions]),
                "sample_index": torch.tensor([owners]),
                "sample_weights": weights,
            }
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        index = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            attention[i, :n] = 1
            index[i, :n] = torch.tensor(r["owners"]) + offsets[i]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            "sample_index": index,
            "sample_weights": weights,
        }
