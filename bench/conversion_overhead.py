"""Service overhead per conversion step: the same conversion (a torch.export .pt2 -> ONNX) run
as a plain script and as a modelport job, side by side in one run.

  plain   : `python bench/conversion_overhead.py --plain MODEL OUT` in a fresh interpreter: load the
            .pt2, torch.onnx.export(dynamo=True), save one self-contained .onnx. Wall time of the process.
  job     : POST /v1/models/{id}/conversions on a running `modelport serve` (embedded executor, or
            --celery: Redis + a `modelport worker`), timed from the POST until GET /v1/jobs/{id}
            reports succeeded (long-poll). Includes planning, the catalog writes, the queue, fetching
            the input from the object store, the sandboxed converter process, inspecting and storing
            the artifact.

Overhead = job - plain, per step (the route is one step; the job is asked without its validate and
benchmark steps, which the plain script does not do either). Target: < 0.5 s.

  .venv/bin/python bench/conversion_overhead.py --repeat 5
  .venv/bin/python bench/conversion_overhead.py --repeat 5 --celery   # needs Redis on 127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def plain(model: str, out: str) -> None:
    import onnx
    import torch

    ep = torch.export.load(model)
    tmp = Path(out).with_suffix(".tmp.onnx")
    torch.onnx.export(ep, (), str(tmp), dynamo=True, opset_version=18)
    onnx.save_model(onnx.load(str(tmp)), out)  # one self-contained file, as modelport stores it


def make_model(path: Path) -> None:
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    ep = torch.export.export(Net().eval(), (torch.randn(2, 3, 32, 32),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, ctype: str = "application/json") -> dict:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=600) as r:
        data = r.read()
        return json.loads(data) if data else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--celery", action="store_true", help="queue through Redis to a `modelport worker`")
    ap.add_argument("--plain", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain(*args.plain)
        return 0

    work = Path(tempfile.mkdtemp(prefix="modelport-bench-conv-"))
    procs: list[subprocess.Popen] = []
    try:
        model = work / "net.pt2"
        make_model(model)
        port = free_port()
        env = {**os.environ, "MODELPORT_DATA_DIR": str(work / "data")}
        if args.celery:
            env["MODELPORT_BROKER_URL"] = "redis://127.0.0.1:6379/12"
            subprocess.run(["redis-cli", "-n", "12", "flushdb"], check=True, capture_output=True)
        procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                http("GET", base + "/readyz")
                break
            except OSError:
                time.sleep(0.1)
        if args.celery:
            procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu,intel"],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            for _ in range(300):
                plan = http("GET", base + "/v1/formats/plan?source=torch_export&target=onnx")
                if plan["steps"][0]["worker_available"]:
                    break
                time.sleep(0.2)
        plain_s, job_s, step_s = [], [], []
        for i in range(args.repeat + 1):  # the first round warms the page cache and is not counted
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--plain", str(model), str(work / "plain.onnx")], cwd=ROOT,
                           check=True, capture_output=True)
            p = time.perf_counter() - t
            m = http("POST", base + "/v1/models?filename=net.pt2", model.read_bytes(), "application/octet-stream")
            t = time.perf_counter()
            job = http("POST", f"{base}/v1/models/{m['id']}/conversions", json.dumps({"target": "onnx", "validate": False, "benchmark": False}).encode())
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                job = http("GET", f"{base}/v1/jobs/{job['id']}?wait=60")
            j = time.perf_counter() - t
            if job["status"] != "succeeded":
                print(json.dumps(job, indent=2))
                return 1
            http("DELETE", f"{base}/v1/models/{m['id']}")  # the next round must convert again
            tag = "warm-up" if i == 0 else f"run {i}"
            print(f"{tag:8s} plain {p:6.2f}s  job {j:6.2f}s  (sandboxed converter {job['steps'][0]['seconds']:.2f}s)"
                  f"  overhead {j - p:+.2f}s")
            if i:
                plain_s.append(p)
                job_s.append(j)
                step_s.append(job["steps"][0]["seconds"])
        mp, mj, ms = (statistics.median(x) for x in (plain_s, job_s, step_s))
        mode = "celery (Redis + modelport worker)" if args.celery else "embedded executor"
        print(f"\nmode: {mode}; model: Conv2d+Linear .pt2 -> ONNX; {args.repeat} runs, medians")
        print(f"plain script            {mp:6.2f} s")
        print(f"modelport job           {mj:6.2f} s   (sandboxed converter process {ms:.2f} s)")
        print(f"overhead per step       {mj - mp:+6.2f} s   ratio {mj / mp:.2f}x   target < 0.5 s: "
              f"{'PASS' if mj - mp < 0.5 else 'FAIL'}")
        print(f"  of which outside the converter process: {mj - ms:+.2f} s")
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"conversion-overhead-{'celery' if args.celery else 'embedded'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
         ).write_text(json.dumps({"plain_s": plain_s, "job_s": job_s, "converter_s": step_s, "mode": mode}, indent=2))
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
