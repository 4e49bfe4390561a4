"""Export of deployments for Triton and KServe: config.pbtxt parsed with Triton's own protobuf schema
(tritonclient's model_config_pb2), the files laid out as each backend expects them (and loaded from
there by the real runtime), the bytes those of the stored artifact, the InferenceService validated
against KServe's CRD schema, and the refusals (a format no Triton backend runs, a local store for
KServe) as clear 4xx."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.helpers import upload

KSERVE_SCHEMA = Path(__file__).parent / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's IsvcNameFmt


def convert(client, model_id: str, target: str) -> dict:
    r = client.post(f"/v1/models/{model_id}/conversions", json={"target": target, "benchmark": False})
    job = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    art = client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["validation"]["status"] == "passed", art["validation"]
    return art


def deploy(client, name: str, **body) -> dict:
    r = client.post("/v1/deployments", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One embedded app with a .pt2 upload and its ONNX, OpenVINO and TorchScript artifacts."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    tmp = tmp_path_factory.mktemp("export")
    with TestClient(create_app(make_settings(tmp)), raise_server_exceptions=False) as c:
        pt2 = models.exported_program(tmp)
        m = upload(c, pt2)
        arts = {t: convert(c, m["id"], t) for t in ("onnx", "openvino", "torchscript")}
        yield {"client": c, "model": m, "pt2": pt2, "tmp": tmp, **arts}


def reference(pt2: Path, x: np.ndarray) -> np.ndarray:
    import torch

    return torch.export.load(pt2).module()(torch.from_numpy(x)).detach().numpy()


def triton_export(c, name: str, **params) -> tuple[zipfile.ZipFile, object, dict]:
    r = c.get(f"/v1/deployments/{name}/export", params={"format": "triton", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    model = r.headers["x-modelport-triton-model"]
    return zf, parse_config(zf.read(f"{model}/config.pbtxt").decode()), r.headers


def parse_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # raises on any field Triton does not know


def io_of(cfg, which: str) -> list[tuple[str, str, list[int]]]:
    from tritonclient.grpc import model_config_pb2

    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in getattr(cfg, which)]


def test_onnx_repository_batched_with_the_stored_bytes(app):
    from tritonclient.grpc import model_config_pb2

    c, art = app["client"], app["onnx"]
    deploy(c, "tiny", artifact_id=art["id"], batching={"max_batch_size": 8, "max_queue_delay_ms": 2.5},
           runtime={"threads": 2})
    zf, cfg, headers = triton_export(c, "tiny")
    assert sorted(zf.namelist()) == ["tiny/1/model.onnx", "tiny/config.pbtxt"]
    assert (cfg.name, cfg.platform, cfg.backend, cfg.default_model_filename) == \
        ("tiny", "onnxruntime_onnx", "onnxruntime", "model.onnx")
    # the batch dimension is Triton's: max_batch_size, and dims without it
    assert cfg.max_batch_size == 8
    assert io_of(cfg, "input") == [("x", "TYPE_FP32", [8])]
    assert io_of(cfg, "output") == [("linear_1", "TYPE_FP32", [3])]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"
    text = zf.read("tiny/config.pbtxt").decode()
    assert f"sha256 {art['digest']}" in text and "validation passed" in text
    # byte for byte the stored artifact
    exported = zf.read("tiny/1/model.onnx")
    stored = c.get(f"/v1/artifacts/{art['id']}/download").content
    assert exported == stored and hashlib.sha256(exported).hexdigest() == art["digest"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(exported, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, reference(app["pt2"], x), atol=1e-5)
    assert headers["x-modelport-version"] == "1"


def test_unbatched_deployment_keeps_the_dynamic_dimension_as_minus_one(app):
    c = app["client"]
    deploy(c, "tiny-unbatched", artifact_id=app["onnx"]["id"])
    _, cfg, _ = triton_export(c, "tiny-unbatched")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert io_of(cfg, "input") == [("x", "TYPE_FP32", [-1, 8])]
    assert io_of(cfg, "output") == [("linear_1", "TYPE_FP32", [-1, 3])]
    assert "intra_op_thread_count" not in cfg.parameters


def test_openvino_repository_is_model_xml_and_model_bin(app, tmp_path):
    c, art = app["client"], app["openvino"]
    deploy(c, "tiny-ov", artifact_id=art["id"], batching={"max_batch_size": 4})
    zf, cfg, headers = triton_export(c, "tiny-ov", model_name="detector_v2")
    assert sorted(zf.namelist()) == ["detector_v2/1/model.bin", "detector_v2/1/model.xml", "detector_v2/config.pbtxt"]
    assert (cfg.name, cfg.backend, cfg.platform, cfg.default_model_filename) == \
        ("detector_v2", "openvino", "", "model.xml")
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert io_of(cfg, "input") == [("x", "TYPE_FP32", [8])]
    assert io_of(cfg, "output") == [("linear_1:0", "TYPE_FP32", [3])]
    assert "bf16" in headers["x-modelport-warnings"]  # Triton's openvino backend cannot pin f32
    by_sha = {f["sha256"]: f["path"] for f in art["files"]}
    for member in ("model.xml", "model.bin"):
        data = zf.read(f"detector_v2/1/{member}")
        assert by_sha[hashlib.sha256(data).hexdigest()].endswith(member[-4:])
    zf.extractall(tmp_path)
    import openvino as ov

    compiled = ov.Core().compile_model(str(tmp_path / "detector_v2/1/model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(compiled([x])[0], reference(app["pt2"], x), atol=1e-5)


def test_torchscript_signature_comes_from_its_validation(app, tmp_path):
    """TorchScript records no dtypes or shapes: the inputs come from the model it was validated against,
    the outputs from what the validation saw; LibTorch's outputs are named OUTPUT__<i>."""
    c, art = app["client"], app["torchscript"]
    assert art["inspection"]["inputs"][0]["shape"] is None  # not in the file
    deploy(c, "tiny-ts", artifact_id=art["id"], batching={"max_batch_size": 16})
    zf, cfg, headers = triton_export(c, "tiny-ts")
    assert sorted(zf.namelist()) == ["tiny-ts/1/model.pt", "tiny-ts/config.pbtxt"]
    assert (cfg.platform, cfg.backend, cfg.default_model_filename) == ("pytorch_libtorch", "pytorch", "model.pt")
    assert cfg.max_batch_size == 16
    assert io_of(cfg, "input") == [("x", "TYPE_FP32", [8])]
    assert io_of(cfg, "output") == [("OUTPUT__0", "TYPE_FP32", [3])]
    assert "validation" in headers["x-modelport-warnings"]
    import torch

    path = tmp_path / "model.pt"
    path.write_bytes(zf.read("tiny-ts/1/model.pt"))
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    y = torch.jit.load(str(path))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, reference(app["pt2"], x), atol=1e-5)


