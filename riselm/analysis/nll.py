"""The rebuttal's Fig. 1: how likely each checkpoint finds the gold solution, alone and after a wrong attempt.

For every stage model of a run: the mean negative log-likelihood per token of the task's gold
solutions (pooled over all their tokens) given
  direct       [user: prompt] -> assistant: gold solution
  multi-turn   [user: prompt, assistant: a wrong attempt, user: the task's retry message] -> gold solution.
The wrong attempt is one of the stage's own wrong answers to the problem, drawn from its sequential
evaluation episodes (`attempts="own"`; the gold solution corrupted where it has none, see
riselm.training.boost.corrupt_solution), or always the corrupted solution (`attempts="corrupted"`,
the same context for every checkpoint). The conversations are the boost conversations
(riselm.training.boost.boost_samples with one history turn), and the scored tokens are exactly the
trained span of riselm.training.tokenize.tokenize_sample: the solution and its end-of-turn token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from riselm.analysis.runs import RunDir, models_of, read_run
from riselm.files import write_json, write_text_atomic
from riselm.generation.base import Conversation
from riselm.rollout.episode import Episode, read_episodes
from riselm.rundir import SEQUENTIAL_FILE
from riselm.tables import markdown_table, pyplot, save_figure
from riselm.tasks import get_task
from riselm.tasks.base import Problem, Task

logger = logging.getLogger(__name__)

Attempts = Literal["own", "corrupted"]


@dataclass
class NllRow:
    stage: str  # the run's stage whose model is scored
    model: str  # that model (a checkpoint directory or model spec)
    direct: float | None  # mean NLL per gold-solution token, the solution as the first answer
    multi_turn: float | None  # the same after a wrong attempt and the retry message
    problems: int  # problems scored directly
    direct_tokens: int  # gold-solution tokens scored directly
    multi_turn_problems: int  # problems with a wrong attempt to condition on
    multi_turn_tokens: int  # gold-solution tokens scored after a wrong attempt
    own_attempts: int  # multi-turn contexts whose attempt is the stage's own answer (the rest: corrupted gold)


def nll_of_run(
    run_dir: str | Path,
    task: str | Task,
    task_options: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    stages: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    attempts: Attempts = "own",
    batch_size: int = 16,
    max_length: int = 2048,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The NLL table of every stage model (or `stages`) on the task's problems (`split`, default its test
    split, first `limit`); with `out_dir`, nll.md, nll.json and nll.png there."""
    if attempts not in ("own", "corrupted"):
        raise ValueError(f"attempts must be 'own' or 'corrupted', got {attempts!r}")
    run = read_run(run_dir)
    task = task if isinstance(task, Task) else get_task(task, **(task_options or {}))
    models = models_of(run, list(stages) if stages else None)
    problems = task.load(split=split, limit=limit)
    rows = []
    for stage, model in models.items():
        own = _own_episodes(run, stage, task, problems) if attempts == "own" else []
        rows.append(stage_nll(stage, model, task, problems, own, batch_size, max_length, device, seed))
    result = {"run_dir": str(run.path), "task": task.name, "attempts": attempts, "rows": [asdict(r) for r in rows]}
    if out_dir is not None:
        write_nll(result, rows, Path(out_dir))
    return result


def stage_nll(
    stage: str,
    model: str,
    task: Task,
    problems: Sequence[Problem],
    own: Sequence[Episode],
    batch_size: int = 16,
    max_length: int = 2048,
    device: str | None = None,
    seed: int = 0,
) -> NllRow:
    """One checkpoint's row: load it, build both kinds of conversations, score the gold solutions."""
    from riselm.models import load_model_and_tokenizer

    direct, multi, own_count = conversations(task, problems, own, seed)
    lm, tokenizer = load_model_and_tokenizer(model, device=device)
    direct_nll, direct_tokens = gold_nll(lm, tokenizer, direct, max_length, batch_size)
    multi_nll, multi_tokens = gold_nll(lm, tokenizer, multi, max_length, batch_size)
    logger.info("nll %s: direct %s, multi-turn %s", stage, direct_nll, multi_nll)
    return NllRow(stage, model, direct_nll, multi_nll, len(direct), direct_tokens, len(multi), multi_tokens, own_count)


