"""Benchmarks through the endpoint: ``POST /v1/deployments/{name}/benchmark``.

Every other benchmark is in-process (app/pipeline/benchmark.py: the runner, no HTTP). This one
measures what an application gets: a perf_analyzer-style concurrency sweep (app/serving/loadgen.py:
concurrency 1, 2, 4, … until throughput grows by less than 5 %, stable measurement windows) against
the deployment's own ``/v2/models/{name}/versions/{v}/infer`` over loopback, once through its
dynamic batcher and once without (the ``X-Modelport-Batching`` header, ModelCache.batcher_for):

* The request returns at once (202) with the benchmark's id; the sweep runs as a bounded
  background task of the process that took the request (``max_seconds``, plus a margin for the
  load generator to stop), whose clients run in a child process, so neither the handler nor the
  event loop waits on it. Progress and results are in the catalog (``endpoint_benchmarks``), so
  ``GET /v1/deployments/{name}/benchmark/{id}`` answers from any worker or replica.
* The clients connect to the address the request came in on, so under `modelport serve --workers N`
  they reach every worker (each point records which worker pids answered), and on several
  hosts they measure the replica that took the request.
* One sweep at a time: a second is refused (409) while one is running anywhere on the catalog —
  two at once would measure each other. A sweep whose process stopped heartbeating for
  ``STALE_S`` reads as failed.
* The request uses the deployment's input signature (the one input generator,
  app/runners/inputs.py), ``rows`` rows per request, as Triton's binary tensor extension
  (``v2_binary``, what tritonclient sends) or v2 JSON. The caller's API key authenticates the
  clients (handed to the child on stdin, never stored).
* The newest finished sweep of each artifact shows in its model's format report beside the
  in-process numbers (app/pipeline/report.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import sys
import tempfile
import time
from typing import Any
from urllib.parse import quote

import anyio

from app.catalog import repo
from app.catalog.tables import utcnow
from app.errors import Conflict, NotFound, Unprocessable
from app.serving.runtime import split_name

log = logging.getLogger("modelport.serving.bench")

STALE_S = 60.0  # a running sweep whose process has not heartbeat for this long reads as failed
BEAT_S = 5.0
MARGIN_S = 120.0  # beyond max_seconds: the load generator finishing its last window and stopping


def _runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.UTC) if t is not None and t.tzinfo is None else t


def _iso(t: dt.datetime | None) -> str | None:
    return _aware(t).isoformat() if t is not None else None


def view(b) -> dict[str, Any]:
    status, reason = b.status, b.reason
    beat = _aware(b.heartbeat_at)
    if status == "running" and beat < utcnow() - dt.timedelta(seconds=STALE_S):
        status, reason = "failed", (f"the process running it ({b.runner}) stopped before it finished: no heartbeat "
                                    f"since {beat.isoformat()}")
    return {"id": b.id, "name": b.name, "version": b.version, "deployment_id": b.deployment_id,
            "model_id": b.model_id, "artifact_id": b.artifact_id, "status": status, "reason": reason,
            "settings": b.settings, "results": b.results, "runner": b.runner, "created_at": _iso(b.created_at),
            "finished_at": _iso(b.finished_at),
            "links": {"self": f"/v1/deployments/{b.name}/benchmark/{b.id}"}}


def credentials(headers) -> dict[str, str]:
    """The request headers that authenticate it, for the load generator's requests."""
    return {k: v for k in ("Authorization", "X-API-Key") if (v := headers.get(k))}


def _tasks(state) -> set[asyncio.Task]:
    tasks = getattr(state, "endpoint_benchmarks", None)
    if tasks is None:
        tasks = state.endpoint_benchmarks = set()
    return tasks


async def start(state, qname: str, options: dict[str, Any], server: tuple | None,
                auth: dict[str, str]) -> dict[str, Any]:
    """Check, record and start a sweep of deployment ``qname``; its view (status ``running``)."""
    options = {**options, "modes": list(dict.fromkeys(options["modes"]))}
    row = await state.models.aresolve(qname, options.get("version"))
    host, port = (server[0], int(server[1])) if server else (state.settings.host, state.settings.port)
    bench = await anyio.to_thread.run_sync(_create, state.db, qname, row["id"], options)
    task = asyncio.get_running_loop().create_task(_run(state, bench["id"], qname, row, options, host, port, auth))
    tasks = _tasks(state)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return bench