def test_refusals_are_clear_4xx(app):
    c, m = app["client"], app["model"]
    deploy(c, "tiny-pt2", model_id=m["id"])  # the upload itself: torch.export, which no Triton backend runs
    r = c.get("/v1/deployments/tiny-pt2/export", params={"format": "triton"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "not_exportable" and "torch.export" in err["message"] and "onnx" in err["message"]
    assert {"onnx", "openvino", "torchscript", "tensorrt", "savedmodel"} <= set(err["detail"]["exportable"])
    deploy(c, "tiny-any", artifact_id=app["onnx"]["id"])
    cases = [
        (c.get("/v1/deployments/nope/export", params={"format": "triton"}), 404, "deployment_not_found", "nope"),
        (c.get("/v1/deployments/tiny-any/export", params={"format": "triton", "version": 7}), 404,
         "version_not_found", "version 7"),
        (c.get("/v1/deployments/tiny-any/export", params={"format": "tensorflow-serving"}), 422, "invalid_request",
         "triton"),
        (c.get("/v1/deployments/tiny-any/export"), 422, "invalid_request", "format"),
        (c.get("/v1/deployments/tiny-any/export", params={"format": "triton", "model_name": "a/b"}), 422,
         "bad_model_name", "model_name"),
    ]
    for r, status, code, needle in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.json()["error"]["code"] == code and needle in r.json()["error"]["message"], r.text


def test_a_signature_nobody_recorded_is_refused_naming_the_tensors(app, tmp_path):
    """A TensorRT engine on a host without TensorRT (a synthetic plan header): inspected, deployable by
    hand, but its inputs are unknown here and it was never validated, so no config can be written."""
    c = app["client"]
    head = bytearray(512)
    head[0:4], head[8], head[24:27] = b"ftrt", 239, bytes((10, 3, 0))
    (tmp_path / "model.plan").write_bytes(bytes(head))
    m = upload(c, tmp_path / "model.plan")
    assert m["format"] == "tensorrt"
    r = c.post("/v1/deployments", json={"name": "engine", "model_id": m["id"]})
    assert r.status_code == 201 and r.json()["versions"][0]["status"] == "failed"  # no TensorRT here
    r = c.get("/v1/deployments/engine/export", params={"format": "triton"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "signature_unknown" and "dtype and shape" in err["message"], err


# ----------------------------------------------------------------------------- KServe


def strict(schema):
    """Kubernetes' strict field validation on top of the CRD's schema: undeclared fields are errors."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validate_isvc(manifest: dict) -> None:
    import jsonschema

    schema = strict(json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes())))
    jsonschema.Draft7Validator(schema).validate(manifest)
    assert ISVC_NAME.match(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    assert len(manifest["metadata"]["name"]) <= 45


def test_the_schema_check_catches_a_wrong_manifest():
    """The vendored schema with strict fields is a real check: a misspelt field or a wrong type fails."""
    import jsonschema

    good = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/k"}}}}
    validate_isvc(good)
    bad = json.loads(json.dumps(good))
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate_isvc(bad)
    bad = json.loads(json.dumps(good))
    bad["spec"]["predictor"]["model"]["modelFormat"] = {"version": "1"}  # name is required
    with pytest.raises(jsonschema.ValidationError, match="name"):
        validate_isvc(bad)


def test_isvc_names_are_dns_labels_that_do_not_collide():
    from app.serving.export import isvc_name

    assert isvc_name("tiny") == "tiny"
    names = [isvc_name(n) for n in ("My_Model.v2", "my-model-v2", "9lives", "a" * 128, "a" * 127 + "b")]
    assert len(set(names)) == len(names)
    for n in names:
        assert ISVC_NAME.match(n) and len(n) <= 45, n


def test_kserve_manifest_on_s3_and_refused_on_a_local_store(backend, tmp_path):
    """On S3 (SeaweedFS, for real): the InferenceService passes KServe's CRD schema, names the runtime
    serving ONNX, and its storageUri holds the Triton repository — config.pbtxt and the artifact's
    bytes, copied inside the store. On the local store no pod could read it: 409, saying why."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(backend), raise_server_exceptions=False) as c:
        m = upload(c, models.onnx_model(tmp_path)[0])
        art = convert(c, m["id"], "onnx")
        deploy(c, "Tiny.Model", artifact_id=art["id"], batching={"max_batch_size": 8})
        if not backend.resolved_storage_url.startswith("s3://"):
            r = c.get("/v1/deployments/Tiny.Model/export", params={"format": "kserve"})
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "export_needs_s3" and "MODELPORT_STORAGE_URL=s3://" in err["message"]
            assert err["detail"]["storage_url"].startswith("file://")
            return
        r = c.get("/v1/deployments/Tiny.Model/export", params={"format": "kserve"})
        assert r.status_code == 200, r.text
        isvc = r.json()
        validate_isvc(isvc)
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "onnx", "version": "1"} and model["runtime"] == "kserve-tritonserver"
        assert model["protocolVersion"] == "v2"
        assert isvc["metadata"]["annotations"]["modelport.io/triton-model"] == "Tiny.Model"
        store = c.app.state.store
        assert model["storageUri"].startswith(store.url + "/exports/triton/")
        prefix = model["storageUri"][len(store.url) + 1:]
        cfg = parse_config(b"".join(store.iter_chunks(f"{prefix}/Tiny.Model/config.pbtxt")).decode())
        assert cfg.name == "Tiny.Model" and cfg.max_batch_size == 8
        onnx_bytes = b"".join(store.iter_chunks(f"{prefix}/Tiny.Model/1/model.onnx"))
        assert onnx_bytes == c.get(f"/v1/artifacts/{art['id']}/download").content
        again = c.get("/v1/deployments/Tiny.Model/export", params={"format": "kserve"}).json()
        assert again == isvc  # the same repository, in the same place
