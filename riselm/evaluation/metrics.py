"""Multi-turn metrics of RISE (spec section 5), computed from episodes.

Sequential episodes (one per problem, K turns):
  acc@tk  accuracy of turn k alone
  p1@tk   solved by any of turns 1..k (an oracle says when to stop)
  m1@tk   the majority answer over turns 1..k is correct (no oracle)
  wrong->right@tk / right->wrong@tk   how many problems changed correctness from turn k-1 to turn k
Parallel episodes (one-turn samples per problem, sharing the problem's id; an episode without a turn
is not a sample):
  acc@t1  mean over problems of the share of its samples that are right (all of them)
  mk@t1   the majority answer over the problem's first k samples is correct
  pass@k  unbiased estimate of "any of k samples correct" from all the problem's n samples (Chen et al., 2021)
  A problem enters mk@t1 and pass@k only for k up to its own sample count: the value at k averages over
  the problems with at least k samples. `samples` is the count every problem with samples reaches;
  when problems have different counts, `samples_max`, `sample_counts` ({count: problems}) and
  `problems_at_k` ({k: problems averaged}) say so, and `problems_without_samples` counts the problems
  whose episodes hold no turn (left out of every value, never divided by).
All values are percentages (0-100), counts are integers.

Majority votes group answers with the task's equivalence made symmetric and transitive (connected
components; see `vote_groups`), so groups never depend on the order of the answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from math import comb
from typing import Any

from riselm.rollout.episode import Episode, Turn
from riselm.tables import pct

SameAnswer = Callable[[str, str], bool]
AnswerKey = Callable[[str], Hashable | None]


def vote_groups(answers: Sequence[str | None], same: SameAnswer, key: AnswerKey | None = None) -> list[list[int]]:
    """The non-null answers' indices grouped into equivalence classes, each group in index order and
    the groups in the order of their first member.

    Two answers are linked when they are the same string, when both have a canonical `key` (the task's
    `answer_key`) and the keys are equal, or, unless both have keys, when `same(a, b)` or `same(b, a)`;
    a group is a connected component of these links. The groups thus depend only on the answers,
    never on their order, even where `same` is asymmetric or not transitive (math-verify's `verify`
    is asymmetric; a tolerance is not transitive).
    """
    texts = list(dict.fromkeys(a for a in answers if a is not None))  # distinct answers
    keys = [key(t) if key is not None else None for t in texts]
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(i: int, j: int) -> None:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)

    first_with_key: dict[Hashable, int] = {}
    for i, k in enumerate(keys):
        if k is not None:
            link(i, first_with_key.setdefault(k, i))
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if (keys[i] is not None and keys[j] is not None) or root(i) == root(j):
                continue
            if same(texts[i], texts[j]) or same(texts[j], texts[i]):
                link(i, j)
    index = {t: n for n, t in enumerate(texts)}
    groups: dict[int, list[int]] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(root(index[answer]), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def majority_vote(answers: Sequence[str | None], same: SameAnswer, key: AnswerKey | None = None) -> int | None:
    """Index of the answer that wins the vote, or None when every answer is null.

    Answers are grouped by `vote_groups` (the task's own equivalence, or its canonical `key`). Null
    answers never win. A tie between groups goes to the group holding the most recent answer, and
    the returned index is that group's most recent member.
    """
    groups = vote_groups(answers, same, key)
    if not groups:
        return None
    best = max(groups, key=lambda g: (len(g), g[-1]))
    return best[-1]


def majority_correct(turns: Sequence[Turn], same: SameAnswer, key: AnswerKey | None = None) -> bool:
    """Whether the majority answer among `turns` is correct (all-null counts as wrong)."""
    winner = majority_vote([t.pred for t in turns], same, key)
    return winner is not None and turns[winner].correct


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def sequential_metrics(episodes: Sequence[Episode], same: SameAnswer, key: AnswerKey | None = None) -> dict[str, float | int | None]:
    """acc@tk, p1@tk, m1@tk for k = 1..K and per-turn transitions, over sequential episodes.

    An episode without any turn (a collection whose every candidate was junk) is no attempt: it is
    left out of every value and counted in `episodes_without_turns`.
    """
    empty = sum(1 for e in episodes if not e.turns)
    episodes = [e for e in episodes if e.turns]
    if not episodes:
        return {"num_problems": 0, **({"episodes_without_turns": empty} if empty else {})}
    max_turns = max(len(e.turns) for e in episodes)
    n = len(episodes)
    out: dict[str, float | int | None] = {"num_problems": n, "turns": max_turns}
    if empty:
        out["episodes_without_turns"] = empty
    for k in range(1, max_turns + 1):
        # An episode shorter than k (stopped early) keeps its last turn's state for later turns.
        prefix = [e.turns[:k] for e in episodes]
        out[f"acc@t{k}"] = pct(sum(t[-1].correct for t in prefix if t), n)
        out[f"p1@t{k}"] = pct(sum(any(x.correct for x in t) for t in prefix), n)
        out[f"m1@t{k}"] = pct(sum(majority_correct(t, same, key) for t in prefix if t), n)
        if k >= 2:
            pairs = [(e.turns[k - 2].correct, e.turns[k - 1].correct) for e in episodes if len(e.turns) >= k]
            out[f"wrong->right@t{k}"] = sum(1 for a, b in pairs if not a and b)
            out[f"right->wrong@t{k}"] = sum(1 for a, b in pairs if a and not b)
    out["no_answer_rate"] = pct(sum(t.pred is None for e in episodes for t in e.turns), sum(len(e.turns) for e in episodes))
    return out


def parallel_metrics(episodes: Sequence[Episode], same: SameAnswer, key: AnswerKey | None = None) -> dict[str, Any]:
    """acc@t1, mk@t1 and pass@k over parallel episodes (one-turn samples grouped by problem id), each
    problem counted with its own samples (see the module docstring for uneven counts)."""
    by_problem: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_problem[e.id].append(e)
    if not by_problem:
        return {"num_problems": 0}
    samples = {pid: [e.turns[0] for e in sorted(eps, key=lambda e: e.sample) if e.turns] for pid, eps in by_problem.items()}
    counts = sorted(len(s) for s in samples.values())
    present = [s for s in samples.values() if s]  # problems with at least one sample
    out: dict[str, Any] = {"num_problems": len(samples), "samples": min((len(s) for s in present), default=0)}
    largest = counts[-1]
    uneven = counts[0] != largest
    if uneven:
        out["samples_max"] = largest
        out["sample_counts"] = {str(n): counts.count(n) for n in sorted(set(counts))}
        out["problems_at_k"] = {str(k): sum(len(s) >= k for s in present) for k in range(1, largest + 1)}
    if len(present) < len(samples):
        out["problems_without_samples"] = len(samples) - len(present)
    if not present:
        return out
    out["acc@t1"] = round(100.0 * sum(sum(t.correct for t in s) / len(s) for s in present) / len(present), 2)
    for k in range(1, largest + 1):
        counted = [s for s in present if len(s) >= k]
        out[f"m{k}@t1"] = pct(sum(majority_correct(s[:k], same, key) for s in counted), len(counted))
        out[f"pass@{k}"] = round(100.0 * sum(pass_at_k(len(s), sum(t.correct for t in s), k) for s in counted) / len(counted), 2)
    return out


def episode_metrics(episodes: Sequence[Episode], same: SameAnswer, key: AnswerKey | None = None) -> dict[str, Any]:
    """Metrics for a file of one mode: sequential, parallel, or collection episodes (treated as sequential)."""
    modes = {e.mode for e in episodes}
    if len(modes) > 1:
        raise ValueError(f"episodes mix modes {sorted(modes)}; compute metrics per mode")
    if modes == {"parallel"}:
        return {"mode": "parallel", **parallel_metrics(episodes, same, key)}
    return {"mode": next(iter(modes), "sequential"), **sequential_metrics(episodes, same, key)}
