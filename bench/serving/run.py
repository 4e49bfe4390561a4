"""Serving benchmark: raw onnxruntime in-process, modelport, and peer servers (nvidia-pytriton,
MLServer, LitServe) side by side in one run, on the same two ONNX models, 1 intra-op thread
everywhere, the same load generator (wrk) for every HTTP server.

    .venv/bin/python bench/serving/run.py            # full: 2 s warm-up + 8 s per point
    .venv/bin/python bench/serving/run.py --quick    # 1 s warm-up + 3 s per point
    .venv/bin/python bench/serving/run.py --servers modelport,pytriton --models cnn

First run: creates the peer venvs under /tmp/modelport-bench-venvs/ (pip install, several minutes,
~600 MB) and needs `wrk` (`apt-get install wrk`). See bench/README.md, section "Serving".
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
import setup_peers  # noqa: E402

PEERS = ["pytriton", "mlserver", "litserve"]
ALL_SERVERS = ["modelport", *PEERS]
MLSERVER_BATCH_TIME_S = 0.0002  # MLServer's adaptive batcher waits this long for a batch to fill
LITSERVE_BATCH_TIMEOUT_S = 0.0002  # LitServe's batch_timeout (0.0 is allowed but spins)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

WRK_LUA = r"""
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE")
local hl = os.getenv("WRK_HLEN")
if hl ~= nil and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,' ..
    '"max_us":%.1f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 120) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(method: str, url: str, obj=None, raw: bytes | None = None, ctype: str = "application/json"):
    body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
    status, _, data = http(method, url, body, {"Content-Type": ctype})
    return status, (json.loads(data) if data else {})


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} was ready:\n{tail(log)}")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def spawn(cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    f = open(log, "wb")  # noqa: SIM115 - handed to the child; closed with the process
    return subprocess.Popen(cmd, env=env, cwd=cwd or ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


# ------------------------------------------------------------------------------------------ bodies


@dataclass
class Target:
    server: str
    api: str  # what endpoint / protocol, for the table
    model: str
    encoding: str  # "json" or "binary"
    url: str
    body: bytes
    ctype: str
    header_len: int | None = None
    parse: str = "v2"  # how to read the response for validation: v2, v1, lit
    note: str = ""


def v2_json_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]}).encode()


def v2_binary_body(x: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor extension: JSON header, then the raw tensor bytes; output in binary too
    (what tritonclient.http sends by default)."""
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return header + np.ascontiguousarray(x, dtype="<f4").tobytes(), len(header)


def npy_body(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    return buf.getvalue()


def v2_targets(server: str, base: str, model: str, x: np.ndarray, binary: bool, api: str = "v2") -> list[Target]:
    url = f"{base}/v2/models/{model}/infer"
    out = [Target(server, f"{api} json", model, "json", url, v2_json_body(x), "application/json")]
    if binary:
        body, hl = v2_binary_body(x)
        out.append(Target(server, f"{api} binary", model, "binary", url, body, "application/octet-stream", hl))
    return out


def parse_output(t: Target, headers: dict, data: bytes) -> np.ndarray:
    if t.parse == "v1":
        return np.asarray(json.loads(data)["outputs"]["y"], dtype=np.float32)
    if t.parse == "lit":
        return np.asarray(json.loads(data)["y"], dtype=np.float32)
    hl = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    if hl is None:
        obj = json.loads(data)
        o = obj["outputs"][0]
        return np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
    n = int(hl)
    obj = json.loads(data[:n])
    o = obj["outputs"][0]
    return np.frombuffer(data[n:n + o["parameters"]["binary_data_size"]], dtype="<f4").reshape(o["shape"])


def validate(t: Target, expected: np.ndarray) -> None:
    headers = {"Content-Type": t.ctype}
    if t.header_len is not None:
        headers["Inference-Header-Content-Length"] = str(t.header_len)
    status, rh, data = http("POST", t.url, t.body, headers)
    if status != 200:
        raise RuntimeError(f"{t.server} {t.api} {t.model}: HTTP {status}: {data[:500]!r}")
    got = parse_output(t, rh, data)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{t.server} {t.api} {t.model}: wrong output {got.reshape(-1)[:4]} "
                           f"vs {expected.reshape(-1)[:4]} (shape {got.shape} vs {expected.shape})")


# ------------------------------------------------------------------------------------------ load


@dataclass
class Point:
    clients: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    raw: dict = field(default_factory=dict)


def run_wrk(t: Target, clients: int, seconds: float, work: Path) -> Point:
    lua = work / "post.lua"
    if not lua.exists():
        lua.write_text(WRK_LUA)
    body = work / f"body-{t.server}-{t.model}-{t.api.replace(' ', '_')}.bin"
    body.write_bytes(t.body)
    env = {**os.environ, "WRK_BODY": str(body), "WRK_CTYPE": t.ctype,
           "WRK_HLEN": "" if t.header_len is None else str(t.header_len)}
    threads = 1 if clients == 1 else 2
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(lua), t.url]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (rc {p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    ok = r["requests"] - r["err_status"]
    return Point(clients, r["requests"], secs, ok / secs if secs else 0.0, r["p50_us"] / 1e3, r["p90_us"] / 1e3,
                 r["p99_us"] / 1e3, r["mean_us"] / 1e3, errors, r)


def session_cpu_s(sid: int) -> float:
    """User + system CPU seconds of every live process in session ``sid`` (a server and all it
    started: workers, the Triton binary, proxies), read from /proc."""
    ticks = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[3]) == sid:  # fields after the name: state ppid pgrp session ... utime(11) stime(12)
            ticks += int(rest[11]) + int(rest[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def signal_session(sid: int, sig: int) -> None:
    """``sig`` to every live process in session ``sid`` (a server and all it started)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            rest = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            if int(rest[3]) == sid:
                os.kill(int(d), sig)
        except (OSError, IndexError, ValueError):
            continue


def measure(t: Target, args, work: Path, sid: int | None = None) -> dict:
    """The 1- and 16-client points; at 16 clients also the server's CPU per answered request (every
    process of its session) and wrk's, which other load on the host disturbs far less than req/s."""
    import resource

    run_wrk(t, 16, args.warmup, work)  # warm-up: untimed, at the heavier load
    one = run_wrk(t, 1, args.duration, work)
    cpu0 = session_cpu_s(sid) if sid else None
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    many = run_wrk(t, 16, args.duration, work)
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"c1": asdict(one), "c16": asdict(many)}
    ok = many.rps * many.seconds
    if cpu0 is not None and ok > 0:
        out["c16"]["server_cpu_ms_per_req"] = (session_cpu_s(sid) - cpu0) * 1000 / ok
        out["c16"]["wrk_cpu_ms_per_req"] = ((wrk1.ru_utime + wrk1.ru_stime) - (wrk0.ru_utime + wrk0.ru_stime)) \
            * 1000 / ok
    return out


