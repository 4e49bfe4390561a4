"""Job lifecycle: create (idempotent), claim, run, advance, fail, cancel, reap.

The catalog row is the truth about a job; the broker only carries step ids. Every message is
sent after the commit that created its step, a step is claimed with a compare-and-set (a
redelivered message finds it taken and does nothing), attempts are counted in the row and capped,
and a step whose worker stops heartbeating is taken back by the reaper."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.catalog import repo
from app.catalog.tables import Job, JobStep, utcnow
from app.conversion import planner, registry
from app.conversion.base import Edge, InputSpec
from app.errors import Unprocessable
from app.limits import ascii_int, echo
from app.pipeline import dispatch

log = logging.getLogger("modelport.jobs")
ACTIVE = ("pending", "queued", "waiting_for_hardware", "running")
MAX_BATCH_SIZES = 16  # batch sizes one benchmark measures: each costs a probe and a warm-up within max_seconds
LOG_LIMIT = 256 * 1024


class Dispatcher(Protocol):
    def enqueue(self, step_id: str, queue: str) -> None: ...


# ----------------------------------------------------------------------------- creating


def live_queues(s, settings) -> set[str]:
    since = utcnow() - dt.timedelta(seconds=settings.worker_stale_s)
    return {q for w in repo.live_workers(s, since) for q in w.queues}


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def check_input_specs(plan: planner.Plan, inspection: dict[str, Any],
                      input_specs: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``input_specs``; require them for every input when the route needs them."""
    specs: dict[str, Any] | None = None
    if input_specs is not None:
        if not isinstance(input_specs, dict):
            raise Unprocessable("input_specs must be an object: {input name: {shape, dtype, dynamic}}",
                                code="invalid_input_specs")
        specs = {}
        for name, spec in input_specs.items():
            try:
                specs[name] = InputSpec.model_validate(spec).model_dump()
            except Exception as e:
                errors = getattr(e, "errors", None)
                why = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
                                for err in errors()[:3]) if callable(errors) else str(e).splitlines()[0]
                raise Unprocessable(f"input_specs['{echo(str(name), 100)}']: {why}"[:500], code="invalid_input_specs",
                                    detail={"input": echo(str(name), 100)}) from None
            for axis in specs[name]["dynamic"]:
                if ascii_int(axis) is None or int(axis) >= len(specs[name]["shape"]):
                    raise Unprocessable(f"input_specs['{name}'].dynamic names axis {axis!r}, but the shape has "
                                        f"{len(specs[name]['shape'])} axes", code="invalid_input_specs")
    if plan.edges and plan.edges[0].needs_input_specs:
        names = [i["name"] for i in (inspection.get("inputs") or [])]
        # none given: the edge finds them from the forward graph (app.runners.search.torchscript_specs)
        missing = [n for n in names if specs and n not in specs]
        if not names and not specs:
            missing = ["<every forward argument>"]
        if missing:
            raise Unprocessable(
                f"this model's file does not record its input shapes and dtypes; give input_specs for: "
                f"{', '.join(missing)} (e.g. {{\"{missing[0]}\": {{\"shape\": [1, 3, 224, 224], \"dtype\": "
                "\"float32\", \"dynamic\": {\"0\": \"batch\"}}})", code="missing_input_specs",
                detail={"missing": missing})
        if specs and names:
            unknown = [n for n in specs if n not in names]
            if unknown:
                raise Unprocessable(f"input_specs names {', '.join(unknown)}, which the model does not take; its "
                                    f"inputs are {', '.join(names)}", code="invalid_input_specs")
    return specs


def check_source(fmt: str, inspection: dict[str, Any], target: str) -> None:
    """Refuse, when it is requested, a conversion this upload cannot make whatever the route says."""
    details = (inspection or {}).get("details") or {}
    if fmt == "keras" and details.get("kind") == "weights_only":
        raise Unprocessable(
            f"this Keras file holds weights only (no model config, so no graph): there is no model to convert to "
            f"{target}; upload the whole model (a .keras file, or an .h5 saved with model.save)",
            code="weights_only_source", detail={"format": fmt, "kind": "weights_only"})