def _create(db, qname: str, deployment_id: str, options: dict[str, Any]) -> dict[str, Any]:
    project, name = split_name(qname)
    with db.session() as s:
        busy = repo.running_endpoint_benchmarks(s, utcnow() - dt.timedelta(seconds=STALE_S))
        if busy:
            b = busy[0]
            mine = b.project_id == project
            raise Conflict("an endpoint benchmark is already running (" + (f"{b.id}, on '{b.name}'" if mine else
                           "another project's") + f", in {b.runner}, since {_iso(b.created_at)}): two at once "
                           "would measure each other; wait for it to finish", code="benchmark_running",
                           detail={"id": b.id} if mine else {})
        d = repo.get_deployment(s, deployment_id)
        if d is None:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
        model_id = d.model_id
        if model_id is None:
            art = repo.get_artifact(s, d.artifact_id)
            if art is None:
                raise NotFound("the artifact this deployment serves was deleted", code="artifact_not_found")
            model_id = art.model_id
        b = repo.add_endpoint_benchmark(s, project_id=project, model_id=model_id, artifact_id=d.artifact_id,
                                        deployment_id=d.id, name=name, version=d.version, status="running",
                                        settings=options, results={}, runner=_runner_id(), heartbeat_at=utcnow())
        return view(b)


async def get(state, qname: str, bench_id: str, wait: float = 0.0) -> dict[str, Any]:
    """The sweep's view; with ``wait``, long-poll up to that many seconds until it is not running."""
    project, name = split_name(qname)
    deadline = time.monotonic() + wait
    while True:
        v = await anyio.to_thread.run_sync(_get, state.db, bench_id, project, name)
        left = deadline - time.monotonic()
        if v["status"] != "running" or left <= 0:
            return v
        await asyncio.sleep(min(0.25, left))  # the catalog is the truth across workers: read it again


def _get(db, bench_id: str, project: str, name: str) -> dict[str, Any]:
    with db.session() as s:
        b = repo.get_endpoint_benchmark(s, bench_id, project)
        if b is None or b.name != name:
            raise NotFound(f"deployment '{name}' has no endpoint benchmark '{bench_id}'",
                           code="endpoint_benchmark_not_found")
        return view(b)


async def stop_all(state) -> None:
    """At shutdown: stop the sweeps this process runs (each is recorded as failed, saying why)."""
    tasks = list(_tasks(state))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# The background task
# --------------------------------------------------------------------------------------------

def _modes(lm, options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, str]]:
    """The sweeps to run (name, header), how each batches, and the modes skipped with why."""
    modes, batching, skipped = [], {}, {}
    for m in options["modes"]:
        if m == "unbatched":
            modes.append({"name": m, "headers": {"X-Modelport-Batching": "off"}})
            batching[m] = None
            continue
        if not lm.dynamic_batch:
            skipped[m] = "the model has no dynamic batch dimension, so requests cannot be merged"
            continue
        mbs = int(lm.batching.get("max_batch_size") or 1)
        if mbs > 1:
            header = "on"
            batching[m] = {"max_batch_size": mbs, "max_queue_delay_ms": float(lm.batching.get("max_queue_delay_ms")
                                                                                or 0), "from": "the deployment"}
        else:
            size, delay = options["max_batch_size"], float(options["max_queue_delay_ms"])
            header = f"on;max_batch_size={size};max_queue_delay_ms={delay:g}"
            batching[m] = {"max_batch_size": size, "max_queue_delay_ms": delay,
                           "from": "this benchmark's request (the deployment has no batching configured)"}
        modes.append({"name": m, "headers": {"X-Modelport-Batching": header}})
    return modes, batching, skipped


def _request(lm, rows: int, protocol: str) -> tuple[bytes, dict[str, str]]:
    """One request body for the deployment's inputs, and its content headers."""
    from app.runners.inputs import default_inputs
    from app.serving import codec

    feeds = default_inputs(lm.inputs, rows)
    if protocol == "v2_json":
        doc = {"inputs": [{"name": k, "shape": list(a.shape), "datatype": codec.datatype_of(a.dtype),
                           "data": a.ravel().tolist()} for k, a in feeds.items()]}
        return json.dumps(doc).encode(), {"Content-Type": "application/json"}
    if any(a.dtype.kind in "OSU" for a in feeds.values()):
        raise Unprocessable("v2_binary needs numeric inputs; use protocol v2_json for this model",
                            code="bad_benchmark_protocol")
    header = json.dumps({
        "inputs": [{"name": k, "shape": list(a.shape), "datatype": codec.datatype_of(a.dtype),
                    "parameters": {"binary_data_size": a.nbytes}} for k, a in feeds.items()],
        "outputs": [{"name": o.name, "parameters": {"binary_data": True}} for o in lm.outputs]}).encode()
    body = header + b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in feeds.values())
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def _save(db, bench_id: str, **fields: Any) -> None:
    with db.session() as s:
        repo.update_endpoint_benchmark(s, bench_id, **fields)


