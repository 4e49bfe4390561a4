"""Real parts a fault test can stop and start again, each our own on free loopback ports (never the
shared PostgreSQL, Redis or the lead's SeaweedFS on 8333), and a bounded background load of
uploads and predictions that records every answer."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class OwnSeaweed:
    """`weed mini` (S3 + filer + volume + master) on free ports, its data kept across restarts."""

    def __init__(self, workdir: Path, key: str, secret: str):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        flags = [f"-{k}={v}" for k, v in self.ports.items()]
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                                      "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                                      "-s3.port.iceberg=0", "-s3.port.lance=0", *flags],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not port_open(self.ports["s3.port"]):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("SeaweedFS did not start: " + (self.dir / "weed.log").read_text()[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self.proc = None


class OwnPostgres:
    """A PostgreSQL cluster of our own (initdb as the postgres user in a temp folder, trust auth)
    on a free port; stop() and start() keep its data."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "pgdata"
        self.port = free_ports(1)[0]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir, "postgres")
        os.chmod(workdir, 0o755)
        for parent in list(workdir.parents)[:-1]:  # postgres must reach its folder
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._as_pg([shutil.which("initdb") or "initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres",
                     "--no-sync"], timeout=120)

    def _as_pg(self, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(["su", "postgres", "-c", " ".join(f"'{c}'" for c in cmd)], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        return out

    def start(self) -> None:
        self._as_pg([shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.dir), "-w", "-t", "60", "-l",
                     str(self.dir.parent / "pg.log"), "-o", f"-p {self.port} -k /tmp -h 127.0.0.1 -F", "start"],
                    timeout=90)

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            self._as_pg([shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.dir), "-w", "-t", "60", "-m", "fast",
                         "stop"], timeout=90)


class Load:
    """Uploads (distinct SafeTensors files) and predictions from a few threads until stopped,
    bounded in count and time; every answer is recorded with what was sent."""

    def __init__(self, base: str, deployment: str, *, uploaders: int = 2, predictors: int = 2, max_s: float = 300,
                 max_requests: int = 20_000):
        self.base, self.deployment = base, deployment
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + max_s
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._uploads, args=(i,), daemon=True) for i in range(uploaders)]
        self.threads += [threading.Thread(target=self._predicts, daemon=True) for _ in range(predictors)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(120)

    def _go(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline and len(self.events) < self.max_requests

    def _record(self, **event) -> None:
        with self.lock:
            self.events.append({"t": time.monotonic(), **event})

    def since(self, t: float, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["t"] >= t and e["kind"] == kind]

    def _uploads(self, worker: int) -> None:
        import httpx
        import numpy as np
        from safetensors.numpy import save

        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=self.base, timeout=60) as c:
            n = 0
            while self._go():
                n += 1
                data = save({"w": rng.standard_normal((64, 64)).astype(np.float32)})
                try:
                    r = c.post("/v1/models", params={"filename": f"w{worker}-{n}.safetensors"}, content=data,
                               headers={"Content-Type": "application/octet-stream"})
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    self._record(kind="upload", status=r.status_code, sha=hashlib.sha256(data).hexdigest(), data=data,
                                 id=body.get("id"), code=(body.get("error") or {}).get("code")
                                 if isinstance(body.get("error"), dict) else None)
                except httpx.HTTPError as e:
                    self._record(kind="upload", status=None, error=type(e).__name__)

    def _predicts(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=60) as c:
            while self._go():
                try:
                    r = c.post(f"/v1/deployments/{self.deployment}/predict", json={"inputs": {"x": [[0.5] * 8]}})
                    self._record(kind="predict", status=r.status_code)
                except httpx.HTTPError as e:
                    self._record(kind="predict", status=None, error=type(e).__name__)
                time.sleep(0.01)  # a client's think time: the load stays in the background


def wait_for(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
