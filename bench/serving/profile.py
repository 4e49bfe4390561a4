"""Profile modelport's serving hot path under the serving bench's load: start modelport as run.py does,
drive one endpoint with wrk, and record the server with py-spy (from the bench's tools venv).
Prints the top functions by own time and by inclusive time (share of samples), and keeps the
collapsed stacks (and an SVG flame graph with --svg) under bench/results/.

    .venv/bin/python bench/serving/profile.py --model cnn --api "v2 binary" --clients 16
    .venv/bin/python bench/serving/profile.py --model mlp --api "v2 json" --clients 1 --seconds 10
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
import run as bench  # noqa: E402
import setup_peers  # noqa: E402


def summarize(collapsed: Path, top: int) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    out = [f"{total} samples"]
    out.append("by thread:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in threads.most_common(8)]
    out.append("own time (leaf frames):")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    out.append("inclusive time:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--api", default="v2 binary", help="v2 json | v2 binary | v1 json | v1 npy")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--svg", action="store_true", help="also write a flame graph SVG")
    args = ap.parse_args()
    if not setup_peers.is_ready("tools") and not setup_peers.setup("tools"):
        print(setup_peers.failure("tools"), file=sys.stderr)
        return 2
    pyspy = str(setup_peers.VENV_ROOT / "tools" / "bin" / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-profile-"))
    proc = None
    try:
        paths = bench_models.write_models(work / "models")
        paths = {args.model: paths[args.model]}
        xs = {args.model: bench_models.sample_input(args.model)}
        notes: list[str] = []
        proc, targets = bench.start_modelport(work, paths, xs, notes)
        t = next(t for t in targets if t.api == args.api)
        bench.validate(t, bench.ort_session(paths[args.model]).run(["y"], {"x": xs[args.model]})[0])
        bench.run_wrk(t, args.clients, 2, work)  # warm-up
        stamp = time.strftime("%Y%m%d-%H%M%S")
        res = bench.ROOT / "bench" / "results"
        res.mkdir(parents=True, exist_ok=True)
        collapsed = res / f"profile-{args.model}-{args.api.replace(' ', '_')}-c{args.clients}-{stamp}.txt"
        load: dict = {}
        th = threading.Thread(target=lambda: load.update(p=bench.run_wrk(t, args.clients, args.seconds + 2, work)))
        th.start()
        time.sleep(0.5)
        cmd = [pyspy, "record", "--pid", str(proc.pid), "--duration", str(int(args.seconds)), "--rate",
               str(args.rate), "--format", "raw", "--threads", "--nonblocking", "-o", str(collapsed)]
        if args.native:
            cmd.insert(2, "--native")
        subprocess.run(cmd, check=True, capture_output=True)
        th.join()
        p = load["p"]
        print(f"load: {args.api} {args.model}, {args.clients} client(s): {p.rps:.0f} req/s, p50 {p.p50_ms:.3f} ms, "
              f"p99 {p.p99_ms:.3f} ms (under py-spy)")
        print(summarize(collapsed, args.top))
        print(f"collapsed stacks: {collapsed}")
        if args.svg:
            svg = collapsed.with_suffix(".svg")
            subprocess.run([pyspy, "record", "--pid", str(proc.pid), "--duration", "3", "--rate", str(args.rate),
                            "--nonblocking", "-o", str(svg)], check=False, capture_output=True)
            print(f"flame graph: {svg}")
        return 0
    finally:
        bench.stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
