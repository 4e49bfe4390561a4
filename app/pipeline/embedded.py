"""The embedded executor: the same step function as the Celery task, run on slot threads in the
API process, ordered in lanes (app/pipeline/lanes.py) so a validation or benchmark never waits
behind a long conversion. It announces itself in the catalog like any worker, heartbeats, and
reaps steps left running by a previous process."""

from __future__ import annotations

import logging
import threading

from app import host
from app.ingest import blobs
from app.pipeline import jobs
from app.pipeline.lanes import LaneScheduler, capacity

log = logging.getLogger("modelport.embedded")


class EmbeddedExecutor:
    def __init__(self, settings, db, store):
        self.settings, self.db, self.store = settings, db, store
        cores, memory_mib = host.capacity()
        self.capacity = capacity(settings.embedded_concurrency, lanes=settings.embedded_lanes, cores=cores,
                                 memory_mib=memory_mib, step_memory_mb=settings.embedded_step_memory_mb)
        self.lanes = LaneScheduler(self._run, self.capacity)
        self.id = jobs.worker_id("embedded")
        self.queues = sorted(q for q, why in host.servable_queues(settings).items() if not why)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        log.info("embedded executor: %s", self.capacity.describe())
        jobs.announce(self.db, self.id, self.queues, host.describe(self.settings))
        self._resume()
        self._thread = threading.Thread(target=self._beat, name="modelport-heartbeat", daemon=True)
        self._thread.start()
        blobs.start_sweeper(self.db, self.store, self.settings, self._stop)

    def _resume(self) -> None:
        """Steps queued before a restart have no broker to keep them: pick them up again."""
        from app.catalog import repo

        with self.db.session() as s:
            pending = [(st.id, st.kind, st.queue) for st in repo.waiting_steps(s, self.queues)]
            pending += [(st.id, st.kind, st.queue) for st in repo.queued_steps(s, self.queues)]
        for step_id, kind, queue in pending:
            self.lanes.submit(step_id, kind, queue)

    def _beat(self) -> None:
        while not self._stop.wait(min(5.0, self.settings.worker_stale_s / 3)):
            try:
                jobs.announce(self.db, self.id, self.queues, host.describe(self.settings))
                jobs.reap(self.db, self, self.settings)
            except Exception:  # keep beating through a database blip
                log.exception("heartbeat failed")

    def enqueue(self, step_id: str, queue: str) -> None:
        if queue not in self.queues:
            log.info("step %s waits for a worker on queue %s", step_id, queue)
            return
        self.lanes.submit(step_id, self._kind(step_id), queue)

    def _kind(self, step_id: str) -> str:
        """convert | validate | benchmark: which lane the step waits in."""
        from app.catalog import repo

        with self.db.session() as s:
            step = repo.get_step(s, step_id)
            return step.kind if step is not None else "convert"  # a missing step: run_step says so

    def _run(self, step_id: str) -> None:
        try:
            outcome = jobs.run_step(self.db, self.store, self.settings, step_id, self.id, self)
            log.info("step %s: %s", step_id, outcome)
        except Exception:
            log.exception("step %s crashed the executor", step_id)

    def stop(self) -> None:
        self._stop.set()
        self.lanes.stop(wait=True)
        from app.catalog import repo

        with self.db.session() as s:
            repo.remove_worker(s, self.id)
