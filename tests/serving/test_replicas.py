"""Several API replicas serve the same deployments from the catalog: two app instances on one
PostgreSQL catalog and one S3 bucket, each with its own data directory (so its own runner cache).
A deployment made through one is served by the other (loaded lazily from the catalog and the
object store), a new version made through one is picked up by the other, and a delete through
one stops the other."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from tests import models
from tests.helpers import S3_KEY, S3_SECRET, empty_tables, make_settings


@pytest.fixture
def replicas(tmp_path, postgres_server_url, seaweedfs):
    from fastapi.testclient import TestClient

    from app.main import create_app

    empty_tables(postgres_server_url, "deployments", "models", "blob_deletions")
    bucket = f"mp-{uuid.uuid4().hex[:12]}"
    shared = {"database_url": postgres_server_url, "storage_url": f"s3://{bucket}/objects",
              "s3_endpoint_url": seaweedfs, "s3_access_key_id": S3_KEY, "s3_secret_access_key": S3_SECRET}
    a_settings = make_settings(tmp_path / "a", **shared)
    b_settings = make_settings(tmp_path / "b", **shared)
    with TestClient(create_app(a_settings)) as a, TestClient(create_app(b_settings)) as b:
        yield a, b


def infer(client, name: str, x: np.ndarray, version: str | None = None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return client.post(path, json={"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                               "data": x.ravel().tolist()}]})


def test_a_deployment_made_on_one_replica_is_served_by_another(replicas, tmp_path):
    import torch

    a, b = replicas
    pt2 = models.exported_program(tmp_path)
    m = a.post("/v1/models", params={"filename": pt2.name}, content=pt2.read_bytes(),
               headers={"Content-Type": "application/octet-stream"}).json()
    r = a.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "benchmark": False})
    job = a.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    assert a.post("/v1/deployments", json={"name": "shared", "artifact_id": job["artifact_id"]}).status_code == 201
    assert not list((tmp_path / "b" / "data" / "serving").glob("*/.complete"))  # b has loaded nothing yet

    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    want = torch.export.load(pt2).module()(torch.from_numpy(x)).detach().numpy()
    r = infer(b, "shared", x)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), want, atol=1e-5)
    assert list((tmp_path / "b" / "data" / "serving").glob("*/.complete"))  # fetched from S3 by b itself
    assert b.get("/v1/deployments/shared").json()["name"] == "shared"

    # a second version through a: b finds it when asked for by number, and moves to it once its cache refreshes
    assert a.post("/v1/deployments", json={"name": "shared", "artifact_id": job["artifact_id"]}).status_code == 201
    r = infer(b, "shared", x, version="2")
    assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    deadline = time.monotonic() + 10
    while infer(b, "shared", x).json().get("model_version") != "2":
        assert time.monotonic() < deadline, "replica b kept serving version 1"
        time.sleep(0.3)

    # deleted through a: b stops serving it once its cache refreshes
    assert a.delete("/v1/deployments/shared").status_code == 204
    deadline = time.monotonic() + 10
    while (r := infer(b, "shared", x)).status_code != 404:
        assert r.status_code == 200 and time.monotonic() < deadline, r.text
        time.sleep(0.3)
    assert "no deployment named 'shared'" in r.json()["error"]
    assert [lm.name for lm in b.app.state.models.loaded.values()] == []  # and b let go of its runners