def pipeline_steps(plan: planner.Plan, *, validate: bool, benchmark: dict[str, Any] | None,
                   tolerance: dict[str, Any] | None, try_fixes: bool = False, hardware: str | None = None,
                   via: tuple[str, ...] = ()) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, name, queue, options) for every step: each conversion, then the validation and the
    benchmark of its artifact, on the queue of the hardware its runtime needs. ``hardware`` (e.g.
    ``gpu``) moves the checks of every artifact whose format has a runtime for it there (ONNX on
    ONNX Runtime's CUDA provider, torch programs on torch CUDA); ``via``: formats made before the
    plan's first edge (a rebuild starts from an artifact, not from the upload)."""
    from app import runners

    steps = []
    for i, (e, o) in enumerate(zip(plan.edges, plan.options, strict=True)):
        steps.append(("convert", e.name, e.queue, o))
        on = hardware if runners.on_hardware(e.target, hardware) is not None else None
        where = {"hardware": on} if on else {}
        if validate:
            # on a host that runs both the artifact and its reference (see _gather: the upload itself when it
            # can run, else the artifact before it); a TensorFlow model runs only under the TF toolchain
            made = [plan.source, *via] + [x.target for x in plan.edges[:i]]
            ref = made[reference_index(made, e.target)]
            queue, _ = runners.check_placement(e.target, ref, on)
            steps.append(("validate", f"validate:{e.target}", queue,
                          {"profile": registry.tolerance(e, o), "overrides": tolerance,
                           "weights_key": o.get("weights_key"),
                           **({"hardware": on} if on and queue == runners.queue_for(e.target, on) else {}),
                           **({"try_fixes": True} if try_fixes and i == len(plan.edges) - 1 else {})}))
        if benchmark is not None:
            steps.append(("benchmark", f"benchmark:{e.target}", runners.queue_for(e.target, on),
                          {**benchmark, **where}))
    return steps


def reference_index(made: list[str], target: str) -> int:
    """Which of ``made`` (the upload's format, then each artifact's before this one) a new
    ``target`` artifact is proven against: the upload when it can run (or is weights only) and one
    interpreter runs both, else the artifact just before it."""
    from app import runners

    if len(made) == 1 or (reference_is_upload(made[0]) and runners.together(target, made[0])):
        return 0
    return len(made) - 1


def reference_is_upload(fmt: str) -> bool:
    """Validations prove an artifact against the uploaded model itself when that can run (or is
    compared tensor for tensor); otherwise against the artifact converted before it."""
    from app import runners

    return runners.runnable(fmt) or runners.weights_only(fmt)


def check_benchmark(value: bool | dict[str, Any] | None) -> dict[str, Any] | None:
    if value is False:
        return None
    value = {} if value in (None, True) else value
    if not isinstance(value, dict):
        raise Unprocessable("benchmark must be true, false or an object", code="invalid_benchmark")
    allowed = {"batch_sizes", "threads", "max_seconds", "precision", "hardware"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise Unprocessable(f"unknown benchmark setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
                            code="invalid_benchmark")
    sizes = value.get("batch_sizes", [1, 8])
    if not (isinstance(sizes, list) and 0 < len(sizes) <= MAX_BATCH_SIZES
            and all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 4096 for b in sizes)):
        raise Unprocessable(f"benchmark.batch_sizes must be a list of 1 to {MAX_BATCH_SIZES} integers from 1 to 4096",
                            code="invalid_benchmark")
    threads = value.get("threads")
    if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 1024):
        raise Unprocessable("benchmark.threads must be an integer from 1 to 1024", code="invalid_benchmark")
    max_s = value.get("max_seconds", 30)
    if not (isinstance(max_s, (int, float)) and not isinstance(max_s, bool) and 0 < max_s <= 3600):
        raise Unprocessable("benchmark.max_seconds must be in (0, 3600]", code="invalid_benchmark")
    precision = value.get("precision", "fp32")
    if precision not in ("fp32", "fp16", "bf16", "int8"):
        raise Unprocessable("benchmark.precision must be fp32, fp16, bf16 or int8", code="invalid_benchmark")
    out = {"batch_sizes": sorted(set(sizes)), "threads": threads, "max_seconds": max_s, "precision": precision}
    hardware = value.get("hardware")
    if hardware is not None:
        out["hardware"] = check_hardware(hardware)
    return out


def check_hardware(value: Any) -> str | None:
    """Where validations and benchmarks are asked to run: a hardware queue name, or None."""
    from app.runners.base import HARDWARE_NEEDS

    if value is None:
        return None
    if value not in HARDWARE_NEEDS:
        raise Unprocessable(f"hardware must be one of {', '.join(HARDWARE_NEEDS)}, not {value!r}",
                            code="invalid_hardware")
    return value


