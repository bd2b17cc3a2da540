"""Dynamic batching across concurrent requests, in front of one ONNX Runtime session.

Requests wait in a bounded queue. When a model instance is free, the scheduler takes the oldest
request and every queued request whose tensors agree with it beyond the batch axis (same names,
trailing shapes and dtypes), up to ``max_batch_size`` rows; if that is less than a full batch it
waits for more until the oldest request has waited ``batch_window_s``. The group runs as one
``session.run`` in a worker thread (ONNX Runtime releases the GIL), and the outputs are split
back along the batch axis. A request arriving while the instance is busy therefore waits no
longer than the batch in progress: the window only applies when the instance would otherwise idle.

A full group (``max_batch_size`` rows, or any request of a model without batching) is also handed
over while every instance is busy, one per instance: it cannot grow by waiting, and the worker then
starts it the moment its run ends, instead of idling until the event loop -- busy parsing other
requests on a loaded machine -- has seen the run finish and dispatched again (on the small model
under load that round trip was most of the gap between served and direct throughput). A partial
group still waits for an idle instance, so that rows arriving meanwhile can join it.

If a batched call fails, each request of the group is retried alone so that one bad request
cannot fail its neighbours.

Why no scheduler task, no ``asyncio.Event`` and no thread-pool futures: on a small model the
event loop's own turns are a large part of a request's cost. Scheduling is a plain function
(``_dispatch``) called where something changes -- a request arrives, a run finishes, the window
timer fires -- so a request that completes a batch is handed to a worker in the same loop turn
that parsed it. Each instance is one thread reading a ``SimpleQueue``; a finished run reaches the
loop with one ``call_soon_threadsafe``, which resolves every request of the group at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
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
    t_enqueued: float  # time.monotonic(), the event loop's clock


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
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._inflight = 0  # groups handed to the workers and not finished (running or next in line)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        for i in range(self.instances):
            t = threading.Thread(target=self._worker, name=f"ort-{self.model.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    async def close(self) -> None:
        """Stop taking requests, finish every queued and running one, then stop the workers."""
        self._closing = True
        if self._loop is None:
            return
        self._dispatch()  # the window no longer applies: everything queued runs now
        while self._pending or self._inflight:
            self._idle.clear()
            await self._idle.wait()
        for _ in self._threads:
            self._work.put(None)
        for t in self._threads:
            await asyncio.to_thread(t.join)

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
        p = _Pending(feeds, batch, key, self._loop.create_future(), time.monotonic())
        self._pending.append(p)
        self._dispatch()
        return await p.future

    # -- scheduling (event loop) -----------------------------------------------------------------
    def _dispatch(self) -> None:
        """Hand ready groups to free instances; arm the window timer for a group still filling."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and self._inflight < 2 * self.instances:
            group, deadline = self._take_group(full_only=self._inflight >= self.instances)
            if group is None:
                if deadline is not None:
                    self._timer = self._loop.call_at(deadline, self._dispatch)
                return
            if not group:
                continue
            self._inflight += 1
            self._work.put(group)
        if self._closing and self._idle is not None and not self._pending and not self._inflight:
            self._idle.set()

    def _take_group(self, full_only: bool = False):
        """(group, None) to run now, (None, deadline) to wait for more rows, ([], None) if all gone;
        ``full_only`` (every instance busy): a full group or (None, None), the next run's end
        dispatching again."""
        pending = self._pending
        while pending and pending[0].future.done():  # its client went away
            pending.popleft()
        if not pending:
            return [], None
        mbs = self.model.max_batch_size
        if mbs == 0:
            return [pending.popleft()], None
        first = pending[0]
        if first.batch >= mbs:  # the common case of full-batch requests: no scan
            return [pending.popleft()], None
        group, total = [], 0
        for p in pending:
            if p.key == first.key and total + p.batch <= mbs and not p.future.done():
                group.append(p)
                total += p.batch
                if total == mbs:
                    break
        if total < mbs and full_only:
            return None, None
        deadline = first.t_enqueued + self.model.batch_window_s
        if total < mbs and not self._closing and time.monotonic() < deadline:
            return None, deadline
        taken = set(map(id, group))
        self._pending = deque(p for p in pending if id(p) not in taken and not p.future.done())
        return group, None

    # -- execution (worker threads) --------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            group = self._work.get()
            if group is None:
                return
            t0 = time.monotonic()  # the run starts now (a group handed over early waited in line)
            try:
                results = self._execute(group)
            except BaseException as e:  # noqa: BLE001 - a bug in _execute must not hang the clients
                log.exception("batch execution failed")
                results = [InferenceError(f"internal error: {type(e).__name__}: {e}", client_error=False)] * len(group)
            self._loop.call_soon_threadsafe(self._finish, group, results, t0, time.monotonic())

    def _execute(self, group: list[_Pending]) -> list:
        """One session run for the group, or one per request after a failure."""
        import numpy as np

        if len(group) == 1:
            return [self._run_one(group[0])]
        names = self.model.input_names
        # The batch buffer: each request's rows copied in once (its arrays are views of its body).
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

    # -- completion (event loop) -----------------------------------------------------------------
    def _finish(self, group: list[_Pending], results: list, t0: float, t1: float) -> None:
        self._inflight -= 1
        s = self.stats
        s.compute_ns += int((t1 - t0) * 1e9)
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
                s.success_ns += int((t1 - p.t_enqueued) * 1e9)
                p.future.set_result(r)
        self._dispatch()
