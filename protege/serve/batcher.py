"""Micro-batching for `protege serve`: fair across requests, bounded in work, failures per input.

Each request is a job holding its inputs. A micro-batch takes inputs round-robin from the
waiting jobs (one from each in turn) until it has `max_batch_size` inputs or its estimated
tokens would pass `max_batch_tokens`, so a large request is spread over many batches and a
small one that arrives meanwhile runs in the very next batch: it waits at most one batch.
The first waiting input opens a window of at most `max_wait_ms` for others to join. The model
runs in one worker thread so the event loop keeps serving other clients.

When a model call fails, its inputs are retried one by one, so one bad input fails only its
own request.

Work for clients who left is not done, and waiting work is bounded: `submit` takes an
awaitable that completes when the client disconnects (`until_disconnected(request.receive)`,
the ASGI `http.disconnect` message): a request whose client has already gone is never queued,
and one whose client goes while it waits has its remaining inputs dropped at once. A request
that would take the inputs waiting past `max_queued` is refused (`QueueFull`, with an estimate
of when to retry) instead of queued.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from protege.serve.metrics import Metrics
from protege.serve.predictor import Predictor

log = logging.getLogger("protege.serve")

LABEL_TOKENS = 8
"""Decoder tokens a label costs (scoring or a short generation), for the batch estimate."""


class QueueFull(Exception):
    """The server has `max_queued` inputs waiting already: retry after `retry_after_s`."""

    def __init__(self, queued: int, limit: int, retry_after_s: int):
        super().__init__(f"{queued} inputs waiting, the limit is {limit}")
        self.retry_after_s = retry_after_s


class ClientGone(Exception):
    """The client disconnected before its predictions were ready; its inputs were dropped."""


async def until_disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    """Returns when the client of an ASGI request (whose body was read) has disconnected."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _retrieved(future: asyncio.Future) -> None:
    """Mark a finished future's error as seen (a cancelled request's is of no interest)."""
    if not future.cancelled():
        future.exception()


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
        max_queued: int = 4096,
    ):
        self.predictor, self.metrics, self.fast = predictor, metrics, fast
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.max_batch_tokens, self.max_queued = max_batch_tokens, max_queued
        self.jobs: deque[Job] = deque()
        self.queued = 0  # inputs waiting in `jobs` (not cancelled, not yet taken)
        self.input_s = 0.01  # seconds per input, a moving average: for Retry-After
        metrics.queued.set_function(lambda: self.queued)
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

    async def submit(
        self, sources: list[str], rationale: bool, disconnected: Awaitable[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Predictions for `sources`, in order; raises the model's error for a failed input,
        `QueueFull` when too many inputs wait already, `ClientGone` when `disconnected` (an
        awaitable that completes when the client leaves) completes first."""
        gone = asyncio.ensure_future(disconnected) if disconnected is not None else None
        try:
            if gone is not None:
                await asyncio.sleep(0)  # let it notice a client that left before this point
                if gone.done():
                    self.metrics.dropped.inc(len(sources))
                    raise ClientGone
            if self.queued + len(sources) > self.max_queued:
                raise QueueFull(self.queued, self.max_queued, self.retry_after())
            job = Job(sources, rationale, asyncio.get_running_loop())
            self.jobs.append(job)
            self.queued += len(sources)
            self.arrived.set()
            results = asyncio.gather(*job.futures)
            results.add_done_callback(_retrieved)
            try:
                if gone is not None:
                    await asyncio.wait((results, gone), return_when=asyncio.FIRST_COMPLETED)
                    if not results.done():
                        self.metrics.dropped.inc(len(job.todo))
                        raise ClientGone
                return list(await results)
            except BaseException:
                self.cancel(job)  # the client went away, or an input failed: stop the rest
                raise
        finally:
            if gone is not None:
                gone.cancel()
                gone.add_done_callback(_retrieved)

    def cancel(self, job: Job) -> None:
        """Drop a job's waiting inputs; no result or error is left unretrieved."""
        job.cancelled = True
        self.queued -= len(job.todo)
        job.todo.clear()
        for future in job.futures:
            future.cancel()

    def retry_after(self) -> int:
        """Seconds until the inputs waiting now are done, at the recent pace (at least 1)."""
        return max(1, math.ceil(self.queued * self.input_s))

    def cost(self, source: str, rationale: bool) -> int:
        """Estimated tokens of one input: its encoder tokens plus the decoder's."""
        p = self.predictor
        encoder = min(len(source) // 4 + 1, getattr(p.backend, "max_source_len", 512))
        long = rationale or p.task.type != "classification" or not self.fast
        return encoder + (p.max_new_tokens if long else LABEL_TOKENS)

    def waiting(self) -> int:
        return self.queued

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
            self.queued -= 1
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
        t0 = time.perf_counter()
        try:
            preds = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predictor.predict, sources, rationale, self.fast
            )
            self.input_s += 0.2 * ((time.perf_counter() - t0) / len(sources) - self.input_s)
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
