"""Measure a runner on this host: cold load, first inference, steady-state latency per batch size.

Method (after NVIDIA perf_analyzer): time ``load()`` (cold load) and the first run at batch 1
(first inference); then, per batch size, run untimed warm-up iterations, then timed windows of
``window`` iterations each, and stop once the median latency of the last two windows differs by
less than ``stability`` (relative) with at least ``min_windows`` run -- or when ``max_windows``
or the time budget is hit, which the report says ("unstable: hit max windows" / "unstable: hit
max time"). Latency statistics are over every timed iteration of that batch size; throughput is
per *sample*: ``batch_size / mean latency``.

Overhead: feeds are built once per batch size before any timing and reused by every iteration;
the timed loop does nothing but ``perf_counter_ns(); run(feeds); perf_counter_ns()`` and a store
into a preallocated list, with the cyclic garbage collector paused (as ``timeit`` does).

Memory: ``VmHWM`` is reset (``5`` into ``/proc/self/clear_refs``) before the load, so
``VmHWM - VmRSS(before load)`` is the peak RSS growth. Where the reset is refused the figure is
an upper bound (the high-water mark may predate the load) and the report says so.

The host fingerprint comes from :func:`app.host.fingerprint`. Everything returned is plain JSON-able data.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app.host import _read, fingerprint
from app.runners.base import Runner
from app.runners.inputs import default_inputs, fixed_batch, input_shape  # noqa: F401 - the benchmark's inputs

MIB = 1024 * 1024
_clock = time.perf_counter_ns  # the one clock (a module global so tests can drive it)

# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    text = _read("/proc/self/status")
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _timer_overhead_ns(n: int = 2000) -> int:
    now = _clock
    best = None
    for _ in range(n):
        t0 = now()
        d = now() - t0
        if best is None or d < best:
            best = d
    return int(best or 0)


def _stats(lat_ns: list[int], batch_size: int) -> dict[str, Any]:
    a = np.asarray(lat_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mean = float(a.mean())
    return {
        "latency_ms": {
            "p50": round(float(p50), 6), "p90": round(float(p90), 6), "p99": round(float(p99), 6),
            "mean": round(mean, 6), "min": round(float(a.min()), 6), "max": round(float(a.max()), 6),
            "std": round(float(a.std()), 6),
        },
        "throughput_samples_per_s": round(batch_size * 1000.0 / mean, 3) if mean > 0 else None,
    }


def _measure(run: Callable[[dict], Any], feeds: dict, *, warmup: int, window: int, min_windows: int,
             max_windows: int, stability: float, deadline_ns: int) -> dict[str, Any]:
    now = _clock
    for _ in range(warmup):
        run(feeds)
        if now() > deadline_ns:
            break
    lat = [0] * (window * max_windows)
    medians: list[float] = []
    k, stop = 0, "unstable: hit max windows"
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        out_of_time = False
        while len(medians) < max_windows:
            start = k
            for _ in range(window):
                t0 = now()
                run(feeds)
                t1 = now()
                lat[k] = t1 - t0
                k += 1
                if t1 > deadline_ns:
                    out_of_time = True
                    break
            if out_of_time and k - start < window:
                stop = "unstable: hit max time"
                break
            medians.append(float(np.median(lat[start:k])))
            if len(medians) >= max(min_windows, 2):
                a, b = medians[-2], medians[-1]
                if abs(a - b) < stability * min(a, b) or (stability > 0 and a == b):
                    stop = "stable"
                    break
            if out_of_time:
                stop = "unstable: hit max time"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"lat": lat[:k], "window_p50_ms": [round(m / 1e6, 6) for m in medians], "stop": stop}


def _error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}" if msg else type(e).__name__


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, bool | int | float | str):
        return x
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def benchmark(
    load: Callable[[], Runner],
    *,
    batch_sizes: tuple[int, ...] | list[int] = (1, 8),
    warmup: int = 5,
    window: int = 20,
    min_windows: int = 3,
    max_windows: int = 30,
    stability: float = 0.05,
    max_seconds: float = 60,
    seed: int = 0,
    inputs_for: Callable[[int], dict[str, np.ndarray]] | None = None,
    plan: Any = None,
) -> dict[str, Any]:
    """Load a runner with ``load()`` and measure it; returns a JSON-able report.

    ``max_seconds`` bounds the measuring (warm-up and timed windows) of all batch sizes
    together: each batch size gets an equal share of what is left, so time a quick-to-settle
    size leaves unused goes to the next ones. The load and the first inference are not bounded.
    Stability compares two windows, so at least two run even with ``min_windows=1``;
    ``stability=0`` never stops early (runs ``max_windows`` or until the time is up).
    ``inputs_for(batch_size)`` replaces the generated feeds; generated ones take dynamic sizes and
    integer ranges from ``plan`` (a runnable-input search, :mod:`app.runners.search`). Every batch size gets at least one
    untimed run before its warm-up (the first inference for batch 1), which is where a model that
    can't take that batch fails: that size is then reported ``"failed: <error>"``, the others go on.
    ``load()`` or the first inference raising propagates (nothing to measure).
    """
    if window < 1 or min_windows < 1 or max_windows < max(min_windows, 1) or warmup < 0:
        raise ValueError("need window >= 1, 1 <= min_windows <= max_windows, warmup >= 0")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError("batch sizes must be >= 1")
    batch_sizes = [int(b) for b in dict.fromkeys(batch_sizes)]
    now = _clock
    t_start = now()

    # ---- cold load, with the RSS high-water mark reset just before
    gc.collect()
    hwm_reset = _reset_hwm()
    rss_before = _status_kib("VmRSS")
    t0 = now()
    runner = load()
    load_ns = now() - t0
    hwm_after_load = _status_kib("VmHWM")

    try:
        specs = list(runner.inputs())
        pinned = fixed_batch(specs)

        def feeds_for(bs: int) -> dict[str, np.ndarray]:
            return dict(inputs_for(bs)) if inputs_for is not None else default_inputs(specs, bs, seed, plan)

        # ---- first inference: batch 1 (or the batch the model is pinned to)
        first_bs = 1 if pinned is None else pinned
        feeds_cache: dict[int, dict[str, np.ndarray]] = {first_bs: feeds_for(first_bs)}
        t0 = now()
        runner.run(feeds_cache[first_bs])
        first_ns = now() - t0

        timer_ns = _timer_overhead_ns()
        results: dict[str, dict[str, Any]] = {}
        budget_end = now() + int(max_seconds * 1e9)
        for i, bs in enumerate(batch_sizes):
            entry: dict[str, Any] = {"batch_size": bs}
            results[str(bs)] = entry
            if pinned is not None and bs != pinned:
                entry.update(possible=False, status=f"skipped: input batch dim is fixed at {pinned}")
                continue
            remaining = [b for b in batch_sizes[i:] if pinned is None or b == pinned]
            if i > 0 and now() >= budget_end:  # max_seconds is spent: the rest are not run at all
                entry.update(possible=None, status=f"skipped: max_seconds ({max_seconds:g} s) ran out")
                continue
            share = max(0, budget_end - now()) // len(remaining)
            try:
                feeds = feeds_cache.pop(bs, None) or feeds_for(bs)
                entry["input_shapes"] = {k: list(v.shape) for k, v in feeds.items()}
                if bs != first_bs:
                    runner.run(feeds)  # the untimed probe: can this batch run at all?
                m = _measure(runner.run, feeds, warmup=warmup, window=window, min_windows=min_windows,
                             max_windows=max_windows, stability=stability, deadline_ns=now() + share)
            except Exception as e:  # noqa: BLE001 - a batch size the model can't take is a result
                entry.update(possible=False, status=f"failed: {_error(e)}")
                continue
            entry.update(possible=True, status="ok", stop=m["stop"], iterations=len(m["lat"]),
                         windows=len(m["window_p50_ms"]), **_stats(m["lat"], bs),
                         window_p50_ms=m["window_p50_ms"])
            del feeds, m

        hwm_end = _status_kib("VmHWM")
        info = runner.info
    finally:
        runner.close()

    memory: dict[str, Any] = {"rss_before_mib": None, "load_peak_rss_growth_mib": None,
                              "peak_rss_growth_mib": None, "hwm_reset": hwm_reset}
    if rss_before is None or hwm_after_load is None:
        memory["note"] = "no /proc/self/status on this OS: RSS not measured"
    else:
        memory.update(
            rss_before_mib=round(rss_before / 1024, 1),
            load_peak_rss_growth_mib=round(max(0, hwm_after_load - rss_before) / 1024, 1),
            peak_rss_growth_mib=round(max(0, (hwm_end or hwm_after_load) - rss_before) / 1024, 1),
        )
        memory["note"] = (
            "VmHWM reset before load: peak growth over RSS before load" if hwm_reset else
            "VmHWM could not be reset (clear_refs refused): growth is an upper bound")

    return _jsonable({
        "runner": {"runtime": info.runtime, "version": info.version, "precision": info.precision,
                   "threads": info.threads, "device": info.device, "details": info.details},
        "threads": info.threads,
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs],
        "fixed_batch": pinned,
        "load_ms": round(load_ns / 1e6, 3),
        "first_inference_ms": round(first_ns / 1e6, 3),
        "first_inference_batch": first_bs,
        "memory": memory,
        "batch_sizes": results,
        "settings": {"batch_sizes": batch_sizes, "warmup": warmup, "window": window,
                     "min_windows": min_windows, "max_windows": max_windows, "stability": stability,
                     "max_seconds": max_seconds, "seed": seed,
                     "inputs": "caller" if inputs_for is not None else "generated",
                     "input_plan": plan.to_dict() if plan is not None and inputs_for is None else None,
                     "throughput": "batch_size / mean latency (samples/s)"},
        "timer_overhead_ns": timer_ns,
        "total_s": round((now() - t_start) / 1e9, 3),
        "fingerprint": fingerprint(),
    })
