"""Requests to turns: a queue that gathers concurrent requests into batches, each batch one `rollout`.

The HTTP handlers put a `Job` on an asyncio queue and wait for its future. On a backend that holds the
model in this process (hf, vllm) one worker takes the first waiting job, gathers those that arrive
within `batch_wait_ms` (up to `max_concurrency`), and runs them as one call of riselm's rollout engine
in a worker thread: every turn of every request of the batch is one batched `generate`. Requests
arriving meanwhile wait for the next batch. On the openai backend (a proxy: the server behind it
batches) `max_concurrency` workers each run one request's rollout at a time.

The turns come from `riselm.rollout.engine.rollout` and the vote from
`riselm.evaluation.metrics.majority_vote` / `vote_groups`, exactly as m1@tK counts it: there is no
other loop and no other vote here. A conversation that already holds assistant turns is continued
with one plain completion (one `generate`), so a riselm server can serve another one's turns (proxy).

A batch whose backend call fails is run again request by request, so that only the requests that fail
on their own fail (an over-long conversation, an out-of-memory batch); their futures get the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from riselm.evaluation.metrics import majority_vote, vote_groups
from riselm.generation.base import Generator
from riselm.rollout.engine import RolloutSpec, Step, conversation_seed, rollout
from riselm.serve.task import ServedTask, served_problem
from riselm.settings import SamplingSettings
from riselm.tasks.base import Task

logger = logging.getLogger("riselm.serve")


@dataclass
class Job:
    """One request on its way through the queue."""

    messages: list[dict[str, str]]  # the conversation without system messages; ends with the user's
    system: str | None
    turns: int
    stable: int
    window: int | None
    sampling: SamplingSettings
    seed: int | None = None  # the request's seed: the same seed and question give the same turns
    on_turn: Callable[[dict[str, Any]], None] | None = None  # called (in the worker thread) as each turn is scored
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    given_up: bool = False  # timed out or the client left: leave the batch at the next turn
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    shown: int = 0  # turns already passed to on_turn (a batch run again does not repeat them)
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def question(self) -> str | None:
        """The question when the conversation is one user message (RISE); None for a continuation."""
        return self.messages[0]["content"] if len(self.messages) == 1 else None

    @property
    def problem_id(self) -> str:
        return f"seed-{self.seed}" if self.seed is not None else self.key

    def group(self) -> tuple:
        kind = "turns" if self.question is not None else "continue"
        return (kind, self.system, self.window, self.sampling)


class Runner:
    """The queue and its workers (module docstring). `counter(conversation)` counts a prompt's tokens, or None."""

    def __init__(
        self,
        generator: Generator,
        task: Task,
        *,
        batched: bool,
        max_concurrency: int,
        batch_wait_ms: float,
        counter: Callable[[list[dict[str, str]]], int | None] | None = None,
        observe_batch: Callable[[int], None] | None = None,
    ):
        self.generator, self.task = generator, task
        self.batched, self.max_concurrency, self.batch_wait_s = batched, max_concurrency, batch_wait_ms / 1000
        self.counter = counter or (lambda conversation: None)
        self.observe_batch = observe_batch or (lambda size: None)
        self.executor = ThreadPoolExecutor(max_workers=1 if batched else max_concurrency, thread_name_prefix="riselm-serve")
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.workers: list[asyncio.Task] = []
        self.running = 0  # requests in a batch being generated

    async def start(self) -> None:
        count = 1 if self.batched else self.max_concurrency
        self.workers = [asyncio.create_task(self._work()) for _ in range(count)]

    async def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        self.executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: Job) -> asyncio.Future:
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        self.queue.put_nowait(job)
        return job.future

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            if self.batched:
                deadline = loop.time() + self.batch_wait_s
                while len(batch) < self.max_concurrency:
                    if not self.queue.empty():
                        batch.append(self.queue.get_nowait())
                        continue
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), left))
                    except asyncio.TimeoutError:
                        break
            batch = [job for job in batch if not job.given_up]  # timed out while waiting: never started
            if not batch:
                continue
            self.observe_batch(len(batch))
            self.running += len(batch)
            try:
                await loop.run_in_executor(self.executor, self.run_batch, batch)
            finally:
                self.running -= len(batch)

    # ---- in the worker thread --------------------------------------------------------------------
    def run_batch(self, batch: list[Job]) -> None:
        """Generate every job of the batch and settle its future (a result dict or the exception)."""
        try:
            results = self._generate(batch)
        except Exception as error:  # noqa: BLE001 - a failed backend call fails requests, never the server
            if len(batch) > 1:
                logger.warning("a batch of %d requests failed (%s); running them one by one", len(batch), type(error).__name__)
                for job in batch:
                    self.run_batch([job])
                return
            logger.warning("a request failed in the backend: %s: %s", type(error).__name__, error)
            _settle(batch[0], error=error)
            return
        for job in batch:
            _settle(job, result=results[job.key])

    def _generate(self, batch: list[Job]) -> dict[str, dict[str, Any]]:
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.group(), []).append(job)
        results: dict[str, dict[str, Any]] = {}
        for (kind, system, window, sampling), jobs in groups.items():
            runner = self._rollout if kind == "turns" else self._continue
            results.update(runner(jobs, system, window, sampling))
        return results

    def _rollout(self, jobs: list[Job], system, window, sampling) -> dict[str, dict[str, Any]]:
        by_key = {job.key: job for job in jobs}

        def on_turn(key: str, turn: int, text: str, answer: str | None) -> None:
            job = by_key[key]
            if job.on_turn is not None and turn >= job.shown:
                job.shown = turn + 1
                job.on_turn({"turn": turn + 1, "text": text, "answer": answer})

        served = ServedTask(self.task, on_turn=on_turn, given_up=lambda key: by_key[key].given_up)
        problems = [served_problem(job.question or "", job.key, job.problem_id, job.turns, job.stable) for job in jobs]
        spec = RolloutSpec(
            mode="served",
            turns=max(job.turns for job in jobs),
            stop_when_correct=True,
            window=window,
            sampling=sampling,
            system=system,
            chunk_size=len(jobs),
        )
        episodes = rollout(served, problems, [Step(self.generator)], spec, show_progress=False)
        out = {}
        for job, episode in zip(jobs, episodes, strict=True):
            turns = [(t.response, t.pred, t.num_tokens, t.truncated) for t in episode.turns]
            prompts = [self.counter(episode.messages(upto=k, window=window)) for k in range(len(episode.turns))]
            reason = "given_up" if job.given_up else "stable" if len(episode.turns) < job.turns else "turns"
            out[job.key] = self.outcome(turns, prompts, reason)
        return out

    def _continue(self, jobs: list[Job], system, window, sampling) -> dict[str, dict[str, Any]]:
        conversations = [([{"role": "system", "content": system}] if system else []) + job.messages for job in jobs]
        seeds = [conversation_seed(0, job.problem_id, 0, 0) for job in jobs]
        completions = self.generator.generate(conversations, sampling.params(1), seeds=seeds)
        out = {}
        for job, conversation, (completion, *_) in zip(jobs, conversations, completions, strict=True):
            answer = self.task.extract_answer(completion.text)
            if job.on_turn is not None and job.shown == 0:
                job.shown = 1
                job.on_turn({"turn": 1, "text": completion.text, "answer": answer})
            turn = (completion.text, answer, completion.num_tokens, completion.finish_reason == "length")
            out[job.key] = self.outcome([turn], [self.counter(conversation)], "continuation")
        return out

    def outcome(self, turns: list[tuple[str, str | None, int, bool]], prompt_tokens: list[int | None], stopped: str) -> dict[str, Any]:
        """The result of one request: the voted turn's text, the usage and the `riselm` account of every turn."""
        answers = [answer for _, answer, _, _ in turns]
        groups = vote_groups(answers, self.task.same_answer, self.task.answer_key)
        winner = majority_vote(answers, self.task.same_answer, self.task.answer_key)
        chosen = winner if winner is not None else len(turns) - 1  # no answer anywhere: the last turn
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        winning = group_of.get(winner) if winner is not None else None
        listed = [
            {
                "turn": i + 1,
                "text": text,
                "answer": answer,
                "tokens": tokens,
                "truncated": truncated,
                "group": group_of.get(i),
                "agrees": winning is not None and group_of.get(i) == winning,
            }
            for i, (text, answer, tokens, truncated) in enumerate(turns)
        ]
        completion_tokens = sum(tokens for _, _, tokens, _ in turns)
        prompt = sum(p for p in prompt_tokens if p is not None)
        return {
            "text": turns[chosen][0],
            "finish_reason": "length" if turns[chosen][3] else "stop",
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens},
            "riselm": {
                "turns": listed,
                "vote": {
                    "answer": answers[winner] if winner is not None else None,
                    "turn": chosen + 1,
                    "votes": len(groups[winning]) if winning is not None else 0,
                    "of": len(turns),
                    "groups": [[i + 1 for i in members] for members in groups],
                },
                "stopped": stopped,
                "task": self.task.name,
            },
        }


def _settle(job: Job, result: dict | None = None, error: BaseException | None = None) -> None:
    future, loop = job.future, job.loop
    assert future is not None and loop is not None, "a job is settled after it was submitted"

    def settle() -> None:
        if not future.done():
            if error is not None:
                future.set_exception(error)
                if job.given_up:  # nobody awaits it any more: do not warn that it was never retrieved
                    future.exception()
            else:
                future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed: the server is gone, nobody waits
        pass