def check_tolerance(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    from app.pipeline import validation

    try:
        validation.resolve_tolerance("fp32", value)
    except (ValueError, TypeError) as e:
        raise Unprocessable(f"tolerance: {e}", code="invalid_tolerance") from None
    return value


def create_job(db, dispatcher: Dispatcher, settings, model_id: str, target: str,
               options: dict[str, Any] | None, input_specs: dict[str, Any] | None, *, validate: bool = True,
               benchmark: bool | dict[str, Any] | None = True,
               tolerance: dict[str, Any] | None = None, try_fixes: bool = False,
               callback: dict[str, str] | None = None, hardware: str | None = None) -> tuple[Job, bool]:
    """A conversion job (validated and benchmarked unless told otherwise): (the job, whether it is
    new; the same request while it is still active gives that job). ``try_fixes``: when the final
    artifact's validation fails with a suggested fix (an fp16 mixed-precision variant), request it.
    ``hardware``: validate and benchmark on that hardware where a format has a runtime for it."""
    if options is not None and not isinstance(options, dict):
        raise Unprocessable("options must be an object", code="invalid_options")
    bench = check_benchmark(benchmark)
    tolerance = check_tolerance(tolerance)
    hardware = check_hardware(hardware)
    with db.session() as s:
        model = repo.get_model(s, model_id)
        live = live_queues(s, settings)
        plan = planner.plan(model.format, target, options or {}, live)
        check_source(model.format, model.inspection, target)
        if any(o.get("calibration") == "samples" for o in plan.options) and not model.samples_sha256:
            raise Unprocessable("calibration=samples needs the model's sample inputs: upload them first (PUT "
                                f"/v1/models/{model_id}/samples, an .npz), or use calibration=synthetic",
                                code="missing_samples")
        for o in plan.options:
            check_calibration_set(s, model_id, o.get("calibration"))
        specs = check_input_specs(plan, model.inspection, input_specs)
        steps = pipeline_steps(plan, validate=validate, benchmark=bench, tolerance=tolerance, try_fixes=try_fixes,
                               hardware=hardware)
        # try_fixes is what to do after a failed validation, not what is made: the same conversion asked for
        # with and without it (report-all asks with it) is one job
        key = hashlib.sha256(_canonical([model_id, target, plan.options, specs, _without_try_fixes(steps)])
                             .encode()).hexdigest()
        existing = repo.job_by_active_key(s, key)
        if existing is not None:
            _add_callback(existing, callback)
            if try_fixes:
                _add_try_fixes(existing)
            return existing, False
        first_status = "queued" if steps[0][2] in live else "waiting_for_hardware"
        job = Job(model_id=model_id, target=target, options=options or {}, input_specs=specs, request_key=key,
                  active_key=key, status=first_status, plan=[name for _, name, _, _ in steps],
                  callbacks=[callback] if callback else [])
        job.steps = [
            JobStep(index=i, kind=kind, edge=name, queue=queue, options=o,
                    status=first_status if i == 0 else "pending", max_attempts=settings.max_attempts, log="")
            for i, (kind, name, queue, o) in enumerate(steps)
        ]
        if not repo.add_job(s, job):  # the same request committed concurrently: that job wins
            return repo.job_by_active_key(s, key), False
        first = job.steps[0]
        dispatch.record(s, first.id, first.queue)  # the message commits with the job (an outbox)
    dispatch.send(db, dispatcher, first.id, first.queue)  # after the commit: the row exists before the message
    with db.session() as s:
        return repo.get_job(s, job.id), True


CALIBRATION_UPLOAD = "upload:"


def check_calibration_set(s, model_id: str, calibration: str | None):
    """The calibration set an ``upload:<id>`` calibration names (None for other kinds); 422 unless it is one of
    this model's."""
    if not (calibration or "").startswith(CALIBRATION_UPLOAD):
        return None
    set_id = calibration[len(CALIBRATION_UPLOAD):]
    cal = repo.get_calibration_set(s, model_id, set_id)
    if cal is None:
        raise Unprocessable(f"calibration={calibration}: model {model_id} has no calibration set '{set_id}'; upload "
                            f"one with POST /v1/models/{model_id}/calibration-sets (an .npz) and use the id it "
                            "returns", code="unknown_calibration_set", detail={"calibration_set": set_id})
    return cal


def _without_try_fixes(steps: list[tuple[str, str, str, dict[str, Any]]]) -> list:
    return [(kind, name, queue, {k: v for k, v in o.items() if k != "try_fixes"}) for kind, name, queue, o in steps]


def _add_try_fixes(job: Job) -> None:
    """The same conversion asked for again with try_fixes: its final validation, when it has not started
    yet, requests the suggested fix too."""
    last = max((st for st in job.steps if st.kind == "validate"), key=lambda st: st.index, default=None)
    if last is not None and last.status in ("pending", "queued", "waiting_for_hardware") \
            and not (last.options or {}).get("try_fixes"):
        last.options = {**(last.options or {}), "try_fixes": True}


def _add_callback(job: Job, callback: dict[str, str] | None) -> None:
    """The same request again, with its own callback: notify it too (at once if the job has ended)."""
    from app.pipeline import callbacks

    if callback and callback not in (job.callbacks or []):
        job.callbacks = [*(job.callbacks or []), callback]
        if job.status in repo.TERMINAL:
            callbacks.enqueue(job, [callback])


def create_benchmark_job(db, dispatcher: Dispatcher, settings, artifact_id: str,
                         benchmark: dict[str, Any]) -> tuple[Job, bool]:
    """Measure an existing artifact again, with other settings: a job of one benchmark step."""
    from app import runners

    bench = check_benchmark(benchmark)
    with db.session() as s:
        art = repo.get_artifact(s, artifact_id)
        opts = {**bench, "artifact_id": art.id}
        key = hashlib.sha256(_canonical(["benchmark", artifact_id, opts]).encode()).hexdigest()
        existing = repo.job_by_active_key(s, key)
        if existing is not None and existing.status not in repo.TERMINAL:
            return existing, False
        if existing is not None:  # a finished measurement: measuring again is the point
            existing.active_key = None
            s.flush()
        queue = runners.queue_for(art.format, bench.get("hardware"))
        status = "queued" if queue in live_queues(s, settings) else "waiting_for_hardware"
        job = Job(model_id=art.model_id, target=art.format, options={}, input_specs=None, request_key=key,
                  active_key=key, status=status, plan=[f"benchmark:{art.format}"])
        job.steps = [JobStep(index=0, kind="benchmark", edge=f"benchmark:{art.format}", queue=queue, options=opts,
                             status=status, max_attempts=settings.max_attempts, log="")]
        if not repo.add_job(s, job):  # the same request committed concurrently: that job wins
            return repo.job_by_active_key(s, key), False
        first = job.steps[0]
        dispatch.record(s, first.id, first.queue)
    dispatch.send(db, dispatcher, first.id, first.queue)
    with db.session() as s:
        return repo.get_job(s, job.id), True


def create_rebuild_job(db, dispatcher: Dispatcher, settings, artifact_id: str, *, validate: bool = True,
                       benchmark: bool | dict[str, Any] | None = True) -> tuple[Job, bool]:
    """Make an artifact again on a host of its edge's queue: the same edge, with the same options,
    from the same input (the artifact it was made from, or the upload), validated and benchmarked
    like a conversion. For engines bound to the host that built them (TensorRT): rebuild one for
    the GPU a worker of the ``gpu`` queue has. Returns (the job, whether it is new)."""
    bench = check_benchmark(benchmark)
    with db.session() as s:
        art = repo.get_artifact(s, artifact_id)
        try:
            edge = registry.by_name(art.edge)
        except KeyError:
            raise Unprocessable(f"the artifact was made by edge '{art.edge}', which this modelport no longer has",
                                code="unknown_edge", detail={"edge": art.edge}) from None
        model = repo.get_model(s, art.model_id)
        parent = repo.get_artifact(s, art.parent_artifact_id) if art.parent_artifact_id else None
        if art.parent_artifact_id and parent is None:
            raise Unprocessable(f"the artifact it was made from ({art.parent_artifact_id}) is gone", code="no_input")
        options = {k: v for k, v in (art.options or {}).items() if k != "samples"}
        if options.get("calibration") == "samples" and not model.samples_sha256:
            raise Unprocessable("calibration=samples needs the model's sample inputs, which are gone: upload them "
                                f"again (PUT /v1/models/{model.id}/samples)", code="missing_samples")
        check_calibration_set(s, model.id, options.get("calibration"))
        plan = planner.Plan(model.format, art.format, [edge], [options])
        steps = pipeline_steps(plan, validate=validate, benchmark=bench, tolerance=None,
                               via=(parent.format,) if parent is not None else ())
        key = hashlib.sha256(_canonical(["rebuild", artifact_id, steps]).encode()).hexdigest()
        existing = repo.job_by_active_key(s, key)
        if existing is not None and existing.status not in repo.TERMINAL:
            return existing, False
        if existing is not None:  # a finished rebuild: building again (on another host) is the point
            existing.active_key = None
            s.flush()
        live = live_queues(s, settings)
        first_status = "queued" if steps[0][2] in live else "waiting_for_hardware"
        job = Job(model_id=model.id, target=art.format, options=options, input_specs=None, request_key=key,
                  active_key=key, status=first_status, plan=[name for _, name, _, _ in steps])
        job.steps = [
            JobStep(index=i, kind=kind, edge=name, queue=queue, options=o,
                    input_artifact_id=parent.id if i == 0 and parent is not None else None,
                    status=first_status if i == 0 else "pending", max_attempts=settings.max_attempts, log="")
            for i, (kind, name, queue, o) in enumerate(steps)
        ]
        if not repo.add_job(s, job):
            return repo.job_by_active_key(s, key), False
        first = job.steps[0]
    dispatcher.enqueue(first.id, first.queue)
    with db.session() as s:
        return repo.get_job(s, job.id), True


def cancel_job(db, job_id: str) -> Job:
    now = utcnow()
    with db.session() as s:
        job = repo.get_job(s, job_id)
        if job.status in repo.TERMINAL:
            return job
        job.cancel_requested = True
        running = False
        for st in job.steps:
            if st.status in ("pending", "queued", "waiting_for_hardware"):
                st.status, st.finished_at = "cancelled", now
            running = running or st.status == "running"
        if not running:
            _finish(job, "cancelled", now, {"message": "cancelled by request"})
        return job


def _finish(job: Job, status: str, now, error: dict[str, Any] | None = None) -> None:
    from app.pipeline import callbacks

    job.status, job.finished_at = status, now
    if error is not None:
        job.error = error
    if status != "succeeded":
        job.active_key = None  # the same request may be made again
    if job.callbacks:
        callbacks.enqueue(job)  # in this transaction: the job's end and its notifications commit together


# ----------------------------------------------------------------------------- running


def host_name() -> str:
    return socket.gethostname()


def _append_log(step: JobStep, text: str) -> None:
    merged = (step.log or "") + text
    step.log = merged[-LOG_LIMIT:]


def _fail_step(s, step: JobStep, error: dict[str, Any], now, status: str = "failed") -> None:
    step.status, step.error, step.finished_at = status, error, now
    job = step.job
    for later in job.steps:
        if later.index > step.index and later.status == "pending":
            later.status = "cancelled"
    job_error = {"step": step.index, "edge": step.edge, **{k: v for k, v in error.items() if k != "log_tail"}}
    _finish(job, "cancelled" if status == "cancelled" else "failed", now, job_error)


@dataclass
class FileSet:
    """A model's or an artifact's files in the object store, and what they are."""

    files: list[tuple[str, str]]  # (relative path, sha256)
    format: str
    primary: str
    inspection: dict[str, Any]

    @classmethod
    def of(cls, obj) -> FileSet:
        return cls([(f.path, f.sha256) for f in obj.files], obj.format, obj.primary_file, obj.inspection)

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.files]


