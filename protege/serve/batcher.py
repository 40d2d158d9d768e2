"""Micro-batching for `protege serve`: fair across requests, bounded in work, failures per input.

Each request is a job holding its inputs. A micro-batch takes inputs round-robin from the
waiting jobs (one from each in turn) until it has `max_batch_size` inputs or its estimated
tokens would pass `max_batch_tokens`, so a large request is spread over many batches and a
small one that arrives meanwhile runs in the very next batch: it waits at most one batch.
The first waiting input opens a window of at most `max_wait_ms` for others to join. The model
runs in one worker thread so the event loop keeps serving other clients.

When a model call fails, its inputs are retried one by one, so one bad input fails only its
own request. A request whose client has gone has its remaining inputs dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from protege.serve.metrics import Metrics
from protege.serve.predictor import Predictor

log = logging.getLogger("protege.serve")

LABEL_TOKENS = 8
"""Decoder tokens a label costs (scoring or a short generation), for the batch estimate."""


class Job:
    """One request's inputs still to run, and a future per input."""

    def __init__(self, sources: list[str], rationale: bool, loop: asyncio.AbstractEventLoop):
        self.todo = deque(enumerate(sources))
        self.rationale = rationale
        self.futures = [loop.create_future() for _ in sources]
        self.cancelled = False


class Batcher:
    """Gathers inputs of waiting requests into fair, bounded micro-batches (module docstring)."""

    def __init__(
        self,
        predictor: Predictor,
        metrics: Metrics,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_batch_tokens: int = 4096,
        fast: bool = True,
    ):
        self.predictor, self.metrics, self.fast = predictor, metrics, fast
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.max_batch_tokens = max_batch_tokens
        self.jobs: deque[Job] = deque()
        self.arrived = asyncio.Event()
        self.running = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protege-model")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish everything queued, then stop the worker."""
        while self.jobs or self.running:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, sources: list[str], rationale: bool) -> list[dict[str, Any]]:
        """Predictions for `sources`, in order; raises the model's error for a failed input."""
        job = Job(sources, rationale, asyncio.get_running_loop())
        self.jobs.append(job)
        self.arrived.set()
        try:
            return list(await asyncio.gather(*job.futures))
        except BaseException:
            job.cancelled = True  # the client went away, or an input failed: stop the rest
            for future in job.futures:
                future.cancel()  # no result or error is left unretrieved
            raise

    def cost(self, source: str, rationale: bool) -> int:
        """Estimated tokens of one input: its encoder tokens plus the decoder's."""
        p = self.predictor
        encoder = min(len(source) // 4 + 1, getattr(p.backend, "max_source_len", 512))
        long = rationale or p.task.type != "classification" or not self.fast
        return encoder + (p.max_new_tokens if long else LABEL_TOKENS)

    def waiting(self) -> int:
        return sum(len(j.todo) for j in self.jobs if not j.cancelled)

    def take(self) -> list[tuple[Job, int, str]]:
        """The next micro-batch: round-robin over jobs, within both bounds (at least one input)."""
        batch: list[tuple[Job, int, str]] = []
        tokens = 0
        while self.jobs and len(batch) < self.max_batch_size:
            job = self.jobs.popleft()
            if job.cancelled or not job.todo:
                continue
            i, source = job.todo[0]
            cost = self.cost(source, job.rationale)
            if batch and tokens + cost > self.max_batch_tokens:
                self.jobs.appendleft(job)
                break
            job.todo.popleft()
            batch.append((job, i, source))
            tokens += cost
            if job.todo:
                self.jobs.append(job)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.waiting():
                self.jobs.clear()  # only cancelled or finished jobs were left
                self.arrived.clear()
                await self.arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while self.waiting() < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            self.running = True
            try:
                batch = self.take()
                for rationale in (False, True):
                    group = [item for item in batch if item[0].rationale is rationale]
                    if group:
                        await self._predict(group, rationale)
            finally:
                self.running = False

    async def _predict(self, group: list[tuple[Job, int, str]], rationale: bool) -> None:
        sources = [source for _, _, source in group]
        self.metrics.batch(len(sources))
        try:
            preds = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predictor.predict, sources, rationale, self.fast
            )
        except Exception as e:
            if len(group) > 1:  # find the input that fails; the others get their answers
                for item in group:
                    if not item[0].cancelled:
                        await self._predict([item], rationale)
                return
            job, i, _ = group[0]
            if not job.futures[i].done():
                job.futures[i].set_exception(e)
            return
        for (job, i, _), pred in zip(group, preds, strict=True):
            if not job.futures[i].done():  # the client may have gone away
                job.futures[i].set_result(pred)
