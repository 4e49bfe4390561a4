"""Upload benchmark: modelport's raw-body upload against two baselines on the same disk.

Measured side by side, interleaved within each repetition, all under one temporary directory
(so on one filesystem):

  A. ``cp SRC DST``                                   (file removed afterwards)
  B. ``curl -T SRC http://127.0.0.1:P/NAME``          PUT to a tiny stdlib static server that streams
                                                       the body to disk in 1 MiB chunks
  C. ``curl -T SRC -X POST -H 'Content-Type: application/octet-stream'
        'http://127.0.0.1:P/v1/models?filename=big.safetensors'``   against ``modelport serve``

The test file is a valid SafeTensors file (one F32 tensor) of ``--size-mb`` MiB, so modelport
accepts it. Before each modelport repetition the previous model is deleted (DELETE
/v1/models/{id}) so content dedupe never short-circuits; after the last repetition the same file
is uploaded once more without deleting, which is reported as the dedupe-hit row.

For the two HTTP servers the server process's RSS is sampled every 20 ms from before curl
starts until curl returns (peak - baseline), and its VmHWM is reset through
/proc/<pid>/clear_refs before each upload so VmHWM after the upload is the exact peak.

Usage (from the repository root):

    .venv/bin/python bench/upload.py [--size-mb 1024] [--repeat 3] [--tmp-root /tmp]

Only the standard library is needed to run this script; the modelport server itself is started
with the repository's virtual environment. MB in the output means MiB (2**20 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import http.server
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
CHUNK = MiB
RSS_TARGET_MB = 100
RATIO_TARGET = 2.0
SAMPLE_S = 0.020


# --------------------------------------------------------------------------- static PUT server


class _PutHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # so curl's "Expect: 100-continue" is answered at once
    root: Path = Path(".")

    def log_message(self, fmt, *args):  # quiet
        pass

    def _reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_PUT(self):  # noqa: N802
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(411, b"Content-Length required\n")
            return
        remaining = int(length)
        name = os.path.basename(self.path.split("?", 1)[0]) or "upload"
        dest = self.root / name
        with open(dest, "wb") as f:
            while remaining:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    break
                f.write(chunk)
                remaining -= len(chunk)
        if remaining:
            dest.unlink(missing_ok=True)
            self.close_connection = True
            return
        self._reply(201)

    do_POST = do_PUT  # noqa: N815

    def do_GET(self):  # noqa: N802  readiness probe
        self._reply(200, b"ok\n")


def run_static_server(root: str, port: int) -> None:
    _PutHandler.root = Path(root)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _PutHandler)

    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()
    srv.server_close()


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready after {timeout:.0f}s")


def stop_process(proc: subprocess.Popen | None) -> None:
    """Stop a server this script started (its own process group, by id), and what it spawned."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def make_safetensors(path: Path, size_mb: int) -> int:
    """One F32 tensor of size_mb MiB; a random 8 MiB block repeated (content does not matter)."""
    n = size_mb * MiB // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # pad like the reference writer
    block = os.urandom(8 * MiB)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        left = 4 * n
        while left:
            piece = block[: min(len(block), left)]
            f.write(piece)
            left -= len(piece)
    return path.stat().st_size


