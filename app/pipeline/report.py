"""The format report: one row per artifact (measured here, proven against the model) and a
recommendation per priority of the seed's "By Priority" table, each naming the numbers behind it."""

from __future__ import annotations

from typing import Any

from app.catalog import repo

# The seed's orders (shared/seed/ai-model-formats.md, "By Priority"), as format ids.
SEED = {
    "speed_cpu": ("Speed (inference, CPU)", ["openvino", "onnx", "tensorrt"]),
    "speed_loading": ("Speed (loading)", ["safetensors", "onnx", "pytorch"]),
    "file_size": ("File size", ["tflite", "onnx", "safetensors", "pytorch"]),
    "portability": ("Portability", ["onnx", "safetensors"]),
    "security": ("Security", ["safetensors", "onnx", "pytorch"]),
}


def precision_of(art) -> str:
    p = (art.options or {}).get("precision")
    return p if p else ("exact" if _info(art.format).weights_only else "fp32")


def _info(fmt: str):
    from app.formats import FormatInfo, find

    return find(fmt) or FormatInfo(fmt, fmt, (), code_on_load=True)  # an unknown format: assume the worst


def build(s, model) -> dict[str, Any]:
    rows = []
    arts = repo.list_artifacts(s, model.id)
    vals, benches = repo.latest_checks(s, [a.id for a in arts])
    endpoint = {b.artifact_id: endpoint_summary(b) for b in repo.latest_endpoint_benchmarks(s, model.id)}
    host = None
    for art in arts:
        v, b = vals.get(art.id), benches.get(art.id)
        if host is None and b is not None and b.host:
            host = b.host
        batches = (b.results.get("batches") or {}) if b is not None else {}
        big = max((k for k in batches if k != "1" and batches[k].get("p50_ms") is not None), key=int, default=None)
        rows.append({
            "artifact_id": art.id, "format": art.format, "precision": precision_of(art), "edge": art.edge,
            "size_bytes": art.size_bytes,
            "load_ms": b.load_ms if b else None,
            "p50_ms": b.p50_ms if b else None, "p99_ms": b.p99_ms if b else None,
            "throughput": b.throughput if b else None,
            "batch_throughput": {"batch": int(big), "throughput": batches[big].get("throughput")} if big else None,
            "benchmark_status": b.status if b else "not measured",
            "validation": v.status if v else "not validated",
            "validation_reason": v.reason if v else None,
            "max_abs_err": v.max_abs_err if v else None,
            "deployable": bool(v and v.status == "passed"),
            "endpoint": endpoint.get(art.id),
        })
    front = pareto_front(rows)
    for r in rows:
        r["pareto"] = r["artifact_id"] in front
    return {"model": {"id": model.id, "name": model.name, "format": model.format, "size_bytes": model.size_bytes,
                      "endpoint": endpoint.get(None)},
            "host": host, "rows": rows, "recommendations": recommend(model, rows)}


def pareto_front(rows: list[dict[str, Any]]) -> set[str]:
    """The artifacts no other one beats on both size and p50 latency: the validated, measured rows
    for which no other such row is as small and as fast, and smaller or faster. The choices worth
    weighing when both size and speed matter (the latency-vs-size chart marks them)."""
    cands = [r for r in rows if r["deployable"] and r["p50_ms"] is not None]

    def beaten(r: dict[str, Any]) -> bool:
        return any(q["size_bytes"] <= r["size_bytes"] and q["p50_ms"] <= r["p50_ms"]
                   and (q["size_bytes"] < r["size_bytes"] or q["p50_ms"] < r["p50_ms"]) for q in cands)

    return {r["artifact_id"] for r in cands if not beaten(r)}


POINT_KEYS = ("concurrency", "p50_ms", "p90_ms", "p99_ms", "throughput_rps", "throughput", "stable")