@dataclass
class StepInputs:
    """What a step works on: its input files, and for a validation the reference's and the samples."""

    input: FileSet
    parent: str | None = None  # the artifact a conversion starts from (None: the upload)
    artifact_id: str | None = None  # validations and benchmarks: the artifact they measure
    io_hints: list[dict[str, Any]] = field(default_factory=list)  # the upload's inputs, for runtimes that lack them
    reference: FileSet | None = None
    reference_id: str | None = None  # "model:<id>" or "artifact:<id>"
    samples: str | None = None  # sha256 of the model's sample inputs (.npz); a conversion's: its calibration set


@dataclass
class StoredFile:
    path: str
    sha256: str
    size: int
    tmp: Path

    def row(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass
class StoredArtifact:
    """What a conversion wrote, hashed, inspected and in the object store."""

    files: list[StoredFile]
    inspection: dict[str, Any]
    digest: str

    def rows(self) -> list[dict[str, Any]]:
        return [f.row() for f in self.files]


def _gather(s, job: Job, step: JobStep) -> StepInputs:
    """What a step works on: its input files (and, for validation, the reference's)."""
    model = repo.get_model(s, job.model_id)
    converts = [x for x in job.steps if x.kind == "convert" and x.index < step.index]
    start = [repo.get_artifact(s, converts[0].input_artifact_id)] if converts and converts[0].input_artifact_id \
        else []  # a rebuild starts from the artifact the rebuilt one was made from
    if step.kind == "convert":
        if converts:
            src = repo.get_artifact(s, converts[-1].output_artifact_id)
        elif step.input_artifact_id:
            src = repo.get_artifact(s, step.input_artifact_id)
        else:
            src = model
        out = StepInputs(FileSet.of(src), parent=None if src is model else src.id)
        calibration = (step.options or {}).get("calibration") or ""
        if calibration == "samples":  # static INT8 calibrated on them
            out.samples = model.samples_sha256
        elif calibration.startswith(CALIBRATION_UPLOAD):  # ... or on a calibration set uploaded for the model
            cal = repo.get_calibration_set(s, model.id, calibration[len(CALIBRATION_UPLOAD):])
            out.samples = cal.sha256 if cal is not None else None
        return out
    hints = model.inspection.get("inputs") or []
    if not converts:  # a benchmark of an existing artifact
        art = repo.get_artifact(s, step.options["artifact_id"])
        return StepInputs(FileSet.of(art), parent=art.id, artifact_id=art.id, io_hints=hints)
    # validate / benchmark work on the artifact of the convert step before them
    made = converts[-1]
    art = repo.get_artifact(s, made.output_artifact_id)
    out = StepInputs(FileSet.of(art), parent=art.id, artifact_id=art.id, io_hints=hints)
    if step.kind == "validate":
        earlier = start + [repo.get_artifact(s, x.output_artifact_id) for x in converts if x.index < made.index]
        k = reference_index([model.format, *(a.format for a in earlier)], art.format)
        if k == 0:  # the uploaded model itself, when it can run
            out.reference, out.reference_id = FileSet.of(model), f"model:{model.id}"
        else:
            ref = earlier[k - 1]
            out.reference, out.reference_id = FileSet.of(ref), f"artifact:{ref.id}"
        out.samples = model.samples_sha256
    return out


def _fetch(store, files: list[tuple[str, str]], root: Path) -> None:
    for path, sha in files:
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        store.get_to_path(_blob(sha), dest)


def run_step(db, store, settings, step_id: str, worker_id: str, dispatcher: Dispatcher) -> str:
    """Run one step if it is still ours to run. Returns what happened (for logs and tests)."""
    now = utcnow()
    with db.session() as s:
        step = repo.get_step(s, step_id)
        if step is None:
            return "missing"
        job = step.job
        if job.cancel_requested or job.status in repo.TERMINAL:
            if step.status in ("queued", "waiting_for_hardware", "pending"):
                step.status, step.finished_at = "cancelled", now
            if job.status not in repo.TERMINAL and not any(x.status == "running" for x in job.steps):
                _finish(job, "cancelled", now, {"message": "cancelled by request"})
            return "skipped"
        if step.status in ("queued", "waiting_for_hardware") and step.attempts >= step.max_attempts:
            _fail_step(s, step, {"message": f"gave up after {step.attempts} attempts: the worker running this "
                                 "step died each time (killed, or out of memory?)",
                                 "hint": "raise MODELPORT_CONVERT_MEMORY_MB or give the worker more memory"}, now)
            return "attempts exhausted"
        if not repo.claim_step(s, step_id, worker_id, now):
            return "not claimed"
        s.refresh(step)
        job.status = "running"
        job.started_at = job.started_at or now
        ctx = StepContext(step_id=step_id, worker_id=worker_id, job_id=job.id, kind=step.kind, attempt=step.attempts,
                          label=step.edge, queue=step.queue, options=dict(step.options),
                          edge=registry.by_name(step.edge) if step.kind == "convert" else None,
                          work=_gather(s, job, step), input_specs=job.input_specs)
        _append_log(step, f"\n=== attempt {ctx.attempt} on {worker_id} at {now.isoformat()} ===\n")

    beat = Heartbeat(db, ctx, settings.heartbeat_s)
    beat.start()
    try:
        return _execute(db, store, settings, dispatcher, ctx, beat)
    finally:
        beat.stop()


@dataclass
class StepContext:
    """What a claimed step runs with, read from its rows in the claiming transaction."""

    step_id: str
    worker_id: str
    job_id: str
    kind: str  # convert | validate | benchmark
    attempt: int
    label: str  # the edge name, or validate:<format> / benchmark:<format>
    queue: str
    options: dict[str, Any]
    edge: Edge | None  # convert steps only
    work: StepInputs
    input_specs: dict[str, Any] | None

    @property
    def toolchain(self) -> str:
        """An edge declares its toolchain; a validation or benchmark runs under the one its runtimes need."""
        from app import runners

        if self.edge is not None:
            return self.edge.toolchain
        ref = self.work.reference
        return runners.check_placement(self.work.input.format, ref.format if ref else None)[1]


class Heartbeat:
    """The one heartbeat of a running step, on its own thread for the whole claim (downloads,
    the sandboxed child, uploads): it keeps the claim fresh and notices a cancel, a deleted model
    or a lost claim, which the sandbox's poll reads to stop the child."""

    def __init__(self, db, ctx: StepContext, every_s: float):
        self.db, self.ctx, self.every_s = db, ctx, every_s
        self.halt = threading.Event()  # cancelled, deleted, or the claim is no longer ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{ctx.step_id[:8]}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        try:
            with self.db.session() as s:
                ours = repo.heartbeat_step(s, self.ctx.step_id, self.ctx.worker_id, utcnow())
                job = repo.get_job(s, self.ctx.job_id)
                if not ours or job is None or job.cancel_requested:  # None: the model was deleted
                    self.halt.set()
        except Exception:  # a database blip: keep working; the next beat tries again
            log.warning("heartbeat of step %s failed", self.ctx.step_id, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()
            if self.halt.is_set():
                return


def _execute(db, store, settings, dispatcher: Dispatcher, ctx: StepContext, beat: Heartbeat) -> str:
    from app.sandbox import parent as sandbox
    from app.sandbox.io import Source

    toolchain = ctx.toolchain
    python = settings.toolchain_python(toolchain)
    workdir = settings.tmp_dir / f"step-{ctx.step_id}-{ctx.attempt}"
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "in").mkdir(parents=True)
    log_path = workdir / "step.log"
    options, work = dict(ctx.options), ctx.work
    try:
        if python is None:
            raise sandbox.SandboxFailure({"message": f"this worker has no interpreter for toolchain '{toolchain}'",
                                          "hint": "set MODELPORT_TOOLCHAINS on this worker"})
        _fetch(store, work.input.files, workdir / "in")
        src = Source(root=workdir / "in", paths=work.input.paths, primary=work.input.primary,
                     format=work.input.format, inspection=work.input.inspection, input_specs=ctx.input_specs)
        if ctx.kind != "convert":
            options["io_hints"] = work.io_hints
        if ctx.kind == "convert" and work.samples:
            store.get_to_path(_blob(work.samples), workdir / "samples.npz")
            options["samples"] = str(workdir / "samples.npz")
        if ctx.kind == "validate":
            ref = work.reference
            _fetch(store, ref.files, workdir / "ref")
            options["reference"] = {"root": str(workdir / "ref"), "paths": ref.paths, "primary": ref.primary,
                                    "format": ref.format}
            if work.samples:
                store.get_to_path(_blob(work.samples), workdir / "samples.npz")
                options["samples"] = str(workdir / "samples.npz")
        # the step's own queue decides its time limit (a validation on gpu gets the gpu limit)
        limits = {"python": python, "timeout_s": settings.timeout_for(ctx.queue),
                  "memory_mb": settings.memory_for(ctx.queue), "log_path": log_path, "poll": beat.halt.is_set,
                  "poll_every_s": min(settings.heartbeat_s, 1.0)}
        if ctx.kind == "convert":
            result = sandbox.run_edge(ctx.edge, src, workdir / "out", options, **limits)
            artifact = _store_artifact(settings, db, store, workdir / "out", result)
        else:
            impl = "app.pipeline.checks:validate_step" if ctx.kind == "validate" else "app.pipeline.checks:benchmark_step"
            result = sandbox.run_in_sandbox(impl, ctx.label, ctx.kind, src, workdir / "out", options, **limits)
    except sandbox.SandboxFailure as f:
        return _record_failure(db, store, settings, dispatcher, ctx, dict(f.error), _read(log_path))
    finally:
        log_text = _read(log_path)
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        if ctx.kind == "convert":
            next_step, lost = _finish_step(db, settings, ctx, log_text, result, artifact=artifact)
        else:
            key = _store_check(store, ctx, result["details"])  # object-store I/O before the transaction
            next_step, lost = _finish_step(db, settings, ctx, log_text, result, check_key=key)
    except Exception:
        if ctx.kind == "convert":  # stored and claimed, but no artifact row: let the sweep decide
            try:
                _forget_blobs(db, artifact.files)
            except Exception:  # the catalog is down too: the blobs stay (unreferenced) until cleaned by hand
                log.warning("could not release the blobs of step %s", ctx.step_id, exc_info=True)
        raise
    if lost:
        if ctx.kind == "convert":
            _forget_blobs(db, artifact.files)
        return "lost claim"
    if next_step is not None:
        dispatch.send(db, dispatcher, next_step.id, next_step.queue)
    if ctx.kind == "validate" and ctx.options.get("try_fixes") and result["details"].get("suggestion"):
        _try_fix(db, dispatcher, settings, ctx, result["details"]["suggestion"])
    return "succeeded"


def _try_fix(db, dispatcher: Dispatcher, settings, ctx: StepContext, suggestion: dict[str, Any]) -> None:
    """Request the variant a failed validation suggests, benchmarked like the job it came from."""
    with db.session() as s:
        job = repo.get_job(s, ctx.job_id)
        bench = next((st.options for st in job.steps if st.kind == "benchmark"), None)
        model_id, specs = job.model_id, job.input_specs
    try:
        fix, _ = create_job(db, dispatcher, settings, model_id, suggestion["target"], suggestion["options"], specs,
                            benchmark=bench if bench is not None else False, tolerance=ctx.options.get("overrides"))
    except Exception as e:  # a suggestion is a help: the verdict stands without it
        log.warning("could not request the fix suggested for job %s: %s", ctx.job_id, e)
        return
    with db.session() as s:
        step = repo.get_step(s, ctx.step_id)
        if step is not None:
            _append_log(step, f"\nvalidation failed; requested the suggested fix as job {fix.id}: {suggestion['why']}\n")


def _record_failure(db, store, settings, dispatcher: Dispatcher, ctx: StepContext, err: dict[str, Any],
                    log_text: str) -> str:
    cancelled = bool(err.pop("cancelled", False))
    err.setdefault("tool", None)
    err.setdefault("hint", None)
    check = None
    key = None
    if ctx.kind != "convert" and not cancelled:
        # a validation or benchmark that could not run is recorded as such; the job goes on
        check = {"status": "failed", "reason": err.get("message"), "error": err}
        key = _store_check(store, ctx, check)
    with db.session() as s:
        step = repo.get_step(s, ctx.step_id)
        if step is None:
            return "lost claim"  # the model was deleted meanwhile
        _append_log(step, log_text)
        if step.status != "running" or step.worker != ctx.worker_id:
            return "lost claim"  # reaped or cancelled meanwhile; the new owner records the outcome
        if check is not None:
            _record_check(s, ctx, step, check, key)
            next_step = _advance(s, settings, step, utcnow())
        else:
            _fail_step(s, step, {"edge": step.edge, **err}, utcnow(), status="cancelled" if cancelled else "failed")
            next_step = None
    if next_step is not None:
        dispatch.send(db, dispatcher, next_step.id, next_step.queue)
    return "cancelled" if cancelled else "failed"


def _finish_step(db, settings, ctx: StepContext, log_text: str, result: dict[str, Any], *,
                 artifact: StoredArtifact | None = None, check_key: str | None = None) -> tuple[JobStep | None, bool]:
    """Record a step's success in one transaction: (the next step to queue, whether the claim was lost)."""
    next_step = None
    with db.session() as s:
        step = repo.get_step(s, ctx.step_id)
        lost = step is None or step.status != "running" or step.worker != ctx.worker_id
        if not lost:
            _append_log(step, log_text)
            if artifact is not None:
                edge = ctx.edge
                art = repo.add_artifact(
                    s, files=artifact.rows(), model_id=step.job.model_id, job_id=ctx.job_id, step_id=ctx.step_id,
                    parent_artifact_id=ctx.work.parent, format=artifact.inspection["format"],
                    digest=artifact.digest, primary_file=result["primary"],
                    size_bytes=sum(f.size for f in artifact.files), file_count=len(artifact.files),
                    edge=edge.name, options=ctx.options,
                    toolchain={"name": edge.toolchain, **result.get("versions", {})},
                    host=host_name(), inspection=artifact.inspection,
                    warnings=[*result.get("warnings", []), *artifact.inspection.get("warnings", [])])
                step.output_artifact_id = art.id
            else:
                _record_check(s, ctx, step, result["details"], check_key)
            step.seconds = result.get("seconds")
            next_step = _advance(s, settings, step, utcnow())
    return next_step, lost


def _advance(s, settings, step: JobStep, now) -> JobStep | None:
    """Mark the step done and queue the next one (or finish the job)."""
    job = step.job
    step.status, step.finished_at = "succeeded", now
    if job.cancel_requested:  # cancelled while this step ran: stop here
        for x in job.steps:
            if x.status in ("pending", "queued", "waiting_for_hardware"):
                x.status, x.finished_at = "cancelled", now
        _finish(job, "cancelled", now, {"message": "cancelled by request"})
        return None
    later = [x for x in job.steps if x.index == step.index + 1]
    if not later:
        _finish(job, "succeeded", now)
        return None
    nxt = later[0]
    nxt.status = "queued" if nxt.queue in live_queues(s, settings) else "waiting_for_hardware"
    job.status = nxt.status
    dispatch.record(s, nxt.id, nxt.queue)  # its message commits with it
    return nxt


def _store_check(store, ctx: StepContext, report: dict[str, Any]) -> str | None:
    """A benchmark's full results as JSON in the object store, written before the transaction that
    records them (no object-store I/O while the catalog holds a write lock). Returns its key."""
    if ctx.kind != "benchmark":
        return None
    import tempfile

    key = f"benchmarks/{ctx.work.artifact_id}/{ctx.step_id}-{ctx.attempt}.json"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(report, f, default=str)
    try:
        store.put_file(key, Path(f.name), move=True)
    finally:
        Path(f.name).unlink(missing_ok=True)
    return key


def _record_check(s, ctx: StepContext, step: JobStep, report: dict[str, Any], object_key: str | None) -> None:
    art_id = ctx.work.artifact_id
    if ctx.kind == "validate":
        worst = report.get("worst") or {}
        repo.add_validation(s, artifact_id=art_id, job_id=step.job_id, step_id=step.id,
                            reference=ctx.work.reference_id or "unknown", status=report.get("status", "failed"),
                            reason=report.get("reason"),
                            profile=report.get("profile") or step.options.get("profile", ""),
                            max_abs_err=worst.get("max_abs_err"), worst_output=worst.get("output"), report=report)
        return
    b1 = (report.get("batches") or {}).get("1") or {}
    repo.add_benchmark(s, artifact_id=art_id, job_id=step.job_id, step_id=step.id,
                       status=report.get("status", "failed"), reason=report.get("reason"), settings=dict(step.options),
                       load_ms=report.get("load_ms"), p50_ms=b1.get("p50_ms"), p99_ms=b1.get("p99_ms"),
                       throughput=b1.get("throughput"), host=report.get("host") or {}, results=report,
                       object_key=object_key)


def _forget_blobs(db, files: list[StoredFile]) -> None:
    from app.ingest import blobs

    with db.session() as s:
        blobs.release(s, [f.sha256 for f in files])


def _blob(sha: str) -> str:
    from app.storage import blob_key

    return blob_key(sha)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_LIMIT:]
    except OSError:
        return ""


