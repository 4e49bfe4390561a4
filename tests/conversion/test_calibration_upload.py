"""A calibration set uploaded with the request (``POST /v1/models/{id}/calibration-sets``, then
``"calibration": "upload:<id>"``): checked like samples, stored as a blob, and what static INT8 is
calibrated on in all three runtimes (ONNX QDQ, OpenVINO nncf.quantize, TFLite full-integer), through
the API with real conversions. The ONNX artifact's own input scale shows which data calibrated it."""

from __future__ import annotations

import io

import numpy as np
import pytest


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def client(tmp_path, request):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.helpers import make_settings

    chains = {"tf": request.getfixturevalue("tf_python")} if "tflite" in request.node.name else {}
    with TestClient(create_app(make_settings(tmp_path, toolchains=chains))) as c:
        yield c


def _input_scale(c, target: str, artifact_id: str, tmp_path) -> float:
    """How wide the artifact quantizes graph input x, read from the artifact itself: the ONNX
    QuantizeLinear scale, the OpenVINO FakeQuantize's input_high - input_low, the TFLite int8 input's scale."""
    import zipfile

    body = c.get(f"/v1/artifacts/{artifact_id}/download").content
    folder = tmp_path / artifact_id
    folder.mkdir()
    if target == "onnx":
        import onnx
        from onnx import numpy_helper

        (folder / "m.onnx").write_bytes(body)
        g = onnx.load(str(folder / "m.onnx")).graph
        q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        return float(numpy_helper.to_array({t.name: t for t in g.initializer}[q.input[1]]))
    if target == "openvino":
        import openvino as ov

        with zipfile.ZipFile(io.BytesIO(body)) as z:
            z.extractall(folder)
        model = ov.Core().read_model(str(next(folder.rglob("*.xml"))))
        fq = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                  and op.input_value(0).get_node().get_type_name() == "Parameter")
        low, high = (np.asarray(fq.input_value(i).get_node().get_data()) for i in (1, 2))
        return float(np.max(high - low))
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=body)
    scales = [d["quantization"][0] for d in it.get_tensor_details()
              if d["dtype"] == np.int8 and list(d["shape"])[-1:] == [32] and d["quantization"][0] > 0]
    assert len(scales) == 1, it.get_tensor_details()
    return float(scales[0])


def test_calibration_sets_are_checked_like_samples(client, tmp_path):
    from tests import models
    from tests.helpers import upload

    c = client
    m = upload(c, models.onnx_classifier(tmp_path))
    url = f"/v1/models/{m['id']}/calibration-sets"
    bad = [
        (b"not a zip", "must be an .npz of plain arrays"),
        (_npz(y=np.zeros((4, 32), np.float32)), "lacks arrays for inputs x"),
        (_npz(x=np.zeros((4, 31), np.float32)), "calibration array 'x' has shape [4, 31]"),
        (_npz(x=np.zeros((0, 32), np.float32)), "no rows"),
        (_npz(x=np.array([object()], dtype=object)), "pickle"),
    ]
    for body, says in bad:
        r = c.post(url, content=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_calibration", (says, r.text)
        assert says in r.json()["error"]["message"], (says, r.text)
    r = c.post(url, content=_npz(x=np.ones((8, 32), np.float32)))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["rows"] == 8 and made["inputs"] == {"x": {"dtype": "float32", "shape": [8, 32]}}
    assert made["use"] == {"precision": "int8", "calibration": f"upload:{made['id']}"}
    assert [s["id"] for s in c.get(url).json()["items"]] == [made["id"]]
    convert = f"/v1/models/{m['id']}/conversions"
    r = c.post(convert, json={"target": "onnx", "options": {"precision": "int8", "calibration": "upload:" + "0" * 32}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_calibration_set", r.text
    assert "has no calibration set '000" in r.json()["error"]["message"]
    r = c.post(convert, json={"target": "onnx", "options": {"precision": "int8", "calibration": "upload:../x"}})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options", r.text
    r = c.post(convert, json={"target": "onnx", "options": {"precision": "fp16", "calibration": made["use"]["calibration"]}})
    assert r.status_code == 422 and "applies to precision=int8 only" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_static_int8_is_calibrated_on_the_uploaded_set(client, tmp_path, target):
    from tests import models
    from tests.helpers import int8_artifact, upload

    c = client
    m = upload(c, models.onnx_classifier(tmp_path))
    rng = np.random.default_rng(1)
    data = rng.standard_normal((48, 32)).astype(np.float32)
    # validation compares on the model's samples, drawn like the data the model sees (and the first set)
    samples = _npz(x=rng.standard_normal((16, 32)).astype(np.float32))
    assert c.put(f"/v1/models/{m['id']}/samples", content=samples).status_code == 200
    ids = []
    for scale in (1.0, 10.0):  # the same distribution, and one ten times as wide
        r = c.post(f"/v1/models/{m['id']}/calibration-sets", content=_npz(x=data * scale))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    arts = []
    for set_id in ids:
        body = {"target": target, "benchmark": {"batch_sizes": [1], "max_seconds": 2},
                "options": {"precision": "int8", "calibration": f"upload:{set_id}"}}
        art = int8_artifact(c, m["id"], target, body)
        assert art["lineage"]["options"]["calibration"] == f"upload:{set_id}"
        assert not any("synthetic" in w for w in art["warnings"]), art["warnings"]
        arts.append(art)
    good, wide = arts
    v = good["validation"]
    assert v["profile"] == "int8" and v["status"] == "passed" and v["max_abs_err"] is not None, v
    row = next(r for r in c.get(f"/v1/models/{m['id']}/report").json()["rows"] if r["artifact_id"] == good["id"])
    assert row["precision"] == "int8" and row["p50_ms"] is not None and row["validation"] == "passed"
    # the data ten times as wide calibrated the input ten times as wide: the upload is what calibrated it
    s_good, s_wide = (_input_scale(c, target, a["id"], tmp_path) for a in (good, wide))
    assert s_wide == pytest.approx(10 * s_good, rel=0.02), (s_good, s_wide)
    if target == "onnx":  # MinMax, asymmetric int8: the input's scale is the calibration data's range / 255
        assert s_good == pytest.approx((data.max() - data.min()) / 255, rel=1e-5)
