"""Lanes: how the embedded executor orders steps, so a short validation or benchmark never waits
behind a long conversion.

Steps wait in lanes, one per (kind, queue): ``convert``, ``validate`` and ``benchmark`` of each
hardware queue, FIFO within a lane. ``slots`` threads run them. When a slot frees it takes

1. a conversion, if fewer than ``convert_slots`` conversions are running — at most ``slots - 1``,
   so one slot is always left for checks: a long conversion (onnx2tf can take minutes) never holds
   up the verdict of an artifact that is already made;
2. else a validation or a benchmark; at most ``benchmark_slots`` benchmarks run at once (one by
   default), since two benchmarks on the same cores would each time the other.

Among the lanes of one kind the queue served least recently goes first, so a backlog on one queue
(``cpu.tf``) does not starve another (``intel``). With ``lanes=False`` it is one FIFO of every step
in arrival order (the executor before lanes existed). Pure scheduling: no database, no subprocess;
``run`` is called with each item on a slot thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("modelport.lanes")

KINDS = ("convert", "validate", "benchmark")


@dataclass(frozen=True)
class Capacity:
    """How many steps run at once, and how many of them may be conversions or benchmarks."""

    slots: int
    convert_slots: int
    benchmark_slots: int
    lanes: bool
    why: str

    def describe(self) -> str:
        if not self.lanes:
            return f"{self.slots} step(s) at once, one FIFO lane ({self.why})"
        return (f"{self.slots} step(s) at once, of which at most {self.convert_slots} conversion(s) and "
                f"{self.benchmark_slots} benchmark(s) ({self.why})")


def capacity(concurrency: int, *, lanes: bool, cores: int, memory_mib: float | None,
             step_memory_mb: int) -> Capacity:
    """The executor's slots: ``concurrency`` when set (> 0), else one per core, but no more than the
    memory holds at ``step_memory_mb`` a step. With lanes at least two (one kept for checks)."""
    if concurrency > 0:
        slots, why = concurrency, "MODELPORT_EMBEDDED_CONCURRENCY"
    else:
        by_memory = int(memory_mib // step_memory_mb) if memory_mib else cores
        slots = max(1, min(cores, by_memory))
        why = (f"{cores} core(s), {memory_mib:.0f} MiB at {step_memory_mb} MiB a step"
               if memory_mib else f"{cores} core(s)")
    if not lanes:
        return Capacity(slots, slots, slots, False, why)
    if slots < 2:
        slots, why = 2, why + "; two at least, one kept for checks"
    return Capacity(slots, slots - 1, 1, True, why)


class LaneScheduler:
    def __init__(self, run: Callable[[str], None], cap: Capacity, *, name: str = "modelport-step"):
        self._run_item, self.cap = run, cap
        self._cv = threading.Condition()
        self._lanes: dict[tuple[str, str], deque[tuple[int, str, str]]] = {}  # (arrival, kind, item)
        self._served: dict[tuple[str, str], int] = {}  # when each lane last started a step (a tick)
        self._running = dict.fromkeys(KINDS, 0)
        self._seq = itertools.count()
        self._tick = itertools.count(1)
        self._stopping = False
        self._threads = [threading.Thread(target=self._slot, name=f"{name}-{i}", daemon=True)
                         for i in range(cap.slots)]
        for t in self._threads:
            t.start()

    def submit(self, item: str, kind: str, queue: str) -> None:
        kind = kind if kind in KINDS else "convert"
        lane = (kind, queue) if self.cap.lanes else ("fifo", "")
        with self._cv:
            if self._stopping:
                return
            self._lanes.setdefault(lane, deque()).append((next(self._seq), kind, item))
            self._cv.notify()

    def pending(self) -> dict[tuple[str, str], list[str]]:
        """What waits, by lane (for logs and tests)."""
        with self._cv:
            return {lane: [i for _, _, i in q] for lane, q in self._lanes.items() if q}

    def running(self) -> dict[str, int]:
        with self._cv:
            return dict(self._running)

    def stop(self, wait: bool = True) -> None:
        """Start nothing more (what waits is dropped: its rows stay queued for the next start) and,
        with ``wait``, let running steps finish."""
        with self._cv:
            self._stopping = True
            self._lanes.clear()
            self._cv.notify_all()
        if wait:
            for t in self._threads:
                t.join()

    # ------------------------------------------------------------------ slots

    def _take(self) -> tuple[str, str] | None:
        """The next (kind, item) a free slot may start, or None. Called holding the lock."""
        if not self.cap.lanes:
            q = self._lanes.get(("fifo", ""))
            if not q:
                return None
            _, kind, item = q.popleft()
            return kind, item
        if self._running["convert"] < self.cap.convert_slots:
            hit = self._oldest_lane("convert")
            if hit is not None:
                return hit
        for kind in ("validate", "benchmark"):  # validations first: they decide deployability
            if kind == "benchmark" and self._running["benchmark"] >= self.cap.benchmark_slots:
                continue
            hit = self._oldest_lane(kind)
            if hit is not None:
                return hit
        return None

    def _oldest_lane(self, kind: str) -> tuple[str, str] | None:
        lanes = [lane for lane, q in self._lanes.items() if lane[0] == kind and q]
        if not lanes:
            return None
        # the lane served least recently; among lanes never served, the one whose head came first
        lane = min(lanes, key=lambda ln: (self._served.get(ln, 0), self._lanes[ln][0][0]))
        self._served[lane] = next(self._tick)
        _, _, item = self._lanes[lane].popleft()
        return kind, item

    def _slot(self) -> None:
        while True:
            with self._cv:
                picked = None
                while not self._stopping and (picked := self._take()) is None:
                    self._cv.wait()
                if self._stopping:
                    return
                kind, item = picked
                self._running[kind] += 1
            try:
                self._run_item(item)
            except Exception:  # a step's failure is recorded by the step; the slot lives on
                log.exception("step %s crashed its slot", item)
            finally:
                with self._cv:
                    self._running[kind] -= 1
                    self._cv.notify_all()