async def _heartbeat(db, bench_id: str) -> None:
    while True:
        await asyncio.sleep(BEAT_S)
        with contextlib.suppress(Exception):  # a catalog blip: the next beat tries again
            await anyio.to_thread.run_sync(lambda: _save(db, bench_id, heartbeat_at=utcnow()))


async def _run(state, bench_id: str, qname: str, row: dict[str, Any], options: dict[str, Any], host: str, port: int,
               auth: dict[str, str]) -> None:
    db = state.db
    beat = asyncio.get_running_loop().create_task(_heartbeat(db, bench_id))
    proc, body_path = None, None
    results: dict[str, Any] = {}
    try:
        lm = await anyio.to_thread.run_sync(state.models.get, row, qname)
        modes, batching, skipped = _modes(lm, options)
        if not modes:
            raise Unprocessable("nothing to measure: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        body, headers = _request(lm, options["rows"], options["protocol"])
        path = f"/v2/models/{quote(split_name(qname)[1], safe='')}/versions/{row['version']}/infer"
        results = {"path": path, "address": f"{host}:{port}", "protocol": options["protocol"], "rows": options["rows"],
                   "body_bytes": len(body), "serving": lm.batching_note,
                   "serving_workers": getattr(state.settings, "serving_workers", 1),
                   "host": {"cpus": os.cpu_count(), "load_average_start": list(os.getloadavg())},
                   "modes": {m["name"]: {"batching": batching[m["name"]], "points": [], "stop_reason": None,
                                         "best": None} for m in modes},
                   "skipped": skipped}
        await anyio.to_thread.run_sync(lambda: _save(db, bench_id, results=results))
        fd, body_path = tempfile.mkstemp(dir=state.settings.tmp_dir, prefix="endpoint-bench-")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        cfg = {"host": host, "port": port, "path": path, "headers": {**headers, **auth}, "body_path": body_path,
               "modes": modes, **{k: options[k] for k in ("rows", "max_concurrency", "growth_pct", "stability_pct",
                                                          "window_ms", "min_window_requests", "max_windows",
                                                          "max_seconds")}}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app.serving.loadgen",
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        proc.stdin.write(json.dumps(cfg).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        errors = asyncio.get_running_loop().create_task(proc.stderr.read())
        done = False
        async with asyncio.timeout(float(options["max_seconds"]) + MARGIN_S):
            while line := await proc.stdout.readline():
                ev = json.loads(line)
                if ev["event"] == "point":
                    results["modes"][ev["mode"]]["points"].append(ev["point"])
                elif ev["event"] == "mode":
                    results["modes"][ev["mode"]].update(ev["result"])
                elif ev["event"] == "done":
                    done = True
                await anyio.to_thread.run_sync(lambda: _save(db, bench_id, results=results, heartbeat_at=utcnow()))
            rc = await proc.wait()
        err = (await errors).decode("utf-8", "replace")
        if rc != 0 or not done:
            raise RuntimeError(f"the load generator exited with {rc}: {err[-1500:]}")
        results["host"]["load_average_end"] = list(os.getloadavg())
        await anyio.to_thread.run_sync(lambda: _save(db, bench_id, status="succeeded", results=results,
                                                     finished_at=utcnow()))
    except asyncio.CancelledError:
        _kill(proc)
        _save(db, bench_id, status="failed", reason="the server stopped before the benchmark finished",
              results=results, finished_at=utcnow())
        raise
    except Exception as e:
        _kill(proc)
        reason = e.message if hasattr(e, "message") else f"{type(e).__name__}: {e}"
        if isinstance(e, TimeoutError):
            reason = f"the sweep ran past max_seconds + {MARGIN_S:.0f} s and was stopped"
        log.warning("endpoint benchmark %s failed: %s", bench_id, reason)
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(lambda: _save(db, bench_id, status="failed", reason=reason[:4000],
                                                         results=results, finished_at=utcnow()))
    finally:
        beat.cancel()
        if body_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(body_path)


def _kill(proc) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
