"""The validate and benchmark steps, as they run inside the sandbox (``app.sandbox.child``).

Each takes the artifact's files as its :class:`Source` and returns its report as the result's
``details``; the worker records it in the catalog. Heavy imports stay inside the functions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.sandbox.io import Result, Source


def _report(report: dict[str, Any]) -> Result:
    """A check writes no file: its report travels back in the sandbox's result (JSON-able already)."""
    return Result(primary="", details=_jsonable(report))


def _jsonable(v):
    """numpy scalars and arrays as plain numbers and lists, anything else unknown as text."""
    import numpy as np

    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_tensors(fmt: str, root: Path, primary: str) -> dict[str, Any]:
    """Every tensor of a weights-only file as numpy, keyed as the inspection keys them."""
    import numpy as np

    path = root / primary
    if fmt == "safetensors":
        import torch
        from safetensors.torch import load_file

        return {k: _np(v) for k, v in load_file(str(path)).items()} if torch else {}
    if fmt == "pytorch":
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        out: dict[str, np.ndarray] = {}
        _flatten(obj, "", out)
        return out
    raise ValueError(f"{fmt} is not a weights-only format")


def _np(t):
    import torch

    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the raw bits
        return t.view(torch.int16).numpy()
    return t.detach().contiguous().numpy()


def _flatten(obj, prefix: str, out: dict) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = _np(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out)


def validate_step(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    from app.pipeline import validation
    from app.runners import RunnerUnavailable, open_runner, queue_for, weights_only

    ref = options["reference"]
    profile = options.get("profile", "fp32")
    overrides = options.get("overrides")
    if weights_only(src.format) or weights_only(ref["format"]):
        if not (weights_only(src.format) and weights_only(ref["format"])):
            return _report(validation.skipped(
                f"cannot compare {ref['format']} with {src.format}: one side holds weights only", profile="exact"))
        key = options.get("weights_key")
        reference = load_tensors(ref["format"], Path(ref["root"]), ref["primary"])
        if key:  # the artifact holds only that sub-dict, keyed without the prefix
            reference = {k[len(key) + 1:]: v for k, v in reference.items() if k.startswith(key + ".")}
        report = validation.validate_tensors(reference, load_tensors(src.format, src.root, src.primary))
        return _report(report)
    samples = None
    if options.get("samples"):
        import numpy as np

        with np.load(options["samples"], allow_pickle=False) as z:
            samples = {k: z[k] for k in z.files}
    hardware = options.get("hardware")  # e.g. gpu: the artifact on its CUDA runtime, the reference as usual
    try:
        candidate = open_runner(src.format, src.root, src.paths, src.primary, precision="fp32", hardware=hardware)
    except RunnerUnavailable as e:
        hw = queue_for(src.format, hardware)
        return _report(validation.skipped(
            f"{e}: waiting for a worker on the '{hw}' queue that can run {src.format}", profile=profile))
    try:
        reference = open_runner(ref["format"], Path(ref["root"]), ref["paths"], ref["primary"], precision="fp32")
    except RunnerUnavailable as e:
        return _report(validation.skipped(
            f"the reference ({ref['format']}) cannot run here: {e}", profile=profile))
    except Exception as e:  # e.g. an ai.onnx.ml or fp16 graph the validating runtime can't load: not the artifact's fault
        return _report(validation.skipped(
            f"the reference ({ref['format']}) could not be loaded by the validating runtime, so nothing can be "
            f"compared: {type(e).__name__}: {str(e)[:500]}", profile=profile))
    from app.runners import search

    failing: dict[str, Any] = {}
    report = validation.validate(reference, candidate, profile=profile, overrides=overrides, samples=samples,
                                 seed=int(options.get("seed", 0)), failing=failing,
                                 evidence=search.evidence(ref["format"], Path(ref["root"]), ref["primary"]).merged(
                                     search.evidence(src.format, src.root, src.primary)))
    if report["status"] == "failed" and "feeds" in failing:
        _localize(report, ref, src, failing, profile, overrides, options)
    return _report(report)


def _localize(report: dict[str, Any], ref: dict[str, Any], src: Source, failing: dict[str, Any], profile: str,
              overrides: dict[str, Any] | None, options: dict[str, Any]) -> None:
    """Name the first tensor that diverges (where the pair supports it), and for an fp16 ONNX
    artifact suggest the mixed-precision variant that keeps it and what it feeds in float32."""
    from app.pipeline import localize

    cand = {"format": src.format, "root": str(src.root), "paths": src.paths, "primary": src.primary}
    try:
        found = localize.first_divergence(ref, cand, failing["feeds"], profile=profile, overrides=overrides,
                                          budget_s=float(options.get("localize_budget_s", 60)))
    except Exception as e:  # localising is a help: its failure leaves the verdict as it is
        found = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:500]}
    found["input_set"] = failing.get("label")
    report["divergence"] = found
    first = found.get("first") or {}
    if found.get("status") == "found":
        report["reason"] += (f"; first diverging tensor {first.get('tensor')!r} ({first.get('op_type')} "
                             f"{first.get('node')!r})")
    if (found.get("status") == "found" and first.get("node") and src.format == "onnx" and ref["format"] == "onnx"
            and profile == "fp16"):
        keep = _downstream(Path(ref["root"]) / ref["primary"], first["node"])
        if keep:
            report["suggestion"] = {
                "target": "onnx", "options": {"precision": "fp16", "optimize": "none", "keep_fp32": keep},
                "why": f"keeps {first['node']!r}, where float16 first diverges, and the {len(keep) - 1} node(s) it "
                       "feeds in float32 (mixed precision)"}


