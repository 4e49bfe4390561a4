"""Every SQL query of the catalog, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.catalog.tables import (
    DEFAULT_PROJECT,
    ApiKey,
    Artifact,
    ArtifactFile,
    Benchmark,
    CalibrationSet,
    CallbackDelivery,
    Deployment,
    EndpointBenchmark,
    Job,
    JobStep,
    Model,
    ModelFile,
    Project,
    Validation,
    Worker,
)


def get_model(s: Session, model_id: str, project: str | None = None) -> Model | None:
    """The model, if it exists (and, given ``project``, belongs to it)."""
    m = s.get(Model, model_id)
    return m if m is not None and (project is None or m.project_id == project) else None


def get_model_by_digest(s: Session, digest: str, project: str = DEFAULT_PROJECT) -> Model | None:
    return s.scalar(select(Model).where(Model.digest == digest, Model.project_id == project))


def list_models(s: Session, *, project: str | None = None, format: str | None = None, name: str | None = None,
                limit: int = 50, offset: int = 0) -> tuple[list[Model], int]:
    q = select(Model)
    if project is not None:
        q = q.where(Model.project_id == project)
    if format:
        q = q.where(Model.format == format)
    if name:
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Model.name.ilike(f"%{pattern}%", escape="\\"))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(Model.created_at.desc(), Model.id).limit(limit).offset(offset)).all()
    return list(rows), total


def add_model(s: Session, *, files: list[dict[str, Any]], **fields: Any) -> Model:
    model = Model(**fields)
    model.files = [ModelFile(path=f["path"], sha256=f["sha256"], size_bytes=f["size"]) for f in files]
    s.add(model)
    s.flush()
    return model


def model_digests(s: Session, model: Model) -> set[str]:
    """Every blob digest a model holds: its files, its sample inputs, its artifacts' files."""
    shas = {f.sha256 for f in model.files} | ({model.samples_sha256} if model.samples_sha256 else set())
    shas |= {c.sha256 for c in calibration_sets(s, model.id)}
    for art in list_artifacts(s, model.id):
        shas |= {f.sha256 for f in art.files}
    return shas


def delete_model(s: Session, model: Model) -> list[str]:
    """Delete a model with its jobs and artifacts; return blob digests nothing references any more
    (as this transaction sees it: a concurrent delete of another holder is not counted)."""
    shas = model_digests(s, model)
    for art in list_artifacts(s, model.id):
        s.delete(art)
    for cal in calibration_sets(s, model.id):
        s.delete(cal)
    s.flush()
    s.delete(model)
    s.flush()
    return sorted(sha for sha in shas if not blob_referenced(s, sha))


def blob_referenced(s: Session, sha256: str) -> bool:
    in_models = s.scalar(select(func.count()).select_from(ModelFile).where(ModelFile.sha256 == sha256))
    in_artifacts = s.scalar(select(func.count()).select_from(ArtifactFile).where(ArtifactFile.sha256 == sha256))
    as_samples = s.scalar(select(func.count()).select_from(Model).where(Model.samples_sha256 == sha256))
    as_calibration = s.scalar(select(func.count()).select_from(CalibrationSet).where(CalibrationSet.sha256 == sha256))
    return (in_models or 0) + (in_artifacts or 0) + (as_samples or 0) + (as_calibration or 0) > 0


def add_calibration_set(s: Session, model_id: str, sha256: str, size_bytes: int, rows: int,
                        inputs: dict[str, Any]) -> CalibrationSet:
    cal = CalibrationSet(model_id=model_id, sha256=sha256, size_bytes=size_bytes, rows=rows, inputs=inputs)
    s.add(cal)
    s.flush()
    return cal


def calibration_sets(s: Session, model_id: str) -> list[CalibrationSet]:
    return list(s.scalars(select(CalibrationSet).where(CalibrationSet.model_id == model_id)
                          .order_by(CalibrationSet.created_at)))


def get_calibration_set(s: Session, model_id: str, set_id: str) -> CalibrationSet | None:
    cal = s.get(CalibrationSet, set_id)
    return cal if cal is not None and cal.model_id == model_id else None


# ----------------------------------------------------------------------------- jobs and steps

TERMINAL = ("succeeded", "failed", "cancelled")


