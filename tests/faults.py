"""Real parts a fault test can stop and start again, each our own on free loopback ports (never the
shared PostgreSQL, Redis or the lead's SeaweedFS on 8333), and a bounded background load of
uploads and predictions that records every answer."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
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


def port_open(port: int, host: str = "127.0.0.1", netns: str | None = None) -> bool:
    if netns is not None:  # probed from inside the namespace
        return in_namespace(netns, port_open, port, host)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class OwnSeaweed:
    """`weed mini` (S3 + filer + volume + master) on free ports, its data kept across restarts."""

    def __init__(self, workdir: Path, key: str, secret: str, *, host: str = "127.0.0.1", netns: str | None = None):
        self.dir, self.host, self.netns = workdir, host, netns
        self.dir.mkdir(parents=True, exist_ok=True)
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.url = f"http://{host}:{self.ports['s3.port']}"
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        flags = [f"-{k}={v}" for k, v in self.ports.items()]
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([*in_netns(self.netns), weed, "mini", f"-dir={self.dir / 'data'}",
                                      f"-ip={self.host}", f"-ip.bind={self.host}",
                                      "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                                      "-s3.port.iceberg=0", "-s3.port.lance=0", *flags],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not port_open(self.ports["s3.port"], self.host, self.netns):
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
    """A PostgreSQL cluster of our own (initdb as the postgres user, trust auth) on a free port;
    stop() and start() keep its data, close() stops it and deletes it. Its folder is one of its
    own under /tmp (owned by postgres), not in pytest's temp tree: pytest resets that tree's
    permissions to 0700 whenever another session starts, which would lock postgres out mid-test."""

    def __init__(self, *, host: str = "127.0.0.1", netns: str | None = None, clients: str | None = None):
        """``host``/``netns``: listen on an address inside a namespace of a NetLab; ``clients``: the
        network (CIDR) whose hosts may connect, trusted like loopback."""
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="modelport-pg-"))
        shutil.chown(self.root, "postgres")
        self.dir, self.host, self.netns = self.root / "pgdata", host, netns
        self.port = free_ports(1)[0]
        self.url = f"postgresql+psycopg://postgres@{host}:{self.port}/postgres"
        self._as_pg([shutil.which("initdb") or "initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres",
                     "--no-sync"], timeout=120)
        if clients:
            with open(self.dir / "pg_hba.conf", "a") as f:
                f.write(f"host all all {clients} trust\n")

    def _as_pg(self, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run([*in_netns(self.netns), "su", "postgres", "-c", " ".join(f"'{c}'" for c in cmd)],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")
        return out

    def start(self) -> None:
        self._as_pg([shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.dir), "-w", "-t", "60", "-l",
                     str(self.root / "pg.log"), "-o", f"-p {self.port} -k /tmp -h {self.host} -F", "start"],
                    timeout=90)

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            self._as_pg([shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.dir), "-w", "-t", "60", "-m", "fast",
                         "stop"], timeout=90)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class OwnRedis:
    """A redis-server of our own on a free port, no persistence (as docker-compose runs it, so a
    restart loses what it held); start() and stop() as often as needed. ``host``/``netns``: bound
    to an address inside a network namespace we created (see NetLab) instead of 127.0.0.1."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", netns: str | None = None):
        self.dir, self.host, self.netns, self.proc = workdir, host, netns, None
        self.port = free_ports(1)[0] if netns is None else 6379
        self.url = f"redis://{host}:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 20) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is required for the broker fault tests")
        self.proc = subprocess.Popen([*in_netns(self.netns), exe, "--port", str(self.port), "--bind", self.host,
                                      "--protected-mode", "no", "--save", "", "--appendonly", "no",
                                      "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or port_open(self.port, self.host, self.netns), timeout_s,
                 "redis-server to listen")
        assert self.proc.poll() is None, "redis-server exited at start"

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def in_netns(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 20) -> None:
    """SIGTERM the process group we started (start_new_session), SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class WorkerProcess:
    """`modelport worker --queues …` as a deployment runs it, with its own data folder and log;
    ``netns``: on a host of a NetLab."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path, queues: str = "cpu",
                 netns: str | None = None):
        self.name, self.queues, self.netns = name, queues, netns
        self.env = {**os.environ, **env, "MODELPORT_DATA_DIR": str(workdir / name)}
        self.log = workdir / f"worker-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*in_netns(self.netns), sys.executable, "-m", "app.cli", "worker",
                                          "--queues", self.queues], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped group cannot act on SIGTERM
        stop_process(self.proc, 30)

    def tail(self, n: int = 3000) -> str:
        return f"--- {self.log.name}\n" + (self.log.read_text(errors="replace")[-n:] if self.log.exists() else "")


