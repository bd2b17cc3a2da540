"""Dynamic batching across concurrent requests, in front of one ONNX Runtime session.

Requests wait in a bounded queue. When a model instance is free, the scheduler takes the oldest
request and every queued request whose tensors agree with it beyond the batch axis (same names,
trailing shapes and dtypes), up to ``max_batch_size`` rows; if that is less than a full batch it
waits for more until the oldest request has waited ``batch_window_s``. The group runs as one
``session.run`` in a worker thread (ONNX Runtime releases the GIL), and the outputs are split
back along the batch axis. A request arriving while the instance is busy therefore waits no
longer than the batch in progress: the window only applies when the instance would otherwise idle.

If a batched call fails, each request of the group is retried alone so that one bad request
cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .runtime import InferenceError, ServedModel

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The bounded queue is full: the client should retry later (HTTP 503)."""


class ShuttingDownError(Exception):
    """The server is draining after SIGTERM and takes no new requests (HTTP 503)."""


@dataclass(eq=False)
class _Pending:
    feeds: dict
    batch: int
    key: object
    future: asyncio.Future
    t_enqueued: float


@dataclass
class BatcherStats:
    """Counters in Triton's terms: ``inference_count`` rows, ``execution_count`` session runs."""

    success_count: int = 0
    fail_count: int = 0
    inference_count: int = 0
    execution_count: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    success_ns: int = 0
    rejected_queue_full: int = 0
    batch_sizes: dict = field(default_factory=dict)  # rows per execution -> how many executions
    last_inference_ms: int = 0


class DynamicBatcher:
    def __init__(self, model: ServedModel, *, max_queue: int = 128, instances: int = 1):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.model = model
        self.max_queue = max_queue
        self.instances = max(1, instances)
        self.stats = BatcherStats()
        self._pending: deque[_Pending] = deque()
        self._executor = ThreadPoolExecutor(self.instances, thread_name_prefix=f"ort-{model.name}")
        self._closing = False
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.instances)
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self.model.name}")

    async def close(self) -> None:
        """Stop taking requests, finish every queued and running one, then stop the workers."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
            for _ in range(self.instances):  # wait for the running batches
                await self._slots.acquire()
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return len(self._pending)

    # -- requests --------------------------------------------------------------------------------
    async def infer(self, feeds: dict, batch: int) -> dict:
        """Queue one validated request (``feeds``: name -> array) and wait for its outputs."""
        if self._closing:
            raise ShuttingDownError("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            self.stats.rejected_queue_full += 1
            raise QueueFullError(f"the request queue of model '{self.model.name}' is full "
                                 f"({self.max_queue} requests); retry later")
        key = None
        if self.model.max_batch_size > 0:
            key = tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(feeds.items()))
        loop = asyncio.get_running_loop()
        p = _Pending(feeds, batch, key, loop.create_future(), time.perf_counter())
        self._pending.append(p)
        self._wakeup.set()
        return await p.future

    # -- scheduling ------------------------------------------------------------------------------
    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while not self._pending:
                if self._closing:
                    self._slots.release()
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            group = await self._gather()
            if not group:
                self._slots.release()
                continue
            t0 = time.perf_counter()
            fut = loop.run_in_executor(self._executor, self._execute, group)
            fut.add_done_callback(lambda f, g=group, t=t0: self._finish(f, g, t))

    async def _gather(self) -> list[_Pending]:
        mbs = self.model.max_batch_size
        if mbs == 0:
            p = self._pending.popleft()
            return [] if p.future.done() else [p]
        first = self._pending[0]
        deadline = first.t_enqueued + self.model.batch_window_s
        while True:
            total = 0
            for p in self._pending:
                if p.key == first.key and total + p.batch <= mbs:
                    total += p.batch
                    if total == mbs:
                        break
            remaining = deadline - time.perf_counter()
            if total >= mbs or remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        group, rest, total = [], deque(), 0
        for p in self._pending:
            if p.future.done():  # its client went away
                continue
            if p.key == first.key and total + p.batch <= mbs:
                group.append(p)
                total += p.batch
            else:
                rest.append(p)
        self._pending = rest
        return group

    def _execute(self, group: list[_Pending]) -> list:
        """Worker thread: one session run for the group, or one per request after a failure."""
        import numpy as np

        if len(group) == 1:
            return [self._run_one(group[0])]
        names = self.model.input_names
        feeds = {n: np.concatenate([p.feeds[n] for p in group], axis=0) for n in names}
        total = sum(p.batch for p in group)
        try:
            out = self.model.run(feeds)
        except InferenceError as e:
            log.info("batched run of %d requests failed (%s); retrying them one by one", len(group), e)
            return [self._run_one(p) for p in group]
        if any(a.ndim == 0 or a.shape[0] != total for a in out.values()):
            # An output without the batch axis first cannot be split: run the requests alone.
            return [self._run_one(p) for p in group]
        results, start = [], 0
        for p in group:
            results.append({k: v[start:start + p.batch] for k, v in out.items()})
            start += p.batch
        self._count_execution(total)
        return results

    def _run_one(self, p: _Pending):
        try:
            out = self.model.run(p.feeds)
        except InferenceError as e:
            return e
        self._count_execution(p.batch)
        return out

    def _count_execution(self, rows: int) -> None:
        s = self.stats  # only worker threads write these; reads are for monitoring
        s.execution_count += 1
        s.batch_sizes[rows] = s.batch_sizes.get(rows, 0) + 1

    def _finish(self, fut: asyncio.Future, group: list[_Pending], t0: float) -> None:
        self._slots.release()
        now = time.perf_counter()
        try:
            results = fut.result()
        except BaseException as e:  # noqa: BLE001 - a bug in _execute must not hang the clients
            log.exception("batch execution failed")
            results = [InferenceError(f"internal error: {type(e).__name__}: {e}", client_error=False)] * len(group)
        s = self.stats
        s.compute_ns += int((now - t0) * 1e9)
        s.last_inference_ms = int(time.time() * 1000)
        for p, r in zip(group, results):
            s.queue_ns += int((t0 - p.t_enqueued) * 1e9)
            if p.future.done():
                continue
            if isinstance(r, BaseException):
                s.fail_count += 1
                p.future.set_exception(r)
            else:
                s.success_count += 1
                s.inference_count += p.batch
                s.success_ns += int((now - p.t_enqueued) * 1e9)
                p.future.set_result(r)
