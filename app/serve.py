"""`modelport serve --workers N`: N serving processes on one port, under one supervisor.

One process (the default) runs uvicorn on the app and, on embedded defaults, the embedded
executor in the same process. One event loop then parses every request, and on a small host the
other cores sit idle while it does. With ``--workers N`` (or ``MODELPORT_SERVING_WORKERS=N``):

* **N workers**, each a whole API (uvicorn, the FastAPI app, the inference fast path) with its own
  runner cache, each listening on the same host:port through its *own* ``SO_REUSEPORT`` socket,
  so the kernel spreads connections over them. (With one shared accept socket, asyncio accepts a
  whole burst of new connections in the process that wakes first: 16 clients could all land on
  one worker.) Each worker resolves deployments from the catalog itself: a deploy through one
  worker reaches the others through the runner cache's freshness rule (app/serving/runtime.py).
* **The budgets are split**: each worker's runner cache gets 1/N of
  ``MODELPORT_SERVING_MEMORY_BUDGET_MB``; the inference pool (``MODELPORT_SERVING_THREADS`` = 0) and
  the intra-op threads of a deployment that sets none get cores/N each (at least 1).
* **One executor**: without ``MODELPORT_BROKER_URL`` the embedded executor runs here, in the
  supervisor, once; the workers hand it the steps they enqueue (app/pipeline/relay.py). With a
  broker the Celery workers run the steps, as with one process.
* **Metrics add up**: the workers share a fresh ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
  multiprocess mode), so ``/metrics`` on any of them reports the sum over all of them. Each
  response names the process that answered in ``X-Modelport-Worker`` (its pid).
* The supervisor checks the catalog and holds the port before any worker starts (one clear error,
  not N), restarts a worker that dies, stops them all on SIGINT/SIGTERM, and removes its run
  directory. A worker whose supervisor disappears stops itself.

Linux only: other systems' ``SO_REUSEPORT`` does not balance connections."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STARTUP_FAILURE = 3  # uvicorn's exit code for a server that never started
FAST_DEATH_S = 5.0  # a worker dying this soon after it started, three times running, stops the supervisor
STOP_GRACE_S = 30.0  # after SIGTERM, how long the workers get to finish what they are answering


def _say(msg: str) -> None:
    print(f"modelport serve: {msg}", file=sys.stderr, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not listening yet)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    def __init__(self, settings, host: str, port: int, workers: int):
        self.settings, self.host, self.port, self.workers = settings, host, port, workers
        self.stop = threading.Event()
        self.procs: list[subprocess.Popen] = []
        self.started_at: list[float] = []
        self.fast_deaths: list[int] = []
        self.env: dict[str, str] = {}

    def run(self) -> int:
        if not sys.platform.startswith("linux"):
            _say("--workers > 1 needs Linux (SO_REUSEPORT balancing connections between processes); run one "
                 "worker per port behind a load balancer elsewhere")
            return 2
        try:
            hold = bind(self.host, self.port)  # held, never listening: the port is ours before any worker starts
        except OSError as e:
            _say(f"cannot listen on {self.host}:{self.port}: {e}")
            return 2
        self.port = hold.getsockname()[1]
        run_dir = Path(tempfile.mkdtemp(prefix="modelport-serve-"))  # mode 0700: the relay socket, the metrics
        executor = relay = db = None
        try:
            self.env = {**os.environ, "MODELPORT_SERVING_WORKERS": str(self.workers)}
            self.env.pop("MODELPORT_EXECUTOR_SOCKET", None)
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # yours, if set: then wiping it is yours too
                (run_dir / "metrics").mkdir()
                self.env["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
            if not self.settings.broker_url:
                executor, relay, db = self._start_executor(run_dir)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop.set())
            for i in range(self.workers):
                self._spawn(i)
            _say(f"{self.workers} workers on http://{self.host}:{self.port} (pids "
                 f"{', '.join(str(p.pid) for p in self.procs)}; supervisor {os.getpid()}"
                 + (", embedded executor here)" if executor else ")"))
            failed = self._watch()
            self._stop_workers()
            return 1 if failed else 0
        finally:
            if relay is not None:
                relay.stop()
            if executor is not None:
                executor.stop()
            if db is not None:
                db.dispose()
            hold.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    def _start_executor(self, run_dir: Path):
        from app.catalog.db import Database
        from app.pipeline.embedded import EmbeddedExecutor
        from app.pipeline.relay import RelayListener
        from app.storage import open_store

        s = self.settings
        s.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        s.tmp_dir.mkdir(parents=True, exist_ok=True)
        db = Database(s.resolved_database_url)
        executor = EmbeddedExecutor(s, db, open_store(s.resolved_storage_url, s))
        executor.start()
        path = str(run_dir / "executor.sock")
        relay = RelayListener(path, executor).start()
        self.env["MODELPORT_EXECUTOR_SOCKET"] = path
        return executor, relay, db

    def _spawn(self, index: int) -> None:
        cmd = [sys.executable, "-m", "app.serve", "--index", str(index), "--host", self.host, "--port", str(self.port)]
        proc = subprocess.Popen(cmd, env=self.env)
        if index < len(self.procs):
            self.procs[index], self.started_at[index] = proc, time.monotonic()
        else:
            self.procs.append(proc)
            self.started_at.append(time.monotonic())
            self.fast_deaths.append(0)

    def _watch(self) -> bool:
        """Until asked to stop: restart workers that die. True when the supervisor gives up."""
        while not self.stop.wait(0.2):
            for i, proc in enumerate(self.procs):
                rc = proc.poll()
                if rc is None or self.stop.is_set():
                    continue
                if rc == STARTUP_FAILURE:
                    _say(f"worker {i} (pid {proc.pid}) could not start (see its log above); stopping")
                    return True
                lived = time.monotonic() - self.started_at[i]
                self.fast_deaths[i] = self.fast_deaths[i] + 1 if lived < FAST_DEATH_S else 0
                if self.fast_deaths[i] >= 3:
                    _say(f"worker {i} died {self.fast_deaths[i]} times within {FAST_DEATH_S:.0f} s of starting "
                         f"(last exit code {rc}); stopping")
                    return True
                _say(f"worker {i} (pid {proc.pid}) exited with {rc} after {lived:.1f} s; starting another")
                self._spawn(i)
        return False

    def _stop_workers(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"worker pid {proc.pid} did not stop within {STOP_GRACE_S:.0f} s; killing it")
                proc.kill()
                proc.wait(10)


def run(settings, host: str, port: int, workers: int) -> int:
    return Supervisor(settings, host, port, workers).run()


def _watch_parent(parent: int) -> None:
    """Stop this worker (as SIGTERM would) once its supervisor is gone: no orphan keeps the port."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv: list[str] | None = None) -> int:
    """One serving worker (started by the supervisor, with the environment it set)."""
    import argparse

    import uvicorn

    from app.config import get_settings
    from app.main import create_asgi, http_protocol

    p = argparse.ArgumentParser(prog="python -m app.serve")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    settings = get_settings()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="modelport-parent").start()
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        _say(f"worker {args.index}: cannot listen on {args.host}:{args.port}: {e}")
        return STARTUP_FAILURE
    # as in one process (app/cli.py): the guarded protocol (header deadlines and bounds, inference
    # answered without ASGI), no access log or proxy-header rewriting on the hot path
    server = uvicorn.Server(uvicorn.Config(create_asgi(settings), log_level=settings.log_level,
                                           http=http_protocol(settings),
                                           access_log=settings.log_level == "debug", proxy_headers=False,
                                           server_header=False))
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    raise SystemExit(worker_main())
