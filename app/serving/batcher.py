"""Dynamic batching for one deployment: concurrent requests are merged along the batch
dimension (axis 0), run as one call, and the outputs are split back per request.

Shape of the thing (the same as MLServer's adaptive batcher and Triton's dynamic batcher):
``submit`` puts the request in a queue with a future; a collector task on the event loop cuts
batches and hands them to a thread pool with ``loop.run_in_executor``; the executor job's
completion callback resolves the futures. Inference stays in-process on the executor: there is
no per-request process hop.

Differences from MLServer's batcher, on purpose:

* the size limit counts *rows*, not requests (a request may carry n >= 1 rows);
* requests are merged only when every input has the same non-batch shape and dtype
  (grouped by that signature; different signatures run as separate batches; nothing is padded);
* the queue is unbounded and ``submit`` never blocks on it (back-pressure belongs to the HTTP layer);
* at most ``max_inflight`` batches are on the executor at once; while they compute, the collector
  keeps collecting, and the next batch is cut when a slot frees, so it takes everything that
  queued up meanwhile (up to ``max_batch_size`` rows). ``max_inflight`` defaults to 1: on a
  small (2-core) host one batch at a time lets the runtime use its intra-op threads, and a second
  concurrent batch would only make both batches smaller and slower.

Collection rule: when the first request of a group arrives, the group waits until it holds
``max_batch_size`` rows or ``max_queue_delay_ms`` has passed since that request, whichever is
first. ``max_queue_delay_ms = 0`` takes only what is already queued. A lone request with
nothing queued and a free slot, when there is no delay to wait (delay 0, or the request alone
fills a batch), is launched straight from ``submit`` without a hop through the collector task.

Merging (``np.concatenate``) and splitting run inside the executor job, off the event loop.
A batch of one request is passed through as is (no copy); outputs are split into views.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


class BatchAlignmentError(RuntimeError):
    """The model returned an output whose leading dimension is not the batch's row count, so
    it cannot be split back per request."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    size: int  # total rows in the batch
    requests: int  # requests merged into it
    queue_ms: float  # longest time a request in it waited before the batch was launched
    compute_ms: float  # wall time of the model call (``run``) on the executor; NaN when it failed


class _Item:
    __slots__ = ("feeds", "rows", "future", "enqueued", "queued")

    def __init__(self, feeds: Feeds, rows: int, future: asyncio.Future, enqueued: float) -> None:
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.enqueued = enqueued
        self.queued = False


class _Group:
    """Queued requests that share one signature (so they can be merged)."""

    __slots__ = ("items", "rows")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.rows = 0


def _signature(feeds: Feeds) -> tuple[int, tuple]:
    """(rows, signature); raises ValueError for a request that cannot be batched."""
    if not isinstance(feeds, dict) or not feeds:
        raise ValueError("feeds must be a non-empty dict of input name -> numpy array")
    rows = -1
    parts = []
    for name, arr in feeds.items():
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"input {name!r} is not a numpy array ({type(arr).__name__})")
        if arr.ndim == 0:
            raise ValueError(f"input {name!r} is a scalar; every input needs a leading batch dimension")
        n = arr.shape[0]
        if rows < 0:
            rows = n
        elif n != rows:
            raise ValueError(f"inputs disagree on the batch dimension: {name!r} has {n} rows, expected {rows}")
        parts.append((name, arr.shape[1:], arr.dtype.str))
    if rows < 1:
        raise ValueError("the batch dimension must be >= 1")
    if len(parts) > 1:
        parts.sort()
    return rows, tuple(parts)


def _execute(run: RunFn, items: list[_Item]) -> tuple[list[Feeds], float]:
    """The executor job: merge, run, check and split. Returns per-request outputs and run ms."""
    if len(items) == 1:
        merged = items[0].feeds
        total = items[0].rows
    else:
        first = items[0].feeds
        merged = {name: np.concatenate([it.feeds[name] for it in items], axis=0) for name in first}
        total = sum(it.rows for it in items)
    t0 = time.perf_counter()
    out = run(merged)
    compute_ms = (time.perf_counter() - t0) * 1e3
    if not isinstance(out, dict):
        raise TypeError(f"the model returned {type(out).__name__}, expected a dict of name -> array")
    for name, arr in out.items():
        shape = getattr(arr, "shape", None)
        if not shape or shape[0] != total:
            raise BatchAlignmentError(
                f"model output not batch-aligned: output {name!r} has shape {shape}, "
                f"expected a leading dimension of {total} (the batch's rows)"
            )
    if len(items) == 1:
        return [out], compute_ms
    results: list[Feeds] = []
    start = 0
    for it in items:
        end = start + it.rows
        results.append({name: arr[start:end] for name, arr in out.items()})
        start = end
    return results, compute_ms