def endpoint_summary(b) -> dict[str, Any]:
    """A sweep through the endpoint (app/serving/endpoint_bench.py) for the report: per mode
    (batched, unbatched) latency and throughput per concurrency, the best point, and why it stopped."""
    r = b.results or {}
    return {"benchmark_id": b.id, "deployment": b.name, "version": b.version,
            "created_at": b.created_at.isoformat(), "protocol": r.get("protocol"), "rows": r.get("rows"),
            "serving_workers": r.get("serving_workers"), "skipped": r.get("skipped") or {},
            "modes": {m: {"batching": d.get("batching"), "stop_reason": d.get("stop_reason"), "best": d.get("best"),
                          "points": [{k: p.get(k) for k in POINT_KEYS} for p in d.get("points") or []]}
                      for m, d in (r.get("modes") or {}).items()}}


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _label(r: dict[str, Any]) -> str:
    return f"{r['format']} {r['precision']} ({r['artifact_id'][:8]})"


def recommend(model, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    proven = [r for r in rows if r["deployable"]]
    out = []

    def add(key: str, choice: dict | None, because: str, candidates: list[dict]) -> None:
        title, order = SEED[key]
        seed_pick = next((f for f in order if any(r["format"] == f for r in candidates)), None)
        out.append({
            "priority": title, "key": key,
            "choice": None if choice is None else {"artifact_id": choice["artifact_id"], "format": choice["format"],
                                                   "precision": choice["precision"]},
            "because": because, "seed_order": " > ".join(order),
            "agrees_with_seed": None if choice is None or seed_pick is None else choice["format"] == seed_pick,
        })

    fast = [r for r in proven if r["p50_ms"] is not None]
    if fast:
        best = min(fast, key=lambda r: r["p50_ms"])
        others = ", ".join(f"{_label(r)} {r['p50_ms']:.3f} ms" for r in sorted(fast, key=lambda r: r["p50_ms"])[1:4])
        add("speed_cpu", best, f"lowest measured p50 latency at batch 1 on this host: {best['p50_ms']:.3f} ms "
            f"({best['throughput']:.0f} samples/s)" + (f"; next: {others}" if others else ""), fast)
    else:
        add("speed_cpu", None, "no validated artifact has a benchmark yet", [])
    loads = [r for r in proven if r["load_ms"] is not None]
    if loads:
        best = min(loads, key=lambda r: r["load_ms"])
        add("speed_loading", best, f"fastest measured load: {best['load_ms']:.1f} ms", loads)
    else:
        add("speed_loading", None, "no validated artifact has a measured load time", [])
    if proven:
        best = min(proven, key=lambda r: r["size_bytes"])
        add("file_size", best, f"smallest validated artifact: {_fmt_bytes(best['size_bytes'])} "
            f"(the uploaded model is {_fmt_bytes(model.size_bytes)})", proven)
    else:
        add("file_size", None, "no validated artifact yet", [])
    onnx = [r for r in proven if r["format"] == "onnx" and r["precision"] == "fp32"] or \
        [r for r in proven if r["format"] == "onnx"]
    if onnx:
        r = onnx[0]
        err = f", max abs error {r['max_abs_err']:.2e}" if r["max_abs_err"] is not None else ""
        add("portability", r, f"ONNX runs on every runtime modelport targets; this one passed validation{err}", proven)
    else:
        portable = [r for r in proven if r["format"] == "safetensors"]
        add("portability", portable[0] if portable else None,
            "SafeTensors: framework-neutral weights (validated tensor for tensor)" if portable else
            "no validated ONNX or SafeTensors artifact", proven)
    # loading these runs no code from the file (pickle-free, no Python): the security priority's candidates
    safe = [r for r in proven if not _info(r["format"]).code_on_load]
    if safe:
        order = SEED["security"][1]
        best = min(safe, key=lambda r: order.index(r["format"]) if r["format"] in order else len(order))
        add("security", best, f"{best['format']} runs no code from the file when loaded (no pickle)"
            + (", and matched the model exactly" if best["precision"] == "exact" and best["validation"] == "passed"
               else ""), safe)
    else:
        add("security", None, "no validated artifact in a format that loads without running code", [])
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [f"# Format report: {m['name']}", "",
             f"Uploaded as **{m['format']}**, {_fmt_bytes(m['size_bytes'])}.", ""]
    if report.get("host"):
        h = report["host"]
        cpu = (h.get("cpu") or {}).get("model") if isinstance(h.get("cpu"), dict) else h.get("cpu_model")
        lines += [f"Measured on: {cpu or 'unknown CPU'}, {h.get('logical_cores') or h.get('cores') or '?'} cores.", ""]
    lines += ["| format | precision | size | load ms | p50 ms | p99 ms | samples/s | validation | max abs err |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def n(v, f="{:.3f}"):
        return "—" if v is None else f.format(v)

    for r in report["rows"]:
        lines.append(f"| {r['format']} | {r['precision']} | {_fmt_bytes(r['size_bytes'])} | {n(r['load_ms'], '{:.1f}')} | "
                     f"{n(r['p50_ms'])} | {n(r['p99_ms'])} | {n(r['throughput'], '{:.0f}')} | {r['validation']} | "
                     f"{n(r['max_abs_err'], '{:.2e}')} |")
    lines += _endpoint_markdown(report)
    lines += ["", "## Recommendations", ""]
    for rec in report["recommendations"]:
        c = rec["choice"]
        pick = f"**{c['format']} {c['precision']}**" if c else "none yet"
        seed = "" if rec["agrees_with_seed"] is None else (" (as the seed's order says)" if rec["agrees_with_seed"]
                                                           else " (differs from the seed's order)")
        lines.append(f"- **{rec['priority']}**: {pick}{seed} — {rec['because']}. Seed: {rec['seed_order']}.")
    return "\n".join(lines) + "\n"


def _endpoint_markdown(report: dict[str, Any]) -> list[str]:
    served = [(f"{r['format']} {r['precision']} ({r['artifact_id'][:8]})", r["endpoint"]) for r in report["rows"]
              if r.get("endpoint")]
    if report["model"].get("endpoint"):
        served.insert(0, (f"the upload ({report['model']['format']})", report["model"]["endpoint"]))
    if not served:
        return []
    out = ["", "## Through the endpoint", "",
           "Concurrency sweeps against the deployment's own endpoint (`POST /v1/deployments/{name}/benchmark`), "
           "latency measured at the client.", "",
           "| served | deployment | batching | concurrency | p50 ms | p90 ms | p99 ms | req/s | stable |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def n(v, f="{:.3f}"):
        return "—" if v is None else f.format(v)

    for label, e in served:
        for mode, d in e["modes"].items():
            for p in d["points"]:
                out.append(f"| {label} | {e['deployment']} v{e['version']} | {mode} | {p['concurrency']} | "
                           f"{n(p['p50_ms'])} | {n(p['p90_ms'])} | {n(p['p99_ms'])} | {n(p['throughput_rps'], '{:.0f}')} "
                           f"| {'yes' if p['stable'] else 'no'} |")
    for label, e in served:
        for mode, d in e["modes"].items():
            b = d.get("best")
            if b:
                out.append(f"- {label}, {mode}: best {b['throughput_rps']:.0f} req/s at concurrency {b['concurrency']} "
                           f"(p50 {n(b['p50_ms'])} ms); stopped: {d['stop_reason']}")
    return out


QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
                           "FakeQuantize", "com.microsoft::QAttention", "com.microsoft::DynamicQuantizeMatMul"})


def _already_reduced(inspection: dict[str, Any] | None) -> str | None:
    """Why a precision variant would mean nothing for this model (already quantized or fp16)."""
    d = (inspection or {}).get("details") or {}
    ops = set(d.get("op_types") or {})
    q = sorted(ops & QUANTIZED_OPS)
    if q:
        return f"the model is already quantized ({', '.join(q[:3])} in the graph)"
    consts = ((d.get("precisions") or {}).get("Const") or {})
    if consts and sum(n for t, n in consts.items() if t in ("i8", "u8", "int8", "uint8")) > sum(consts.values()) / 2:
        return "the model's weights are already stored as int8"
    floats = [i.get("dtype") for i in (inspection or {}).get("inputs") or [] if str(i.get("dtype", "")).startswith("float")]
    if floats and all(f == "float16" for f in floats):
        return "the model already computes in float16"
    return None


def reachable_targets(source: str, inspection: dict[str, Any] | None = None, *, has_samples: bool = False
                      ) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """Every target the planner can reach from ``source``, plus the precision variants worth
    comparing (a calibrated, static INT8 one wherever the route's edge can calibrate: on the model's
    samples when it has them, else on generated inputs, which the artifact warns about); and the
    variants not offered for this model, with why. No (target, options) twice."""
    from app.conversion import planner, registry
    from app.errors import Unprocessable

    out: list[tuple[str, dict[str, Any]]] = []
    skipped: list[dict[str, Any]] = []
    reduced = _already_reduced(inspection)
    for target in sorted(planner.targets()):
        try:
            planner.plan(source, target, {})
        except Unprocessable:
            continue
        if target != source:  # the same format: only its precision variants (the ONNX transform edge)
            out.append((target, {}))
        variants = sorted({v for e in registry.edges() if e.target == target for v in e.report_variants})
        offers = [{"precision": p} for p in variants]
        calibrated = {"precision": "int8", "calibration": "samples" if has_samples else "synthetic"}
        try:
            planner.plan(source, target, calibrated)  # refused where no edge of the route calibrates
            offers.append(calibrated)
        except Unprocessable:
            pass
        for options in offers:
            if (target, options) in out:
                continue
            if reduced:
                what = "calibrated int8" if options.get("calibration") else options["precision"]
                skipped.append({"target": target, "options": options,
                                "reason": f"not offered: {reduced}, so {what} compression means nothing"})
            else:
                out.append((target, options))
    return out, skipped


def request_all(db, dispatcher, settings, model_id: str, *, input_specs: dict[str, Any] | None = None,
                benchmark: bool | dict[str, Any] = True,
                tolerance: dict[str, Any] | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """One conversion job (validated and benchmarked) per reachable target and precision variant of
    the model: the jobs made (or found, for a repeated request), and what was skipped and why."""
    from app.conversion import planner
    from app.errors import Unprocessable
    from app.pipeline import jobs

    with db.session() as s:
        model = repo.get_model(s, model_id)
        source, inspection, has_samples = model.format, model.inspection, bool(model.samples_sha256)
        live = jobs.live_queues(s, settings)
    made = []
    targets, skipped = reachable_targets(source, inspection, has_samples=has_samples)
    for target, options in targets:
        steps = jobs.pipeline_steps(planner.plan(source, target, options), validate=True,
                                    benchmark=jobs.check_benchmark(benchmark), tolerance=None)
        missing = sorted({queue for _, _, queue, _ in steps} - live)
        if missing:  # a job no worker could finish would only sit waiting_for_hardware (Core ML: apple)
            skipped.append({"target": target, "options": options,
                            "reason": f"no live worker serves queue {', '.join(missing)}; start one (modelport "
                                      f"worker --queues {','.join(missing)}) or request this conversion anyway"})
            continue
        try:
            job, _ = jobs.create_job(db, dispatcher, settings, model_id, target, options, input_specs,
                                     benchmark=benchmark, tolerance=tolerance, try_fixes=True)
        except Unprocessable as e:  # this route needs what the request lacks (input_specs): say so, go on
            if e.code.startswith("invalid_"):  # the request itself is wrong: for every target alike
                raise
            skipped.append({"target": target, "options": options, "reason": e.message, "code": e.code})
            continue
        made.append(job)
    return made, skipped
