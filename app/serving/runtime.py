"""Loaded deployments: the runner cache (memory budget, LRU eviction), one dynamic batcher per
deployment, and the predict call. Inference runs on a thread pool, never on the event loop.

Several API replicas serve the same deployments: each replica loads what it is asked for from the
catalog and the object store (lazily, or all ready ones at start with MODELPORT_SERVING_LOAD=eager).
The workers of `modelport serve --workers N` are such replicas on one host: each has its own cache,
with 1/N of the memory budget, and cores/N inference threads (app/serve.py).

How a deploy (or delete) made through one replica reaches another: the replica that took the
request loads the new version, marks it ready and drops its cached versions of the name. Any
other replica keeps its cached versions for ``FRESH_S`` (1 s) with no catalog query; the first
request after that is still answered from them while a thread re-reads the catalog, and when
that thread finds a newer ready version of a name this replica serves, it loads it *before*
publishing the new versions, so requests move over to a warm runner (no request waits on the
load). A new version is served everywhere about a second after it was deployed (plus its load
time); a deleted one is let go of the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.catalog import repo
from app.errors import ModelportError
from app.storage import blob_key

log = logging.getLogger("modelport.serving")


class ServingError(ModelportError):
    """A deployment that cannot answer (not found, not ready, catalog unreachable)."""

    def __init__(self, status: int, message: str, code: str = "serving_error"):
        super().__init__(message, code=code)
        self.status_code = status

    @property
    def status(self) -> int:
        return self.status_code


@dataclass
class Loaded:
    deployment_id: str
    name: str
    version: int
    format: str
    runner: Any
    inputs: list  # IOSpec
    outputs: list
    batcher: Any | None
    batching_note: str
    size_bytes: int
    load_ms: float
    inline: bool = False  # calls measured shorter than a thread hop run on the event loop
    inline_sizes: dict[str, int] = field(default_factory=dict)  # ... at most this many elements per input
    call_us: float | None = None
    out_bytes_per_row: int | None = None  # measured by the load probe: bounds requests before they run
    last_used: float = field(default_factory=time.monotonic)
    batching: dict[str, Any] = field(default_factory=dict)  # as deployed (max_batch_size, max_queue_delay_ms)
    dynamic_batch: bool = False  # every input has a dynamic batch dimension: requests can be merged
    alt: tuple[tuple[int, float], Any] | None = None  # (settings, Batcher) asked for by X-Modelport-Batching
    static_outputs: tuple[int, int, bool] | None = None  # what the output specs say of their size (dataplane)
    v2_plans: dict[bytes, Any] = field(default_factory=dict)  # v2 binary headers seen before (codec.V2Plan)
    checked: dict[tuple, Any] = field(default_factory=dict)  # input dtypes and shapes that passed (dataplane)

    def specs(self) -> list[tuple[str, str | None, list | None]]:
        return [(s.name, s.dtype, s.shape) for s in self.inputs]


def _dynamic_batch(specs) -> bool:
    return bool(specs) and all(s.shape and not isinstance(s.shape[0], int) for s in specs)


def _probe_us(runner, inputs) -> tuple[float | None, dict[str, int], int | None]:
    """The median of 21 batch-1 calls in µs, the element count of each probed input (None when
    inputs cannot be generated), and the bytes of one call's outputs."""
    from app.pipeline.benchmark import default_inputs

    if not inputs or any(not s.dtype or s.shape is None for s in inputs):
        return None, {}, None
    try:
        feeds = default_inputs(inputs, 1)
        out = runner.run(feeds)  # warm-up
        out_bytes = sum(int(getattr(v, "nbytes", 0)) for v in (out or {}).values())
        times = []
        for _ in range(21):
            t = time.perf_counter()
            runner.run(feeds)
            times.append(time.perf_counter() - t)
        return sorted(times)[10] * 1e6, {k: int(v.size) for k, v in feeds.items()}, out_bytes
    except Exception:  # a model that cannot run generated inputs is simply not probed
        return None, {}, None


AS_DEPLOYED = object()  # predict()'s default: the deployment's own batcher (or none)