class Load:
    """Uploads (distinct SafeTensors files), predictions and, with ``converters``, uploads of
    distinct ONNX models each followed by a conversion request, from a few threads until stopped,
    bounded in count and time; every answer is recorded with what was sent."""

    def __init__(self, base: str, deployment: str, *, uploaders: int = 2, predictors: int = 2, max_s: float = 300,
                 max_requests: int = 20_000, converters: int = 0, max_conversions: int = 8,
                 convert_every_s: float = 2.0, workdir: Path | None = None):
        self.base, self.deployment = base, deployment
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + max_s
        self.max_requests = max_requests
        self.max_conversions, self.convert_every_s, self.workdir = max_conversions, convert_every_s, workdir
        self.threads = [threading.Thread(target=self._uploads, args=(i,), daemon=True) for i in range(uploaders)]
        self.threads += [threading.Thread(target=self._predicts, daemon=True) for _ in range(predictors)]
        self.threads += [threading.Thread(target=self._conversions, args=(i,), daemon=True) for i in range(converters)]

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

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["kind"] == kind]

    def _upload(self, c, filename: str, data: bytes) -> dict[str, Any] | None:
        """One upload, recorded; the model when it was stored."""
        import httpx

        try:
            r = c.post("/v1/models", params={"filename": filename}, content=data,
                       headers={"Content-Type": "application/octet-stream"})
        except httpx.HTTPError as e:
            self._record(kind="upload", status=None, error=type(e).__name__)
            return None
        body = _json(r)
        self._record(kind="upload", status=r.status_code, sha=hashlib.sha256(data).hexdigest(), data=data,
                     id=body.get("id"), code=_code(body))
        return body if r.status_code in (200, 201) else None

    def _uploads(self, worker: int) -> None:
        import httpx
        import numpy as np
        from safetensors.numpy import save

        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=self.base, timeout=60) as c:
            n = 0
            while self._go():
                n += 1
                self._upload(c, f"w{worker}-{n}.safetensors",
                             save({"w": rng.standard_normal((64, 64)).astype(np.float32)}))

    def _conversions(self, worker: int) -> None:
        """A distinct ONNX model uploaded, then ONNX -> ONNX (optimize basic) requested for it."""
        import httpx

        from tests import models

        folder = self.workdir / f"conversions-{worker}"
        folder.mkdir(parents=True, exist_ok=True)
        with httpx.Client(base_url=self.base, timeout=60) as c:
            n = 0
            while self._go() and n < self.max_conversions:
                n += 1
                (path,) = models.onnx_model(folder, name=f"c{worker}-{n}.onnx", seed=1000 * (worker + 1) + n)
                model = self._upload(c, path.name, path.read_bytes())
                if model is not None:
                    try:
                        r = c.post(f"/v1/models/{model['id']}/conversions",
                                   json={"target": "onnx", "options": {"optimize": "basic"}, "validate": False,
                                         "benchmark": False})
                        body = _json(r)
                        self._record(kind="convert", status=r.status_code, job=body.get("id"), code=_code(body))
                    except httpx.HTTPError as e:
                        self._record(kind="convert", status=None, error=type(e).__name__)
                self.stop_event.wait(self.convert_every_s)  # a client's pace, not a wait for an event

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


def _json(r) -> dict[str, Any]:
    if not r.headers.get("content-type", "").startswith("application/json"):
        return {}
    body = r.json()
    return body if isinstance(body, dict) else {}