def get_job(s: Session, job_id: str, project: str | None = None) -> Job | None:
    """The job, if it exists (and, given ``project``, its model belongs to it)."""
    job = s.get(Job, job_id)
    return job if job is not None and (project is None or project_of_job(s, job) == project) else None


def get_step(s: Session, step_id: str) -> JobStep | None:
    return s.get(JobStep, step_id)


def job_by_active_key(s: Session, key: str) -> Job | None:
    return s.scalar(select(Job).where(Job.active_key == key))


def list_jobs(s: Session, *, project: str | None = None, model_id: str | None = None, status: str | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    q = select(Job)
    if project is not None:
        q = q.join(Model, Model.id == Job.model_id).where(Model.project_id == project)
    if model_id:
        q = q.where(Job.model_id == model_id)
    if status:
        q = q.where(Job.status == status)
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), total


def claim_step(s: Session, step_id: str, worker: str, now) -> bool:
    """Compare-and-set: take a queued step. A redelivered message finds it taken and does nothing."""
    res = s.execute(
        update(JobStep)
        .where(JobStep.id == step_id, JobStep.status.in_(("queued", "waiting_for_hardware")))
        .values(status="running", attempts=JobStep.attempts + 1, worker=worker, heartbeat_at=now,
                started_at=now, updated_at=now)
    )
    return res.rowcount == 1


def heartbeat_step(s: Session, step_id: str, worker: str, now) -> bool:
    """Refresh the step's heartbeat; False when the step is no longer ours (reaped, cancelled)."""
    res = s.execute(update(JobStep).where(JobStep.id == step_id, JobStep.worker == worker,
                                          JobStep.status == "running").values(heartbeat_at=now)
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def stale_steps(s: Session, before) -> list[JobStep]:
    return list(s.scalars(select(JobStep).where(JobStep.status == "running", JobStep.heartbeat_at < before)))


def requeue_stale(s: Session, step: JobStep, before, now) -> bool:
    res = s.execute(update(JobStep).where(JobStep.id == step.id, JobStep.status == "running",
                                          JobStep.heartbeat_at < before)
                    .values(status="queued", worker=None, updated_at=now)
                    .execution_options(synchronize_session=False))
    if res.rowcount == 1:
        s.refresh(step)
    return res.rowcount == 1


def unclaimed_steps(s: Session, queues: list[str], before, limit: int) -> list[JobStep]:
    """Steps queued (or waiting for hardware) on ``queues``, unchanged since ``before``, with no
    message waiting in the outbox: their message may have been lost with the broker's memory."""
    from app.catalog.tables import StepDispatch

    pending = select(StepDispatch.step_id).where(StepDispatch.step_id == JobStep.id).exists()
    return list(s.scalars(select(JobStep).where(JobStep.status.in_(("queued", "waiting_for_hardware")),
                                                JobStep.queue.in_(queues), JobStep.updated_at < before, ~pending)
                          .order_by(JobStep.updated_at).limit(limit)))


def touch_step(s: Session, step_id: str, seen, now) -> bool:
    """Compare-and-set on ``updated_at``: True for the one process that moves it from ``seen``."""
    return s.execute(update(JobStep).where(JobStep.id == step_id, JobStep.updated_at == seen)
                     .values(updated_at=now).execution_options(synchronize_session=False)).rowcount == 1


def waiting_steps(s: Session, queues: list[str]) -> list[JobStep]:
    return list(s.scalars(select(JobStep).where(JobStep.status == "waiting_for_hardware",
                                                JobStep.queue.in_(queues))))


# ----------------------------------------------------------------------------- artifacts


def queued_steps(s: Session, queues: list[str]) -> list[JobStep]:
    return list(s.scalars(select(JobStep).where(JobStep.status == "queued", JobStep.queue.in_(queues))))


def add_job(s: Session, job: Job) -> bool:
    """Insert a job with its steps. False when the same request was committed concurrently (its
    active key is taken): the session is rolled back and that job wins."""
    from sqlalchemy.exc import IntegrityError

    s.add(job)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        return False
    return True


def is_unique_violation(exc: BaseException) -> bool:
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError)


def job_counts(s: Session) -> list[tuple[str, int]]:
    return [(status, n) for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status))]


