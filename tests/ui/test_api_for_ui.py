"""What the API gained for the web page, which shows nothing the API does not answer: who a key
is (GET /v1/keys/current), inputs to try a prediction with (GET /v1/models/{id}/example-inputs),
and the Pareto front of the format report (each row's "pareto")."""

from __future__ import annotations

import io

import numpy as np

from app import auth
from app.pipeline.report import pareto_front
from tests import models
from tests.helpers import upload


def _row(aid: str, size: int, p50: float | None, deployable: bool = True) -> dict:
    return {"artifact_id": aid, "size_bytes": size, "p50_ms": p50, "deployable": deployable}


def test_pareto_front_keeps_what_nothing_beats_on_both_size_and_latency():
    rows = [_row("small-slow", 100, 5.0), _row("big-fast", 1000, 1.0), _row("middle", 500, 2.0),
            _row("beaten", 600, 3.0),  # middle is smaller and faster
            _row("tie-size-slower", 100, 6.0),  # small-slow is as small and faster
            _row("same", 500, 2.0),  # equal to middle on both: neither beats the other
            _row("fastest-unproven", 50, 0.1, deployable=False),  # not validated: not a choice
            _row("unmeasured", 10, None)]
    assert pareto_front(rows) == {"small-slow", "big-fast", "middle", "same"}
    assert pareto_front([]) == set() and pareto_front([_row("x", 1, None)]) == set()


def test_current_key_says_who_asks(embedded_client):
    c = embedded_client
    r = c.get("/v1/keys/current")
    assert r.status_code == 200
    assert r.json() == {"project": "default", "scope": "admin", "key_id": None, "auth_required": False}
    view, token = auth.create_key(c.app.state.db, c.settings, project="team", scope="read", name="ui")
    c.app.state.auth.forget()
    r = c.get("/v1/keys/current")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = c.get("/v1/keys/current", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json() == {"project": "team", "scope": "read", "key_id": view["id"], "auth_required": True}
    r = c.get("/v1/keys/current", headers={"Authorization": "Bearer mp_00000000_" + "x" * 40})
    assert r.status_code == 401 and r.json()["error"]["message"] == "unknown API key"


def test_example_inputs_are_generated_then_the_uploaded_samples_and_predict_takes_them(embedded_client, tmp_path):
    c = embedded_client
    m = upload(c, models.onnx_model(tmp_path)[0])
    ex = c.get(f"/v1/models/{m['id']}/example-inputs")
    assert ex.status_code == 200, ex.text
    body = ex.json()
    assert body["source"] == "generated" and body["model_id"] == m["id"]
    assert body["specs"] == {"x": {"dtype": "float32", "shape": [1, 8]}}  # batch 1 of [batch, 8]
    x = np.asarray(body["inputs"]["x"], dtype=np.float32)
    assert x.shape == (1, 8) and np.isfinite(x).all() and x.std() > 0
    assert c.get(f"/v1/models/{m['id']}/example-inputs").json() == body  # the generator is seeded: the same values
    r = c.post("/v1/deployments", json={"name": "try", "model_id": m["id"]})
    assert r.status_code == 201, r.text
    pred = c.post("/v1/deployments/try/predict", json={"inputs": body["inputs"]})
    assert pred.status_code == 200, pred.text
    assert np.asarray(pred.json()["outputs"]["y"]).shape == (1, 3)

    samples = np.arange(32, dtype=np.float32).reshape(4, 8) / 10
    buf = io.BytesIO()
    np.savez(buf, x=samples, extra=np.zeros(3))  # an array that is no input is not offered
    assert c.put(f"/v1/models/{m['id']}/samples", content=buf.getvalue()).status_code == 200
    body = c.get(f"/v1/models/{m['id']}/example-inputs").json()
    assert body["source"] == "samples" and list(body["inputs"]) == ["x"]
    assert np.asarray(body["inputs"]["x"], dtype=np.float32).tolist() == samples[:1].tolist()  # first row: free batch
    assert c.post("/v1/deployments/try/predict", json={"inputs": body["inputs"]}).status_code == 200


def _onnx_with_input(tmp_path, shape: list[int]):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"id_{'x'.join(map(str, shape))}.onnx"
    onnx.save_model(model, str(path))
    return path


def test_example_inputs_refuse_what_json_cannot_show(embedded_client, tmp_path):
    c = embedded_client
    big = upload(c, _onnx_with_input(tmp_path, [1, 3, 512, 512]))
    r = c.get(f"/v1/models/{big['id']}/example-inputs")
    assert r.status_code == 422 and r.json()["error"]["code"] == "inputs_too_large"
    assert r.json()["error"]["detail"] == {"values": 3 * 512 * 512, "limit": 1 << 18}

    weights = upload(c, models.safetensors_file(tmp_path))  # weights only: no inputs in the file
    r = c.get(f"/v1/models/{weights['id']}/example-inputs")
    assert r.status_code == 422 and r.json()["error"]["code"] == "inputs_unknown"
    assert "PUT /v1/models/{id}/samples" in r.json()["error"]["message"]

    small = upload(c, _onnx_with_input(tmp_path, [2, 2]))
    buf = io.BytesIO()
    np.savez(buf, x=np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32))
    assert c.put(f"/v1/models/{small['id']}/samples", content=buf.getvalue()).status_code == 200
    r = c.get(f"/v1/models/{small['id']}/example-inputs")
    assert r.status_code == 422 and r.json()["error"]["code"] == "inputs_not_finite"
    assert c.get("/v1/models/nope/example-inputs").status_code == 404


def test_example_inputs_need_only_a_read_key_of_the_models_project(embedded_client, tmp_path):
    c = embedded_client
    m = upload(c, models.onnx_model(tmp_path)[0])  # keys off: the default project's
    _, mine = auth.create_key(c.app.state.db, c.settings, project="default", scope="read")
    _, other = auth.create_key(c.app.state.db, c.settings, project="other", scope="admin")
    c.app.state.auth.forget()
    assert c.get(f"/v1/models/{m['id']}/example-inputs").status_code == 401
    assert c.get(f"/v1/models/{m['id']}/example-inputs", headers={"Authorization": f"Bearer {mine}"}).status_code == 200
    assert c.get(f"/v1/models/{m['id']}/example-inputs", headers={"Authorization": f"Bearer {other}"}).status_code == 404