def _store_artifact(settings, db, store, out_dir: Path, result: dict[str, Any]) -> StoredArtifact:
    """Hash, inspect and store what the converter wrote. An artifact modelport cannot read fails the step."""
    from app.errors import ModelportError
    from app.ingest import blobs
    from app.ingest.inspection import inspect_files
    from app.ingest.uploads import _manifest_digest, _sha256_file
    from app.sandbox.parent import SandboxFailure

    files = [StoredFile(p.relative_to(out_dir).as_posix(), _sha256_file(p), p.stat().st_size, p)
             for p in sorted(out_dir.rglob("*")) if p.is_file()]
    if not files:
        raise SandboxFailure({"message": "the converter wrote no files"})
    try:
        inspection = result.get("inspection") or inspect_files(
            out_dir, [f.path for f in files], result["primary"], accept_unknown=False,
            in_subprocess=settings.inspect_in_subprocess, timeout_s=settings.inspect_timeout_s,
            memory_mb=settings.inspect_memory_mb)
    except ModelportError as e:
        raise SandboxFailure({"message": f"the converter produced an artifact modelport cannot read: {e.message}",
                              "hint": "this is a converter bug; see the job log"}) from None
    blobs.claim(db, [f.sha256 for f in files])  # before writing: a pending deletion of these bytes is off
    try:
        for f in files:
            store.put_file(_blob(f.sha256), f.tmp, move=True)
    except Exception:  # what got stored has no reference: the sweep decides
        _forget_blobs(db, files)
        raise
    rows = [f.row() for f in files]
    digest = files[0].sha256 if len(files) == 1 else _manifest_digest(rows)
    return StoredArtifact(files, inspection, digest)


