"""Catalog tables (SQLAlchemy 2, typed). Migrations in ``migrations/versions`` create them;
``tests/test_catalog.py`` checks that the two never drift apart."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, nullable=False
    )


DEFAULT_PROJECT = "default"
"""The project everything belongs to while authentication is off (and rows made before projects)."""


class Project(Base):
    """Who owns what: every model (and so its jobs, artifacts, checks) and deployment is one project's."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the name: letters, digits, '.', '_', '-'
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class ApiKey(Base):
    """An API key: shown once (``mp_<id>_<secret>``), stored as an HMAC-SHA256 of the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the short id, in the key and in logs
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True,
                                            nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Model(TimestampMixin, Base):
    """An uploaded model: one or more files, identified (within its project) by the digest of their
    content; the bytes themselves are shared blobs."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "digest"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), index=True,
                                            nullable=False, default=DEFAULT_PROJECT)
    digest: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    name: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    format: Mapped[str] = mapped_column(String(32), index=True, nullable=False)
    primary_file: Mapped[str] = mapped_column(String(1024), nullable=False)
    is_directory: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    file_count: Mapped[int] = mapped_column(Integer, nullable=False)
    original_filename: Mapped[str | None] = mapped_column(String(1024))
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict, nullable=False)
    inspection: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    warnings: Mapped[list[str]] = mapped_column(JSONType, default=list, nullable=False)
    samples_sha256: Mapped[str | None] = mapped_column(String(64))  # user sample inputs (.npz) for validation

    files: Mapped[list[ModelFile]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelFile.path", lazy="selectin"
    )


