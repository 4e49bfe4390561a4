"""Head-of-line blocking in the embedded executor: `report-all` of a small transformer, run with the
old executor (one FIFO lane, one step at a time) and the new one (lanes; concurrency from cores
and memory) side by side, each in a fresh data directory, the app embedded in this process.

For each run it prints the wall time (report-all request -> every job terminal), the sum of the
steps' own times (each step's claim -> finish), their ratio, and how many artifacts got their
validation verdict before the longest conversion finished (with one lane a long onnx2tf
conversion is the floor for every verdict queued behind it). Then new wall / old wall and new
wall / old sum (the old run's step times are the uncontended ones). The target: new wall <= 0.7x
the sum of its steps' own times.

The machine may be shared: each run records the load average before and after, and the CPU
seconds the rest of the machine used during it (all CPU time in /proc/stat minus this process and
its children), so a run slowed by a neighbour can be told apart.

  .venv/bin/python bench/lanes.py                      # old, new; results to bench/results/
  .venv/bin/python bench/lanes.py --order old,new,new,old --out /tmp/lanes.json

The TF toolchain (`.venv-tf/bin/python` or MODELPORT_TF_PYTHON) is configured when it exists, so
the ONNX -> TFLite conversion (onnx2tf, the long one) is part of report-all as it is for a user.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(
    os.pathsep) if p and p != str(ROOT)]])

TERMINAL = ("succeeded", "failed", "cancelled")
MODES = {"old": {"embedded_concurrency": 1, "embedded_lanes": False},
         "new": {"embedded_concurrency": 0, "embedded_lanes": True}}
BENCH = {"batch_sizes": [1, 8], "max_seconds": 5}


def transformer(out: Path) -> Path:
    """A 2-layer encoder (d_model 64, 4 heads, vocabulary 1000) over token ids [batch, 16] -> [batch, 5]."""
    import torch

    torch.manual_seed(0)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 64)
            layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(64, 5)

        def forward(self, input_ids):
            return self.head(self.enc(self.emb(input_ids)).mean(1))

    ep = torch.export.export(Encoder().eval(), (torch.randint(0, 1000, (2, 16)),),
                             dynamic_shapes={"input_ids": {0: torch.export.Dim("batch")}})
    path = out / "encoder.pt2"
    torch.export.save(ep, path)
    return path


def tf_python() -> str | None:
    py = Path(os.environ.get("MODELPORT_TF_PYTHON") or ROOT / ".venv-tf" / "bin" / "python")
    return str(py) if py.exists() else None


def cpu_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def parse_t(iso: str | None) -> float | None:
    import datetime as dt

    if not iso:
        return None
    t = dt.datetime.fromisoformat(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def wait_all(client, model_id: str, timeout_s: float) -> list[dict[str, Any]]:
    """Long-poll every live job of the model until all are terminal (fix-up jobs a failed validation
    requests included: the list is read again once nothing is live)."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = client.get("/v1/jobs", params={"model_id": model_id, "limit": 500}).json()["items"]
        live = [j for j in jobs if j["status"] not in TERMINAL]
        if not live:
            return jobs
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs still live after {timeout_s:.0f} s: {[j['id'] for j in live]}")
        client.get(f"/v1/jobs/{live[-1]['id']}", params={"wait": 30})


