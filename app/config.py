"""Settings, read from ``MODELPORT_*`` environment variables.

With nothing set, everything runs embedded: SQLite and a local object store under one data
directory, and an in-process executor. Setting URLs switches to PostgreSQL, S3 and Celery.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPORT_", env_file=None, extra="ignore")

    data_dir: Path = Path(".modelport")
    database_url: str | None = None  # default: sqlite:///<data_dir>/catalog.db
    storage_url: str | None = None  # default: file://<data_dir>/objects ; or s3://bucket[/prefix]
    broker_url: str | None = None  # unset: embedded executor; redis://… : Celery
    # authentication: "auto" = on as soon as one API key exists; "required" = on even with none
    auth: Literal["auto", "required"] = "auto"
    secret_key: str | None = None  # HMAC key for API key hashes; default: <data_dir>/secret-key (made once, 0600)
    admin_key: str | None = None  # an mp_<id>_<secret> key made an admin key of admin_project at start (compose)
    admin_project: str = "default"

    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"

    host: str = "127.0.0.1"
    port: int = 8000

    # Limits on uploads.
    max_upload_bytes: int = Field(default=20 * 1024**3, gt=0)
    max_files_per_upload: int = Field(default=64, gt=0)
    archive_max_total_bytes: int = Field(default=20 * 1024**3, gt=0)
    archive_max_files: int = Field(default=10_000, gt=0)
    archive_max_ratio: float = Field(default=200.0, gt=1)
    accept_unknown_formats: bool = False

    # Limits on every request (app/api/guards.py).
    max_json_body_bytes: int = Field(default=1024**2, gt=0, description="JSON bodies of the routes that take small "
                                     "documents (conversions, deployments, keys…); uploads and inference have their own")
    request_header_timeout_s: float = Field(default=30.0, gt=0, description="a request's headers must arrive within this")
    request_body_timeout_s: float = Field(default=60.0, gt=0, description="the longest wait for the next piece of a "
                                          "request body")
    max_header_bytes: int = Field(default=64 * 1024, gt=0, description="request line and headers, at most")
    rate_limit_uploads_per_minute: int = Field(default=0, ge=0, description="uploads (and sample uploads) one "
                                               "client (API key, else address) may start a minute; 0 = no limit")
    rate_limit_inference_per_second: float = Field(default=0.0, ge=0, description="inference requests one client may "
                                                   "send a second (bursts up to that many); 0 = no limit")

    # Inspection runs in a child process so a hostile file cannot take the API down.
    inspect_timeout_s: float = Field(default=120.0, gt=0)
    inspect_memory_mb: int = Field(default=4096, gt=0)
    inspect_in_subprocess: bool = True

    # Conversions.
    convert_timeout_s: float = Field(default=1800.0, gt=0)
    queue_timeouts: dict[str, float] = Field(default_factory=dict, description='per-queue time limits, e.g. '
                                             '{"gpu": 3600}; others use convert_timeout_s')
    convert_memory_mb: int = Field(default=16384, gt=0)
    queue_memory_mb: dict[str, int] = Field(
        default_factory=lambda: {"gpu": 0}, description='per-queue address-space limits of the sandboxed child, e.g. '
        '{"intel": 32768}; 0 = none. The gpu queue has none by default: CUDA reserves virtual address space far '
        'beyond any useful RLIMIT_AS (its children fail to start a CUDA context under one), so bound a GPU '
        "worker's memory with its container instead")
    max_attempts: int = Field(default=3, ge=1, le=20)
    step_stale_after_s: float = Field(default=60.0, gt=0, description="a running step without heartbeat this long "
                                      "is taken back from its (dead) worker")
    worker_stale_s: float = Field(default=30.0, gt=0, description="a worker without heartbeat this long is gone")
    heartbeat_s: float = Field(default=2.0, gt=0)
    redispatch_after_s: float = Field(default=300.0, gt=0, description="a queued step that no worker has claimed "
                                      "this long, on a queue a live worker serves, has its message sent again (a "
                                      "broker restarted without persistence loses the messages it held); a "
                                      "duplicate does nothing (steps are claimed with a compare-and-set)")
    blob_gc_grace_s: float = Field(default=600.0, ge=60, description="an unreferenced blob is deleted from the "
                                   "object store this long after it lost its last reference (see app/blobs.py); "
                                   "at least a minute, the time a writer has between claiming bytes and "
                                   "committing its reference")
    blob_gc_every_s: float = Field(default=60.0, gt=0, description="how often each worker sweeps")
    toolchains: dict[str, str] = Field(default_factory=dict, description='other toolchains\' interpreters, '
                                       'e.g. {"tf": "/opt/venv-tf/bin/python"}')
    celery_visibility_timeout_s: int = Field(default=7200, gt=0)

    # The embedded executor (no broker_url): steps wait in lanes per kind and queue, so a validation or
    # benchmark never waits behind a long conversion (app/pipeline/lanes.py; README "Embedded executor").
    embedded_concurrency: int = Field(default=0, ge=0, le=64, description="steps at once; 0 = one per core, "
                                      "no more than the memory holds at embedded_step_memory_mb a step")
    embedded_lanes: bool = Field(default=True, description="false: one FIFO lane for every step (the "
                                 "executor before lanes)")
    embedded_step_memory_mb: int = Field(default=4096, gt=0, description="the memory one step is assumed to "
                                         "hold, for the default concurrency")

    # Serving.
    serving_threads: int = Field(default=0, ge=0, description="inference thread pool size; 0 = CPU count")
    serving_memory_budget_mb: int = Field(default=8192, gt=0, description="the runner cache's budget, for the whole "
                                          "server: with N serving workers each one's cache gets 1/N of it")
    serving_workers: int = Field(default=1, ge=1, le=64, description="serving processes on the one port "
                                 "(`modelport serve --workers N` sets it); the memory budget, the inference pool "
                                 "and a deployment's default intra-op threads are split between them")
    executor_socket: str | None = Field(default=None, description="internal, set by `modelport serve --workers N` "
                                        "in its workers: where the steps they enqueue go (the supervisor process "
                                        "runs the one embedded executor)")
    serving_load: Literal["lazy", "eager"] = "lazy"
    serving_max_body_bytes: int = Field(default=256 * 1024**2, gt=0, description="largest inference request")
    serving_max_rows: int = Field(default=4096, gt=0, description="rows (the batch dimension) of one inference "
                                  "request, at most; a deployment's runtime.max_rows may lower it")
    serving_max_input_bytes: int = Field(default=64 * 1024**2, gt=0, description="decoded input tensors of one "
                                         "request (an .npz unpacked, JSON numbers as arrays), at most")
    serving_max_output_bytes: int = Field(default=256 * 1024**2, gt=0, description="outputs one request may make, "
                                          "at most: estimated before running from the output shapes and the "
                                          "bytes per row measured at load; a deployment's runtime.max_output_mb "
                                          "may lower it")
    serving_inline_us: float = Field(default=50.0, ge=0, description="a deployment whose batch-1 call takes less "
                                     "than this (median of 21 probes at load) runs batch-1 requests on the event "
                                     "loop: the hop to a thread costs more; 0 = always use the thread pool")

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("database_url", "storage_url", "broker_url", "s3_endpoint_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("toolchains", mode="after")
    @classmethod
    def _absolute_interpreters(cls, v: dict[str, str]) -> dict[str, str]:
        # a relative interpreter path means the same file from every folder a step runs in (the sandbox
        # starts its child in a temp folder): resolved against the folder the settings were read in
        return {name: str(Path(path).expanduser().absolute()) if path else path for name, path in v.items()}

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.database_url and not self.database_url.startswith(("sqlite", "postgresql")):
            raise ValueError("MODELPORT_DATABASE_URL must be sqlite:///… or postgresql+psycopg://…")
        if self.storage_url and not self.storage_url.startswith(("file://", "s3://")):
            raise ValueError("MODELPORT_STORAGE_URL must be file://… or s3://bucket[/prefix]")
        if self.database_url and self.database_url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; plain postgresql:// would pick psycopg2.
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        return self

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'catalog.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.resolved_data_dir / 'objects'}"

    def timeout_for(self, queue: str) -> float:
        return float(self.queue_timeouts.get(queue, self.convert_timeout_s))

    def memory_for(self, queue: str) -> int:
        """The sandbox's address-space limit (MiB) for a step on ``queue``; 0 = none."""
        return int(self.queue_memory_mb.get(queue, self.convert_memory_mb))

    def toolchain_python(self, name: str) -> str | None:
        """The interpreter that runs edges of toolchain ``name`` on this host, or None."""
        import sys

        if name == "main":
            return sys.executable
        path = self.toolchains.get(name)
        return path if path and Path(path).exists() else None

    @property
    def tmp_dir(self) -> Path:
        return self.resolved_data_dir / "tmp"


@functools.cache
def get_settings() -> Settings:
    return Settings()
