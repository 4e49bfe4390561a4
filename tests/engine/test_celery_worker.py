"""The configured deployment for real: the API on PostgreSQL + S3 (SeaweedFS) queueing to Redis,
and `modelport worker` processes consuming the queues. Workers are killed with SIGKILL
mid-conversion to check that steps are retried or failed, never left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from tests import models
from tests.faults import WorkerProcess, wait_for
from tests.helpers import S3_KEY, S3_SECRET, empty_tables, make_settings, upload

REDIS_URL = os.environ.get("MODELPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture
def deployment(tmp_path, postgres_server_url, seaweedfs):
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.flushdb()
    except redis.exceptions.ConnectionError as e:
        pytest.fail(f"Redis is required for these tests ({REDIS_URL}): {e}")
    empty_tables(postgres_server_url, "jobs", "workers", "models")
    env = {
        "MODELPORT_DATABASE_URL": postgres_server_url,
        "MODELPORT_STORAGE_URL": f"s3://mp-{uuid.uuid4().hex[:10]}/objects",
        "MODELPORT_S3_ENDPOINT_URL": seaweedfs,
        "MODELPORT_S3_ACCESS_KEY_ID": S3_KEY,
        "MODELPORT_S3_SECRET_ACCESS_KEY": S3_SECRET,
        "MODELPORT_BROKER_URL": REDIS_URL,
        "MODELPORT_STEP_STALE_AFTER_S": "6",
        "MODELPORT_WORKER_STALE_S": "6",
        "MODELPORT_HEARTBEAT_S": "1",
    }
    settings = make_settings(tmp_path, **{k[len("MODELPORT_"):].lower(): v for k, v in env.items()})
    workers: list[WorkerProcess] = []  # their logs go with every timeout

    def start_worker(name: str, queues: str = "cpu,intel", **extra) -> WorkerProcess:
        workers.append(WorkerProcess(name, {**env, **extra}, tmp_path, queues=queues).start())
        return workers[-1]

    from fastapi.testclient import TestClient

    from app.main import create_app

    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            client.settings = settings
            yield client, start_worker, workers
    finally:
        for w in workers:
            w.stop()


def test_waits_for_hardware_then_a_worker_runs_it(deployment, tmp_path):
    client, start_worker, logs = deployment
    m = upload(client, models.state_dict(tmp_path))
    r = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "safetensors"})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "waiting_for_hardware"  # no worker yet: visible, not failed
    start_worker("w1")
    job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] == "succeeded" and j,
                   180, "the job to succeed on the Celery worker", logs)
    step = job["steps"][0]
    assert step["worker"].startswith("celery@") and step["attempts"] == 1
    art = client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    import urllib.request

    with urllib.request.urlopen(art["download_url"]) as resp:  # presigned S3 URL
        assert resp.read()[:8] == client.get(f"/v1/artifacts/{art['id']}/download").content[:8]
    plan = client.get("/v1/formats/plan", params={"source": "pytorch", "target": "safetensors"}).json()
    assert plan["steps"][0]["worker_available"] is True


def test_worker_refuses_queues_it_cannot_serve(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu,gpu"],
                         env={**os.environ, "MODELPORT_BROKER_URL": REDIS_URL,
                              "MODELPORT_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing queue 'gpu'" in out.stderr and "NVIDIA" in out.stderr


def _kill_when_running(client, job_id: str, worker: WorkerProcess, logs: list[WorkerProcess]) -> dict:
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["steps"][0]["status"] == "running", 180,
             "the step to start running", logs)
    worker.signal(signal.SIGKILL)
    worker.proc.wait(10)
    return client.get(f"/v1/jobs/{job_id}").json()


def test_sigkilled_worker_step_is_retried_and_succeeds(deployment, tmp_path):
    client, start_worker, logs = deployment
    m = upload(client, models.exported_program(tmp_path))
    w1 = start_worker("w1")
    wait_for(lambda: client.get("/v1/formats/plan", params={"source": "torch_export", "target": "onnx"})
             .json()["steps"][0]["worker_available"], 60, "the worker to announce itself", logs)
    job = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "benchmark": False}).json()
    killed = _kill_when_running(client, job["id"], w1, logs)
    assert killed["steps"][0]["status"] == "running"  # the row still says running: the worker died
    start_worker("w2")
    job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] in
                   ("succeeded", "failed") and j, 240, "the step to be retried", logs)
    assert job["status"] == "succeeded", job
    assert job["steps"][0]["attempts"] == 2
    assert "stopped responding; step requeued" in client.get(f"/v1/jobs/{job['id']}/logs").text


def test_attempt_cap_fails_a_step_that_keeps_killing_workers(deployment, tmp_path):
    client, start_worker, logs = deployment
    m = upload(client, models.exported_program(tmp_path, name="capped.pt2"))
    w1 = start_worker("w1", MODELPORT_MAX_ATTEMPTS="1")
    wait_for(lambda: client.get("/v1/formats/plan", params={"source": "torch_export", "target": "onnx"})
             .json()["steps"][0]["worker_available"], 60, "the worker to announce itself", logs)
    client.app.state.settings.max_attempts = 1  # the API writes max_attempts into the step row
    job = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "options": {"opset": 17},
                                                                     "benchmark": False}).json()
    assert job["steps"][0]["max_attempts"] == 1
    _kill_when_running(client, job["id"], w1, logs)
    start_worker("w2")
    job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] in
                   ("succeeded", "failed") and j, 120, "the step to fail after its attempt cap", logs)
    assert job["status"] == "failed"
    assert "gave up after 1 attempts" in job["error"]["message"]
    assert job["steps"][0]["status"] == "failed"


def test_cancel_a_queued_job(deployment, tmp_path):
    client, _start_worker, _logs = deployment
    m = upload(client, models.state_dict(tmp_path, name="c.pt"))
    job = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "safetensors"}).json()
    assert job["status"] == "waiting_for_hardware"
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["steps"][0]["status"] == "cancelled"
    again = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "safetensors"})
    assert again.status_code == 202 and again.json()["id"] != job["id"]


def test_tflite_step_runs_on_the_worker_with_the_tf_toolchain(deployment, tmp_path, tf_python):
    """Queues pinned to toolchains across processes: the ONNX -> TFLite step waits for a worker
    that serves cpu.tf (one started with MODELPORT_TOOLCHAINS), the TFLite artifact's validation
    then runs on the plain cpu worker, and a worker without the toolchain refuses that queue."""
    client, start_worker, logs = deployment
    refused = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu.tf"],
                             env={**os.environ, "MODELPORT_BROKER_URL": REDIS_URL, "MODELPORT_TOOLCHAINS": "{}",
                                  "MODELPORT_DATA_DIR": str(tmp_path / "refused")},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing queue 'cpu.tf'" in refused.stderr, refused.stderr
    start_worker("plain", queues="cpu")
    (onnx_path,) = models.onnx_model(tmp_path)
    m = upload(client, onnx_path)
    wait_for(lambda: client.get("/v1/formats/plan", params={"source": "pytorch", "target": "safetensors"})
             .json()["steps"][0]["worker_available"], 60, "the cpu worker to announce itself", logs)
    r = client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite", "benchmark": False})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "waiting_for_hardware" and job["steps"][0]["queue"] == "cpu.tf"
    start_worker("tf", queues="cpu.tf", MODELPORT_TOOLCHAINS=json.dumps({"tf": tf_python}))
    job = wait_for(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"] in ("succeeded", "failed")
                   and j, 300, "the TFLite job to finish", logs)
    assert job["status"] == "succeeded", job
    convert, validate = job["steps"][0], job["steps"][1]
    assert convert["queue"] == "cpu.tf" and validate["queue"] == "cpu"
    assert convert["worker"] != validate["worker"]  # each ran on the worker serving its queue
    art = client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["format"] == "tflite" and art["validation"]["status"] == "passed", art["validation"]