def _downstream(path: Path, node: str) -> list[str]:
    """``node`` and every named node that depends on it, in graph order (the source graph's names:
    the suggested conversion runs with optimize=none, so they survive)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    start = next((n for n in g.node if n.name == node), None)
    if start is None:
        return []
    tainted, keep = set(start.output), [node]
    for n in g.node:
        if n is not start and any(i in tainted for i in n.input):
            tainted.update(n.output)
            if n.name:
                keep.append(n.name)
    return keep


def hinted_specs(runner_specs: list, hints: list[dict[str, Any]], input_specs: dict[str, Any] | None) -> list:
    """Fill inputs a runtime cannot describe (TorchScript records no dtypes or shapes) from the job's
    input_specs, else from the uploaded model's inspection, matched by name, else by position."""
    from app.runners.base import IOSpec

    out = []
    for i, spec in enumerate(runner_specs):
        if spec.dtype and spec.shape is not None:
            out.append(spec)
            continue
        given = (input_specs or {}).get(spec.name)
        if given:
            dyn = {int(k) for k in given.get("dynamic", {})}
            shape = [None if a in dyn else d for a, d in enumerate(given["shape"])]
            out.append(IOSpec(spec.name, given.get("dtype", "float32"), shape))
            continue
        hint = next((h for h in hints if h.get("name") == spec.name), hints[i] if i < len(hints) else None)
        if hint is None or hint.get("shape") is None or not hint.get("dtype"):
            raise ValueError(f"input '{spec.name}': its shape and dtype are unknown; give input_specs")
        out.append(IOSpec(spec.name, hint["dtype"], list(hint["shape"])))
    return out


class _Hinted:
    """A runner whose inputs() are completed from hints (see :func:`hinted_specs`)."""

    def __init__(self, runner, specs):
        self._runner, self._specs = runner, specs
        self.info = runner.info

    def inputs(self):
        return self._specs

    def outputs(self):
        return self._runner.outputs()

    def run(self, feeds):
        return self._runner.run(feeds)

    def close(self):
        self._runner.close()


def benchmark_step(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    from app.pipeline import benchmark
    from app.runners import RunnerUnavailable, open_runner, queue_for, weights_only

    if weights_only(src.format):
        return _report(_load_only(src))

    hardware = options.get("hardware")

    def load():
        r = open_runner(src.format, src.root, src.paths, src.primary, hardware=hardware,
                        precision=options.get("precision", "fp32"), threads=options.get("threads"))
        specs = r.inputs()
        if any(not sp.dtype or sp.shape is None for sp in specs):
            return _Hinted(r, hinted_specs(specs, options.get("io_hints") or [], src.input_specs))
        return r

    from app.runners import search

    try:
        probe = load()
    except RunnerUnavailable as e:
        hw = queue_for(src.format, hardware)
        return _report({"status": "skipped", "reason": f"{e}: waiting for a worker on the "
                                                  f"'{hw}' queue that can run {src.format}", "batches": {}})
    try:  # measured on inputs it runs on (the sizes validation found, found again on the artifact)
        plan = search.find(probe, list(probe.inputs()), search.evidence(src.format, src.root, src.primary))
    finally:
        probe.close()
    report = benchmark.benchmark(
        load,
        batch_sizes=tuple(options.get("batch_sizes", (1, 8))),
        max_seconds=float(options.get("max_seconds", 30)),
        plan=plan,
    )
    # a flat summary per batch size next to the full measurement
    report["batches"] = {
        bs: {"status": e.get("status"), "iterations": e.get("iterations"), "stop": e.get("stop"),
             "p50_ms": (e.get("latency_ms") or {}).get("p50"), "p90_ms": (e.get("latency_ms") or {}).get("p90"),
             "p99_ms": (e.get("latency_ms") or {}).get("p99"), "mean_ms": (e.get("latency_ms") or {}).get("mean"),
             "throughput": e.get("throughput_samples_per_s")}
        for bs, e in (report.get("batch_sizes") or {}).items()}
    report["host"] = report.get("fingerprint")
    ok = any(b["status"] == "ok" for b in report["batches"].values())
    report["status"] = "ok" if ok else "failed"
    if not ok:
        report["reason"] = "; ".join(f"batch {bs}: {b['status']}" for bs, b in report["batches"].items())
    return _report(report)


def _load_only(src: Source) -> dict[str, Any]:
    """Weights-only formats do not run; what users compare them on is load time."""
    from app.pipeline import benchmark

    times = []
    for _ in range(5):
        t = time.perf_counter()
        load_tensors(src.format, src.root, src.primary)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"status": "ok", "load_ms": times[len(times) // 2], "load_ms_all": times,
            "note": "weights only: load time of every tensor into memory (median of 5); no inference",
            "batches": {}, "host": benchmark.fingerprint()}  # noqa: E501