def run(mode: str, pt2: Path, timeout_s: float) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app

    tf = tf_python()
    with tempfile.TemporaryDirectory(prefix=f"modelport-bench-lanes-{mode}-") as tmp:
        settings = Settings(data_dir=Path(tmp), toolchains={"tf": tf} if tf else {}, **MODES[mode])
        with TestClient(create_app(settings)) as c:
            cap = c.app.state.dispatcher.capacity
            m = c.post("/v1/models", params={"filename": pt2.name}, content=pt2.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"}).json()
            load0, busy0, own0 = os.getloadavg(), cpu_busy_s(), own_cpu_s()
            t0 = time.time()
            r = c.post(f"/v1/models/{m['id']}/report-all", json={"benchmark": BENCH})
            assert r.status_code == 202, r.text
            body = r.json()
            jobs = wait_all(c, m["id"], timeout_s)
            wall = time.time() - t0
            load1, busy1, own1 = os.getloadavg(), cpu_busy_s(), own_cpu_s()
    steps, convert_end, verdicts = [], 0.0, []
    for j in jobs:
        for st in j["steps"]:
            a, b = parse_t(st["started_at"]), parse_t(st["finished_at"])
            if a is None or b is None:
                continue
            steps.append({"job": j["id"], "target": j["target"], "options": j["options"], "kind": st["kind"],
                          "edge": st["edge"], "queue": st["queue"], "status": st["status"],
                          "start_s": round(a - t0, 2), "end_s": round(b - t0, 2), "own_s": round(b - a, 2),
                          "child_s": st["seconds"], "error": (st.get("error") or {}).get("message")})
            if st["kind"] == "convert":
                convert_end = max(convert_end, b - t0)
            if st["kind"] == "validate":
                verdicts.append(b - t0)
    total = sum(s["own_s"] for s in steps)
    longest = max((s for s in steps if s["kind"] == "convert"), key=lambda s: s["own_s"], default=None)
    longest_end = longest["end_s"] if longest else 0.0
    return {
        "mode": mode, "settings": MODES[mode], "capacity": cap.describe(), "wall_s": round(wall, 2),
        "steps_sum_s": round(total, 2), "wall_over_steps": round(wall / total, 3) if total else None,
        "jobs": len(jobs), "jobs_requested": len(body["jobs"]),
        "job_status": {s: sum(j["status"] == s for j in jobs) for s in TERMINAL},
        "skipped": [(s["target"], s.get("options")) for s in body["skipped"]],
        "longest_conversion": longest and {k: longest[k] for k in ("edge", "options", "own_s", "end_s")},
        "verdicts": len(verdicts), "verdicts_before_longest_conversion_ended": sum(v < longest_end for v in verdicts),
        "load_avg_before": [round(x, 2) for x in load0], "load_avg_after": [round(x, 2) for x in load1],
        "cpu_s_this_run": round(own1 - own0, 1), "cpu_s_rest_of_machine": round(max(0.0, (busy1 - busy0) -
                                                                                     (own1 - own0)), 1),
        "steps": sorted(steps, key=lambda s: s["start_s"]),
    }


def verdict_times(r: dict[str, Any]) -> list[float]:
    """When each artifact's validation verdict came, seconds after report-all."""
    return sorted(s["end_s"] for s in r["steps"] if s["kind"] == "validate")


def summarize(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    import statistics

    def mean(mode: str, key) -> float:
        xs = [key(r) if callable(key) else r[key] for r in runs if r["mode"] == mode]
        return sum(xs) / len(xs)

    lines = ["", "| run | mode | wall s | sum of steps s | wall / steps | first verdict s | median verdict s | "
             "verdicts before the longest conversion ended | longest conversion | load 1m before -> after | "
             "CPU s of the rest of the machine |", "| --- " * 11 + "|"]
    for i, r in enumerate(runs, 1):
        lc, v = r["longest_conversion"] or {}, verdict_times(r)
        lines.append(f"| {i} | {r['mode']} | {r['wall_s']} | {r['steps_sum_s']} | {r['wall_over_steps']} | "
                     f"{v[0] if v else '-'} | {round(statistics.median(v), 1) if v else '-'} | "
                     f"{r['verdicts_before_longest_conversion_ended']} of {r['verdicts']} | "
                     f"{lc.get('edge')} {lc.get('options') or ''} {lc.get('own_s')} s | "
                     f"{r['load_avg_before'][0]} -> {r['load_avg_after'][0]} | {r['cpu_s_rest_of_machine']} |")
    failed = sorted({f"{s['edge']} {s['options'] or ''}: {(s.get('error') or '')[:160]}" for r in runs
                     for s in r["steps"] if s["status"] == "failed"})
    if failed:
        lines += ["", "failed steps: " + "; ".join(failed)]
    summary: dict[str, Any] = {}
    if {"old", "new"} <= {r["mode"] for r in runs}:
        def med(r):
            return statistics.median(verdict_times(r))

        summary = {"new_wall_over_own_steps": round(mean("new", "wall_s") / mean("new", "steps_sum_s"), 3),
                   "new_wall_over_old_wall": round(mean("new", "wall_s") / mean("old", "wall_s"), 3),
                   "new_wall_over_old_steps": round(mean("new", "wall_s") / mean("old", "steps_sum_s"), 3),
                   "old_wall_over_own_steps": round(mean("old", "wall_s") / mean("old", "steps_sum_s"), 3),
                   "new_median_verdict_over_old": round(mean("new", med) / mean("old", med), 3),
                   "new_first_verdict_over_old": round(mean("new", lambda r: verdict_times(r)[0])
                                                       / mean("old", lambda r: verdict_times(r)[0]), 3)}
        lines += ["", f"new wall / its steps' own times: {summary['new_wall_over_own_steps']} (target <= 0.7)",
                  f"new wall / old wall:             {summary['new_wall_over_old_wall']}",
                  f"new wall / old steps' own times: {summary['new_wall_over_old_steps']}",
                  f"old wall / its steps' own times: {summary['old_wall_over_own_steps']}",
                  f"median verdict, new / old:       {summary['new_median_verdict_over_old']}",
                  f"first verdict, new / old:        {summary['new_first_verdict_over_old']}"]
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", default="old,new", help="modes in run order, e.g. old,new,new,old")
    ap.add_argument("--timeout", type=float, default=3600, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--summarize", type=Path, default=None, help="print (and rewrite the .txt of) the summary of "
                    "a results JSON written by an earlier run, without running anything")
    args = ap.parse_args()
    if args.summarize:
        data = json.loads(args.summarize.read_text())
        text, data["summary"] = summarize(data["runs"])
        args.summarize.write_text(json.dumps(data, indent=1))
        args.summarize.with_suffix(".txt").write_text(text + "\n")
        print(text)
        return
    import app

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"app: {app.__file__}  commit {commit}  cores {os.cpu_count()}  {platform.processor() or ''}")
    print(f"TF toolchain: {tf_python() or 'none (no TFLite conversion)'}")
    with tempfile.TemporaryDirectory(prefix="modelport-bench-lanes-") as tmp:
        pt2 = transformer(Path(tmp))
        runs = []
        for mode in args.order.split(","):
            print(f"--- {mode} ...", flush=True)
            runs.append(run(mode, pt2, args.timeout))
            r = runs[-1]
            print(f"    {r['capacity']}: wall {r['wall_s']} s, steps {r['steps_sum_s']} s, "
                  f"ratio {r['wall_over_steps']}, jobs {r['job_status']}, load {r['load_avg_before']} -> "
                  f"{r['load_avg_after']}, rest-of-machine CPU {r['cpu_s_rest_of_machine']} s", flush=True)

    text, summary = summarize(runs)
    print(text)
    out = args.out or ROOT / "bench" / "results" / f"lanes_{commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"commit": commit, "cores": os.cpu_count(), "benchmark": BENCH, "runs": runs,
                               "summary": summary}, indent=1))
    out.with_suffix(".txt").write_text(text + "\n")
    print(f"\nwritten: {out} and {out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
