"""What report-all offers, and what a request refuses up front: precision variants only where they
mean something, every target it leaves out named with why, and routes that cannot work refused
when they are requested (not after a conversion fails)."""

from __future__ import annotations

import json

from tests import models
from tests.helpers import upload


def _report_all(client, model_id: str) -> dict:
    r = client.post(f"/v1/models/{model_id}/report-all", json={"benchmark": False})
    assert r.status_code == 202, r.text
    return r.json()


def test_an_already_quantized_graph_gets_no_fp16_or_int8_variants(embedded_client, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    (fp32,) = models.onnx_model(tmp_path)
    int8 = tmp_path / "quantized.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    m = upload(embedded_client, int8)
    out = _report_all(embedded_client, m["id"])
    offered = {(j["target"], j["options"].get("precision")) for j in out["jobs"]}
    assert ("onnx", "fp16") not in offered and ("openvino", "int8") not in offered
    assert ("openvino", None) in offered
    refused = {(k["target"], k["options"].get("precision")): k["reason"] for k in out["skipped"]}
    assert {("onnx", "fp16"), ("onnx", "int8"), ("openvino", "fp16"), ("openvino", "int8")} <= set(refused)
    assert "already quantized (DynamicQuantizeLinear" in refused[("openvino", "fp16")]
    (fresh,) = [j for j in out["jobs"] if (j["target"], j["options"].get("precision")) == ("openvino", None)]
    done = embedded_client.get(f"/v1/jobs/{fresh['id']}", params={"wait": 300}).json()
    assert done["status"] == "succeeded", done


def test_torchscript_without_specs_is_converted_at_shapes_found_in_its_forward_graph(embedded_client, tmp_path):
    """TorchScript records no shapes: report-all used to queue nothing for it. The forward graph's
    first linear (weight [16, 8]) says the input is [batch, 8]; the ONNX made at that shape is
    validated against the TorchScript itself."""
    m = upload(embedded_client, models.torchscript(tmp_path))
    out = _report_all(embedded_client, m["id"])
    (job,) = [j for j in out["jobs"] if j["target"] == "onnx" and not j["options"].get("precision")]
    done = embedded_client.get(f"/v1/jobs/{job['id']}", params={"wait": 300}).json()
    assert done["status"] == "succeeded", done
    art = embedded_client.get(f"/v1/artifacts/{done['artifact_id']}").json()
    assert any(w.startswith("input_specs found from the forward graph") and "x = float32[1, 8]" in w
               and "aten::linear weight [16, 8]: 8 input feature(s)" in w for w in art["warnings"]), art["warnings"]
    assert art["validation"]["status"] == "passed", art["validation"]
    assert art["inspection"]["inputs"][0]["shape"] == ["batch", 8]


def test_torchscript_whose_graph_says_nothing_fails_naming_what_to_give(embedded_client, tmp_path):
    import torch

    class Sum(torch.nn.Module):
        def forward(self, x):
            return x.sum(-1)

    path = tmp_path / "sum.pt"
    torch.jit.save(torch.jit.trace(Sum(), torch.randn(2, 8)), path)
    m = upload(embedded_client, path)
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx"})
    assert r.status_code == 202, r.text
    done = embedded_client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert done["status"] == "failed"
    assert "none were found from the forward graph (the forward graph says nothing of the shape of x)" in \
        done["error"]["message"], done["error"]
    assert 'give input_specs like {"x"' in done["error"]["hint"]
    specs = {"x": {"shape": [1, 8], "dtype": "float32", "dynamic": {"0": "batch"}}}
    r = embedded_client.post(f"/v1/models/{m['id']}/report-all", json={"benchmark": False, "input_specs": specs})
    assert r.status_code == 202 and {j["target"] for j in r.json()["jobs"]} >= {"onnx"}, r.text


def test_a_weights_only_keras_file_is_refused_when_conversion_is_requested(embedded_client, tmp_path):
    import h5py
    import numpy as np

    path = tmp_path / "w.weights.h5"
    with h5py.File(path, "w") as f:  # the Keras 3 save_weights layout: no model config, so no graph
        f.create_group("vars")
        f.create_dataset("layers/dense/vars/0", data=np.zeros((4, 2), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros((2,), np.float32))
    m = upload(embedded_client, path)
    assert m["format"] == "keras" and m["inspection"]["details"]["kind"] == "weights_only"
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "tflite"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "weights_only_source" and "holds weights only" in err["message"]
    assert embedded_client.get("/v1/jobs", params={"model_id": m["id"]}).json()["items"] == []


def test_a_failing_fp16_variant_names_its_first_diverging_tensor_and_report_all_tries_the_mixed_fix(
        embedded_client, tmp_path):
    """float16 overflows at 'amplify_more' (x1000 twice): the fp16 artifact fails, its validation
    names that tensor and the last one that matched, and report-all requests the mixed-precision
    variant that keeps it (and what it feeds) in float32, which passes."""
    import time

    from tests import traps

    c = embedded_client
    m = upload(c, traps.fp16_overflow(tmp_path / "overflow.onnx"))
    out = _report_all(c, m["id"])
    (fp16,) = [j for j in out["jobs"] if j["target"] == "onnx" and j["options"].get("precision") == "fp16"]
    done = c.get(f"/v1/jobs/{fp16['id']}", params={"wait": 300}).json()
    assert done["status"] == "succeeded", done
    v = c.get(f"/v1/artifacts/{done['artifact_id']}").json()["validation"]
    assert v["status"] == "failed"
    div = v["report"]["divergence"]
    assert div["status"] == "found", div
    assert (div["first"]["tensor"], div["first"]["op_type"], div["first"]["node"]) == ("h2", "Mul", "amplify_more")
    assert div["last_matching"]["tensor"] == "h1"
    assert "first diverging tensor 'h2' (Mul 'amplify_more')" in v["reason"]
    fix = v["report"]["suggestion"]
    assert fix["options"] == {"precision": "fp16", "optimize": "none", "keep_fp32": ["amplify_more", "scale_back"]}
    deadline = time.monotonic() + 120
    while not (mixed := [j for j in c.get("/v1/jobs", params={"model_id": m["id"], "limit": 100}).json()["items"]
                         if j["options"].get("keep_fp32")]):
        assert time.monotonic() < deadline, "report-all did not request the suggested mixed-precision variant"
        time.sleep(0.2)
    done = c.get(f"/v1/jobs/{mixed[0]['id']}", params={"wait": 300}).json()
    assert done["status"] == "succeeded", done
    art = c.get(f"/v1/artifacts/{done['artifact_id']}").json()
    assert art["validation"]["status"] == "passed", art["validation"]["reason"]
    assert len([j for j in c.get("/v1/jobs", params={"model_id": m["id"], "limit": 100}).json()["items"]
                if j["options"].get("keep_fp32")]) == 1  # the fix's own validation passed: no further round


def _offered(out: dict) -> list[tuple[str, str | None, str | None]]:
    return [(j["target"], j["options"].get("precision"), j["options"].get("calibration")) for j in out["jobs"]]


def test_report_all_offers_calibrated_int8_once_on_samples_when_there_are_some(embedded_client, tmp_path):
    """Beside the dynamic / weight-only int8 variants, a static INT8 one wherever the route's edge can
    calibrate: on generated inputs (warned) while the model has no samples, on its samples once it has."""
    import io

    import numpy as np

    c = embedded_client
    m = upload(c, models.onnx_classifier(tmp_path))
    out = _report_all(c, m["id"])
    offered = _offered(out)
    assert len(offered) == len(set(offered)), offered  # no (target, options) twice
    assert {("onnx", "int8", "synthetic"), ("openvino", "int8", "synthetic"), ("onnx", "int8", None),
            ("openvino", "int8", None)} <= set(offered), offered
    skipped = {(k["target"], k["options"].get("calibration")): k["reason"] for k in out["skipped"]}
    assert "cpu.tf" in skipped[("tflite", "synthetic")]  # no TF toolchain here: said, not queued
    calibrated = [j for j in out["jobs"] if j["options"].get("calibration") == "synthetic"]
    for j in calibrated:
        done = c.get(f"/v1/jobs/{j['id']}", params={"wait": 300}).json()
        assert done["status"] == "succeeded", done
        art = c.get(f"/v1/artifacts/{done['artifact_id']}").json()
        assert art["validation"]["profile"] == "int8" and art["validation"]["max_abs_err"] is not None
        assert any("calibrated on synthetic inputs" in w for w in art["warnings"]), art["warnings"]
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32))
    assert c.put(f"/v1/models/{m['id']}/samples", content=buf.getvalue()).status_code == 200
    again = _offered(_report_all(c, m["id"]))
    assert len(again) == len(set(again)), again
    assert {("onnx", "int8", "samples"), ("openvino", "int8", "samples")} <= set(again), again
    assert not any(cal == "synthetic" for _, _, cal in again), again


def test_a_conversion_requested_before_report_all_is_not_made_again(embedded_client, tmp_path):
    """report-all asks with try_fixes, a plain request does not: still the same conversion, so one job
    (try_fixes used to be part of the idempotency key, and report-all made a second onnx fp16 job)."""
    c = embedded_client
    m = upload(c, models.onnx_classifier(tmp_path))
    r = c.post(f"/v1/models/{m['id']}/conversions",
               json={"target": "onnx", "options": {"precision": "fp16"}, "benchmark": False})
    assert r.status_code == 202, r.text
    first = r.json()["id"]
    out = _report_all(c, m["id"])
    fp16 = [j["id"] for j in out["jobs"] if j["target"] == "onnx" and j["options"] == {"precision": "fp16"}]
    assert fp16 == [first], (fp16, first)
    listed = c.get("/v1/jobs", params={"model_id": m["id"], "limit": 100}).json()["items"]
    keys = [(j["target"], json.dumps(j["options"], sort_keys=True)) for j in listed]
    assert len(keys) == len(set(keys)) == len(out["jobs"]), keys