def finished_job_times(s: Session) -> list[tuple[str, Any, Any]]:
    return [tuple(r) for r in s.execute(select(Job.status, Job.created_at, Job.finished_at)
                                        .where(Job.finished_at.is_not(None)))]


def get_artifact(s: Session, artifact_id: str, project: str | None = None) -> Artifact | None:
    """The artifact, if it exists (and, given ``project``, its model belongs to it)."""
    art = s.get(Artifact, artifact_id)
    return art if art is not None and (project is None or project_of_artifact(s, art) == project) else None


def list_artifacts(s: Session, model_id: str) -> list[Artifact]:
    return list(s.scalars(select(Artifact).where(Artifact.model_id == model_id).order_by(Artifact.created_at)))


def add_artifact(s: Session, *, files: list[dict[str, Any]], **fields: Any) -> Artifact:
    art = Artifact(**fields)
    art.files = [ArtifactFile(path=f["path"], sha256=f["sha256"], size_bytes=f["size"]) for f in files]
    s.add(art)
    s.flush()
    return art


# ----------------------------------------------------------------------------- workers


def upsert_worker(s: Session, worker_id: str, hostname: str, queues: list[str], capabilities: dict[str, Any],
                  now) -> None:
    w = s.get(Worker, worker_id)
    if w is None:
        s.add(Worker(id=worker_id, hostname=hostname, queues=queues, capabilities=capabilities, started_at=now,
                     heartbeat_at=now))
    else:
        w.queues, w.capabilities, w.heartbeat_at = queues, capabilities, now


def remove_worker(s: Session, worker_id: str) -> None:
    w = s.get(Worker, worker_id)
    if w is not None:
        s.delete(w)


def live_workers(s: Session, since) -> list[Worker]:
    return list(s.scalars(select(Worker).where(Worker.heartbeat_at >= since)))


# ----------------------------------------------------------------------------- checks


def add_validation(s: Session, **fields: Any) -> Validation:
    row = Validation(**fields)
    s.add(row)
    return row


def add_benchmark(s: Session, **fields: Any) -> Benchmark:
    row = Benchmark(**fields)
    s.add(row)
    return row


def validations_of(s: Session, artifact_id: str) -> list[Validation]:
    return list(s.scalars(select(Validation).where(Validation.artifact_id == artifact_id)
                          .order_by(Validation.created_at.desc())))


def benchmarks_of(s: Session, artifact_id: str) -> list[Benchmark]:
    return list(s.scalars(select(Benchmark).where(Benchmark.artifact_id == artifact_id)
                          .order_by(Benchmark.created_at.desc())))


def latest_validation(s: Session, artifact_id: str) -> Validation | None:
    rows = validations_of(s, artifact_id)
    return rows[0] if rows else None


def latest_benchmark(s: Session, artifact_id: str) -> Benchmark | None:
    rows = benchmarks_of(s, artifact_id)
    return rows[0] if rows else None


def latest_checks(s: Session, artifact_ids: list[str]) -> tuple[dict[str, Validation], dict[str, Benchmark]]:
    """The latest validation and benchmark of each artifact, in two queries."""
    vals: dict[str, Validation] = {}
    benches: dict[str, Benchmark] = {}
    if artifact_ids:
        for v in s.scalars(select(Validation).where(Validation.artifact_id.in_(artifact_ids))
                           .order_by(Validation.created_at)):
            vals[v.artifact_id] = v
        for b in s.scalars(select(Benchmark).where(Benchmark.artifact_id.in_(artifact_ids))
                           .order_by(Benchmark.created_at)):
            benches[b.artifact_id] = b
    return vals, benches


def benchmark_keys(s: Session, artifact_ids: list[str]) -> list[str]:
    if not artifact_ids:
        return []
    return [k for k in s.scalars(select(Benchmark.object_key).where(Benchmark.artifact_id.in_(artifact_ids))) if k]


# ----------------------------------------------------------------------------- deployments


def deployment_versions(s: Session, name: str, project: str = DEFAULT_PROJECT) -> list[Deployment]:
    return list(s.scalars(select(Deployment).where(Deployment.name == name, Deployment.project_id == project)
                          .order_by(Deployment.version.desc())))