# ----------------------------------------------------------------------------- reaping


def reap(db, dispatcher: Dispatcher, settings) -> list[str]:
    """Take back steps whose worker stopped heartbeating: requeue them, or fail them once their
    attempts are used up. Returns the step ids requeued."""
    now = utcnow()
    before = now - dt.timedelta(seconds=settings.step_stale_after_s)
    requeued: list[tuple[str, str]] = []
    with db.session() as s:
        for step in repo.stale_steps(s, before):
            if step.job.cancel_requested:
                _fail_step(s, step, {"message": "cancelled by request (its worker had stopped responding)"}, now,
                           status="cancelled")
            elif step.attempts >= step.max_attempts:
                _append_log(step, f"\n=== worker {step.worker} stopped responding; attempts used up ===\n")
                _fail_step(s, step, {"message": f"gave up after {step.attempts} attempts: the worker running this "
                                     "step stopped responding each time (killed, or out of memory?)",
                                     "hint": "raise MODELPORT_CONVERT_MEMORY_MB or give the worker more memory",
                                     "tool": None}, now)
            elif repo.requeue_stale(s, step, before, now):
                _append_log(step, f"\n=== worker {step.worker} stopped responding; step requeued ===\n")
                step.job.status = "queued"
                dispatch.record(s, step.id, step.queue)
                requeued.append((step.id, step.queue))
    for step_id, queue in requeued:
        dispatch.send(db, dispatcher, step_id, queue)
    return [sid for sid, _ in requeued]


