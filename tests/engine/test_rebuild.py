"""POST /v1/artifacts/{id}/rebuild: the conversion that made an artifact, again (same edge, same
options, same input), on its edge's queue, validated and benchmarked like the first. Its point is a
TensorRT engine for another GPU; the mechanics are the same for any edge, so they are run end to
end here on an ONNX transform, and the TensorRT request is checked up to the gpu queue it waits on."""

from __future__ import annotations

from tests import models
from tests.helpers import FAST_BENCH, run_job, upload


def _wait(client, job_id):
    return client.get(f"/v1/jobs/{job_id}", params={"wait": 300}).json()


def test_a_rebuild_runs_the_same_edge_with_the_same_options_from_the_same_input(embedded_client, tmp_path):
    c = embedded_client
    m = upload(c, models.exported_program(tmp_path))
    job = run_job(c, m["id"], "onnx", options={"precision": "fp16"}, benchmark=False)
    first, fp16 = job["artifact_ids"]
    old = c.get(f"/v1/artifacts/{fp16}").json()
    assert old["lineage"]["edge"] == "onnx->onnx:transform" and old["lineage"]["parent_artifact_id"] == first

    r = c.post(f"/v1/artifacts/{fp16}/rebuild", json={"benchmark": FAST_BENCH})
    assert r.status_code == 202, r.text
    rb = r.json()
    assert [(s["kind"], s["edge"], s["queue"]) for s in rb["steps"]] == [
        ("convert", "onnx->onnx:transform", "cpu"), ("validate", "validate:onnx", "cpu"),
        ("benchmark", "benchmark:onnx", "cpu")]
    assert rb["steps"][0]["options"] == old["lineage"]["options"]
    again = c.post(f"/v1/artifacts/{fp16}/rebuild", json={"benchmark": FAST_BENCH})
    assert again.status_code == 200 and again.json()["id"] == rb["id"]  # under way: the same job
    rb = _wait(c, rb["id"])
    assert rb["status"] == "succeeded", rb
    new = c.get(f"/v1/artifacts/{rb['artifact_id']}").json()
    assert new["id"] != fp16 and new["format"] == "onnx"
    assert new["lineage"]["parent_artifact_id"] == first  # made from the same input, not from the upload
    assert new["lineage"]["options"] == old["lineage"]["options"] and new["lineage"]["edge"] == old["lineage"]["edge"]
    assert new["validation"]["status"] == "passed" and new["validation"]["profile"] == "fp16"
    assert new["validation"]["reference"] == f"model:{m['id']}"  # proven against the upload, like the first
    assert new["benchmark"]["status"] == "ok"
    later = c.post(f"/v1/artifacts/{fp16}/rebuild", json={"validate": False, "benchmark": False})
    assert later.status_code == 202 and later.json()["id"] != rb["id"]  # finished: building again is the point
    assert _wait(c, later.json()["id"])["status"] == "succeeded"


def _tensorrt_artifact(client, tmp_path) -> tuple[str, str, str]:
    """An ONNX artifact and a TensorRT engine row made from it (no GPU here to build a real one)."""
    from app.catalog import repo

    m = upload(client, models.onnx_model(tmp_path)[0])
    onnx_id = run_job(client, m["id"], "onnx", options={"optimize": "basic"}, validate=False,
                      benchmark=False)["artifact_id"]
    opts = {"precision": "fp16", "max_batch": 8}
    from app.conversion import planner

    full = planner.plan("onnx", "tensorrt", opts).options[0]
    with client.app.state.db.session() as s:
        art = repo.add_artifact(s, files=[{"path": "model.engine", "sha256": "0" * 64, "size": 64}], model_id=m["id"],
                                parent_artifact_id=onnx_id, format="tensorrt", digest="0" * 64,
                                primary_file="model.engine", size_bytes=64, file_count=1, edge="onnx->tensorrt",
                                options=full, toolchain={"name": "main", "tensorrt": "10.9.0.34"}, host="gpu-a",
                                inspection={"format": "tensorrt"}, warnings=[])
        return m["id"], onnx_id, art.id


def test_a_tensorrt_rebuild_is_queued_on_the_gpu_queue_with_its_options(embedded_client, tmp_path):
    c = embedded_client
    model_id, onnx_id, engine_id = _tensorrt_artifact(c, tmp_path)
    r = c.post(f"/v1/artifacts/{engine_id}/rebuild")
    assert r.status_code == 202, r.text
    job = r.json()
    assert [(s["kind"], s["edge"], s["queue"]) for s in job["steps"]] == [
        ("convert", "onnx->tensorrt", "gpu"), ("validate", "validate:tensorrt", "gpu"),
        ("benchmark", "benchmark:tensorrt", "gpu")]
    convert = job["steps"][0]
    assert convert["options"]["precision"] == "fp16" and convert["options"]["max_batch"] == 8
    assert job["steps"][1]["options"]["profile"] == "fp16"
    assert job["status"] == "waiting_for_hardware" and convert["status"] == "waiting_for_hardware"
    from app.catalog import repo

    with c.app.state.db.session() as s:  # it starts from the ONNX artifact the engine was made from
        assert repo.get_job(s, job["id"]).steps[0].input_artifact_id == onnx_id
    assert c.post(f"/v1/artifacts/{engine_id}/rebuild").json()["id"] == job["id"]  # waiting: the same job
    assert c.post("/v1/artifacts/" + "f" * 32 + "/rebuild").status_code == 404


def test_a_rebuild_of_an_edge_modelport_no_longer_has_is_refused(embedded_client, tmp_path):
    from app.catalog import repo

    c = embedded_client
    m = upload(c, models.onnx_model(tmp_path)[0])
    with c.app.state.db.session() as s:
        art = repo.add_artifact(s, files=[{"path": "x.bin", "sha256": "1" * 64, "size": 1}], model_id=m["id"],
                                format="onnx", digest="1" * 64, primary_file="x.bin", size_bytes=1, file_count=1,
                                edge="caffe->onnx", options={}, toolchain={}, host="h", inspection={}, warnings=[])
        art_id = art.id
    r = c.post(f"/v1/artifacts/{art_id}/rebuild")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_edge"
    assert "caffe->onnx" in r.json()["error"]["message"]
