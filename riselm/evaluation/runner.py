"""Multi-turn evaluation runs: sequential (K turns, retry after every turn) and parallel (k first turns).

Problems are processed in chunks; each chunk generates turn by turn for all of its problems in one
batched call, then appends its finished episodes to the episodes file. A killed run resumes from
that file: finished problems are skipped, nothing is duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from riselm.generation.base import Generator, SamplingParams
from riselm.jsonl import JsonlAppender, drop_torn_tail, read_jsonl
from riselm.rollout.episode import Episode, Turn
from riselm.rollout.scoring import score_responses
from riselm.tasks.base import Problem, Task
from riselm.progress import progress_bar


@dataclass(frozen=True)
class EvalSettings:
    turns: int = 5  # sequential turns K
    parallel_samples: int = 0  # k independent first-turn samples per problem (0: no parallel run)
    window: int | None = None  # sliding context window in attempts (None: the whole history)
    temperature: float = 1.0  # the paper samples at 1.0; 0 is greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    chunk_size: int = 256  # problems generated together (and saved together)
    system: str | None = None  # an optional system message


def load_episodes(path: str | Path) -> list[Episode]:
    return [Episode.from_dict(row) for row in read_jsonl(path, required=("id", "task", "mode", "turns"))]


def _done_keys(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    drop_torn_tail(path)  # a row torn by a kill is redone, not an error
    return {(e.id, e.sample) for e in load_episodes(path)}


def _chunks(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start // size, items[start : start + size]


def run_sequential(
    task: Task,
    generator: Generator,
    problems: Sequence[Problem],
    settings: EvalSettings,
    out_path: str | Path,
    show_progress: bool = True,
) -> list[Episode]:
    """K turns per problem; the task's retry message follows every turn, right or wrong."""
    out_path = Path(out_path)
    done = _done_keys(out_path)
    todo = [p for p in problems if (p.id, 0) not in done]
    params = SamplingParams(
        n=1, temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens
    )
    with JsonlAppender(out_path) as sink, progress_bar(len(todo) * settings.turns, "sequential", show_progress) as bar:
        for chunk_index, chunk in _chunks(todo, settings.chunk_size):
            episodes = [
                Episode(id=p.id, task=task.name, mode="sequential", prompt=task.prompt(p), system=settings.system, answer=p.answer)
                for p in chunk
            ]
            for turn in range(settings.turns):
                conversations = [e.messages(window=settings.window) for e in episodes]
                seed = settings.seed + 1000 * chunk_index + turn  # distinct per chunk and turn, reproducible
                completions = generator.generate(conversations, replace(params, seed=seed))
                responses = [c[0] for c in completions]
                scores = score_responses(task, chunk, [c.text for c in responses])
                for episode, problem, completion, score in zip(episodes, chunk, responses, scores):
                    episode.turns.append(
                        Turn(
                            response=completion.text,
                            pred=score.pred,
                            reward=score.reward,
                            feedback=task.retry_message(problem, score),
                            num_tokens=completion.num_tokens,
                            truncated=completion.finish_reason == "length",
                        )
                    )
                bar.update(len(chunk))
            for episode in episodes:
                episode.turns[-1].feedback = None  # nothing follows the last turn
                sink.write(episode.to_dict())
    return [e for e in load_episodes(out_path) if e.mode == "sequential"]


def run_parallel(
    task: Task,
    generator: Generator,
    problems: Sequence[Problem],
    settings: EvalSettings,
    out_path: str | Path,
    show_progress: bool = True,
) -> list[Episode]:
    """k independent first-turn samples per problem, one single-turn episode each."""
    out_path = Path(out_path)
    k = settings.parallel_samples
    done = _done_keys(out_path)
    todo = [p for p in problems if any((p.id, s) not in done for s in range(k))]
    params = SamplingParams(
        n=k, temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens
    )
    with JsonlAppender(out_path) as sink, progress_bar(len(todo), "parallel", show_progress) as bar:
        for chunk_index, chunk in _chunks(todo, settings.chunk_size):
            base = [
                Episode(id=p.id, task=task.name, mode="parallel", prompt=task.prompt(p), system=settings.system, answer=p.answer)
                for p in chunk
            ]
            completions = generator.generate([e.messages() for e in base], replace(params, seed=settings.seed + 7919 + chunk_index))
            flat = [(b, p, s, c) for b, p, cs in zip(base, chunk, completions) for s, c in enumerate(cs)]
            scores = score_responses(task, [p for _, p, _, _ in flat], [c.text for _, _, _, c in flat])
            for (b, _, sample, completion), score in zip(flat, scores):
                if (b.id, sample) in done:
                    continue
                turn = Turn(
                    response=completion.text,
                    pred=score.pred,
                    reward=score.reward,
                    num_tokens=completion.num_tokens,
                    truncated=completion.finish_reason == "length",
                )
                sink.write(replace(b, sample=sample, turns=[turn]).to_dict())
            bar.update(len(chunk))
    return [e for e in load_episodes(out_path) if e.mode == "parallel"]
