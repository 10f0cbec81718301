"""Boost data (spec §4): supervised samples on in-domain gold solutions that end in \\boxed{}.

A model boosted on single-turn data has never seen a second turn, and its answers after "try again"
are garbage (found in a prototype). So a boost conversation may also hold earlier *wrong* attempts,
each followed by the task's retry message, before the gold solution: `with_history_turns=k` makes,
for every problem, the conversations with 0, 1, …, k wrong attempts in front of the solution.

Wrong attempts come from a function `wrong_attempt(problem, rng) -> str | None`: the default
corrupts the numbers of the gold solution's final answer; `wrong_attempts_from_episodes` draws the
model's own wrong responses from collected episodes. Every attempt is checked with the task's own
scorer and used only when it is wrong. Only the gold solution is trained on.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence

from riselm.generation.base import Conversation
from riselm.rollout.episode import Episode
from riselm.tasks.base import Problem, Task
from riselm.training.samples import TrainingSample

logger = logging.getLogger(__name__)

WrongAttempt = Callable[[Problem, random.Random], "str | None"]  # None: no wrong attempt for this problem

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DRAWS_PER_ATTEMPT = 8  # draws of wrong_attempt before giving up on one history turn


def boost_samples(
    task: Task,
    problems: Sequence[Problem],
    with_history_turns: int = 0,
    wrong_attempt: WrongAttempt | None = None,
    seed: int = 0,
    system: str | None = None,
    every_depth: bool = True,
) -> list[TrainingSample]:
    """Weight-1 samples that train on each problem's gold solution, after 0..k wrong attempts.

    Problems without a solution are skipped. The k wrong attempts of a problem are drawn once
    (distinct, each scored wrong by `task`), and the conversation with j attempts uses the first j,
    as turns of one episode would. Fewer than k turns are used when no more wrong attempts are found.
    `every_depth=False` keeps one conversation per problem, with a number of attempts drawn uniformly
    from 0..k: the same coverage of later turns for about 2/(k+2) of the tokens.
    """
    if with_history_turns < 0:
        raise ValueError(f"with_history_turns must be >= 0, got {with_history_turns}")
    wrong_attempt = wrong_attempt or corrupt_solution
    with_solution = [p for p in problems if p.solution]
    if not with_solution:
        raise ValueError(f"task {task.name!r}: none of the {len(problems)} problems has a gold solution to boost on")
    if len(with_solution) < len(problems):
        skipped = len(problems) - len(with_solution)
        logger.warning("boost: %d of %d problems have no gold solution and are skipped", skipped, len(problems))

    samples: list[TrainingSample] = []
    short = 0
    for problem in with_solution:
        assert problem.solution is not None  # with_solution holds the problems that have one
        rng = random.Random(f"{seed}:{problem.id}")  # per problem, so the data do not depend on the order
        attempts = _wrong_attempts(task, problem, with_history_turns, wrong_attempt, rng)
        short += len(attempts) < with_history_turns
        depths = range(len(attempts) + 1) if every_depth else [rng.randint(0, len(attempts))]
        for j in depths:
            messages = _conversation(task, problem, attempts[:j], system)
            messages.append({"role": "assistant", "content": problem.solution})
            samples.append(TrainingSample(messages=messages, reward=1.0, weight=1.0, episode_id=problem.id, turn=j))
    if short:
        logger.warning("boost: %d problems got fewer than %d wrong attempts", short, with_history_turns)
    return samples


def _wrong_attempts(task: Task, problem: Problem, k: int, wrong_attempt: WrongAttempt, rng: random.Random) -> list[str]:
    attempts: list[str] = []
    for _ in range(k * _DRAWS_PER_ATTEMPT):
        if len(attempts) == k:
            break
        attempt = wrong_attempt(problem, rng)
        if attempt and attempt not in attempts and not task.score(problem, attempt).correct:
            attempts.append(attempt)
    return attempts


def _conversation(task: Task, problem: Problem, attempts: list[str], system: str | None) -> Conversation:
    messages: Conversation = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": task.prompt(problem)})
    for attempt in attempts:
        messages.append({"role": "assistant", "content": attempt})
        messages.append({"role": "user", "content": task.retry_message(problem, task.score(problem, attempt))})
    return messages


# ---- wrong attempts ---------------------------------------------------------------------------


def corrupt_solution(problem: Problem, rng: random.Random) -> str | None:
    """The gold solution with a wrong final answer (default `wrong_attempt`); None when it has no number to change."""
    return corrupt_numbers(problem.solution or "", rng)


def corrupt_numbers(solution: str, rng: random.Random) -> str | None:
    """Change every number inside the last \\boxed{...}, and the same answer where the working states it last.

    "… so she pays 18 dollars. \\boxed{18}" may become "… so she pays 21 dollars. \\boxed{21}": a
    plausible chain with a wrong result. None when there is no \\boxed{} holding a number.
    """
    span = last_boxed_span(solution)
    if span is None:
        return None
    start, end = span
    answer = solution[start:end]
    if not _NUMBER.search(answer):
        return None
    wrong = _NUMBER.sub(lambda m: _perturb(m.group(), rng), answer)
    working = solution[:start]
    # the working's last standalone mention of the answer, changed the same way
    mention = None
    for m in re.finditer(rf"(?<![\d.]){re.escape(answer)}(?![\d]|\.\d)", working[: working.rfind("\\boxed{")]):
        mention = m
    if mention is not None:
        working = working[: mention.start()] + wrong + working[mention.end() :]
    return working + wrong + solution[end:]


def _perturb(number: str, rng: random.Random) -> str:
    """A different non-negative number written like `number` (same decimal places)."""
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number)
    step = 10.0**-decimals
    spread = max(3, int(value * 0.2 / step)) if value else 3
    delta = rng.randint(1, spread) * step
    new = value - delta if value - delta >= 0 and rng.random() < 0.5 else value + delta
    return f"{new:.{decimals}f}"


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last \\boxed{...}, matching nested braces; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return i, j
    return None


def wrong_attempts_from_episodes(episodes: Iterable[Episode], fallback: WrongAttempt | None = corrupt_solution) -> WrongAttempt:
    """A `wrong_attempt` drawing the model's own wrong responses (reward < 1) recorded for each problem.

    Problems with no recorded wrong response use `fallback` (None: no attempt).
    """
    wrong: dict[str, list[str]] = {}
    for episode in episodes:
        for turn in episode.turns:
            if not turn.correct and turn.response.strip():
                wrong.setdefault(episode.id, []).append(turn.response)

    def draw(problem: Problem, rng: random.Random) -> str | None:
        responses = wrong.get(problem.id)
        if responses:
            return rng.choice(responses)
        return fallback(problem, rng) if fallback else None

    return draw