def _code(body: dict[str, Any]) -> str | None:
    err = body.get("error")
    return err.get("code") if isinstance(err, dict) else None


def wait_for(pred, timeout_s: float, what: str, logs=()):
    """Poll ``pred`` until it is truthy (returned) or ``timeout_s`` passes (fail, with the tails of
    ``logs``: paths, or objects with a ``tail()``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    tails = "".join(x.tail() if hasattr(x, "tail") else Path(x).read_text(errors="replace")[-3000:]
                    for x in logs if hasattr(x, "tail") or Path(x).exists())
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tails}")


# ----------------------------------------------------------------------------- several hosts

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> int:
    """Move the calling thread into the network namespace at ``path``; returns a descriptor of the
    one it was in (for _setns_fd)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    _setns_fd(os.open(path, os.O_RDONLY), close=True)
    return own


def _setns_fd(fd: int, close: bool = True) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")
    finally:
        if close:
            os.close(fd)


def in_namespace(netns: str, fn, *args):
    """``fn(*args)`` on a thread of its own inside the named namespace (sockets belong to the
    namespace of the thread that makes them); its result, or its exception raised here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(f"/run/netns/{netns}")
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    probe = f"mp-probe-{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return f"`ip netns add` failed: {out.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NetLab:
    """Hosts as network namespaces of our own, each with one veth link (``eth0``, 10.213.N.x/24,
    an address that exists only inside these namespaces) to a bridge that lives in a namespace of
    its own too: nothing is added to the host's namespace. ``cut(host)`` takes that host's link
    down at the bridge (packets to and from it vanish, as with a pulled cable), ``mend`` brings it
    back; ``freeze``/``thaw`` SIGSTOP/SIGCONT every process in the host. ``teardown`` kills what is
    left in the namespaces and deletes them."""

    def __init__(self, hosts: list[str]):
        import random
        import uuid

        tag = uuid.uuid4().hex[:6]
        subnet = random.Random(tag).randrange(1, 255)
        self.network = f"10.213.{subnet}.0/24"
        self.hub = f"mp{tag}-hub"
        self.ns = {h: f"mp{tag}-{h}" for h in hosts}
        self.addr = {h: f"10.213.{subnet}.{10 + i}" for i, h in enumerate(hosts)}
        self.port = {h: f"p{tag}{i}" for i, h in enumerate(hosts)}  # the bridge's end of each link
        self.made: list[str] = []

    @staticmethod
    def _ip(*args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def up(self) -> NetLab:
        self._ip("netns", "add", self.hub)
        self.made.append(self.hub)
        self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.hub, "link", "set", "br0", "up")
        for h, ns in self.ns.items():
            self._ip("netns", "add", ns)
            self.made.append(ns)
            self._ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", self.port[h], "netns",
                     self.hub)
            self._ip("-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", self.hub, "link", "set", self.port[h], "master", "br0")
            self._ip("-n", self.hub, "link", "set", self.port[h], "up")
        return self

    def cut(self, host: str) -> None:
        self._ip("-n", self.hub, "link", "set", self.port[host], "down")

    def mend(self, host: str) -> None:
        self._ip("-n", self.hub, "link", "set", self.port[host], "up")

    def pids(self, host: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True, text=True, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def _signal_all(self, host: str, sig: int) -> None:
        for pid in self.pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def freeze(self, host: str) -> None:
        self._signal_all(host, signal.SIGSTOP)

    def thaw(self, host: str) -> None:
        self._signal_all(host, signal.SIGCONT)

    @contextlib.contextmanager
    def entered(self, host: str):
        """The calling thread inside ``host`` (and the threads it starts meanwhile, which inherit it)."""
        own = _setns(f"/run/netns/{self.ns[host]}")
        try:
            yield
        finally:
            _setns_fd(own)

    def teardown(self) -> None:
        for ns in reversed(self.made):
            host = next((h for h, n in self.ns.items() if n == ns), None)
            if host is not None:  # whatever still runs there was started by this test
                self._signal_all(host, signal.SIGCONT)
                self._signal_all(host, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
