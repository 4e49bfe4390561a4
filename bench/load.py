"""Load against a real `modelport serve` (started here on a free loopback port, stopped at the end):

  predict  N concurrent v1 /predict clients (JSON, the tiny [batch, 8] ONNX classifier deployed as
           uploaded, dynamic batching up to 16 rows) for S seconds; the same deployment with one
           client first, as the baseline: requests, errors (anything but 200, and transport
           errors), p50/p99/max latency, throughput, and the ratios to one client.
  upload   M concurrent raw uploads of distinct SafeTensors files of SIZE MiB each, streamed from a
           generator (no file on the client side): every status, the server's RSS before, its peak
           (VmHWM, reset first) and the growth, beside one upload alone as the baseline.

    .venv/bin/python bench/load.py predict --clients 200 --seconds 60
    .venv/bin/python bench/load.py upload --clients 20 --size-mb 200

Loopback only; request loops are bounded by count and time. Exits 1 when any request failed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, "MODELPORT_DATA_DIR": str(data), "MODELPORT_LOG_LEVEL": "warning",
            **{f"MODELPORT_{k.upper()}": str(v) for k, v in env.items()}}
    log = open(data.parent / "serve.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT, env=full,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("modelport serve did not start: " + (data.parent / "serve.log").read_text()[-2000:])
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


# ------------------------------------------------------------------ predict


async def _clients(base: str, n: int, seconds: float, max_requests: int) -> dict:
    import httpx

    body = json.dumps({"inputs": {"x": [[0.5] * 8]}}).encode()
    lat: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
        async def one() -> None:
            while time.monotonic() < stop_at and len(lat) + sum(errors.values()) < max_requests:
                t = time.perf_counter()
                try:
                    r = await c.post("/v1/deployments/load/predict", content=body,
                                     headers={"Content-Type": "application/json"})
                    if r.status_code == 200:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        took = time.monotonic() - t0
    return {"clients": n, "seconds": round(took, 1), "ok": len(lat), "errors": errors,
            "p50_ms": round(pct(lat, 0.5) * 1e3, 2), "p99_ms": round(pct(lat, 0.99) * 1e3, 2),
            "max_ms": round(max(lat, default=float("nan")) * 1e3, 2), "rps": round(len(lat) / took, 1)}


def predict(args) -> int:
    import httpx

    from tests import models

    with tempfile.TemporaryDirectory(prefix="modelport-load-") as d:
        proc, base = start_server(Path(d) / "data")
        try:
            onnx = models.onnx_model(Path(d))[0]
            m = httpx.post(f"{base}/v1/models", params={"filename": onnx.name}, content=onnx.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"}, timeout=120).json()
            r = httpx.post(f"{base}/v1/deployments", json={"name": "load", "model_id": m["id"],
                                                           "batching": {"max_batch_size": args.max_batch_size}}, timeout=120)
            assert r.status_code == 201, r.text
            base1 = asyncio.run(_clients(base, 1, min(10.0, args.seconds), args.max_requests))
            many = asyncio.run(_clients(base, args.clients, args.seconds, args.max_requests))
            rss = status(proc.pid)
        finally:
            stop(proc)
    for row in (base1, many):
        print(json.dumps(row))
    print(f"ratio {args.clients} clients / 1 client: p50 x{many['p50_ms'] / base1['p50_ms']:.1f}, "
          f"p99 x{many['p99_ms'] / base1['p99_ms']:.1f}, throughput x{many['rps'] / base1['rps']:.2f}; "
          f"errors {sum(many['errors'].values())} of {many['ok'] + sum(many['errors'].values())}; "
          f"server RSS {rss.get('VmRSS', 0) / 1024:.0f} MiB (peak {rss.get('VmHWM', 0) / 1024:.0f})")
    return 1 if many["errors"] or base1["errors"] else 0


# ------------------------------------------------------------------ upload


def _safetensors(size: int, seed: int):
    """A SafeTensors file of ``size`` bytes of U8 data, as chunks (nothing kept in memory)."""
    import numpy as np

    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    yield len(header).to_bytes(8, "little") + header
    rng = np.random.default_rng(seed)
    left = size
    while left:
        n = min(left, 4 * 1024**2)
        yield rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        left -= n


async def _uploads(base: str, n: int, size: int, seed0: int) -> dict:
    import httpx

    async def gen(seed):
        for chunk in _safetensors(size, seed):
            yield chunk

    async with httpx.AsyncClient(base_url=base, timeout=1800) as c:
        async def one(i: int) -> tuple[int, float]:
            t = time.perf_counter()
            r = await c.post("/v1/models", params={"filename": f"u{seed0 + i}.safetensors"}, content=gen(seed0 + i),
                             headers={"Content-Type": "application/octet-stream"})
            return r.status_code, time.perf_counter() - t

        t0 = time.monotonic()
        got = await asyncio.gather(*(one(i) for i in range(n)))
        took = time.monotonic() - t0
    statuses: dict[int, int] = {}
    for s, _ in got:
        statuses[s] = statuses.get(s, 0) + 1
    return {"uploads": n, "size_mib": size // 1024**2, "statuses": statuses, "seconds": round(took, 1),
            "mib_per_s": round(n * size / 1024**2 / took, 1), "slowest_s": round(max(t for _, t in got), 1)}


def upload(args) -> int:
    size = args.size_mb * 1024**2
    with tempfile.TemporaryDirectory(prefix="modelport-load-", dir=args.tmp_root) as d:
        proc, base = start_server(Path(d) / "data")
        try:
            rows = []
            for n, seed in ((1, 10_000), (args.clients, 0)):
                before = status(proc.pid)["VmRSS"]
                Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
                row = asyncio.run(_uploads(base, n, size, seed))
                st = status(proc.pid)
                row.update(rss_before_mib=round(before / 1024, 1), rss_peak_mib=round(st["VmHWM"] / 1024, 1),
                           rss_growth_mib=round((st["VmHWM"] - before) / 1024, 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop(proc)
    one, many = rows
    print(f"{args.clients} concurrent uploads of {args.size_mb} MiB: peak RSS growth {many['rss_growth_mib']} MiB "
          f"(one upload alone: {one['rss_growth_mib']} MiB); {many['mib_per_s']} MiB/s in all "
          f"(one alone: {one['mib_per_s']} MiB/s)")
    bad = {s: k for r in rows for s, k in r["statuses"].items() if s not in (200, 201)}
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--max-batch-size", type=int, default=16)
    u = sub.add_parser("upload")
    u.add_argument("--clients", type=int, default=20)
    u.add_argument("--size-mb", type=int, default=200)
    u.add_argument("--tmp-root", default=None)
    args = ap.parse_args()
    return predict(args) if args.what == "predict" else upload(args)


if __name__ == "__main__":
    raise SystemExit(main())
