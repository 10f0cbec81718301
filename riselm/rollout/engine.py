"""The one multi-turn rollout loop. Collection, evaluation and online RL are calls of `rollout`.

An episode is one multi-turn attempt at one problem: the task's prompt, then turn after turn an
action (one whole response) from the turn's improver, scored by the task, followed by the task's
retry message while the episode goes on. What differs between the callers is only arguments:

    RISE collection       1 episode a problem, up to K turns, stop at the first correct action,
                          the learner at turn 1 and best-of-N (learner or expert) after a wrong turn
    sequential evaluation 1 episode a problem, always K turns (the retry follows right answers too)
    parallel evaluation   k episodes a problem, 1 turn each (mk@t1, pass@k)
    online RL             G episodes a problem, K turns, either stopping rule

Seeds (`conversation_seed`): the conversation of episode `sample` of a problem at turn `turn` is
seeded from (run seed, problem id, sample, turn) and, for collection, the stage (`iter1`, `iter2`, …,
so that each iteration draws new samples; evaluation leaves the stage out, so every stage is
evaluated with the same noise on the same problems), and a backend draws its n candidates from streams
fixed by that seed and the candidate's index. No seed depends on a position in a batch or a chunk,
so a resumed, re-chunked or sharded run generates the same episodes as one uninterrupted run (up
to floating-point differences between batch shapes). Sample 0 of a parallel evaluation therefore
shares its seed with turn 1 of the sequential one: given the same model they are the same response,
so evaluation copies it instead of generating it twice (riselm.evaluation.evaluate).

Episodes are appended to `out_path` as each chunk of problems finishes; a killed rollout resumes
with finished (problem, sample) pairs skipped, so nothing is lost or duplicated.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from riselm.generation.base import Completion, Generator
from riselm.jsonl import JsonlAppender
from riselm.progress import progress_bar, timed
from riselm.rollout.degenerate import is_degenerate
from riselm.rollout.episode import Candidate, Episode, Turn, finished_keys, read_episodes
from riselm.settings import REFERENCE, SamplingSettings
from riselm.tasks.base import Problem, Score, Task


@dataclass(frozen=True)
class Step:
    """Who proposes the action at one turn."""

    generator: Generator | None  # the model sampled; None: the task's reference solution is the action
    n: int = 1  # candidates sampled; the best by reward becomes the action (first on ties)
    source: str | None = None  # the name recorded on turns (defaults to the generator's name)
    # what the candidates are sampled from: the episode so far ("history"), or the question alone
    # ("fresh": a new attempt from scratch, placed after the history as the turn's action)
    context: Literal["history", "fresh"] = "history"

    @property
    def name(self) -> str:
        return self.source or (self.generator.name if self.generator is not None else REFERENCE)


@dataclass(frozen=True)
class RolloutSpec:
    """What distinguishes one kind of rollout from another (see the module docstring)."""

    mode: str  # recorded on every episode: "collect", "sequential", "parallel", "online"
    turns: int  # the most actions per episode
    stop_when_correct: bool  # end an episode at its first correct action (else always run `turns`)
    episodes_per_problem: int = 1  # independent episodes per problem
    window: int | None = None  # context window: the question plus the last window-1 attempts (None: all)
    sampling: SamplingSettings = SamplingSettings()
    seed: int = 0  # the run seed
    chunk_size: int = 256  # problems rolled out (and saved) together
    drop_degenerate: bool = False  # never choose a junk candidate; an episode whose candidates are all junk ends
    system: str | None = None  # an optional system message before the prompt
    # keep every candidate with its token ids and the sampler's log-probs on the turns, in memory (online RL)
    keep_candidates: bool = False
    feedback: Literal["retry", "self_refine"] = "retry"  # what follows a turn (see `self_refine`)
    stage: str = ""  # folded into every conversation seed (collection: the iteration), "" for none
    # never take an action worse than the episode's last one (RISE collection): the episode ends instead
    no_degrade: bool = False
    # with stop_when_correct: turns still taken after the first correct one (collection that shows
    # right -> retry -> right again); 0 stops at the first correct action
    turns_after_correct: int = 0

    def __post_init__(self):
        if self.turns < 1 or self.episodes_per_problem < 1 or self.chunk_size < 1:
            raise ValueError(f"turns, episodes_per_problem and chunk_size must be at least 1: {self}")


def conversation_seed(seed: int, problem_id: str, sample: int, turn: int, stage: str = "") -> int:
    """The seed of one conversation: a hash of (run seed, problem id, episode sample, 0-based turn[, stage]), below 2**31."""
    key = f"{seed}\x1f{problem_id}\x1f{sample}\x1f{turn}" + (f"\x1f{stage}" if stage else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


def step_for_turn(schedule: Sequence[Step], turn: int) -> Step:
    """The schedule entry of a 0-based turn; the last entry serves every later turn."""
    return schedule[min(turn, len(schedule) - 1)]


def choose_best(candidates: Sequence[Completion], scores: Sequence[Score], drop_degenerate: bool) -> int | None:
    """Index of the highest-reward candidate (first on ties), skipping junk when asked; None if none is left."""
    best = None
    for i, (completion, score) in enumerate(zip(candidates, scores)):
        if drop_degenerate and is_degenerate(completion.text):
            continue
        if best is None or score.reward > scores[best].reward:
            best = i
    return best


def rollout(
    task: Task,
    problems: Sequence[Problem],
    schedule: Sequence[Step],
    spec: RolloutSpec,
    out_path: str | Path | None = None,
    show_progress: bool = True,
    timings: dict[str, float] | None = None,
    skip: set[tuple[str, int]] | frozenset = frozenset(),
) -> list[Episode]:
    """Roll out `spec.episodes_per_problem` episodes of every problem; returns them, problem by problem.

    With `out_path`, episodes already in the file are kept (not redone) and new ones are appended
    chunk by chunk; the result then holds the file's episodes of `problems`. `timings`, when given,
    gets the seconds spent generating ("generate") and scoring ("score") added to it. Episodes whose
    (id, sample) is in `skip` are not rolled out (done elsewhere, riselm.rollout.shards).
    """
    if not schedule:
        raise ValueError("the improver schedule is empty: give at least the learner for turn 1")
    done = (finished_keys(out_path) if out_path is not None else set()) | set(skip)
    todo = [[(p, s) for s in range(spec.episodes_per_problem) if (p.id, s) not in done] for p in problems]
    todo = [pairs for pairs in todo if pairs]
    made: list[Episode] = []
    sink = JsonlAppender(out_path) if out_path is not None else None
    try:
        with progress_bar(sum(map(len, todo)), spec.mode, show_progress) as bar:
            for start in range(0, len(todo), spec.chunk_size):
                chunk = [pair for pairs in todo[start : start + spec.chunk_size] for pair in pairs]
                episodes = _rollout_chunk(task, schedule, spec, chunk, timings if timings is not None else {})
                for episode in episodes:
                    if sink is not None:
                        sink.write(episode.to_dict())
                made.extend(episodes)
                bar.update(len(chunk))
    finally:
        if sink is not None:
            sink.close()
    if out_path is None:
        return made
    wanted = {(p.id, s) for p in problems for s in range(spec.episodes_per_problem)}
    order = {p.id: i for i, p in enumerate(problems)}
    kept = [e for e in read_episodes(out_path) if e.key in wanted]
    return sorted(kept, key=lambda e: (order[e.id], e.sample))


def _rollout_chunk(
    task: Task, schedule: Sequence[Step], spec: RolloutSpec, chunk: Sequence[tuple[Problem, int]], timings: dict[str, float]
) -> list[Episode]:
    sampling = spec.sampling.model_dump()
    episodes = [
        Episode(
            id=p.id,
            task=task.name,
            mode=spec.mode,
            prompt=task.prompt(p),
            sample=s,
            system=spec.system,
            answer=p.answer,
            window=spec.window,
            sampling=sampling,
            seed=spec.seed,
        )
        for p, s in chunk
    ]
    active = list(range(len(chunk)))  # episodes still going
    for turn in range(spec.turns):
        if not active:
            break
        step = step_for_turn(schedule, turn)
        candidates = _propose(step, spec, [episodes[i] for i in active], [chunk[i][0] for i in active], turn, timings)
        flat_problems = [chunk[i][0] for i, cands in zip(active, candidates) for _ in cands]
        with timed(timings, "score"):
            flat_scores = task.score_many(flat_problems, [c.text for cands in candidates for c in cands])
        still_active, offset = [], 0
        for i, cands in zip(active, candidates):
            scores = flat_scores[offset : offset + len(cands)]
            offset += len(cands)
            best = choose_best(cands, scores, spec.drop_degenerate)
            if best is None:
                continue  # every candidate was junk: the episode ends after its last kept action
            if spec.no_degrade and episodes[i].turns and scores[best].reward < episodes[i].turns[-1].reward:
                continue  # every candidate is worse than the last action: the episode ends there
            chosen, score = cands[best], scores[best]
            last = turn + 1 == spec.turns or (spec.stop_when_correct and _stops(episodes[i], score, spec.turns_after_correct))
            episodes[i].turns.append(
                Turn(
                    response=chosen.text,
                    pred=score.pred,
                    reward=score.reward,
                    feedback=None if last else task.retry_message(chunk[i][0], score),
                    source=step.name,
                    context="fresh" if _fresh(step, episodes[i]) else None,
                    num_candidates=len(cands),
                    num_tokens=chosen.num_tokens,
                    truncated=chosen.finish_reason == "length",
                    prompt_ids=chosen.prompt_ids if spec.keep_candidates else None,
                    candidates=_candidates(cands, scores) if spec.keep_candidates else None,
                )
            )
            if not last:
                still_active.append(i)
        if spec.feedback == "self_refine" and still_active:
            assert step.generator is not None  # evaluation samples the model at every turn
            self_refine(task, step.generator, spec, [episodes[i] for i in still_active], [chunk[i][0] for i in still_active], turn, timings)
        active = still_active
    for e in episodes:  # an episode cut short by junk candidates ends after its last kept action
        if e.turns:
            e.turns[-1].feedback = None
    return episodes  # empty ones too, so that a resumed rollout does not redo them


def _propose(
    step: Step, spec: RolloutSpec, episodes: Sequence[Episode], problems: Sequence[Problem], turn: int, timings: dict[str, float]
) -> list[list[Completion]]:
    """The candidates of one turn for each episode: sampled from the step's model, or the reference solution."""
    if step.generator is None:
        return [[reference_completion(problem)] if problem.solution else [] for problem in problems]
    conversations = [e.messages(upto=0) if _fresh(step, e) else e.messages(window=spec.window) for e in episodes]
    seeds = [conversation_seed(spec.seed, e.id, e.sample, turn, spec.stage) for e in episodes]
    params = spec.sampling.params(step.n)
    if spec.keep_candidates:
        params = dataclasses.replace(params, logprobs=True)
    with timed(timings, "generate"):
        return step.generator.generate(conversations, params, seeds=seeds)