class Batcher:
    """Merges concurrent ``submit`` calls into batched ``run`` calls on ``executor``.

    ``run`` takes and returns ``dict[str, np.ndarray]`` with the batch on axis 0; it must be
    row-independent (row i of the outputs depends only on row i of the inputs). ``on_batch`` is
    called on the event loop after each batch with its :class:`BatchStats`.

    One Batcher belongs to the event loop that first calls ``submit``.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        executor: concurrent.futures.Executor,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_inflight: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self._run = run
        self._max_rows = max_batch_size
        self._delay = max_queue_delay_ms / 1e3
        self._executor = executor
        self._on_batch = on_batch
        self._max_inflight = max_inflight

        self._groups: dict[tuple, _Group] = {}
        self._queued = 0  # requests waiting in the groups
        self._inflight: set[asyncio.Future] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._collector: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None  # what the collector sleeps on

    # -- public API ---------------------------------------------------------------------------

    async def submit(self, feeds: Feeds) -> Feeds:
        """Queue one request (every input with the same leading dim n >= 1); its outputs."""
        if self._closing:
            raise RuntimeError("the batcher is closed")
        rows, sig = _signature(feeds)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        item = _Item(feeds, rows, fut, loop.time())

        if (
            self._queued == 0
            and len(self._inflight) < self._max_inflight
            and (self._delay == 0 or rows >= self._max_rows)
        ):
            self._launch([item], loop)  # fast path: nothing to wait for, nothing to merge with
        else:
            group = self._groups.get(sig)
            if group is None:
                group = self._groups[sig] = _Group()
            group.items.append(item)
            group.rows += rows
            item.queued = True
            self._queued += 1
            self._ensure_collector(loop)
            if len(group.items) == 1 or group.rows >= self._max_rows:
                self._wakeup()
        try:
            return await fut
        except asyncio.CancelledError:
            if item.queued:  # never launched: take it out so it neither runs nor counts
                group = self._groups.get(sig)
                if group is not None:
                    try:
                        group.items.remove(item)
                    except ValueError:
                        pass
                    else:
                        group.rows -= rows
                        self._queued -= 1
                        item.queued = False
                        if not group.items:
                            del self._groups[sig]
            raise

    async def close(self) -> None:
        """Stop accepting requests, run everything already queued, wait for it, then stop."""
        self._closing = True
        self._wakeup()
        if self._collector is not None and not self._collector.done():
            await asyncio.wait({self._collector})  # a crash was logged and failed its requests
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    # -- collector ----------------------------------------------------------------------------

    def _ensure_collector(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._collector is None or self._collector.done():
            self._collector = loop.create_task(self._collect())
            self._collector.add_done_callback(self._collector_done)

    def _wakeup(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        w = self._wake = loop.create_future()
        handle = None
        if deadline is not None:
            handle = loop.call_at(deadline, _set_none, w)
        try:
            await w
        finally:
            if handle is not None:
                handle.cancel()
            self._wake = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._groups:
                return  # idle: the next queued request starts a new collector
            if len(self._inflight) >= self._max_inflight:
                await self._sleep(loop, None)  # a finishing batch wakes us
                continue
            now = loop.time()
            ready_sig = None
            ready_t = next_deadline = float("inf")
            for sig, group in self._groups.items():
                head_t = group.items[0].enqueued
                if self._closing or group.rows >= self._max_rows or head_t + self._delay <= now:
                    if head_t < ready_t:
                        ready_sig, ready_t = sig, head_t
                else:
                    next_deadline = min(next_deadline, head_t + self._delay)
            if ready_sig is None:
                await self._sleep(loop, next_deadline)
                continue
            self._launch(self._cut(ready_sig), loop)

    def _cut(self, sig: tuple) -> list[_Item]:
        """Take requests from the head of a group, FIFO, up to max_batch_size rows (a single
        request bigger than that goes alone, unsplit)."""
        group = self._groups[sig]
        items = group.items
        first = items.popleft()
        batch = [first]
        rows = first.rows
        while items and rows + items[0].rows <= self._max_rows:
            it = items.popleft()
            batch.append(it)
            rows += it.rows
        group.rows -= rows
        self._queued -= len(batch)
        if not items:
            del self._groups[sig]
        for it in batch:
            it.queued = False
        return batch

    def _collector_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            err: BaseException = RuntimeError("the batcher's collector was cancelled")
        else:
            exc = task.exception()
            if exc is None:
                return
            log.error("batcher collector failed", exc_info=exc)
            err = exc
        for group in self._groups.values():
            for it in group.items:
                it.queued = False
                if not it.future.done():
                    it.future.set_exception(err)
        self._groups.clear()
        self._queued = 0

    # -- running a batch ----------------------------------------------------------------------

    def _launch(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        launched = loop.time()
        try:
            job = loop.run_in_executor(self._executor, _execute, self._run, batch)
        except Exception as e:  # e.g. the executor was shut down
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        self._inflight.add(job)
        job.add_done_callback(functools.partial(self._finish, batch=batch, launched=launched))

    def _finish(self, job: asyncio.Future, batch: list[_Item], launched: float) -> None:
        self._inflight.discard(job)
        self._wakeup()
        compute_ms = float("nan")
        if job.cancelled():
            err: BaseException | None = RuntimeError("the batch was cancelled on the executor")
        else:
            err = job.exception()
        if err is not None:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(err)
        else:
            results, compute_ms = job.result()
            for it, res in zip(batch, results, strict=True):
                if not it.future.done():
                    it.future.set_result(res)
        if self._on_batch is not None:
            stats = BatchStats(
                size=sum(it.rows for it in batch),
                requests=len(batch),
                queue_ms=(launched - min(it.enqueued for it in batch)) * 1e3,
                compute_ms=compute_ms,
            )
            try:
                self._on_batch(stats)
            except Exception:
                log.exception("batcher on_batch callback failed")


def _set_none(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
