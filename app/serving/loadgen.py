"""The load generator of the endpoint benchmark: a perf_analyzer-style concurrency sweep against a
deployment's own HTTP endpoint, run in a child process of the server (so the clients never share
the server's event loop) by app/serving/endpoint_bench.py.

    python -m app.serving.loadgen < config.json      # JSON lines on stdout, one per measured point

Method (perf_analyzer's, with Model Navigator's stop rule):

* **Concurrency** 1, 2, 4, … : that many clients, each on its own keep-alive connection, each
  sending the next request as soon as its previous answer arrived (closed loop).
* **Stable windows**: per concurrency, one untimed warm-up window, then measurement windows of
  ``window_ms`` (extended until ``min_window_requests`` answers arrived, up to 10 windows' time),
  repeated until the last 3 agree: their throughput and their p50 latency each within
  ``stability_pct`` of the three's mean — or until ``max_windows`` (the point is then reported
  ``stable: false``, with why). The point's numbers are those of the last 3 windows: throughput =
  answers / time, latency percentiles over every answer in them, measured at the client (send to
  last byte), as perf_analyzer measures.
* **Stop rule**: after each doubling, stop once throughput grew by less than ``growth_pct``
  (default 5 %) over the previous concurrency; also at ``max_concurrency``, at the time budget, or
  at the first point with failed requests (named).

The HTTP client is asyncio with httptools' response parser (the parser uvicorn uses) and one
pre-built request: per request it writes bytes and parses a response, so on a small host it takes
as little CPU from the server as a Python client can."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

now = time.perf_counter


# --------------------------------------------------------------------------------------------
# The rules (pure: unit-tested without a server)
# --------------------------------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank on the sorted values), None for no values."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def window_stats(latencies_s: list[float], seconds: float, errors: int = 0) -> dict[str, Any]:
    p50 = percentile(latencies_s, 50)
    return {"requests": len(latencies_s), "errors": errors, "seconds": seconds,
            "rps": len(latencies_s) / seconds if seconds > 0 else 0.0,
            "p50_ms": None if p50 is None else p50 * 1e3}


def stable(windows: list[dict[str, Any]], pct: float) -> bool:
    """The last 3 windows agree: throughput and p50 each within ``pct`` % of their mean."""
    if len(windows) < 3:
        return False
    last = windows[-3:]
    for key in ("rps", "p50_ms"):
        vals = [w[key] for w in last]
        if any(v is None for v in vals):
            return False
        mean = sum(vals) / 3
        if mean <= 0 or any(abs(v - mean) > pct / 100 * mean for v in vals):
            return False
    return True


def point(concurrency: int, windows: list[dict[str, Any]], latencies_s: list[float], rows: int, *,
          is_stable: bool, why: str | None, workers: dict[str, int] | None = None) -> dict[str, Any]:
    """One concurrency's result from its last (up to 3) windows and their latencies."""
    last = windows[-3:]
    secs = sum(w["seconds"] for w in last)
    n = sum(w["requests"] for w in last)
    rps = n / secs if secs > 0 else 0.0

    def ms(q: float) -> float | None:
        v = percentile(latencies_s, q)
        return None if v is None else round(v * 1e3, 4)

    return {"concurrency": concurrency, "requests": n, "errors": sum(w["errors"] for w in windows),
            "seconds": round(secs, 4), "throughput_rps": round(rps, 2), "throughput": round(rps * rows, 2),
            "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99),
            "mean_ms": round(sum(latencies_s) / len(latencies_s) * 1e3, 4) if latencies_s else None,
            "stable": is_stable, "unstable_reason": why, "windows": len(windows),
            "window_rps": [round(w["rps"], 2) for w in windows], "answered_by": workers or {}}