def list_deployment_names(s: Session, project: str = DEFAULT_PROJECT) -> list[str]:
    return list(s.scalars(select(Deployment.name).where(Deployment.project_id == project).distinct()
                          .order_by(Deployment.name)))


def all_deployment_names(s: Session) -> list[tuple[str, str]]:
    """(project, name) of every deployment."""
    return [(p, n) for p, n in s.execute(select(Deployment.project_id, Deployment.name).distinct()
                                         .order_by(Deployment.project_id, Deployment.name))]


def get_deployment(s: Session, deployment_id: str) -> Deployment | None:
    return s.get(Deployment, deployment_id)


def add_deployment(s: Session, **fields: Any) -> Deployment:
    """A new version row; :class:`~app.errors.Conflict` when that version was taken concurrently."""
    from sqlalchemy.exc import IntegrityError

    from app.errors import Conflict

    d = Deployment(**fields)
    s.add(d)
    try:
        s.flush()
    except IntegrityError:
        s.rollback()
        raise Conflict(f"deployment '{fields['name']}' already has version {fields['version']} (deployed "
                       "concurrently); try again", code="version_exists") from None
    return d


def set_deployment_status(s: Session, deployment_id: str, status: str, reason: str | None,
                          load_ms: float | None) -> None:
    d = s.get(Deployment, deployment_id)
    if d is not None:  # deleted while it loaded: nothing to record
        d.status, d.reason, d.load_ms = status, reason, load_ms


def delete_deployment(s: Session, name: str, project: str = DEFAULT_PROJECT) -> list[str]:
    """Delete every version of ``name``; their ids (empty: there was no such deployment)."""
    rows = deployment_versions(s, name, project)
    for d in rows:
        s.delete(d)
    return [d.id for d in rows]


# ----------------------------------------------------------------------------- projects and keys


def project_of_job(s: Session, job: Job) -> str | None:
    return s.scalar(select(Model.project_id).where(Model.id == job.model_id))


def project_of_artifact(s: Session, art: Artifact) -> str | None:
    return s.scalar(select(Model.project_id).where(Model.id == art.model_id))


def ensure_project(s: Session, project: str) -> None:
    if s.get(Project, project) is None:
        s.add(Project(id=project))
        s.flush()


def get_key(s: Session, key_id: str) -> ApiKey | None:
    return s.get(ApiKey, key_id)


def add_key(s: Session, **fields: Any) -> ApiKey:
    k = ApiKey(**fields)
    s.add(k)
    s.flush()
    return k


def list_keys(s: Session, project: str | None = None) -> list[ApiKey]:
    q = select(ApiKey)
    if project is not None:
        q = q.where(ApiKey.project_id == project)
    return list(s.scalars(q.order_by(ApiKey.created_at, ApiKey.id)))


def any_key(s: Session) -> bool:
    return s.scalar(select(ApiKey.id).limit(1)) is not None


# ----------------------------------------------------------------------------- callback outbox


def due_deliveries(s: Session, now, limit: int) -> list[CallbackDelivery]:
    return list(s.scalars(select(CallbackDelivery).where(CallbackDelivery.status == "pending",
                                                         CallbackDelivery.next_attempt_at <= now)
                          .order_by(CallbackDelivery.next_attempt_at).limit(limit)))


def claim_delivery(s: Session, delivery_id: str, attempts: int, lease_until) -> CallbackDelivery | None:
    """Take a due delivery if nobody else did (its attempt counter unchanged); it is leased until
    ``lease_until``, when a sender that died is replaced."""
    taken = s.execute(update(CallbackDelivery)
                      .where(CallbackDelivery.id == delivery_id, CallbackDelivery.attempts == attempts,
                             CallbackDelivery.status == "pending")
                      .values(attempts=attempts + 1, next_attempt_at=lease_until)
                      .execution_options(synchronize_session=False)).rowcount
    return s.get(CallbackDelivery, delivery_id) if taken else None


def finish_delivery(s: Session, delivery_id: str, status: str, error: str | None, next_at) -> None:
    from app.catalog.tables import utcnow

    d = s.get(CallbackDelivery, delivery_id)
    if d is None:
        return
    d.status, d.last_error = status, error
    if next_at is not None:
        d.next_attempt_at = next_at
    if status == "delivered":
        d.delivered_at = utcnow()


