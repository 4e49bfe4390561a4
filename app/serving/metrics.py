"""Prometheus metrics, named after Triton's so dashboards translate:

| modelport | Triton |
| --- | --- |
| modelport_inference_request_success_total | nv_inference_request_success |
| modelport_inference_request_failure_total | nv_inference_request_failure |
| modelport_inference_count_total (samples) | nv_inference_count |
| modelport_inference_exec_count_total (model executions) | nv_inference_exec_count |
| modelport_inference_request_duration_seconds | nv_inference_request_duration_us |
| modelport_inference_queue_duration_seconds | nv_inference_queue_duration_us |
| modelport_inference_compute_duration_seconds | nv_inference_compute_infer_duration_us |
| modelport_inference_batch_size | (Triton: exec_count vs inference_count) |

Triton exports cumulative microsecond counters; these are histograms in seconds, from which the
same averages follow (``_sum / _count``) along with percentiles. Job metrics are read from the
catalog at scrape time, so every replica reports the same numbers.

Under `modelport serve --workers N` the workers share ``PROMETHEUS_MULTIPROC_DIR`` (set by the
supervisor before any worker imports prometheus_client): each process writes its counters and
histograms to its own files there, and a scrape of any worker adds up every worker's
(prometheus_client's ``MultiProcessCollector``), so ``/metrics`` reads as one server's."""

from __future__ import annotations

import asyncio
import os
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, db=None):
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.success = Counter("modelport_inference_request_success", "Successful inference requests "
                               "(nv_inference_request_success)", labels, registry=self.registry)
        self.failure = Counter("modelport_inference_request_failure", "Failed inference requests "
                               "(nv_inference_request_failure)", (*labels, "reason"), registry=self.registry)
        self.count = Counter("modelport_inference_count", "Inferences performed: samples, a batch of n counts n "
                             "(nv_inference_count)", labels, registry=self.registry)
        self.exec_count = Counter("modelport_inference_exec_count", "Model executions: a dynamic batch counts 1 "
                                  "(nv_inference_exec_count)", labels, registry=self.registry)
        self.request = Histogram("modelport_inference_request_duration_seconds", "End-to-end request time in the "
                                 "server (nv_inference_request_duration_us)", labels, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue = Histogram("modelport_inference_queue_duration_seconds", "Time waiting in the dynamic batcher "
                               "(nv_inference_queue_duration_us)", labels, buckets=LATENCY_BUCKETS,
                               registry=self.registry)
        self.compute = Histogram("modelport_inference_compute_duration_seconds", "Model execution time "
                                 "(nv_inference_compute_infer_duration_us)", labels, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch = Histogram("modelport_inference_batch_size", "Rows per model execution", labels,
                               buckets=BATCH_BUCKETS, registry=self.registry)
        self._series: dict[tuple[str, str], Series] = {}
        self._answered: list[tuple[Series, int | None, float, float]] = []
        self._lock = threading.Lock()
        self.jobs = _JobCollector(db) if db is not None else None
        if self.jobs is not None:
            self.registry.register(self.jobs)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # read as prometheus_client reads it

    def answered(self, series: Series, rows: int | None, compute_s: float, request_s: float) -> None:
        """One successful request (``rows`` None: it went through a batcher, which records the
        executions), recorded by :meth:`flush`, which the inference front calls once the answer is
        written (a dozen increments, each a locked write to a file in multiprocess mode, are not
        what a client should wait for), or else the event loop's next turn, or a scrape."""
        with self._lock:
            first = not self._answered
            self._answered.append((series, rows, compute_s, request_s))
        if first:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # not on an event loop: now
                self.flush()

    def flush(self) -> None:
        with self._lock:
            todo, self._answered = self._answered, []
        for series, rows, compute_s, request_s in todo:
            series.record(rows, compute_s, request_s)

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or, in multiprocess mode, the sum over
        every worker's (the job metrics come from the catalog once either way)."""
        self.flush()
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if self.jobs is not None:
            registry.register(self.jobs)
        return generate_latest(registry)

    def series(self, model: str, version: str) -> Series:
        """The labelled children of one deployment version, looked up once: ``labels()`` costs more
        than the increment it leads to, six times a request. Only names that resolved to a deployment
        get here (client-chosen names must not mint series), so the dict stays as small as the catalog."""
        key = (model, version)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = Series(self, model, version)
        return s

    def batch_observer(self, model: str, version: str):
        s = self.series(model, version)

        def observe(stats) -> None:
            s.queue.observe(stats.queue_ms / 1000)
            s.compute.observe(stats.compute_ms / 1000)
            s.batch.observe(stats.size)
            s.exec_count.inc()
            s.count.inc(stats.size)

        return observe


class Series:
    """One deployment version's counters and histograms (see :meth:`Metrics.series`)."""

    __slots__ = ("success", "request", "queue", "compute", "batch", "exec_count", "count")

    def __init__(self, m: Metrics, model: str, version: str):
        for name in self.__slots__:
            setattr(self, name, getattr(m, name).labels(model, version))

    def record(self, rows: int | None, compute_s: float, request_s: float) -> None:
        """One successful request (Metrics.answered): ``rows`` None when a batcher ran it."""
        self.success.inc()
        self.request.observe(request_s)
        if rows is not None:  # an execution of its own
            self.compute.observe(compute_s)
            self.batch.observe(rows)
            self.exec_count.inc()
            self.count.inc(rows)


class _JobCollector:
    def __init__(self, db):
        self.db = db

    def describe(self):
        return []

    def collect(self):
        from app.catalog import repo

        jobs = GaugeMetricFamily("modelport_jobs", "Conversion jobs by state", labels=["status"])
        durations = SummaryMetricFamily("modelport_job_duration_seconds", "Finished jobs: creation to finish",
                                        labels=["status"])
        try:
            with self.db.session() as s:
                for status, n in repo.job_counts(s):
                    jobs.add_metric([status], n)
                rows = repo.finished_job_times(s)
        except Exception:  # a scrape must not fail because the catalog blinked
            return
        agg: dict[str, list[float]] = {}
        for status, created, finished in rows:
            agg.setdefault(status, []).append(max(0.0, (finished - created).total_seconds()))
        for status, values in agg.items():
            durations.add_metric([status], len(values), sum(values))
        yield jobs
        yield durations