def _fresh(step: Step, episode: Episode) -> bool:
    """Whether this turn's candidates come from the question alone: a `fresh` step after a wrong turn (after
    a right one, with `turns_after_correct`, they see the history, which shows keeping the right answer)."""
    return step.context == "fresh" and bool(episode.turns) and not episode.turns[-1].correct


def reference_completion(problem: Problem) -> Completion:
    """The task's gold step-by-step solution as an action (the `reference` improver: nothing is generated)."""
    assert problem.solution is not None
    return Completion(text=problem.solution, num_tokens=0, finish_reason="stop")


def _stops(episode: Episode, score: Score, turns_after_correct: int) -> bool:
    """Whether a correct-stopping episode ends with this action: `turns_after_correct` turns after its first correct one."""
    first = next((t for t, turn in enumerate(episode.turns) if turn.correct), None)
    if first is None:  # this action is the first correct one, or not correct
        return score.correct and turns_after_correct == 0
    return len(episode.turns) - first >= turns_after_correct


# Self-Refine (Madaan et al., 2023) as an evaluation mode beside the retry message: after each answer
# the model reviews it, then answers again using its own review. Nothing says whether it was right.
CRITIQUE_REQUEST = "Review your answer above step by step and point out any mistakes in it. Do not write a new answer yet."
# followed by the task's own first message, so the answer format is the task's (\boxed{} or a code block)
REFINE_REQUEST = "Using your review, answer the question again.\n\n{prompt}"


