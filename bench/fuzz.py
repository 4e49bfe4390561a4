"""The fuzz runs of the test suite, bigger: schemathesis over the whole OpenAPI (without keys, with
an admin key, keys required and none sent) and the format readers under mutated files, printing
case counts, statuses and every finding. Exits 1 on any finding.

    .venv/bin/python bench/fuzz.py                       # 200 cases per operation and mode, 600 per format
    .venv/bin/python bench/fuzz.py --api-examples 500 --reader-cases 2000 --seed 3

Loopback only: the server, and our own redis-server, are started here and stopped at the end."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def api(tmp: Path, examples: int, seed: int, deadline_s: float) -> int:
    import httpx

    from app import auth
    from tests import models
    from tests.fuzzing import run_api_fuzz, serve, start_redis
    from tests.helpers import make_settings, upload

    tmp.mkdir(parents=True, exist_ok=True)
    redis, url = start_redis(tmp)
    settings = make_settings(tmp, broker_url=url, request_header_timeout_s=10)
    app, srv, thread, base = serve(settings)
    findings = 0
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            m = upload(c, models.onnx_model(tmp)[0])
            c.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"]})
            job = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "openvino"}).json()
            real = {"model_id": m["id"], "name": "tiny", "job_id": job["id"], "version": "1"}
            t = time.monotonic()
            stats = run_api_fuzz(base, headers={}, real=real, examples=examples, seed=seed, deadline_s=deadline_s)
            results = [("no keys", stats)]
            _, key = auth.create_key(app.state.db, settings, project="default", scope="admin", name="bench")
            app.state.auth.forget()
            results.append(("admin key", run_api_fuzz(base, headers={"Authorization": f"Bearer {key}"}, real=real,
                                                      examples=examples, seed=seed + 1, deadline_s=deadline_s)))
            results.append(("keys required, none sent", run_api_fuzz(base, headers={}, real=real,
                                                                     examples=max(5, examples // 4),
                                                                     seed=seed + 2, deadline_s=deadline_s)))
            total = sum(s["cases"] for _, s in results)
            for label, s in results:
                print(f"api [{label}]: {s['cases']} cases over {s['operations']} operations, statuses "
                      f"{dict(sorted(s['statuses'].items()))}, {len(s['failures'])} findings")
                for f in s["failures"][:50]:
                    print("   ", f)
                findings += len(s["failures"])
            healthy = c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
            print(f"api: {total} cases in {time.monotonic() - t:.0f} s; healthy after: {healthy}")
            findings += 0 if healthy else 1
    finally:
        srv.should_exit = True
        thread.join(30)
        redis.terminate()
        redis.wait(20)
    return findings


def readers(tmp: Path, per_format: int, seed: int) -> int:
    from tests.fuzzing import make_cases, run_reader_cases, seeds

    tf_models = _tf_models()
    seed_sets = seeds(tmp / "seeds", tf_models)
    cases = make_cases(seed_sets, tmp / "cases", per_format, seed=seed)
    t = time.monotonic()
    results = run_reader_cases(cases, per_case_s=30, memory_mb=4096)
    took = time.monotonic() - t
    by = Counter((cases[r["i"]]["format"], r["code"]) for r in results)
    bad = [r for r in results if not r["ok"] and not (r["status"] and 400 <= r["status"] < 500)]
    ms = sorted(r["ms"] for r in results if r["ms"] is not None)
    print(f"readers: {len(results)} cases over {len(seed_sets)} formats in {took:.0f} s; p50 {ms[len(ms) // 2]:.1f} ms, "
          f"max {ms[-1]:.0f} ms; not 4xx: {len(bad)}")
    for (fmt, code), n in sorted(by.items()):
        print(f"    {fmt:14s} {code:28s} {n}")
    for r in bad[:50]:
        c = cases[r["i"]]
        print("   ", c["format"], c["kind"], c["root"], r)
    return len(bad)


def _tf_models() -> Path | None:
    """The TensorFlow-written models the tests use, when the test cache has them."""
    import hashlib
    import os

    script = ROOT / "tests" / "formats" / "tf_make_models.py"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelport-tests"
    out = cache / f"tf_models-{digest}"
    if not (out / "facts.json").is_file():
        print("readers: no TensorFlow-written models cached (run tests/formats/test_reader_fuzz.py once): "
              "SavedModel, Keras and TFLite left out")
        return None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api-examples", type=int, default=200)
    ap.add_argument("--reader-cases", type=int, default=600, help="per format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline-s", type=float, default=1200, help="per API fuzz mode")
    ap.add_argument("--only", choices=("api", "readers"))
    args = ap.parse_args()
    findings = 0
    with tempfile.TemporaryDirectory(prefix="modelport-fuzz-") as d:
        if args.only in (None, "api"):
            findings += api(Path(d) / "api", args.api_examples, args.seed, args.deadline_s)
        if args.only in (None, "readers"):
            findings += readers(Path(d) / "readers", args.reader_cases, args.seed)
    print(f"findings: {findings}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