def _batchers(lm: Loaded) -> list:
    return [b for b in (lm.batcher, lm.alt[1] if lm.alt else None) if b is not None]


def _parse_batching(mode: str) -> tuple | None:
    """``X-Modelport-Batching``: ``off`` -> None; ``on`` -> (); ``on;max_batch_size=N;max_queue_delay_ms=D``
    -> (N, D). Anything else is a 400 naming the grammar."""
    parts = [p.strip() for p in mode.split(";")]
    head = parts[0].lower()
    if head == "off" and len(parts) == 1:
        return None
    if head == "on":
        if len(parts) == 1:
            return ()
        try:
            kv = dict(p.split("=", 1) for p in parts[1:])
            size = int(kv.pop("max_batch_size"))
            delay = float(kv.pop("max_queue_delay_ms", 0))
            if not kv and 1 < size <= 4096 and 0 <= delay <= 10_000:
                return size, delay
        except (KeyError, ValueError):
            pass
    raise ServingError(400, f"X-Modelport-Batching must be off, on, or on;max_batch_size=N[;max_queue_delay_ms=D] "
                       f"(2 <= N <= 4096, 0 <= D <= 10000), got {mode[:100]!r}", "bad_batching")


def qualified(project: str, name: str) -> str:
    """The cache's key for a deployment name of a project (the default project's names as they are;
    names cannot hold '/', so the two never collide)."""
    from app.catalog.tables import DEFAULT_PROJECT

    return name if project == DEFAULT_PROJECT else f"{project}/{name}"


def split_name(qname: str) -> tuple[str, str]:
    from app.catalog.tables import DEFAULT_PROJECT

    project, sep, name = qname.rpartition("/")
    return (project, name) if sep else (DEFAULT_PROJECT, qname)


