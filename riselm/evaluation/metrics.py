"""Multi-turn metrics of RISE (spec section 5), computed from episodes.

Sequential episodes (one per problem, K turns):
  acc@tk  accuracy of turn k alone
  p1@tk   solved by any of turns 1..k (an oracle says when to stop)
  m1@tk   the majority answer over turns 1..k is correct (no oracle)
  wrong->right@tk / right->wrong@tk   how many problems changed correctness from turn k-1 to turn k
Parallel episodes (k one-turn samples per problem, sharing the problem's id):
  mk@t1   the majority answer over the first k samples is correct
  pass@k  unbiased estimate of "any of k samples correct" from all n samples (Chen et al., 2021)
All values are percentages (0-100), counts are integers.
"""

from __future__ import annotations

from collections import defaultdict
from math import comb
from typing import Callable, Sequence

from riselm.rollout.episode import Episode, Turn

SameAnswer = Callable[[str, str], bool]


def majority_vote(answers: Sequence[str | None], same: SameAnswer) -> int | None:
    """Index of the answer that wins the vote, or None when every answer is null.

    Answers are grouped by `same` (the task's own equivalence). Null answers never win. A tie between
    groups goes to the group holding the most recent answer, and the returned index is that group's
    most recent member.
    """
    groups: list[list[int]] = []  # each group: indices of equivalent answers, in order
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if same(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=lambda g: (len(g), g[-1]))
    return best[-1]


def majority_correct(turns: Sequence[Turn], same: SameAnswer) -> bool:
    """Whether the majority answer among `turns` is correct (all-null counts as wrong)."""
    winner = majority_vote([t.pred for t in turns], same)
    return winner is not None and turns[winner].correct


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _pct(hits: int, total: int) -> float:
    return round(100.0 * hits / total, 2) if total else 0.0


def sequential_metrics(episodes: Sequence[Episode], same: SameAnswer) -> dict[str, float | int]:
    """acc@tk, p1@tk, m1@tk for k = 1..K and per-turn transitions, over sequential episodes."""
    if not episodes:
        return {"num_problems": 0}
    max_turns = max(len(e.turns) for e in episodes)
    n = len(episodes)
    out: dict[str, float | int] = {"num_problems": n, "turns": max_turns}
    for k in range(1, max_turns + 1):
        # An episode shorter than k (stopped early) keeps its last turn's state for later turns.
        prefix = [e.turns[:k] for e in episodes]
        out[f"acc@t{k}"] = _pct(sum(t[-1].correct for t in prefix if t), n)
        out[f"p1@t{k}"] = _pct(sum(any(x.correct for x in t) for t in prefix), n)
        out[f"m1@t{k}"] = _pct(sum(majority_correct(t, same) for t in prefix if t), n)
        if k >= 2:
            pairs = [(e.turns[k - 2].correct, e.turns[k - 1].correct) for e in episodes if len(e.turns) >= k]
            out[f"wrong->right@t{k}"] = sum(1 for a, b in pairs if not a and b)
            out[f"right->wrong@t{k}"] = sum(1 for a, b in pairs if a and not b)
    out["no_answer_rate"] = _pct(sum(t.pred is None for e in episodes for t in e.turns), sum(len(e.turns) for e in episodes))
    return out


def parallel_metrics(episodes: Sequence[Episode], same: SameAnswer) -> dict[str, float | int]:
    """mk@t1 and pass@k for k = 1..n over parallel episodes (one-turn samples grouped by problem id)."""
    by_problem: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_problem[e.id].append(e)
    if not by_problem:
        return {"num_problems": 0}
    samples = {pid: [e.turns[0] for e in sorted(eps, key=lambda e: e.sample) if e.turns] for pid, eps in by_problem.items()}
    n = min(len(s) for s in samples.values())
    out: dict[str, float | int] = {"num_problems": len(samples), "samples": n}
    out["acc@t1"] = round(100.0 * sum(sum(t.correct for t in s[:n]) / n for s in samples.values()) / len(samples), 2)
    for k in range(1, n + 1):
        out[f"m{k}@t1"] = _pct(sum(majority_correct(s[:k], same) for s in samples.values()), len(samples))
        out[f"pass@{k}"] = round(
            100.0 * sum(pass_at_k(n, sum(t.correct for t in s[:n]), k) for s in samples.values()) / len(samples), 2
        )
    return out


def episode_metrics(episodes: Sequence[Episode], same: SameAnswer) -> dict[str, float | int]:
    """Metrics for a file of one mode: sequential, parallel, or collection episodes (treated as sequential)."""
    modes = {e.mode for e in episodes}
    if len(modes) > 1:
        raise ValueError(f"episodes mix modes {sorted(modes)}; compute metrics per mode")
    if modes == {"parallel"}:
        return {"mode": "parallel", **parallel_metrics(episodes, same)}
    return {"mode": next(iter(modes), "sequential"), **sequential_metrics(episodes, same)}