def read_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of the process and of its reaped children (the inspection child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK  # utime stime cutime cstime


def children(pid: int) -> list[int]:
    """Direct children of every thread (the inspection child is spawned from a worker thread)."""
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            out += [int(x) for x in f.read().split()]
    return out


class Sampler(threading.Thread):
    """Samples a process's VmRSS (and its children's) every 20 ms; optionally notes when the
    server-side upload temp file has received the whole body."""

    def __init__(self, pid: int, *, body_glob: str | None = None, total: int = 0):
        super().__init__(daemon=True)
        self.pid, self.body_glob, self.total = pid, body_glob, total
        self.stop_evt = threading.Event()
        self.hwm_reset = False
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.hwm_reset = True
        self.baseline = read_status(pid).get("VmRSS", 0)
        self.peak = self.baseline
        self.child_peak = 0
        self.samples = 0
        self.cpu0 = cpu_seconds(pid)
        self.t0 = time.perf_counter()
        self.t_body: float | None = None

    def run(self) -> None:
        seen_tmp = False
        while not self.stop_evt.is_set():
            rss = read_status(self.pid).get("VmRSS", 0)
            self.peak = max(self.peak, rss)
            for c in children(self.pid):
                self.child_peak = max(self.child_peak, read_status(c).get("VmRSS", 0))
            self.samples += 1
            if self.body_glob and self.t_body is None:
                # in/0 is the streamed body; once prepare() runs it is renamed under files/
                got = glob.glob(self.body_glob + "/in/0")
                if got:
                    seen_tmp = True
                    with contextlib.suppress(OSError):
                        if os.stat(got[0]).st_size >= self.total:
                            self.t_body = time.perf_counter()
                elif seen_tmp or glob.glob(self.body_glob + "/files/*"):
                    self.t_body = time.perf_counter()
            self.stop_evt.wait(SAMPLE_S)

    def finish(self) -> dict:
        self.stop_evt.set()
        self.join()
        st = read_status(self.pid)
        self.peak = max(self.peak, st.get("VmRSS", 0))
        return {
            "rss_baseline_mb": self.baseline / MiB,
            "rss_peak_mb": self.peak / MiB,
            "rss_growth_mb": (self.peak - self.baseline) / MiB,
            "vmhwm_mb": st.get("VmHWM", 0) / MiB,
            "vmhwm_growth_mb": (st.get("VmHWM", 0) - self.baseline) / MiB if self.hwm_reset else None,
            "rss_after_mb": st.get("VmRSS", 0) / MiB,
            "child_rss_peak_mb": self.child_peak / MiB,
            "server_cpu_s": cpu_seconds(self.pid) - self.cpu0,
            "samples": self.samples,
        }


def run_curl(args: list[str]) -> tuple[float, int, str, dict]:
    fmt = "%{http_code} %{time_pretransfer} %{time_starttransfer} %{time_total} %{speed_upload}"
    cmd = ["curl", "-sS", "-o", "-", "-w", "\n" + fmt, *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"curl failed ({p.returncode}): {p.stderr.strip()}")
    body, _, tail = p.stdout.rpartition("\n")
    code, pre, start, total, speed = tail.split()
    return wall, int(code), body, {"time_pretransfer": float(pre), "time_starttransfer": float(start),
                                   "time_total": float(total), "speed_upload_Bps": float(speed)}


def drop_dirty() -> None:
    os.sync()  # write back what the previous run left dirty, outside any timed region


def server_cmd(port: int, custom: str | None = None) -> list[str]:
    if custom:
        return shlex.split(custom.format(port=port))
    exe = REPO / ".venv" / "bin" / "modelport"
    if exe.exists():
        return [str(exe), "serve", "--port", str(port)]
    py = REPO / ".venv" / "bin" / "python"
    return [str(py if py.exists() else sys.executable), "-m", "app.cli", "serve", "--port", str(port)]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="test file size in MiB (default 1024)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed warm-up rounds of all three before the repetitions (default 1); their RSS still "
                    "counts for the RSS target")
    ap.add_argument("--tmp-root", default="/tmp", help="where the one temporary directory goes (default /tmp)")
    ap.add_argument("--out", help="JSON result path (default bench/results/upload-<timestamp>.json)")
    ap.add_argument("--server-cmd", help="command that starts the modelport API on {port}, run from the repository "
                    "root (default: .venv/bin/modelport serve --port {port}, else .venv/bin/python -m app.cli serve)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (for debugging)")
    ap.add_argument("--static-server", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.static_server:
        run_static_server(args.static_server[0], int(args.static_server[1]))
        return 0

    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2

    def _term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)

    work = Path(tempfile.mkdtemp(prefix="modelport-bench-upload-", dir=args.tmp_root))
    static_proc = mp_proc = None
    mp_log = static_log = None
    try:
        fs = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(work)],
                            capture_output=True, text=True).stdout.strip()
        src = work / "big.safetensors"
        t = time.perf_counter()
        size = make_safetensors(src, args.size_mb)
        gen_s = time.perf_counter() - t
        size_mb = size / MiB
        cp_dir, static_dir, data_dir = work / "cp", work / "static", work / "data"
        for d in (cp_dir, static_dir, data_dir):
            d.mkdir()

        print(f"work dir     : {work}  (filesystem: {fs or '?'}; source, cp target, static-server target "
              "and modelport data dir all under it)")
        print(f"test file    : {src.name}, {size} bytes ({size_mb:.1f} MB), valid SafeTensors, generated "
              f"in {gen_s:.2f}s; MB = MiB")
        print(f"repeat       : {args.repeat} (median reported) after {args.warmup} untimed warm-up round(s); "
              "os.sync() untimed before each run; source file hot in page cache for all")
        print("dedupe       : previous model DELETEd before each modelport repetition (same file content)")

        sport, mport = free_port(), free_port()
        static_log = open(work / "static.log", "wb")  # noqa: SIM115
        static_proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--static-server", str(static_dir), str(sport)],
            stdout=static_log, stderr=subprocess.STDOUT, start_new_session=True)
        mp_log = open(work / "modelport.log", "wb")  # noqa: SIM115
        env = {**os.environ, "MODELPORT_DATA_DIR": str(data_dir)}
        mp_proc = subprocess.Popen(server_cmd(mport, args.server_cmd), cwd=REPO, env=env, stdout=mp_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"http://127.0.0.1:{sport}/", static_proc)
        wait_http(f"http://127.0.0.1:{mport}/healthz", mp_proc)
        print(f"servers      : static PUT server pid {static_proc.pid} :{sport}; modelport pid {mp_proc.pid} "
              f":{mport} ({' '.join(server_cmd(mport, args.server_cmd)[:3])} ...)")
        print()

        mp_url = f"http://127.0.0.1:{mport}/v1/models?filename=big.safetensors"
        mp_args = ["-T", str(src), "-X", "POST", "-H", "Content-Type: application/octet-stream", mp_url]
        runs: dict[str, list[dict]] = {"cp": [], "curl_static": [], "modelport": []}

        def modelport_once(expect: int) -> dict:
            sampler = Sampler(mp_proc.pid, body_glob=str(data_dir / "tmp" / "upload-*"), total=size)
            sampler.start()
            wall, code, body, cinfo = run_curl(mp_args)
            mem = sampler.finish()
            if code != expect:
                raise RuntimeError(f"modelport answered {code} (expected {expect}): {body[:2000]}")
            model = json.loads(body)
            body_s = (sampler.t_body - sampler.t0) if sampler.t_body else None
            return {"wall_s": wall, "mb_s": size_mb / wall, "http": code, "model_id": model["id"],
                    "body_received_s": body_s, "after_body_s": (wall - body_s) if body_s else None,
                    **mem, "curl": cinfo}

        def delete_model(model_id: str) -> None:
            req = urllib.request.Request(f"http://127.0.0.1:{mport}/v1/models/{model_id}", method="DELETE")
            with urllib.request.urlopen(req, timeout=60) as resp:
                if resp.status != 204:
                    raise RuntimeError(f"DELETE answered {resp.status}")

        warm: dict[str, list[dict]] = {"cp": [], "curl_static": [], "modelport": []}
        for i in range(-args.warmup, args.repeat):
            into = warm if i < 0 else runs
            last = i == args.repeat - 1
            # A: cp
            drop_dirty()
            dst = cp_dir / src.name
            t = time.perf_counter()
            subprocess.run(["cp", str(src), str(dst)], check=True)
            wall = time.perf_counter() - t
            dst.unlink()
            into["cp"].append({"wall_s": wall, "mb_s": size_mb / wall})

            # B: curl PUT to the static server
            drop_dirty()
            sampler = Sampler(static_proc.pid)
            sampler.start()
            wall, code, body, cinfo = run_curl(["-T", str(src), f"http://127.0.0.1:{sport}/{src.name}"])
            mem = sampler.finish()
            if code != 201:
                raise RuntimeError(f"static server answered {code}")
            got = static_dir / src.name
            if got.stat().st_size != size:
                raise RuntimeError("static server stored a truncated file")
            got.unlink()
            into["curl_static"].append({"wall_s": wall, "mb_s": size_mb / wall, **mem, "curl": cinfo})

            # C: modelport
            drop_dirty()
            r = modelport_once(201)
            into["modelport"].append(r)
            if not last:
                delete_model(r["model_id"])  # so the next upload is not a dedupe hit
            tag = f"warm-up {i + args.warmup + 1}/{args.warmup}" if i < 0 else f"rep {i + 1}/{args.repeat}"
            print(f"  {tag:12}: cp {into['cp'][-1]['wall_s']:.2f}s  "
                  f"curl-static {into['curl_static'][-1]['wall_s']:.2f}s  modelport {r['wall_s']:.2f}s "
                  f"(+{r['rss_growth_mb']:.1f} MB RSS, server CPU {r['server_cpu_s']:.2f}s)"
                  + ("  [not counted]" if i < 0 else ""), flush=True)

        # extra: the same bytes again, model still there -> dedupe hit (200)
        drop_dirty()
        dedupe = modelport_once(200)
        print(f"  {'dedupe hit':12}: modelport {dedupe['wall_s']:.2f}s (HTTP {dedupe['http']}, same bytes, model kept)")
        print()

        # ------------------------------------------------------------------ report
        def summary(rs: list[dict]) -> dict:
            walls = [r["wall_s"] for r in rs]
            s = {"wall_s": med(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
                 "mb_s": med([r["mb_s"] for r in rs])}
            for k in ("rss_growth_mb", "vmhwm_growth_mb", "child_rss_peak_mb", "server_cpu_s", "body_received_s",
                      "after_body_s"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                if vals:
                    s[k] = med(vals)
            if rs and "rss_growth_mb" in rs[0]:
                s["rss_growth_mb_max"] = max(r["rss_growth_mb"] for r in rs)
            return s

        med_ = {k: summary(v) for k, v in runs.items()}
        med_["modelport_dedupe_hit"] = summary([dedupe])

        def fmt(x, spec=".2f", dash="-"):
            return dash if x is None else format(x, spec)

        rows = [
            ("A  cp (same disk)", med_["cp"]),
            ("B  curl -T -> static PUT server", med_["curl_static"]),
            ("C  modelport POST /v1/models", med_["modelport"]),
            ("   modelport dedupe hit (1 run)", med_["modelport_dedupe_hit"]),
        ]
        hdr = (f"{'measurement':34} {'wall s':>6} {'min-max s':>10} {'MB/s':>7} {'x cp':>6} {'x curl':>6} "
               f"{'RSS +MB':>7} {'HWM +MB':>7} {'CPU s':>6} {'body s':>6} {'after s':>7}")
        print(f"Upload of {size_mb:.0f} MB, median of {args.repeat} (warm-up excluded). RSS +MB: server peak VmRSS "
              "- baseline, 20 ms sampling; HWM +MB: VmHWM (reset before) - baseline;")
        print("CPU s: server process user+sys (+ reaped children); body s: until modelport's temp file held the "
              "whole body; after s: body received -> response")
        print(hdr)
        print("-" * len(hdr))
        for label, s in rows:
            spread = f"{s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}"
            print(f"{label:34} {s['wall_s']:6.2f} {spread:>10} {s['mb_s']:7.1f} "
                  f"{s['wall_s'] / med_['cp']['wall_s']:6.2f} {s['wall_s'] / med_['curl_static']['wall_s']:6.2f} "
                  f"{fmt(s.get('rss_growth_mb'), '.1f'):>7} {fmt(s.get('vmhwm_growth_mb'), '.1f'):>7} "
                  f"{fmt(s.get('server_cpu_s')):>6} {fmt(s.get('body_received_s')):>6} "
                  f"{fmt(s.get('after_body_s')):>7}")
        print()
        r_cp = med_["modelport"]["wall_s"] / med_["cp"]["wall_s"]
        r_curl = med_["modelport"]["wall_s"] / med_["curl_static"]["wall_s"]
        all_mp = [*warm["modelport"], *runs["modelport"], dedupe]  # the first upload of a fresh server counts
        peak_growth = max(max(r["rss_growth_mb"] for r in all_mp),
                          *[r["vmhwm_growth_mb"] for r in all_mp if r.get("vmhwm_growth_mb") is not None])
        targets = {
            "time_ratio_modelport_over_cp": r_cp,
            "time_ratio_modelport_over_curl_static": r_curl,
            "throughput_within_2x_of_cp": r_cp <= RATIO_TARGET,
            "throughput_within_2x_of_curl_static": r_curl <= RATIO_TARGET,
            "peak_rss_growth_mb_worst": peak_growth,
            "peak_rss_growth_under_100mb": peak_growth < RSS_TARGET_MB,
        }

        def ok(b):
            return "PASS" if b else "FAIL"

        print(f"modelport / cp          time ratio: {r_cp:.2f}x  -> throughput within 2x of cp baseline: "
              f"{ok(targets['throughput_within_2x_of_cp'])}")
        print(f"modelport / curl-static time ratio: {r_curl:.2f}x  -> throughput within 2x of curl-static baseline: "
              f"{ok(targets['throughput_within_2x_of_curl_static'])}")
        print(f"modelport peak RSS growth (worst upload incl. warm-up and dedupe, max of sampled VmRSS and VmHWM): "
              f"{peak_growth:.1f} MB "
              f"-> < {RSS_TARGET_MB} MB: {ok(targets['peak_rss_growth_under_100mb'])}")
        print(f"(inspection child process peak RSS, separate process, median: "
              f"{fmt(med_['modelport'].get('child_rss_peak_mb'), '.1f')} MB)")

        out = Path(args.out) if args.out else (
            REPO / "bench" / "results" / f"upload-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "benchmark": "upload",
            "when": dt.datetime.now(dt.UTC).isoformat(),
            "config": {"size_mb": args.size_mb, "size_bytes": size, "repeat": args.repeat, "warmup": args.warmup, "work_dir": str(work),
                       "filesystem": fs, "dedupe_avoidance": "DELETE /v1/models/{id} before each repetition",
                       "mb": "MiB (2**20 bytes)", "rss_sample_interval_s": SAMPLE_S},
            "host": {"platform": platform.platform(), "python": sys.version.split()[0],
                     "cpus": os.cpu_count(),
                     "curl": subprocess.run(["curl", "--version"], capture_output=True, text=True)
                     .stdout.splitlines()[0]},
            "median": med_,
            "targets": targets,
            "runs": {**runs, "modelport_dedupe_hit": [dedupe]},
            "warmup_runs": warm,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
        return 0
    except BaseException:
        for name, log in (("modelport", mp_log), ("static server", static_log)):
            if log is not None:
                log.flush()
                with contextlib.suppress(OSError):
                    tail = Path(log.name).read_bytes()[-3000:].decode("utf-8", "replace")
                    if tail.strip():
                        print(f"--- {name} log tail ---\n{tail}", file=sys.stderr)
        raise
    finally:
        stop_process(mp_proc)
        stop_process(static_proc)
        for log in (mp_log, static_log):
            if log is not None:
                log.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