class ModelCache:
    def __init__(self, settings, db, store, metrics=None):
        self.settings, self.db, self.store, self.metrics = settings, db, store, metrics
        workers = max(1, getattr(settings, "serving_workers", 1))  # serving processes on this host share it
        share = max(1, (os.cpu_count() or 2) // workers)
        self.budget_bytes = settings.serving_memory_budget_mb * 1024 * 1024 // workers
        self.default_threads = None if workers == 1 else share  # intra-op threads when a deployment sets none
        self.executor = ThreadPoolExecutor(max_workers=settings.serving_threads or share,
                                           thread_name_prefix="modelport-infer")
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.lock = threading.Lock()
        self.root = settings.resolved_data_dir / "serving"
        self.root.mkdir(parents=True, exist_ok=True)
        self._names: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._refreshing: set[str] = set()
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    # ------------------------------------------------------------------ catalog lookups (cached)

    def versions(self, name: str, *, fresh: bool = False) -> list[dict[str, Any]]:
        """The deployment's versions, newest first (cached for a second: no query per request)."""
        hit = self._names.get(name)
        now = time.monotonic()
        if hit and not fresh and now - hit[0] < self.FRESH_S:
            return hit[1]
        return self._publish(name, now, self._fetch(name))

    def _fetch(self, name: str) -> list[dict[str, Any]]:
        project, bare = split_name(name)
        with self.db.session() as s:
            return [{"id": d.id, "version": d.version, "status": d.status, "artifact_id": d.artifact_id,
                     "runtime": d.runtime, "batching": d.batching, "reason": d.reason}
                    for d in repo.deployment_versions(s, bare, project)]

    def _publish(self, name: str, now: float, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._names[name] = (now, rows)
        ids = {r["id"] for r in rows}
        with self.lock:  # versions deleted through another replica: let go of their runners here too
            gone = [i for i, lm in self.loaded.items() if lm.name == name and i not in ids]
        if gone:
            log.info("unloading %d version(s) of %s: no longer in the catalog", len(gone), name)
            self.unload(gone)
        return rows

    def invalidate(self, name: str) -> None:
        self._names.pop(name, None)

    def resolve(self, name: str, version: str | int | None) -> dict[str, Any]:
        """The version row a request for ``name`` (and ``version``) goes to; may query the catalog,
        so off the event loop only (there, :meth:`aresolve`)."""
        rows = self.versions(name)
        if not rows:
            rows = self.versions(name, fresh=True)
        return self._pick(name, rows, version)

    async def aresolve(self, name: str, version: str | int | None) -> dict[str, Any]:
        """:meth:`resolve` for the event loop, which never waits on the catalog itself. Versions
        cached less than a second ago are used as they are; up to ``STALE_S`` old, they are used
        while a thread refreshes them (one refresh per name at a time); older, or none cached, or a
        version asked for that the cache lacks: looked up on a thread first. When the catalog is
        unreachable, the last versions seen keep serving; a name never seen gets a 503."""
        hit = self._names.get(name)
        age = time.monotonic() - hit[0] if hit else None
        wanted_missing = version not in (None, "") and hit is not None and not any(
            str(r["version"]) == str(version) for r in hit[1])
        if hit is None or not hit[1] or age >= self.STALE_S or wanted_missing:
            rows = await asyncio.get_running_loop().run_in_executor(None, self._lookup, name,
                                                                    hit[1] if hit else None)
        else:
            if age >= self.FRESH_S and name not in self._refreshing:
                self._refreshing.add(name)
                asyncio.get_running_loop().run_in_executor(None, self._refresh, name)
            rows = hit[1]
        return self._pick(name, rows, version)

    FRESH_S = 1.0
    """Cached versions younger than this answer with no catalog query."""
    STALE_S = 30.0
    """How old cached versions may be and still answer while a thread refreshes them."""

    def _lookup(self, name: str, last: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        try:
            return self.versions(name, fresh=True)
        except Exception as e:
            if last:
                log.warning("looking up deployment %s failed, serving the versions seen last: %s", name, e)
                return last
            raise ServingError(503, f"the catalog is unreachable, so deployment '{name}' can't be looked up: "
                               f"{type(e).__name__}: {e}"[:1000], "catalog_unavailable") from e

    def _refresh(self, name: str) -> None:
        try:
            now = time.monotonic()
            rows = self._fetch(name)
            self._warm(name, rows)
            self._publish(name, now, rows)
        except Exception as e:  # keep serving what was last seen; the next request tries again
            log.warning("refreshing deployment %s from the catalog failed: %s", name, e)
        finally:
            self._refreshing.discard(name)

    def _warm(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Load the version unversioned requests are about to move to, when this replica serves an
        older one of that name (a version deployed through another replica), before they move."""
        ready = next((r for r in rows if r["status"] == "ready"), None)
        if ready is None or ready["id"] in self.loaded:
            return
        with self.lock:
            serving = any(lm.name == name for lm in self.loaded.values())
        if serving:
            try:
                self.load(ready["id"])
                log.info("loaded %s v%s (deployed through another replica) before moving requests to it",
                         name, ready["version"])
            except Exception as e:  # requests will try (and report) the load themselves
                log.warning("loading %s v%s ahead of its requests failed: %s", name, ready["version"], e)

    @staticmethod
    def _pick(name: str, rows: list[dict[str, Any]], version: str | int | None) -> dict[str, Any]:
        name = split_name(name)[1]  # messages name the deployment as its project knows it
        if not rows:
            raise ServingError(404, f"no deployment named '{name}'", "deployment_not_found")
        if version not in (None, ""):
            try:
                v = int(version)
            except (TypeError, ValueError):
                raise ServingError(400, f"version must be an integer, got {version!r}", "bad_version") from None
            row = next((r for r in rows if r["version"] == v), None)
            if row is None:
                raise ServingError(404, f"deployment '{name}' has no version {v} "
                                   f"(versions: {', '.join(str(r['version']) for r in rows)})", "version_not_found")
            if row["status"] != "ready":
                raise ServingError(503, f"deployment '{name}' version {v} is {row['status']}"
                                   + (f": {row['reason']}" if row.get("reason") else ""), "version_not_ready")
            return row
        ready = [r for r in rows if r["status"] == "ready"]
        if not ready:
            raise ServingError(503, f"deployment '{name}' has no ready version ("
                               + ", ".join(f"v{r['version']} {r['status']}" for r in rows) + ")", "not_ready")
        return ready[0]

    # ------------------------------------------------------------------ loading

    def get(self, row: dict[str, Any], name: str) -> Loaded:
        with self.lock:
            lm = self.loaded.get(row["id"])
            if lm is not None:
                self.loaded.move_to_end(row["id"])
                lm.last_used = time.monotonic()
                return lm
        lm = self.load(row["id"])
        return lm

    def load(self, deployment_id: str) -> Loaded:
        """Load (or return) a deployment's runner. Raises on failure with the runtime's reason."""

        with self.lock:
            if deployment_id in self.loaded:
                return self.loaded[deployment_id]
            gate = self._loading.setdefault(deployment_id, threading.Lock())
        with gate:  # concurrent first requests: one loads, the others wait and reuse it
            with self.lock:
                if deployment_id in self.loaded:
                    return self.loaded[deployment_id]
            try:
                return self._load(deployment_id)
            finally:
                with self.lock:
                    self._loading.pop(deployment_id, None)

    def _load(self, deployment_id: str) -> Loaded:
        from app.runners import open_runner
        from app.serving.batcher import Batcher

        with self.db.session() as s:
            d = repo.get_deployment(s, deployment_id)
            if d is None:
                raise ServingError(404, "deployment was deleted", "deployment_not_found")
            # a converted artifact, or the uploaded model itself (deployed by model_id)
            src = repo.get_artifact(s, d.artifact_id) if d.artifact_id else repo.get_model(s, d.model_id)
            if src is None:
                raise ServingError(404, "what this deployment serves was deleted", "deployment_not_found")
            files = [(f.path, f.sha256) for f in src.files]
            fmt, primary, size, src_id = src.format, src.primary_file, src.size_bytes, src.id
            name, version, runtime, batching = qualified(d.project_id, d.name), d.version, dict(d.runtime), \
                dict(d.batching)
        folder = self.root / src_id
        if not (folder / ".complete").exists():
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{src_id}-"))
            try:
                for path, sha in files:
                    dest = tmp / path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.store.get_to_path(blob_key(sha), dest)
                (tmp / ".complete").touch()
                try:
                    tmp.rename(folder)  # atomic; fails if another replica's load got there first
                except OSError:
                    if not (folder / ".complete").exists():
                        shutil.rmtree(folder, ignore_errors=True)
                        tmp.rename(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        t = time.perf_counter()
        runner = open_runner(fmt, folder, [p for p, _ in files], primary, precision=runtime.get("precision", "fp32"),
                             threads=runtime.get("threads") or self.default_threads)
        load_ms = (time.perf_counter() - t) * 1000
        inputs, outputs = runner.inputs(), runner.outputs()
        batcher, note = None, "unbatched (no batching configured)"
        mbs = int(batching.get("max_batch_size") or 1)
        if mbs > 1:
            if _dynamic_batch(inputs):
                on_batch = self.metrics.batch_observer(name, str(version)) if self.metrics else None
                batcher = Batcher(runner.run, max_batch_size=mbs,
                                  max_queue_delay_ms=float(batching.get("max_queue_delay_ms", 0)),
                                  executor=self.executor, on_batch=on_batch)
                note = f"dynamic batching up to {mbs} rows, {batching.get('max_queue_delay_ms', 0)} ms delay"
            else:
                note = "served unbatched: the model has no dynamic batch dimension"
        call_us, probed, out_bytes = _probe_us(runner, inputs)
        inline = call_us is not None and call_us < self.settings.serving_inline_us
        if inline:
            batcher, note = None, (f"runs inline on the event loop: a call takes {call_us:.0f} µs, less than "
                                   "handing it to a thread (MODELPORT_SERVING_INLINE_US)")
        lm = Loaded(deployment_id, name, version, fmt, runner, inputs, outputs, batcher, note, size, load_ms,
                    inline=inline, inline_sizes=probed, call_us=call_us, batching=batching,
                    dynamic_batch=_dynamic_batch(inputs), out_bytes_per_row=out_bytes)
        with self.lock:
            self.loaded[deployment_id] = lm
            self._evict()
        return lm

    def _evict(self) -> None:
        budget = self.budget_bytes
        while len(self.loaded) > 1 and sum(m.size_bytes for m in self.loaded.values()) > budget:
            _, victim = self.loaded.popitem(last=False)
            log.info("evicting %s v%s (LRU, memory budget)", victim.name, victim.version)
            self._close(victim)

    def _close(self, lm: Loaded) -> None:
        if lm.batcher is not None or lm.alt is not None:  # drain what they hold, then let go of the runner
            async def drain() -> None:
                for b in _batchers(lm):
                    await b.close()
                lm.runner.close()

            with contextlib.suppress(RuntimeError):  # no running loop here: hand it to the app's loop
                asyncio.get_running_loop().create_task(drain())
                return
            if self.loop is not None:
                asyncio.run_coroutine_threadsafe(drain(), self.loop)
                return
        lm.runner.close()

    def unload(self, deployment_ids: list[str]) -> None:
        with self.lock:
            victims = [self.loaded.pop(i) for i in deployment_ids if i in self.loaded]
        for v in victims:
            self._close(v)

    # ------------------------------------------------------------------ inference

    def batcher_for(self, lm: Loaded, mode: str | None):
        """The batcher a request goes through (None: unbatched), given its ``X-Modelport-Batching``
        header: absent = as deployed; ``off`` = no dynamic batching for this request (inline or
        the thread pool, as an unbatched deployment); ``on`` = through a dynamic batcher: the
        deployment's (also for a model fast enough to run inline), or, with
        ``on;max_batch_size=N[;max_queue_delay_ms=D]``, one of those settings (one such batcher per
        loaded version, replaced when other settings are asked for). The endpoint benchmark uses
        it to measure a deployment with and without batching. On the event loop only."""
        if mode is None:
            return lm.batcher
        want = _parse_batching(mode)
        if want is None:
            return None
        if want == ():
            if lm.batcher is not None:
                return lm.batcher
            mbs = int(lm.batching.get("max_batch_size") or 1)
            if mbs <= 1:
                raise ServingError(400, f"deployment '{split_name(lm.name)[1]}' has no dynamic batching configured: "
                                   "send X-Modelport-Batching: on;max_batch_size=N", "bad_batching")
            want = (mbs, float(lm.batching.get("max_queue_delay_ms") or 0))
        if not lm.dynamic_batch:
            raise ServingError(400, "this model has no dynamic batch dimension, so requests cannot be merged",
                               "bad_batching")
        if lm.alt is not None and lm.alt[0] == want:
            return lm.alt[1]
        from app.serving.batcher import Batcher

        old = lm.alt
        on_batch = self.metrics.batch_observer(lm.name, str(lm.version)) if self.metrics else None
        lm.alt = (want, Batcher(lm.runner.run, max_batch_size=want[0], max_queue_delay_ms=want[1],
                                executor=self.executor, on_batch=on_batch))
        if old is not None:
            asyncio.get_running_loop().create_task(old[1].close())
        return lm.alt[1]

    async def predict(self, lm: Loaded, feeds: dict[str, np.ndarray], batcher: Any = AS_DEPLOYED) -> dict[str, np.ndarray]:
        """Run ``feeds``: as deployed, or through ``batcher`` (None: unbatched), as :meth:`batcher_for` chose."""
        if batcher is AS_DEPLOYED:
            batcher = lm.batcher
        if batcher is None and lm.inline and all(a.size <= lm.inline_sizes.get(k, 0) for k, a in feeds.items()):
            return lm.runner.run(feeds)  # no bigger than what was measured to take < serving_inline_us
        if batcher is not None:
            return await batcher.submit(feeds)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lm.runner.run, feeds)

    async def close(self) -> None:
        with self.lock:
            items = list(self.loaded.values())
            self.loaded.clear()
        for lm in items:
            for b in _batchers(lm):
                await b.close()
            lm.runner.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