class CalibrationSet(Base):
    """An ``.npz`` of calibration inputs uploaded for a model (``POST /v1/models/{id}/calibration-sets``),
    which a static INT8 conversion names with ``"calibration": "upload:<id>"``; kept as a blob."""

    __tablename__ = "calibration_sets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    rows: Mapped[int] = mapped_column(Integer, nullable=False)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class ModelFile(Base):
    """One file of a model, stored under its sha256 in the object store."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)

    model: Mapped[Model] = relationship(back_populates="files")


class Job(TimestampMixin, Base):
    """A request to turn a model into a target format: a planned route of steps."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    target: Mapped[str] = mapped_column(String(32), nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    input_specs: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    request_key: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    # equals request_key while the job is live or succeeded; cleared when it fails or is cancelled,
    # so the same request can be made again. Unique: one live job per request.
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(24), index=True, nullable=False)
    plan: Mapped[list[str]] = mapped_column(JSONType, default=list, nullable=False)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    # where to POST when the job ends: [{"url", "secret"}] (several requests may share one job)
    callbacks: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list, nullable=False)

    steps: Mapped[list[JobStep]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobStep.index", lazy="selectin")
    deliveries: Mapped[list[CallbackDelivery]] = relationship(cascade="all, delete-orphan", lazy="select")


class CallbackDelivery(Base):
    """One signed POST of a job's end to a callback URL: the outbox a sender thread drains, with
    retries and backoff; a job never waits for it."""

    __tablename__ = "callback_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    secret: Mapped[str] = mapped_column(String(256), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(String(16), index=True, nullable=False, default="pending")  # | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True,
                                                         nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class JobStep(TimestampMixin, Base):
    """One edge of a job's route, run on a worker of its queue."""

    __tablename__ = "job_steps"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=False)
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), default="convert", nullable=False)  # convert|validate|benchmark
    edge: Mapped[str] = mapped_column(String(96), nullable=False)
    queue: Mapped[str] = mapped_column(String(32), nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    status: Mapped[str] = mapped_column(String(24), index=True, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)
    input_artifact_id: Mapped[str | None] = mapped_column(String(32))
    output_artifact_id: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    log: Mapped[str] = mapped_column(Text, default="", nullable=False)

    job: Mapped[Job] = relationship(back_populates="steps")


class StepDispatch(Base):
    """A step's message to the broker, written in the transaction that queues the step (an outbox):
    sent after the commit and deleted once the broker took it; while the broker is down it stays,
    and a relay thread sends it when the broker is back. A step is never queued with no message
    on its way; a message sent twice is harmless (the step is claimed with a compare-and-set)."""

    __tablename__ = "step_dispatches"

    step_id: Mapped[str] = mapped_column(ForeignKey("job_steps.id", ondelete="CASCADE"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(32), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True,
                                                         nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Artifact(Base):
    """A converted model, content-addressed in the object store, with its lineage."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    step_id: Mapped[str | None] = mapped_column(String(32))
    parent_artifact_id: Mapped[str | None] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32), index=True, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    primary_file: Mapped[str] = mapped_column(String(1024), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    file_count: Mapped[int] = mapped_column(Integer, nullable=False)
    edge: Mapped[str] = mapped_column(String(96), nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    toolchain: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    inspection: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    warnings: Mapped[list[str]] = mapped_column(JSONType, default=list, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    files: Mapped[list[ArtifactFile]] = relationship(
        back_populates="artifact", cascade="all, delete-orphan", order_by="ArtifactFile.path", lazy="selectin")


class ArtifactFile(Base):
    __tablename__ = "artifact_files"
    __table_args__ = (UniqueConstraint("artifact_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True,
                                             nullable=False)
    path: Mapped[str] = mapped_column(String(1024), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)

    artifact: Mapped[Artifact] = relationship(back_populates="files")


class Worker(Base):
    """A worker process (or the embedded executor) and what it can run, refreshed by heartbeats."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    queues: Mapped[list[str]] = mapped_column(JSONType, default=list, nullable=False)
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True,
                                                      nullable=False)


class Validation(Base):
    """An artifact's outputs compared with its reference's on the same inputs: the verdict."""

    __tablename__ = "validations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True,
                                             nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(32))
    step_id: Mapped[str | None] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(64), nullable=False)  # "model:<id>" or "artifact:<id>"
    status: Mapped[str] = mapped_column(String(16), index=True, nullable=False)  # passed|failed|skipped
    reason: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str] = mapped_column(String(16), nullable=False)
    max_abs_err: Mapped[float | None] = mapped_column(Float)
    worst_output: Mapped[str | None] = mapped_column(String(255))
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Benchmark(Base):
    """One measurement of an artifact on one host, with that host's fingerprint."""

    __tablename__ = "benchmarks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True,
                                             nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(32))
    step_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # ok|failed|skipped
    reason: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    load_ms: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    throughput: Mapped[float | None] = mapped_column(Float)  # samples/s at batch 1
    host: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    results: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    object_key: Mapped[str | None] = mapped_column(String(255))  # the same results as JSON in the object store
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Deployment(TimestampMixin, Base):
    """A named, versioned artifact served at /v1/deployments/{name}/predict and /v2/models/{name}."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("project_id", "name", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), index=True,
                                            nullable=False, default=DEFAULT_PROJECT)
    name: Mapped[str] = mapped_column(String(128), index=True, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    # what is served: a converted artifact, or (model_id only) the uploaded file itself
    artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # loading | ready | failed
    reason: Mapped[str | None] = mapped_column(Text)
    runtime: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    batching: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    forced: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    load_ms: Mapped[float | None] = mapped_column(Float)


class BlobDeletion(Base):
    """A content-addressed blob that nothing referenced when this row was written. The sweeper
    (app/blobs.py) deletes it from the object store once the row is older than the grace period
    and the blob is still unreferenced; whatever starts referencing the blob first removes the row."""

    __tablename__ = "blob_deletions"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True,
                                                      nullable=False)


class EndpointBenchmark(Base):
    """A perf_analyzer-style sweep through a deployment's own endpoint, with and without dynamic
    batching (app/serving/endpoint_bench.py). It names the deployment version it measured by name
    and number (kept when the deployment is deleted) and belongs to the model (and artifact) served,
    whose format report shows it beside the in-process benchmark."""

    __tablename__ = "endpoint_benchmarks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), index=True,
                                            nullable=False, default=DEFAULT_PROJECT)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True, nullable=False)
    artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128), index=True, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), index=True, nullable=False)  # running | succeeded | failed
    reason: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    results: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, nullable=False)
    runner: Mapped[str] = mapped_column(String(255), nullable=False)  # host:pid of the process running it
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
