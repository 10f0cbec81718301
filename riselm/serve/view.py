"""`riselm view EPISODES.jsonl --out report.html`: any episodes file, turn by turn, as one HTML page.

Each episode shows its question, every turn with its extracted answer and whether it was right, which
turns agreed with the majority vote, and the vote (as m1@tK counts it: riselm.evaluation.metrics,
with the task's own answer equivalence; a task riselm does not know compares answers as exact
strings). Filters: wrong→right (some turn right right after a wrong one), right→wrong (the reverse),
unsolved (no turn right).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riselm.evaluation.metrics import majority_correct, majority_vote, vote_groups
from riselm.files import write_text_atomic
from riselm.jsonl import DataError
from riselm.rollout.episode import Episode, read_episodes


def episode_tags(episode: Episode) -> list[str]:
    """Which filters the episode passes: "wrong→right", "right→wrong", "unsolved" (the metrics' transitions)."""
    correct = [t.correct for t in episode.turns]
    pairs = list(zip(correct, correct[1:]))
    tags = []
    if any(not a and b for a, b in pairs):
        tags.append("wrong→right")
    if any(a and not b for a, b in pairs):
        tags.append("right→wrong")
    if not any(correct):
        tags.append("unsolved")
    return tags


def episode_view(episode: Episode, same, key) -> dict[str, Any]:
    """One episode as the page draws it (riselm.serve.page.RENDER_JS)."""
    answers = [t.pred for t in episode.turns]
    groups = vote_groups(answers, same, key)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    winner = majority_vote(answers, same, key)
    winning = group_of.get(winner) if winner is not None else None
    turns = [
        {
            "turn": i + 1,
            "text": t.response,
            "answer": t.pred,
            "correct": t.correct,
            "feedback": t.feedback,
            "tokens": t.num_tokens,
            "truncated": t.truncated,
            "group": group_of.get(i),
            "agrees": winning is not None and group_of.get(i) == winning,
        }
        for i, t in enumerate(episode.turns)
    ]
    vote = {
        "answer": answers[winner] if winner is not None else None,
        "turn": (winner + 1) if winner is not None else None,
        "votes": len(groups[winning]) if winning is not None else 0,
        "of": len(answers),
        "groups": [[i + 1 for i in members] for members in groups],
        "correct": majority_correct(episode.turns, same, key) if episode.turns else None,
    }
    title = f"{episode.id} · {episode.task} · {episode.mode}" + (f" · sample {episode.sample}" if episode.sample else "")
    return {
        "title": title,
        "question": episode.prompt if episode.prompt is not None else "(the file holds no prompt)",
        "turns": turns,
        "vote": vote,
        "gold": episode.answer,
        "tags": episode_tags(episode),
    }


def _equivalence(task_name: str):
    from riselm.tasks import get_task, task_names

    if task_name in task_names():
        task = get_task(task_name)
        return task.same_answer, task.answer_key
    return (lambda a, b: a.strip() == b.strip()), str.strip


def render_episodes(episodes: Sequence[Episode], title: str = "riselm episodes") -> str:
    """The HTML page of `episodes` (filters included)."""
    from riselm.serve.page import report_page

    equivalences: dict[str, tuple] = {}
    views = []
    for episode in episodes:
        if episode.task not in equivalences:
            equivalences[episode.task] = _equivalence(episode.task)
        views.append(episode_view(episode, *equivalences[episode.task]))
    counts = Counter(tag for view in views for tag in view["tags"])
    counts["all"] = len(views)
    return report_page(title, views, dict(counts))


def view_file(path: str | Path, out: str | Path) -> dict[str, int]:
    """Write the page of an episodes file to `out`; returns how many episodes each filter shows."""
    episodes = read_episodes(path)
    if not episodes:
        raise DataError(f"{path}: no episodes in it; expected one episode (a JSON object with 'turns') a line")
    page = render_episodes(episodes, title=f"riselm view: {Path(path).name}")
    write_text_atomic(out, page)
    counts = Counter(tag for e in episodes for tag in episode_tags(e))
    return {"all": len(episodes), **{k: counts.get(k, 0) for k in ("wrong→right", "right→wrong", "unsolved")}}
