"""RISE data collection (spec section 2): on-policy rollouts whose wrong turns are followed by an improver.

For each problem: turn 1 comes from the learner. While the chosen action is wrong and turns remain,
the task's retry message is appended and the next action is the best of N candidates from the turn's
improver, conditioned on the whole history: the learner itself (self-distillation) or an expert
(any backend). A per-turn schedule of (generator, N) covers both. The episode stops at the first
correct action. Degenerate candidates are dropped before choosing.

Episodes are appended to the output file as they finish; a killed collection resumes with finished
problems skipped, so nothing is lost or duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from riselm.generation.base import Completion, Generator, SamplingParams
from riselm.jsonl import JsonlAppender, drop_torn_tail
from riselm.progress import progress_bar
from riselm.rollout.degenerate import is_degenerate
from riselm.rollout.episode import Episode, Turn
from riselm.rollout.scoring import score_responses
from riselm.tasks.base import Problem, Score, Task


@dataclass(frozen=True)
class ImproverStep:
    generator: Generator  # who proposes the action at this turn
    n: int = 1  # candidates sampled; the best by reward becomes the action (first on ties)
    source: str | None = None  # the name recorded on turns (defaults to the generator's name)


@dataclass(frozen=True)
class CollectSettings:
    max_turns: int = 5  # the most actions per episode
    temperature: float = 1.0  # the paper samples turn 1 and improvements at 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    chunk_size: int = 256  # problems rolled out (and saved) together
    window: int | None = None  # context window in attempts (None: the whole history)


def step_for_turn(schedule: Sequence[ImproverStep], turn: int) -> ImproverStep:
    """The schedule entry of a 0-based turn; the last entry serves every later turn."""
    return schedule[min(turn, len(schedule) - 1)]


def choose_best(candidates: Sequence[Completion], scores: Sequence[Score]) -> int | None:
    """Index of the highest-reward non-degenerate candidate (first on ties), or None if all are degenerate."""
    best = None
    for i, (completion, score) in enumerate(zip(candidates, scores)):
        if is_degenerate(completion.text):
            continue
        if best is None or score.reward > scores[best].reward:
            best = i
    return best


def collect(
    task: Task,
    schedule: Sequence[ImproverStep],
    problems: Sequence[Problem],
    settings: CollectSettings,
    out_path: str | Path,
    show_progress: bool = True,
) -> list[Episode]:
    """Roll out every problem not already in `out_path`; returns all episodes of the file."""
    from riselm.evaluation.runner import load_episodes

    if not schedule:
        raise ValueError("the improver schedule is empty: give at least the learner for turn 1")
    out_path = Path(out_path)
    drop_torn_tail(out_path)
    done = {e.id for e in load_episodes(out_path)} if out_path.exists() else set()
    todo = [p for p in problems if p.id not in done]
    with JsonlAppender(out_path) as sink, progress_bar(len(todo), "collect", show_progress) as bar:
        for start in range(0, len(todo), settings.chunk_size):
            chunk = todo[start : start + settings.chunk_size]
            for episode in _rollout_chunk(task, schedule, chunk, settings, chunk_seed=settings.seed + start):
                sink.write(episode.to_dict())
            bar.update(len(chunk))
    return load_episodes(out_path)


def _rollout_chunk(
    task: Task, schedule: Sequence[ImproverStep], problems: Sequence[Problem], settings: CollectSettings, chunk_seed: int
) -> list[Episode]:
    episodes = [Episode(id=p.id, task=task.name, mode="collect", prompt=task.prompt(p), answer=p.answer) for p in problems]
    active = list(range(len(problems)))  # episodes still wrong with turns left
    for turn in range(settings.max_turns):
        if not active:
            break
        step = step_for_turn(schedule, turn)
        params = SamplingParams(
            n=step.n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            seed=chunk_seed * 100 + turn,
        )
        candidates = step.generator.generate([episodes[i].messages(window=settings.window) for i in active], params)
        flat_problems = [problems[i] for i, cands in zip(active, candidates) for _ in cands]
        flat_scores = score_responses(task, flat_problems, [c.text for cands in candidates for c in cands])
        still_active = []
        offset = 0
        for i, cands in zip(active, candidates):
            scores = flat_scores[offset : offset + len(cands)]
            offset += len(cands)
            best = choose_best(cands, scores)
            if best is None:
                continue  # every candidate was junk: the episode ends here
            chosen, score = cands[best], scores[best]
            last_turn = score.correct or turn + 1 == settings.max_turns
            episodes[i].turns.append(
                Turn(
                    response=chosen.text,
                    pred=score.pred,
                    reward=score.reward,
                    feedback=None if last_turn else task.retry_message(problems[i], score),
                    source=step.source or getattr(step.generator, "name", None),
                    num_candidates=len(cands),
                    num_tokens=chosen.num_tokens,
                    truncated=chosen.finish_reason == "length",
                )
            )
            if not last_turn:
                still_active.append(i)
        active = still_active
    for e in episodes:  # an episode cut short by junk candidates ends after its last kept action
        if e.turns:
            e.turns[-1].feedback = None
    return episodes  # empty ones too, so that a resumed collection does not redo them
