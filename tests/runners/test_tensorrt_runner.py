"""The TensorRT runner's checks before it runs anything: this host against the engine's record
(GPU model, compute capability, TensorRT version), and feeds against the engine's profile.

The engines are made by the ONNX -> TensorRT edge against a FAKE ``tensorrt`` module
(tests/fake_tensorrt.py, injected into ``sys.modules`` here only); the host's GPU is a stand-in for
``app.host.cuda_device``. Running an engine needs a real TensorRT and GPU (``scripts/gpu-check``)."""

from __future__ import annotations

import json
import sys

import pytest

from app import host
from app.conversion.edges import tensorrt as edge
from app.runners import RunnerUnavailable, open_runner
from app.runners.tensorrt_runner import mismatch, outside_profile
from app.sandbox.io import Source
from tests import fake_tensorrt, models

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.03"}
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "570.86.15"}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "driver": "570.86.15"}
T4 = {"name": "Tesla T4", "compute_capability": "7.5", "driver": "535.1"}


def _record(gpu=H200, version="10.9.0.34", compat="none"):
    return {"kind": "modelport.tensorrt-engine/1", "tensorrt_version": version, "gpu": gpu,
            "hardware_compatibility": compat}


@pytest.mark.parametrize("record,gpu,trt,problems", [
    (_record(), H200, "10.9.0.34", []),
    (_record(), H200, "10.10.0.31", ["TensorRT version: the engine was built with TensorRT 10.9.0.34, this host has "
                                     "10.10.0.31"]),
    (_record(), A100, "10.9.0.34", ["GPU compute capability: the engine was built for 9.0 (NVIDIA H200), this host's "
                                    "GPU is 8.0 (NVIDIA A100-SXM4-80GB)"]),
    (_record(), H100, "10.9.0.34", ["GPU model: the engine was built on NVIDIA H200, this host has NVIDIA H100 80GB HBM3 "
                                    "(TensorRT tunes an engine's kernels for the GPU model that built it)"]),
    (_record(compat="ampere_plus"), A100, "10.9.0.34", []),  # hardware-compatible: any Ampere or later
    (_record(compat="ampere_plus"), T4, "10.9.0.34", ["GPU compute capability: the engine is hardware-compatible with "
                                                      "Ampere and later (8.0+), this host's GPU is 7.5 (Tesla T4)"]),
    (_record(), T4, "10.3.0.26", ["TensorRT version: the engine was built with TensorRT 10.9.0.34, this host has "
                                  "10.3.0.26",
                                  "GPU compute capability: the engine was built for 9.0 (NVIDIA H200), this host's GPU "
                                  "is 7.5 (Tesla T4)"]),
])
def test_a_host_is_checked_against_the_engine_record(record, gpu, trt, problems):
    assert mismatch(record, None, gpu, trt)[0] == problems


def test_what_cannot_be_checked_is_said():
    old_driver = {"name": "NVIDIA H200", "driver": "470.1"}  # no compute_cap field
    problems, unchecked = mismatch(_record(), None, old_driver, "10.9.0.34")
    assert problems == [] and unchecked == ["the compute capability (this driver does not report it)"]
    # an uploaded plan without a record: only the version its header carries
    problems, unchecked = mismatch(None, "10.3.0", H200, "10.9.0.34")
    assert problems == ["TensorRT version: the plan's header says TensorRT 10.3.0, this host has 10.9.0.34"]
    assert unchecked == ["the GPU it was built for (no build record: the plan was not built by modelport)"]
    assert mismatch(None, "10.9.0", H200, "10.9.0.34")[0] == []


def test_feeds_outside_the_profile_are_refused_with_its_range():
    assert outside_profile("x", (4, 8), (1, 8), (32, 8)) is None
    assert outside_profile("x", (64, 8), (1, 8), (32, 8)) == (
        "input 'x' has shape [64, 8]; the engine takes [1..32, 8] (its optimisation profile): convert again with a "
        "wider one (max_batch, shapes)")
    assert outside_profile("x", (8,), (1, 8), (32, 8)) == "input 'x' has rank 1; the engine takes rank 2"


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """An engine the edge built against the fake TensorRT 10.9 on a (stand-in) H200."""
    trt = fake_tensorrt.make("10.9.0.34")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(host, "cuda_device", lambda: dict(H200))
    monkeypatch.setenv(edge.CACHE_ENV, str(tmp_path / "cache"))
    [onnx_path] = models.onnx_model(tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    edge.from_onnx(Source(root=tmp_path, paths=[onnx_path.name], primary=onnx_path.name, format="onnx",
                          inspection={}), out, {})
    return out


def _open(out):
    return open_runner("tensorrt", out, ["model.engine", "model.engine.json"], "model.engine")


def test_the_runner_refuses_another_gpu_naming_it_and_the_rebuild(engine, monkeypatch):
    monkeypatch.setattr(host, "cuda_device", lambda: dict(A100))
    with pytest.raises(RunnerUnavailable) as e:
        _open(engine)
    assert str(e.value) == (
        "this TensorRT engine does not fit this host: GPU compute capability: the engine was built for 9.0 (NVIDIA "
        "H200), this host's GPU is 8.0 (NVIDIA A100-SXM4-80GB). rebuild the engine for this host: POST "
        "/v1/artifacts/{artifact_id}/rebuild re-runs the same conversion with the same options on the gpu queue")


def test_the_runner_refuses_another_tensorrt_version(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make("10.10.0.31"))
    with pytest.raises(RunnerUnavailable, match=r"TensorRT version: the engine was built with TensorRT 10\.9\.0\.34, "
                                                r"this host has 10\.10\.0\.31"):
        _open(engine)


def test_a_matching_host_gets_past_the_checks(engine):
    """Same GPU model and TensorRT: the record check passes, and the next need is a CUDA buffer
    library (torch on this host has no CUDA)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: scripts/gpu-check runs the real path")
    with pytest.raises(RunnerUnavailable, match="^TensorRT needs an NVIDIA GPU$"):
        _open(engine)


def test_the_runner_refuses_a_host_without_a_gpu(engine, monkeypatch):
    monkeypatch.setattr(host, "cuda_device", lambda: None)
    with pytest.raises(RunnerUnavailable, match=r"^no CUDA device on this host \(nvidia-smi finds none\)$"):
        _open(engine)


def test_a_tampered_record_is_not_trusted(engine, monkeypatch):
    """A record that is not modelport's (wrong kind) counts as no record: the header's version decides."""
    rec = json.loads((engine / "model.engine.json").read_text())
    (engine / "model.engine.json").write_text(json.dumps({**rec, "kind": "something else"}))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make("10.10.0.31"))
    with pytest.raises(RunnerUnavailable, match="the plan's header says TensorRT 10.9.0, this host has 10.10.0.31"):
        _open(engine)
