"""`modelport serve --workers 2` for real: a child process on a free loopback port, on embedded
defaults. Requests are answered by two distinct worker processes (X-Modelport-Worker), /metrics
adds up both workers' counts, a deploy made through one worker is served by both, a conversion
requested through a worker runs once in the supervisor's embedded executor, a killed worker is
replaced, and SIGTERM stops every process and frees the port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import models
from tests.helpers import make_settings

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
MAX_REQUESTS = 400  # the most predicts any one wait below sends


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPORT_", "PROMETHEUS_"))}
    return {**env, "MODELPORT_DATA_DIR": str(data_dir), "MODELPORT_LOG_LEVEL": "warning"}


def _children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(d.name))
    return out


class Workers:
    def __init__(self, tmp: Path, n: int = 2, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        self.n = n
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(n)], cwd=ROOT, env={**_env(tmp / "data"), **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"modelport serve exited with {self.proc.returncode}:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /healthz within 120 s:\n{self.log()}"
            time.sleep(0.1)  # the poll interval; readiness is /healthz answering, under the deadline above

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def workers(self) -> set[int]:
        return _children(self.proc.pid)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def served(tmp_path):
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.stop()


def _predict(url: str, x: np.ndarray, version: str | None = None) -> tuple[int, str, dict]:
    """One v2 inference on a new connection (so the kernel picks the worker), JSON in and out."""
    path = "/v2/models/tiny" + (f"/versions/{version}" if version else "") + "/infer"
    r = httpx.post(url + path, headers={"Connection": "close"}, timeout=30,
                   json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})
    return r.status_code, r.headers.get("x-modelport-worker", ""), r.json()


def _until_every_worker(url: str, x: np.ndarray, want, n_workers: int, *, deadline_s: float = 30.0) -> Counter:
    """Concurrent predicts (8 at a time, at most MAX_REQUESTS) until every one of ``n_workers``
    distinct processes has answered with ``want(body)`` true; the count of answers per pid."""
    seen: Counter = Counter()
    good: set[str] = set()
    deadline = time.monotonic() + deadline_s
    with ThreadPoolExecutor(8) as pool:
        sent = 0
        while len(good) < n_workers:
            assert sent < MAX_REQUESTS and time.monotonic() < deadline, \
                f"only {sorted(good)} of {n_workers} workers answered as wanted after {sent} requests: {seen}"
            for status, pid, body in pool.map(lambda _: _predict(url, x), range(8)):
                assert status == 200, body
                seen[pid] += 1
                if want(body):
                    good.add(pid)
            sent += 8
    return seen


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{want}}} not in /metrics:\n{text[:3000]}"
    return float(m.group(1))


def test_two_workers_answer_add_up_in_metrics_share_deploys_and_stop_cleanly(served, tmp_path):
    import onnxruntime as ort

    c = httpx.Client(base_url=served.url, timeout=60)
    workers = served.workers()
    assert len(workers) == 2, f"the supervisor should have 2 worker children, has {workers}:\n{served.log()}"

    path = models.onnx_model(tmp_path)[0]
    m = c.post("/v1/models", params={"filename": path.name}, content=path.read_bytes(),
               headers={"Content-Type": "application/octet-stream"}).json()
    r = c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]})
    assert r.status_code == 201 and r.json()["versions"][0]["status"] == "ready", r.text

    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    def correct(body) -> bool:
        out = body["outputs"][0]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        return bool(np.allclose(got, want, atol=1e-5))

    seen = _until_every_worker(served.url, x, correct, 2)
    assert {int(p) for p in seen} == workers, (seen, workers)  # the answering pids are the supervisor's workers

    # /metrics (whichever worker answers it) counts every worker's requests, not only its own share
    text = c.get("/metrics").text
    assert _metric(text, "modelport_inference_request_success_total", model="tiny", version="1") == sum(seen.values())
    assert _metric(text, "modelport_inference_count_total", model="tiny", version="1") == 2 * sum(seen.values())

    # a second version deployed through one worker is served by both, within the cache's freshness rule
    r = c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]})
    assert r.status_code == 201 and r.json()["serving_version"] == 2, r.text
    t0 = time.monotonic()
    _until_every_worker(served.url, x, lambda b: b["model_version"] == "2" and correct(b), 2, deadline_s=15)
    assert time.monotonic() - t0 < 15

    # a conversion asked of a worker runs in the supervisor's one embedded executor
    r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "options": {"optimize": "basic"},
                                                         "benchmark": False})
    assert r.status_code in (200, 202), r.text
    job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 120}).json()
    assert job["status"] == "succeeded", job
    assert {st["worker"].rsplit(":", 1)[1] for st in job["steps"]} == {str(served.proc.pid)}, job["steps"]

    # stop: every process ends, the port is free again
    c.close()
    assert served.stop() == 0, served.log()
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
    with socket.socket() as s:  # SO_REUSEADDR: the closed connections' TIME_WAIT is no listener
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", served.port))
        s.listen()


def test_a_killed_worker_is_replaced(served, tmp_path):
    path = models.onnx_model(tmp_path)[0]
    m = httpx.post(f"{served.url}/v1/models", params={"filename": path.name}, content=path.read_bytes(),
                   headers={"Content-Type": "application/octet-stream"}, timeout=60).json()
    assert httpx.post(f"{served.url}/v1/deployments", json={"name": "tiny", "model_id": m["id"]},
                      timeout=60).status_code == 201
    before = served.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not ((now := served.workers()) - before and victim not in now and len(now) == 2):
        assert time.monotonic() < deadline, f"no replacement for worker {victim}: {now}\n{served.log()}"
        time.sleep(0.1)  # the poll interval; the condition is a new child pid, under the deadline above
    x = np.ones((1, 8), np.float32)
    seen = _until_every_worker(served.url, x, lambda b: True, 2)
    assert {int(p) for p in seen} == now and str(victim) not in seen
    assert "exited with -9" in served.log()


def test_a_taken_port_is_one_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2"],
                           cwd=ROOT, env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in p.stderr and "Address already in use" in p.stderr


def test_workers_below_one_are_refused(tmp_path):
    p = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--workers", "0"], cwd=ROOT,
                       env=_env(tmp_path / "data"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--workers must be at least 1, got 0" in p.stderr


def test_each_workers_cache_gets_its_share(tmp_path):
    """The memory budget and the default threads are the whole server's: with N workers each
    worker's cache gets 1/N of the budget, and cores/N inference and intra-op threads."""
    from app.serving.runtime import ModelCache

    cores = os.cpu_count() or 2
    one = ModelCache(make_settings(tmp_path, serving_memory_budget_mb=1000), None, None)
    two = ModelCache(make_settings(tmp_path, serving_memory_budget_mb=1000, serving_workers=2), None, None)
    try:
        assert one.budget_bytes == 1000 * 2**20 and two.budget_bytes == 500 * 2**20
        assert one.default_threads is None and two.default_threads == max(1, cores // 2)
        assert one.executor._max_workers == cores and two.executor._max_workers == max(1, cores // 2)
    finally:
        one.executor.shutdown()
        two.executor.shutdown()


def test_every_worker_holds_the_request_header_deadline(tmp_path):
    """Workers run modelport's HTTP protocol as one process does: headers that stop half way get 408
    within MODELPORT_REQUEST_HEADER_TIMEOUT_S (1 s here), on each of 8 connections the kernel spreads
    over the 2 workers (they ran plain httptools before, which waits forever)."""
    w = Workers(tmp_path, env={"MODELPORT_REQUEST_HEADER_TIMEOUT_S": "1"})
    try:
        conns = [socket.create_connection(("127.0.0.1", w.port), timeout=30) for _ in range(8)]
        t0 = time.monotonic()
        for c in conns:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        for c in conns:
            with c, c.makefile("rb") as f:
                assert f.readline().startswith(b"HTTP/1.1 408"), w.log()
        assert time.monotonic() - t0 < 15
    finally:
        assert w.stop() == 0, w.log()