def self_refine(
    task: Task,
    generator: Generator,
    spec: RolloutSpec,
    episodes: Sequence[Episode],
    problems: Sequence[Problem],
    turn: int,
    timings: dict[str, float],
) -> None:
    """Replace the retry message after each episode's last turn by the model's own review and a refine request."""
    for episode in episodes:
        episode.turns[-1].feedback = None  # the review request follows the answer directly
    conversations = [e.messages(window=spec.window) + [{"role": "user", "content": CRITIQUE_REQUEST}] for e in episodes]
    seeds = [conversation_seed(spec.seed, f"{e.id}\x1fcritique", e.sample, turn, spec.stage) for e in episodes]
    with timed(timings, "generate"):
        reviews = generator.generate(conversations, spec.sampling.params(1), seeds=seeds)
    for episode, problem, (review, *_) in zip(episodes, problems, reviews):
        last = episode.turns[-1]
        last.critique_request, last.critique = CRITIQUE_REQUEST, review.text
        last.feedback = REFINE_REQUEST.format(prompt=task.prompt(problem))


def _candidates(completions: Sequence[Completion], scores: Sequence[Score]) -> list[Candidate]:
    return [Candidate(c.text, s.reward, s.pred, c.token_ids, c.logprobs) for c, s in zip(completions, scores)]