def redispatch_unclaimed(db, dispatcher: Dispatcher, settings, limit: int = 100) -> list[str]:
    """Send again the message of every step that has waited ``redispatch_after_s`` unclaimed on a
    queue a live worker serves. The outbox covers a broker that is down when a step is queued; this
    covers one that lost what it held (restarted without persistence, flushed, failed over): nothing
    else would ever send those messages again. A duplicate of a message still in the broker does
    nothing (the step is claimed with a compare-and-set); each step is re-sent at most once per
    ``redispatch_after_s``, by one worker (a compare-and-set on its ``updated_at``). Returns the
    step ids re-sent."""
    now = utcnow()
    before = now - dt.timedelta(seconds=settings.redispatch_after_s)
    out: list[tuple[str, str]] = []
    with db.session() as s:
        live = sorted(live_queues(s, settings))
        for step in repo.unclaimed_steps(s, live, before, limit) if live else []:
            if repo.touch_step(s, step.id, step.updated_at, now):
                _append_log(step, f"\n=== unclaimed for {settings.redispatch_after_s:g} s on '{step.queue}': "
                            "its message sent again ===\n")
                dispatch.record(s, step.id, step.queue)
                out.append((step.id, step.queue))
    for step_id, queue in out:
        dispatch.send(db, dispatcher, step_id, queue)
    if out:
        log.warning("sent %d unclaimed step messages again (the broker may have lost them)", len(out))
    return [sid for sid, _ in out]


def announce(db, worker_id: str, queues: list[str], capabilities: dict[str, Any]) -> None:
    with db.session() as s:
        repo.upsert_worker(s, worker_id, host_name(), queues, capabilities, utcnow())


def worker_id(kind: str) -> str:
    return f"{kind}@{host_name()}:{os.getpid()}"