def deliveries_of(s: Session, job_id: str) -> list[CallbackDelivery]:
    return list(s.scalars(select(CallbackDelivery).where(CallbackDelivery.job_id == job_id)
                          .order_by(CallbackDelivery.created_at)))


# ----------------------------------------------------------------------------- the dispatch outbox


def add_dispatch(s: Session, step_id: str, queue: str, at) -> None:
    """In the transaction that queues the step: its message, to be sent after the commit."""
    from app.catalog.tables import StepDispatch

    row = s.get(StepDispatch, step_id)
    if row is None:
        s.add(StepDispatch(step_id=step_id, queue=queue, next_attempt_at=at))
    else:  # queued again (requeued by the reaper) before the last message went out
        row.queue, row.next_attempt_at = queue, at


def due_dispatches(s: Session, now, limit: int) -> list[tuple[str, str, int]]:
    from app.catalog.tables import StepDispatch

    rows = s.execute(select(StepDispatch.step_id, StepDispatch.queue, StepDispatch.attempts)
                     .where(StepDispatch.next_attempt_at <= now).order_by(StepDispatch.next_attempt_at).limit(limit))
    return [(a, b, c) for a, b, c in rows]


def claim_dispatch(s: Session, step_id: str, attempts: int, lease_until) -> bool:
    """Take a due message if no other relay did (its attempt counter unchanged), until ``lease_until``."""
    from app.catalog.tables import StepDispatch

    return s.execute(update(StepDispatch).where(StepDispatch.step_id == step_id, StepDispatch.attempts == attempts)
                     .values(attempts=attempts + 1, next_attempt_at=lease_until)
                     .execution_options(synchronize_session=False)).rowcount == 1


def sent_dispatch(s: Session, step_id: str) -> None:
    from app.catalog.tables import StepDispatch

    s.execute(delete(StepDispatch).where(StepDispatch.step_id == step_id))


def failed_dispatch(s: Session, step_id: str, error: str, next_at) -> None:
    from app.catalog.tables import StepDispatch

    s.execute(update(StepDispatch).where(StepDispatch.step_id == step_id)
              .values(last_error=error[:1000], next_attempt_at=next_at).execution_options(synchronize_session=False))


def dispatch_backlog(s: Session) -> tuple[int, str | None]:
    """How many messages wait for the broker, and the last error sending one."""
    from app.catalog.tables import StepDispatch

    n = s.scalar(select(func.count()).select_from(StepDispatch)) or 0
    err = s.scalar(select(StepDispatch.last_error).where(StepDispatch.last_error.is_not(None)).limit(1)) if n else None
    return n, err


# ----------------------------------------------------------------------------- endpoint benchmarks


def add_endpoint_benchmark(s: Session, **fields: Any) -> EndpointBenchmark:
    row = EndpointBenchmark(**fields)
    s.add(row)
    s.flush()
    return row


def get_endpoint_benchmark(s: Session, bench_id: str, project: str | None = None) -> EndpointBenchmark | None:
    b = s.get(EndpointBenchmark, bench_id)
    return b if b is not None and (project is None or b.project_id == project) else None


def running_endpoint_benchmarks(s: Session, beat_since) -> list[EndpointBenchmark]:
    """Sweeps still running whose process heartbeat at or after ``beat_since`` (any project)."""
    return list(s.scalars(select(EndpointBenchmark).where(EndpointBenchmark.status == "running",
                                                          EndpointBenchmark.heartbeat_at >= beat_since)))


def update_endpoint_benchmark(s: Session, bench_id: str, **fields: Any) -> None:
    s.execute(update(EndpointBenchmark).where(EndpointBenchmark.id == bench_id).values(**fields)
              .execution_options(synchronize_session=False))


def latest_endpoint_benchmarks(s: Session, model_id: str) -> list[EndpointBenchmark]:
    """The newest succeeded sweep of each thing served from ``model_id`` (each artifact, and the
    upload itself under artifact_id None)."""
    latest: dict[str | None, EndpointBenchmark] = {}
    for b in s.scalars(select(EndpointBenchmark).where(EndpointBenchmark.model_id == model_id,
                                                       EndpointBenchmark.status == "succeeded")
                       .order_by(EndpointBenchmark.created_at)):
        latest[b.artifact_id] = b
    return list(latest.values())