async def sweep(measure: Callable[[int], Awaitable[dict[str, Any]]], *, max_concurrency: int, growth_pct: float,
                deadline: float, clock: Callable[[], float] = now,
                on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Concurrency 1, 2, 4, … through ``measure(c)`` until throughput stops growing by
    ``growth_pct`` %, ``max_concurrency`` is reached, a point has errors, or ``deadline``."""
    points: list[dict[str, Any]] = []
    c, reason = 1, None
    while reason is None:
        if clock() >= deadline:
            reason = "time budget (max_seconds) used up" + (f" before concurrency {c}" if points else "")
            break
        p = await measure(c)
        points.append(p)
        if on_point is not None:
            on_point(p)
        if p["errors"]:
            reason = f"{p['errors']} failed request(s) at concurrency {c}" + (
                f": {p['error_sample']}" if p.get("error_sample") else "")
        elif len(points) >= 2 and points[-2]["throughput_rps"] > 0 and \
                p["throughput_rps"] < points[-2]["throughput_rps"] * (1 + growth_pct / 100):
            growth = p["throughput_rps"] / points[-2]["throughput_rps"] - 1
            reason = (f"throughput grew {growth * 100:+.1f}% from concurrency {points[-2]['concurrency']} to {c} "
                      f"(less than {growth_pct:g}%)")
        elif c * 2 > max_concurrency:
            reason = f"reached max_concurrency {max_concurrency}"
        c *= 2
    good = [p for p in points if not p["errors"]]
    best = max(good, key=lambda p: p["throughput_rps"]) if good else None
    return {"points": points, "stop_reason": reason,
            "best": None if best is None else {k: best[k] for k in ("concurrency", "throughput_rps", "throughput",
                                                                     "p50_ms", "p99_ms")}}


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------

class _Conn(asyncio.Protocol):
    """One keep-alive connection: write a request, parse its response (httptools)."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.worker = ""
        self.body: list[bytes] = []
        self._header: bytes = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as e:  # a malformed response: this connection is done
            self._fail(ConnectionError(f"bad response: {e}"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    def _fail(self, exc: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-modelport-worker":
            self.worker = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.parser.get_status_code() != 200:  # kept for the error message only
            self.body.append(body)

    def on_message_complete(self) -> None:
        w, self.waiter = self.waiter, None
        status = self.parser.get_status_code()
        body, self.body = b"".join(self.body), []
        if w is not None and not w.done():
            w.set_result((status, body, self.parser.should_keep_alive()))


class Load:
    """``concurrency`` closed-loop clients sending ``request`` to host:port, recording
    (completion time, latency, status, worker) per answer into ``self.done``."""

    def __init__(self, host: str, port: int, request: bytes):
        self.host, self.port, self.request = host, port, request
        self.done: list[tuple[float, float, int, str]] = []
        self.error_sample: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._conns: list[_Conn] = []

    async def _client(self) -> None:
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        while True:
            if conn is None or conn.closed:
                try:
                    _, conn = await loop.create_connection(_Conn, self.host, self.port)
                except OSError as e:
                    self.done.append((now(), 0.0, 0, ""))
                    self.error_sample = self.error_sample or f"cannot connect: {e}"
                    await asyncio.sleep(0.05)
                    continue
                self._conns.append(conn)
            fut = loop.create_future()
            conn.waiter = fut
            t0 = now()
            conn.transport.write(self.request)
            try:
                status, body, keep = await fut
            except ConnectionError as e:
                self.done.append((now(), now() - t0, 0, ""))
                self.error_sample = self.error_sample or str(e)
                conn = None
                continue
            t1 = now()
            self.done.append((t1, t1 - t0, status, conn.worker))
            if status != 200 and self.error_sample is None:
                self.error_sample = f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
            if not keep:
                conn.transport.close()
                conn = None

    def start(self, concurrency: int) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._client()) for _ in range(concurrency)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in self._conns:
            if c.transport is not None:
                c.transport.close()
        self._tasks, self._conns = [], []


async def measure_level(host: str, port: int, request: bytes, concurrency: int, rows: int, *, window_ms: float,
                        min_window_requests: int, max_windows: int, stability_pct: float,
                        deadline: float) -> dict[str, Any]:
    """One concurrency: warm up one window, then windows until stable (see the module doc)."""
    load = Load(host, port, request)
    load.start(concurrency)
    window_s = window_ms / 1000
    try:
        await asyncio.sleep(window_s)  # warm-up: untimed
        windows: list[dict[str, Any]] = []
        lat_windows: list[list[float]] = []
        workers: dict[str, int] = {}
        i = len(load.done)
        why = None
        while True:
            t0 = now()
            await asyncio.sleep(window_s)
            while len(load.done) - i < min_window_requests and now() - t0 < 10 * window_s and now() < deadline:
                await asyncio.sleep(window_s / 10)  # a slow model: the window grows until it holds enough answers
            t1 = now()
            chunk, i = load.done[i:], len(load.done)
            ok = [lat for _, lat, status, _ in chunk if status == 200]
            for *_, w in chunk:
                workers[w] = workers.get(w, 0) + 1
            windows.append(window_stats(ok, t1 - t0, len(chunk) - len(ok)))
            lat_windows.append(ok)
            if windows[-1]["errors"]:
                why = "failed requests"
                break
            if stable(windows, stability_pct):
                break
            if len(windows) >= max_windows:
                why = f"not stable within {max_windows} windows (±{stability_pct:g}%)"
                break
            if now() >= deadline:
                why = "time budget (max_seconds) used up"
                break
        lats = [x for w in lat_windows[-3:] for x in w]
        p = point(concurrency, windows, lats, rows, is_stable=why is None, why=why,
                  workers={k: v for k, v in workers.items() if k})
        if p["errors"]:
            p["error_sample"] = load.error_sample
        return p
    finally:
        await load.stop()


def build_request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def run(cfg: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    host, port, rows = cfg["host"], int(cfg["port"]), int(cfg["rows"])
    with open(cfg["body_path"], "rb") as f:
        body = f.read()
    modes = cfg["modes"]
    budget = float(cfg["max_seconds"]) / max(1, len(modes))  # each mode its share of the time
    for mode in modes:
        request = build_request(host, port, cfg["path"], {**cfg["headers"], **mode["headers"]}, body)
        deadline = now() + budget

        async def measure(c: int, request: bytes = request, deadline: float = deadline) -> dict[str, Any]:
            return await measure_level(host, port, request, c, rows, window_ms=float(cfg["window_ms"]),
                                       min_window_requests=int(cfg["min_window_requests"]),
                                       max_windows=int(cfg["max_windows"]), stability_pct=float(cfg["stability_pct"]),
                                       deadline=deadline)

        result = await sweep(measure, max_concurrency=int(cfg["max_concurrency"]), growth_pct=float(cfg["growth_pct"]),
                             deadline=deadline,
                             on_point=lambda p, m=mode["name"]: emit({"event": "point", "mode": m, "point": p}))
        emit({"event": "mode", "mode": mode["name"], "result": result})


def _watch_parent(parent: int) -> None:
    """Stop once the server that started this sweep is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(3)


def main() -> int:
    import threading

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    cfg = json.loads(sys.stdin.read())

    def emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # plain asyncio works too, a little slower per request
        runner = asyncio.run
    runner(run(cfg, emit))
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