def conversations(
    task: Task, problems: Sequence[Problem], own: Sequence[Episode] = (), seed: int = 0
) -> tuple[list[Conversation], list[Conversation], int]:
    """(direct conversations, multi-turn conversations, how many multi-turn ones hold an own attempt).

    The boost conversations with one history turn: the direct one of every problem with a gold
    solution, the multi-turn one where a wrong attempt is found (scored wrong by the task).
    """
    from riselm.training.boost import (
        boost_samples,
        corrupt_solution,
        wrong_attempts_from_episodes,
    )

    wrong_attempt = wrong_attempts_from_episodes(own, fallback=corrupt_solution) if own else corrupt_solution
    samples = boost_samples(task, problems, with_history_turns=1, wrong_attempt=wrong_attempt, seed=seed)
    direct = [s.messages for s in samples if s.turn == 0]
    multi = [s for s in samples if s.turn == 1]
    own_responses = {(e.id, t.response) for e in own for t in e.turns}
    own_count = sum((s.episode_id, s.messages[-3]["content"]) in own_responses for s in multi)
    return direct, [s.messages for s in multi], own_count


def _own_episodes(run: RunDir, stage: str, task: Task, problems: Sequence[Problem]) -> list[Episode]:
    """The stage's sequential evaluation episodes of these very problems (same id and prompt)."""
    path = run.layout.eval_dir(stage) / SEQUENTIAL_FILE
    if not path.is_file():
        logger.warning("%s: no evaluation episodes; stage %s is conditioned on corrupted gold solutions", path, stage)
        return []
    prompts = {p.id: task.prompt(p) for p in problems}
    # Ids restart at test-0 for every task and difficulty: only the same prompt makes the same problem.
    return [e for e in read_episodes(path) if e.prompt is not None and prompts.get(e.id) == e.prompt]


def gold_nll(model, tokenizer, convs: Sequence[Conversation], max_length: int = 2048, batch_size: int = 16) -> tuple[float | None, int]:
    """(mean NLL per trained token, pooled over all conversations; number of those tokens).

    Each conversation is tokenized as training tokenizes it, so the scored tokens are its final
    assistant message and end-of-turn token; one that does not fit `max_length` is left out.
    """
    from riselm.training.tokenize import tokenize_sample

    rows = [r for r in (tokenize_sample(tokenizer, c, max_length) for c in convs) if r is not None]
    if len(rows) < len(convs):
        logger.warning(
            "nll: %d of %d conversations do not fit max_length=%d and are left out", len(convs) - len(rows), len(convs), max_length
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = summed_nll(model, rows, batch_size, pad_id)
    return (round(total / count, 6) if count else None), count


def summed_nll(model, rows: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int) -> tuple[float, int]:
    """(sum of the NLL of every labelled token, their number): right-padded batches, sorted by length."""
    import torch

    from riselm.training.tokenize import IGNORE_INDEX, predicting_positions
    from riselm.training.trainer import head_on_positions

    device = next(model.parameters()).device
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))  # little padding per batch
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                n = len(r["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
            positions = predicting_positions(labels).to(device)
            with head_on_positions(model, positions):  # logits for the scored tokens only
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            targets = labels[:, 1:].to(device)[positions[:, :-1]]
            total += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            count += len(targets)
    return total, count


def nll_table(rows: Sequence[NllRow]) -> str:
    header = ["stage", "direct NLL", "multi-turn NLL", "multi − direct", "problems (direct / multi)", "own attempts"]
    body = []
    for r in rows:
        gap = None if r.direct is None or r.multi_turn is None else round(r.multi_turn - r.direct, 4)
        body.append([r.stage, r.direct, r.multi_turn, gap, f"{r.problems} / {r.multi_turn_problems}", r.own_attempts])
    return markdown_table(header, body, digits=4)


def write_nll(result: dict[str, Any], rows: Sequence[NllRow], out: Path) -> None:
    source = (
        "the stage's own wrong answers where it has one, else the corrupted gold solution"
        if result["attempts"] == "own"
        else "the corrupted gold solution"
    )
    text = [
        f"# NLL of the gold solution per token: {result['run_dir']} on {result['task']}",
        "",
        f"Multi-turn context: the question, a wrong attempt ({source}) and the retry message.",
        "",
        nll_table(rows),
        "",
    ]
    write_text_atomic(out / "nll.md", "\n".join(text))
    write_json(out / "nll.json", result)
    plot_nll(rows, out / "nll.png")


def plot_nll(rows: Sequence[NllRow], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = list(range(len(rows)))
    ax.plot(xs, [r.direct for r in rows], "o-", label="direct (single turn)")
    ax.plot(xs, [r.multi_turn for r in rows], "s--", label="after a wrong attempt")
    ax.set_xticks(xs, [r.stage for r in rows])
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("NLL per gold-solution token")
    ax.set_title("likelihood of the gold solution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