def merge_points(points: list[Point]) -> dict:
    """Rounds of one point as one: requests and seconds add up (req/s = answered / seconds); the
    latency percentiles are the median over rounds (each round's from wrk's own histogram)."""
    secs = sum(p.seconds for p in points)
    ok = sum(p.rps * p.seconds for p in points)
    reqs = sum(p.requests for p in points)
    med = statistics.median
    return {"clients": points[0].clients, "requests": reqs, "seconds": secs, "rps": ok / secs if secs else 0.0,
            "p50_ms": med(p.p50_ms for p in points), "p90_ms": med(p.p90_ms for p in points),
            "p99_ms": med(p.p99_ms for p in points),
            "mean_ms": sum(p.mean_ms * p.requests for p in points) / reqs if reqs else float("nan"),
            "errors": sum(p.errors for p in points), "rounds": len(points),
            "per_round_rps": [round(p.rps, 1) for p in points], "raw": [p.raw for p in points]}


def measure_interleaved(runs: list[tuple[Target, int]], args, work: Path) -> tuple[list[dict], dict[int, float]]:
    """Every target's points measured in ``args.rounds`` rounds, the targets of all servers taking
    turns within each round (the order rotated round by round): load from other processes that
    comes and goes then falls on every server alike, where one server after another would give it
    to whoever ran at the wrong time. ``runs``: (target, session id of its server's processes).
    Also the CPU each server's session burns while another one is measured (its idle cost; none for
    the servers named by ``--pause``, stopped meanwhile), in % of a core, by session id."""
    import resource

    rounds = max(1, args.rounds)
    per = max(1.0, args.duration / rounds)
    for t, _ in runs:  # warm-up: untimed, at the heavier load
        run_wrk(t, 16, args.warmup, work)
    c1: dict[int, list[Point]] = {i: [] for i in range(len(runs))}
    c16: dict[int, list[Point]] = {i: [] for i in range(len(runs))}
    cpu = dict.fromkeys(range(len(runs)), 0.0)
    wrk_cpu = dict.fromkeys(range(len(runs)), 0.0)
    sids = sorted({sid for _, sid in runs})
    own = dict.fromkeys(sids, 0.0)  # a server's CPU seconds while its own targets ran at 16 clients
    own_s = dict.fromkeys(sids, 0.0)
    total0 = {sid: session_cpu_s(sid) for sid in sids}
    t_phase = time.monotonic()
    running = set(sids)
    failed: dict[int, str] = {}

    pausable = {sid for t, sid in runs if t.server in args.pause.split(",")}

    def only(sid: int) -> None:  # --pause: those of them not measured now are stopped (SIGSTOP), not idling
        for other in pausable:
            want = other == sid
            if want and other not in running:
                signal_session(other, signal.SIGCONT)
                running.add(other)
            elif not want and other in running:
                signal_session(other, signal.SIGSTOP)
                running.discard(other)

    try:
        for r in range(rounds):
            order = list(range(len(runs)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                t, sid = runs[i]
                if i in failed:
                    continue
                only(sid)
                try:
                    a0, t0 = session_cpu_s(sid), time.monotonic()
                    c1[i].append(run_wrk(t, 1, per, work))
                    a, w0 = session_cpu_s(sid), resource.getrusage(resource.RUSAGE_CHILDREN)
                    c16[i].append(run_wrk(t, 16, per, work))
                    b, w1 = session_cpu_s(sid), resource.getrusage(resource.RUSAGE_CHILDREN)
                except Exception as e:  # noqa: BLE001 - this target is out; the others go on
                    failed[i] = f"round {r + 1}: {type(e).__name__}: {e}"[:2000]
                    print(f"[bench]   {t.server} {t.api} {t.model}: ERROR {failed[i][:300]}", flush=True)
                    continue
                cpu[i] += b - a
                own[sid] += b - a0
                own_s[sid] += time.monotonic() - t0
                wrk_cpu[i] += (w1.ru_utime + w1.ru_stime) - (w0.ru_utime + w0.ru_stime)
            print(f"[bench]   round {r + 1}/{rounds} done", flush=True)
    finally:
        for sid in sids:
            if sid not in running:
                signal_session(sid, signal.SIGCONT)
    phase = time.monotonic() - t_phase
    out = []
    for i in range(len(runs)):
        if i in failed:
            out.append({"error": failed[i]})
            continue
        rec = {"c1": merge_points(c1[i]), "c16": merge_points(c16[i])}
        ok = rec["c16"]["rps"] * rec["c16"]["seconds"]
        if ok > 0:
            rec["c16"]["server_cpu_ms_per_req"] = cpu[i] * 1000 / ok
            rec["c16"]["wrk_cpu_ms_per_req"] = wrk_cpu[i] * 1000 / ok
        out.append(rec)
    idle = {}
    for sid in sids:
        rest = phase - own_s[sid]
        if rest > 0:
            idle[sid] = 100 * (session_cpu_s(sid) - total0[sid] - own[sid]) / rest
    return out, idle


# ------------------------------------------------------------------------------------------ raw ORT


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def raw_ort(path: Path, x: np.ndarray, args) -> dict:
    """1 client: sess.run in a loop on this thread, each call timed. 16 clients: 16 Python threads
    calling run on the same session (ORT releases the GIL; each call computes on its caller's
    thread, so up to 2 run at once on 2 cores); completed calls / wall time."""
    sess = ort_session(path)
    feeds = {"x": x}
    end = time.perf_counter() + args.warmup
    while time.perf_counter() < end:
        sess.run(["y"], feeds)
    lat: list[float] = []
    t_end = time.perf_counter() + args.duration
    while True:
        t0 = time.perf_counter()
        sess.run(["y"], feeds)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= t_end:
            break
    one = {"clients": 1, "requests": len(lat), "seconds": sum(lat), "rps": len(lat) / sum(lat),
           "p50_ms": pct(lat, 50) * 1e3, "p90_ms": pct(lat, 90) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
           "mean_ms": statistics.fmean(lat) * 1e3, "errors": 0}
    counts = [0] * 16
    lat16: list[list[float]] = [[] for _ in range(16)]
    start = threading.Barrier(17)
    stop_at = [0.0]

    def worker(i: int) -> None:
        start.wait()
        n, mine = 0, lat16[i]
        while True:
            t0 = time.perf_counter()
            sess.run(["y"], feeds)
            t1 = time.perf_counter()
            mine.append(t1 - t0)
            n += 1
            if t1 >= stop_at[0]:
                break
        counts[i] = n

    ths = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for th in ths:
        th.start()
    stop_at[0] = time.perf_counter() + args.duration
    t0 = time.perf_counter()
    start.wait()
    for th in ths:
        th.join()
    wall = time.perf_counter() - t0
    all16 = [v for xs in lat16 for v in xs]
    many = {"clients": 16, "requests": sum(counts), "seconds": wall, "rps": sum(counts) / wall,
            "p50_ms": pct(all16, 50) * 1e3, "p90_ms": pct(all16, 90) * 1e3, "p99_ms": pct(all16, 99) * 1e3,
            "mean_ms": statistics.fmean(all16) * 1e3, "errors": 0}
    return {"c1": one, "c16": many}


# ------------------------------------------------------------------------------------------ servers


class ServerError(RuntimeError):
    pass


MODELPORT_WORKERS = [1]  # `modelport serve --workers N` (set from --workers in main)


def start_modelport(work: Path, paths: dict[str, Path], xs: dict[str, np.ndarray], notes: list[str]):
    port = free_port()
    env = {**os.environ, **THREAD_ENV, "MODELPORT_DATA_DIR": str(work / "modelport-data"),
           "MODELPORT_LOG_LEVEL": "warning"}
    env.pop("MODELPORT_BROKER_URL", None)
    log = work / "modelport.log"
    workers = MODELPORT_WORKERS[0]
    proc = spawn([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)], env, log)
    notes.append(f"modelport: `modelport serve --workers {workers}`")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(base + "/readyz", proc, 120, log)
        for name, path in paths.items():
            st, m = http_json("POST", f"{base}/v1/models?filename={name}.onnx", raw=path.read_bytes(),
                              ctype="application/octet-stream")
            if st not in (200, 201):
                raise ServerError(f"upload {name}: HTTP {st} {m}")
            st, job = http_json("POST", f"{base}/v1/models/{m['id']}/conversions",
                                {"target": "onnx", "options": {"optimize": "none"}, "benchmark": False})
            if st not in (200, 201, 202):
                raise ServerError(f"conversion {name}: HTTP {st} {job}")
            deadline = time.monotonic() + 300
            while job.get("status") not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                _, job = http_json("GET", f"{base}/v1/jobs/{job['id']}?wait=120")
            if job.get("status") != "succeeded" or not job.get("artifact_id"):
                raise ServerError(f"conversion job for {name}: {json.dumps(job)[:1500]}")
            req = {"name": name, "artifact_id": job["artifact_id"], "runtime": {"threads": 1},
                   "batching": {"max_batch_size": 16, "max_queue_delay_ms": 0}}
            st, dep = http_json("POST", f"{base}/v1/deployments", req)
            if st == 409 and "not_validated" in json.dumps(dep):
                notes.append(f"modelport: {name} artifact not validated ({dep}); deployed with force")
                st, dep = http_json("POST", f"{base}/v1/deployments", {**req, "force": True})
            if st != 201 or dep["versions"][0]["status"] != "ready":
                raise ServerError(f"deploy {name}: HTTP {st} {json.dumps(dep)[:1500]}")
            notes.append(f"modelport {name}: {dep['versions'][0].get('batching_note')}")
    except Exception:
        stop(proc)
        raise
    targets: list[Target] = []
    for name, x in xs.items():
        targets += v2_targets("modelport", base, name, x, binary=True)
        url = f"{base}/v1/deployments/{name}/predict"
        targets.append(Target("modelport", "v1 json", name, "json", url,
                              json.dumps({"inputs": {"x": x.tolist()}}).encode(), "application/json", parse="v1"))
        targets.append(Target("modelport", "v1 npy", name, "binary", url, npy_body(x), "application/x-npy",
                              parse="v1"))
    return proc, targets


def endpoint_sweep(base: str, model: str, args) -> dict:
    """modelport's own endpoint benchmark (POST /v1/deployments/{model}/benchmark) of a deployment,
    with and without its dynamic batcher; the stored result."""
    req = {"window_ms": args.sweep_window_ms, "max_concurrency": 64, "max_seconds": args.sweep_seconds}
    st, b = http_json("POST", f"{base}/v1/deployments/{model}/benchmark", req)
    if st != 202:
        raise ServerError(f"endpoint benchmark of {model}: HTTP {st} {b}")
    deadline = time.monotonic() + args.sweep_seconds + 180
    while b.get("status") == "running" and time.monotonic() < deadline:
        _, b = http_json("GET", f"{base}{b['links']['self']}?wait=60")
    if b.get("status") != "succeeded":
        raise ServerError(f"endpoint benchmark of {model}: {json.dumps(b)[:1500]}")
    return b


def sweep_table(b: dict) -> str:
    lines = [f"endpoint sweep ({b['results']['protocol']}, {b['results']['rows']} row/request, "
             f"{b['results']['serving_workers']} worker(s)): {b['name']} v{b['version']}",
             f"{'mode':9s} {'conc':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'req/s':>8s} {'stable':>6s} "
             f"answered by (pid: requests)"]
    for mode, d in b["results"]["modes"].items():
        for p in d["points"]:
            lines.append(f"{mode:9s} {p['concurrency']:>5d} {fmt(p['p50_ms']):>8s} {fmt(p['p90_ms']):>8s} "
                         f"{fmt(p['p99_ms']):>8s} {fmt(p['throughput_rps'], '.0f'):>8s} "
                         f"{'yes' if p['stable'] else 'no':>6s} {p['answered_by']}")
        best = d.get("best") or {}
        lines.append(f"{mode:9s} best {fmt(best.get('throughput_rps'), '.0f')} req/s at concurrency "
                     f"{best.get('concurrency')}; stopped: {d.get('stop_reason')}")
    return "\n".join(lines)


def peer_env(name: str, work: Path, paths: dict[str, Path]) -> dict:
    venv = setup_peers.VENV_ROOT / name
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(THREAD_ENV)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["BENCH_MODELS_DIR"] = str(next(iter(paths.values())).parent)  # write_models wrote both models there
    env["PYTHONPATH"] = str(HERE / "peers")
    return env


def start_pytriton(work: Path, paths, xs, notes):
    env = peer_env("pytriton", work, paths)
    # the Python backend stub links libpython; point it at the base interpreter's lib directory
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log = work / "pytriton.log"
    proc = spawn([str(setup_peers.venv_python("pytriton")), str(HERE / "peers" / "pytriton_server.py"),
                  str(http_port), str(grpc_port), str(metrics_port)], env, log, cwd=work)
    base = f"http://127.0.0.1:{http_port}"
    try:
        for name in xs:
            wait_http_ok(f"{base}/v2/models/{name}/ready", proc, 240, log)
    except Exception:
        stop(proc)
        raise
    notes.append("pytriton: Triton dynamic batcher max_batch_size 16, max_queue_delay 0 us; infer fn in the "
                 "pytriton proxy process")
    return proc, [t for name, x in xs.items() for t in v2_targets("pytriton", base, name, x, binary=True)]


def start_mlserver(work: Path, paths, xs, notes):
    env = peer_env("mlserver", work, paths)
    root = work / "mlserver-repo"
    root.mkdir(exist_ok=True)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (root / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port, "host": "127.0.0.1",
        "debug": False, "parallel_workers": 1, "logging_settings": None}))
    for name in xs:
        d = root / name
        d.mkdir(exist_ok=True)
        shutil.copy(HERE / "peers" / "mlserver_runtime.py", d / "mlserver_runtime.py")
        (d / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_runtime.OrtModel", "max_batch_size": 16,
            "max_batch_time": MLSERVER_BATCH_TIME_S, "parameters": {"uri": str(paths[name])}}))
    env["PYTHONPATH"] = f"{root / 'cnn'}:{env['PYTHONPATH']}"
    log = work / "mlserver.log"
    proc = spawn([str(setup_peers.VENV_ROOT / "mlserver" / "bin" / "mlserver"), "start", str(root)], env, log,
                 cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        for name in xs:
            wait_http_ok(f"{base}/v2/models/{name}/ready", proc, 240, log)
    except Exception:
        stop(proc)
        raise
    notes.append(f"mlserver: adaptive batching max_batch_size 16, max_batch_time {MLSERVER_BATCH_TIME_S * 1e3:g} ms, "
                 "parallel_workers 1 (its default: inference in one worker process); JSON only -- MLServer's "
                 "REST API does not implement Triton's binary tensor extension")
    return proc, [t for name, x in xs.items() for t in v2_targets("mlserver", base, name, x, binary=False)]


def start_litserve(work: Path, paths, xs, notes):
    env = peer_env("litserve", work, paths)
    port = free_port()
    log = work / "litserve.log"
    proc = spawn([str(setup_peers.venv_python("litserve")), str(HERE / "peers" / "litserve_server.py"), str(port),
                  str(LITSERVE_BATCH_TIMEOUT_S)], env, log, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/health", proc, 240, log)
    except Exception:
        stop(proc)
        raise
    notes.append(f"litserve: max_batch_size 16, batch_timeout {LITSERVE_BATCH_TIMEOUT_S * 1e3:g} ms, 1 worker, "
                 "fast_queue (zmq); its 'binary' row is base64 float32 bytes inside JSON (LitServe always "
                 "parses the body as JSON)")
    targets = []
    for name, x in xs.items():
        url = f"{base}/predict/{name}"
        targets.append(Target("litserve", "json", name, "json", url, json.dumps({"x": x.tolist()}).encode(),
                              "application/json", parse="lit"))
        b64 = json.dumps({"b64": base64.b64encode(x.astype("<f4").tobytes()).decode(), "shape": list(x.shape)})
        targets.append(Target("litserve", "b64 in json", name, "binary", url, b64.encode(), "application/json",
                              parse="lit"))
    return proc, targets


STARTERS = {"modelport": start_modelport, "pytriton": start_pytriton, "mlserver": start_mlserver,
            "litserve": start_litserve}


# ------------------------------------------------------------------------------------------ report


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def report(results: list[dict], models: list[str], rows: int) -> tuple[str, dict]:
    raw = {r["model"]: r for r in results if r["server"] == "raw-ort"}
    lines = []
    hdr = (f"{'server':10s} {'api':13s} {'model':5s} {'enc':6s} {'p50@1 ms':>9s} {'p99@1 ms':>9s} "
           f"{'+p50 vs raw':>11s} {'req/s@16':>9s} {'smp/s@16':>9s} {'p50@16':>8s} {'x raw':>6s} {'x bestpeer':>10s} "
           f"{'cpu ms/req':>10s}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    best_peer: dict[tuple[str, str], float] = {}
    for r in results:
        if r["server"] in PEERS and "c16" in r:
            k = (r["model"], r["encoding"])
            best_peer[k] = max(best_peer.get(k, 0.0), r["c16"]["rps"])
    for model in models:
        for r in results:
            if r["model"] != model:
                continue
            if "error" in r:
                lines.append(f"{r['server']:10s} {r['api']:13s} {model:5s} {r['encoding']:6s} ERROR: {r['error'][:90]}")
                continue
            c1, c16 = r["c1"], r["c16"]
            rw = raw.get(model)
            dp50 = c1["p50_ms"] - rw["c1"]["p50_ms"] if rw and r is not rw else None
            xraw = c16["rps"] / rw["c16"]["rps"] if rw and r is not rw else None
            bp = best_peer.get((model, r["encoding"]))
            xbp = c16["rps"] / bp if bp and r["server"] != "raw-ort" else None
            errs = c1.get("errors", 0) + c16.get("errors", 0)
            lines.append(f"{r['server']:10s} {r['api']:13s} {model:5s} {r['encoding']:6s} {fmt(c1['p50_ms']):>9s} "
                         f"{fmt(c1['p99_ms']):>9s} {fmt(dp50, '+.3f'):>11s} {fmt(c16['rps'], '.0f'):>9s} "
                         f"{fmt(c16['rps'] * rows, '.0f'):>9s} {fmt(c16['p50_ms'], '.2f'):>8s} {fmt(xraw, '.2f'):>6s} "
                         f"{fmt(xbp, '.2f'):>10s} {fmt(c16.get('server_cpu_ms_per_req')):>10s}"
                         + (f"  errors={errs}" if errs else ""))
        lines.append("")
    targets: dict = {}
    mp = [r for r in results if r["server"] == "modelport" and "c16" in r]
    for enc in ("json", "binary"):
        cand = [r for r in mp if r["model"] == "cnn" and r["encoding"] == enc]
        bp = best_peer.get(("cnn", enc))
        if cand and bp:
            best = max(cand, key=lambda r: r["c16"]["rps"])
            ratio = best["c16"]["rps"] / bp
            peer = max((r for r in results if r["server"] in PEERS and r["model"] == "cnn" and r["encoding"] == enc
                        and "c16" in r), key=lambda r: r["c16"]["rps"])
            targets[f"cnn_throughput_{enc}"] = {"modelport": best["api"], "rps": best["c16"]["rps"],
                                                "best_peer": f"{peer['server']} {peer['api']}", "peer_rps": bp,
                                                "ratio": ratio, "pass": ratio >= 1.5}
            lines.append(f"target CNN throughput @16 ({enc:6s}): modelport {best['api']} {best['c16']['rps']:.0f} "
                         f"req/s vs best peer {peer['server']} {peer['api']} {bp:.0f} req/s = {ratio:.2f}x "
                         f"(need >= 1.5x): {'PASS' if ratio >= 1.5 else 'FAIL'}")
    for enc in ("json", "binary"):  # server CPU per request: what other load on the host disturbs least
        def cpu(r):
            return r["c16"].get("server_cpu_ms_per_req") or float("inf")

        cand = [r for r in mp if r["model"] == "cnn" and r["encoding"] == enc]
        peers = [r for r in results if r["server"] in PEERS and r["model"] == "cnn" and r["encoding"] == enc
                 and "c16" in r]
        if cand and peers and min(map(cpu, cand)) < float("inf") and min(map(cpu, peers)) < float("inf"):
            best, peer = min(cand, key=cpu), min(peers, key=cpu)
            targets[f"cnn_cpu_per_request_{enc}"] = {"modelport": best["api"], "cpu_ms": cpu(best),
                                                     "best_peer": f"{peer['server']} {peer['api']}",
                                                     "peer_cpu_ms": cpu(peer), "ratio": cpu(peer) / cpu(best)}
            lines.append(f"CNN server CPU per request @16 ({enc:6s}): modelport {best['api']} {cpu(best):.3f} ms vs "
                         f"best peer {peer['server']} {peer['api']} {cpu(peer):.3f} ms = {cpu(peer) / cpu(best):.2f}x "
                         "less (no target; read with req/s when the host is busy)")
    if "mlp" in raw:
        for enc in ("json", "binary"):
            cand = [r for r in mp if r["model"] == "mlp" and r["encoding"] == enc]
            if not cand:
                continue
            best = min(cand, key=lambda r: r["c1"]["p50_ms"])
            limit = raw["mlp"]["c1"]["p50_ms"] + 0.3
            ok = best["c1"]["p50_ms"] <= limit
            targets[f"mlp_p50_{enc}"] = {"modelport": best["api"], "p50_ms": best["c1"]["p50_ms"],
                                         "raw_p50_ms": raw["mlp"]["c1"]["p50_ms"], "limit_ms": limit, "pass": ok}
            lines.append(f"target MLP p50 @1   ({enc:6s}): modelport {best['api']} {best['c1']['p50_ms']:.3f} ms vs "
                         f"raw ORT {raw['mlp']['c1']['p50_ms']:.3f} ms + 0.3 = {limit:.3f} ms: "
                         f"{'PASS' if ok else 'FAIL'}")
    return "\n".join(lines), targets


# ------------------------------------------------------------------------------------------ main


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 s warm-up + 3 s per point")
    ap.add_argument("--duration", type=float, help="seconds per measured point (default 8, quick 3)")
    ap.add_argument("--warmup", type=float, help="untimed seconds at 16 clients before each target (default 2, quick 1)")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS), help="comma list of " + ",".join(ALL_SERVERS))
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--rows", type=int, default=1, help="rows (samples) per request (default 1)")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw onnxruntime baseline")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs, bodies)")
    ap.add_argument("--hold", metavar="SERVER", help=argparse.SUPPRESS)  # profiling aid: start, print URL, wait
    ap.add_argument("--out", help="JSON result path (default bench/results/serving-<time>.json)")
    ap.add_argument("--workers", type=int, default=1, help="modelport serve --workers N (default 1)")
    ap.add_argument("--sequential", action="store_true", help="one server after another, each stopped before "
                    "the next starts (the old way), instead of all up at once and measured in turns")
    ap.add_argument("--pause", default="litserve", metavar="SERVERS",
                    help="interleaved: these servers are stopped (SIGSTOP) while another one is measured, so "
                    "one that spins while idle takes no CPU from the others (default litserve, whose zmq "
                    "queue burns ~60%% of a core idle; the others use under 2%%, and Triton's Python backend "
                    "crashes after a SIGSTOP); '' for none")
    ap.add_argument("--rounds", type=int, default=4, help="turns per point when interleaved (default 4): "
                    "each is duration/rounds seconds")
    ap.add_argument("--endpoint-sweep", default="", metavar="MODELS",
                    help="after modelport's wrk points, run its endpoint benchmark on these deployments (e.g. cnn)")
    ap.add_argument("--sweep-seconds", type=float, default=240, help="the endpoint sweep's max_seconds")
    ap.add_argument("--sweep-window-ms", type=float, default=1000, help="the endpoint sweep's window_ms")
    args = ap.parse_args()
    MODELPORT_WORKERS[0] = args.workers
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    servers = [s for s in args.servers.split(",") if s]
    model_names = [m for m in args.models.split(",") if m]
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2

    # SIGTERM (timeout, kill) ends the run as Ctrl-C does: the finally blocks stop every server started
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-serving-"))
    all_paths = bench_models.write_models(work / "models")
    paths = {m: all_paths[m] for m in model_names}
    xs = {m: bench_models.sample_input(m, args.rows) for m in model_names}
    expected = {m: ort_session(paths[m]).run(["y"], {"x": xs[m]})[0] for m in model_names}
    results: list[dict] = []
    notes: list[str] = [f"cnn: {bench_models.cnn_flops() / 1e6:.2f} MFLOP/sample, input [N,3,64,64]; "
                        f"mlp: 16->64->4; {args.rows} row(s) per request",
                        f"load: wrk -t1 -c1 (1 client) and -t2 -c16 (16 clients), {args.warmup:g} s warm-up at 16 "
                        f"clients then {args.duration:g} s per point; same fixed body every request"]
    skipped: dict[str, str] = {}
    sweeps: dict[str, dict] = {}
    load0 = os.getloadavg()
    print(f"[bench] work dir {work}; load average {load0[0]:.2f}", flush=True)
    try:
        if not args.no_raw:
            for m in model_names:
                print(f"[bench] raw onnxruntime {m}", flush=True)
                r = raw_ort(paths[m], xs[m], args)
                results.append({"server": "raw-ort", "api": "in-process", "model": m, "encoding": "-", **r})
            notes.append("raw-ort: 1 client = sess.run loop on one thread; 16 clients = 16 Python threads sharing "
                         "one session (no HTTP, no encoding)")
        def start(s: str):
            """(proc, targets) of server ``s`` started, or None (and why in ``skipped``)."""
            if s in PEERS and not setup_peers.is_ready(s):
                print(f"[bench] setting up the {s} venv under {setup_peers.VENV_ROOT} (first run only) ...",
                      flush=True)
                if not setup_peers.setup(s):
                    skipped[s] = f"pip install failed: {(setup_peers.failure(s) or '')[-1500:]}"
                    print(f"[bench] {s}: SKIPPED, {skipped[s][-400:]}", flush=True)
                    return None
            print(f"[bench] starting {s}", flush=True)
            try:
                return STARTERS[s](work, paths, xs, notes)
            except Exception as e:  # noqa: BLE001
                skipped[s] = f"could not start: {type(e).__name__}: {e}"
                print(f"[bench] {s}: SKIPPED, {skipped[s][-1500:]}", flush=True)
                return None

        def record(t: Target) -> dict:
            return {"server": t.server, "api": t.api, "model": t.model, "encoding": t.encoding, "url": t.url,
                    "body_bytes": len(t.body)}

        def sweep(targets: list[Target]) -> None:
            for m in [m for m in args.endpoint_sweep.split(",") if m in model_names]:
                print(f"[bench] modelport endpoint sweep {m} ...", flush=True)
                try:
                    sweeps[m] = endpoint_sweep(targets[0].url.split("/v2/")[0], m, args)
                    print(sweep_table(sweeps[m]), flush=True)
                except Exception as e:  # noqa: BLE001
                    sweeps[m] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                    print(f"[bench]   ERROR {sweeps[m]['error'][:500]}", flush=True)

        if args.sequential or args.hold:
            notes.append("measured one server after another (--sequential)")
            for s in servers:
                up = start(s)
                if up is None:
                    continue
                proc, targets = up
                if args.hold == s:
                    print(f"[bench] holding {s}: pid {proc.pid}; targets:", flush=True)
                    for t in targets:
                        print(f"  {t.api:12s} {t.model} {t.url}", flush=True)
                    try:
                        while proc.poll() is None:
                            time.sleep(1)
                    except KeyboardInterrupt:
                        pass
                    stop(proc)
                    return 0
                try:
                    for t in targets:
                        rec = record(t)
                        try:
                            validate(t, expected[t.model])
                            print(f"[bench] {s} {t.api} {t.model} ({len(t.body)} B body) ...", flush=True)
                            rec.update(measure(t, args, work, proc.pid))
                            print(f"[bench]   p50@1 {rec['c1']['p50_ms']:.3f} ms, p99@1 {rec['c1']['p99_ms']:.3f} ms, "
                                  f"{rec['c16']['rps']:.0f} req/s @16", flush=True)
                        except Exception as e:  # noqa: BLE001
                            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
                            print(f"[bench]   ERROR {rec['error'][:500]}", flush=True)
                        results.append(rec)
                    if s == "modelport":
                        sweep(targets)
                finally:
                    stop(proc)
        else:
            procs: dict[str, tuple[subprocess.Popen, list[Target]]] = {}
            try:
                for s in servers:  # all up at once; each measured in turns (measure_interleaved)
                    up = start(s)
                    if up is not None:
                        procs[s] = up
                runs: list[tuple[Target, int]] = []
                for s, (proc, targets) in procs.items():
                    for t in targets:
                        rec = record(t)
                        try:
                            validate(t, expected[t.model])
                            runs.append((t, proc.pid))
                        except Exception as e:  # noqa: BLE001
                            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
                            print(f"[bench] {s} {t.api} {t.model}: ERROR {rec['error'][:500]}", flush=True)
                            results.append(rec)
                print(f"[bench] {len(runs)} targets of {len(procs)} servers, {args.rounds} rounds each of "
                      f"{max(1.0, args.duration / max(1, args.rounds)):g} s at 1 and at 16 clients ...", flush=True)
                measured, idle = measure_interleaved(runs, args, work)
                for (t, _), m in zip(runs, measured, strict=True):
                    results.append({**record(t), **m})
                names = {proc.pid: s for s, (proc, _) in procs.items()}
                notes.append(f"all servers up at once, measured in turns: {args.rounds} rounds per point, the order "
                             "rotated each round (--sequential: one after another); "
                             + (f"{args.pause} stopped (SIGSTOP) while not measured" if args.pause
                                else "the servers not measured keep running"))
                notes.append("CPU a server used while another one was measured: " + "; ".join(
                    f"{names[sid]} {pct:.1f}% of a core" for sid, pct in idle.items()))
                if "modelport" in procs:
                    sweep(procs["modelport"][1])
            finally:
                for proc, _ in procs.values():
                    stop(proc)
        table, targets = report(results, model_names, args.rows)
        try:
            import onnxruntime

            ort_v = onnxruntime.__version__
        except Exception:  # noqa: BLE001
            ort_v = "?"
        print()
        print(f"host: {platform.node()} {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
              f"onnxruntime {ort_v}; {time.time() - started:.0f} s total; load average (1 min) "
              f"{load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (other processes share the cores)")
        print(table)
        for n in notes:
            print(f"note: {n}")
        for s, why in skipped.items():
            print(f"SKIPPED {s}: {why[-600:]}")
        for m, b in sweeps.items():
            print(sweep_table(b) if "error" not in b else f"endpoint sweep {m}: ERROR {b['error'][:500]}")
        out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "onnxruntime": ort_v, "cpus": os.cpu_count(),
                                   "results": results, "targets": targets, "notes": notes, "skipped": skipped,
                                   "endpoint_sweeps": sweeps, "load_average_start": load0,
                                   "load_average_end": os.getloadavg(),
                                   "table": table, "seconds": time.time() - started}, indent=2, default=str))
        print(f"results: {out}")
        return 0
    finally:
        if args.keep:
            print(f"[bench] kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
