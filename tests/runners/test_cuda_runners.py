"""CUDA runners (the ``gpu`` queue): ONNX on ONNX Runtime's CUDA provider, .pt2 and TorchScript on
torch CUDA. Declared like every runtime (a format's ``other_runners``); chosen when a validation or
benchmark is asked to run on ``gpu``; refused, saying why, on a host that cannot run them (this
one: no NVIDIA GPU, the CPU builds of onnxruntime and torch). The paths that need a GPU are run
against the CPU result where a CUDA device exists, and skipped, saying so, where none does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app import host, runners
from app.pipeline import checks
from app.runners import RunnerUnavailable, open_runner
from app.runners import onnxruntime_cuda_runner as ort_cuda
from app.runners import torch_cuda_runner as torch_cuda
from app.sandbox.io import Source
from tests import models

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.03"}
NO_CUDA = not torch.cuda.is_available()
NO_CUDA_WHY = "no CUDA device on this host"


def test_the_cuda_runtimes_are_declared_and_routed_to_the_gpu_queue():
    rts = runners.runtimes()
    assert rts["onnxruntime_cuda_runner"].hardware == rts["torch_cuda_runner"].hardware == "gpu"
    assert runners.runtime_of("onnx", "gpu").name == "onnxruntime-cuda"
    assert runners.runtime_of("torch_export", "gpu").name == runners.runtime_of("torchscript", "gpu").name == "torch-cuda"
    assert runners.runtime_of("onnx").name == "onnxruntime"  # the default stays the CPU one
    assert runners.queue_for("onnx", "gpu") == "gpu" and runners.queue_for("onnx") == "cpu"
    assert runners.queue_for("tflite", "gpu") == "cpu"  # no GPU runtime declared: its own
    assert runners.on_hardware("tflite", "gpu") is None and runners.on_hardware("tensorrt", "gpu").name == "tensorrt"
    assert [r.name for r in runners.runtimes_of("onnx")] == ["onnxruntime", "onnxruntime-cuda"]


def test_onnxruntime_provider_selection():
    assert ort_cuda.providers_for(["CUDAExecutionProvider", "CPUExecutionProvider"], "1.22.0") == [
        ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    with pytest.raises(RunnerUnavailable, match=r"^onnxruntime 1\.32\.0 here has no CUDAExecutionProvider \(its "
                                                r"providers: AzureExecutionProvider, CPUExecutionProvider\): install "
                                                r"onnxruntime-gpu in place of onnxruntime$"):
        ort_cuda.providers_for(["AzureExecutionProvider", "CPUExecutionProvider"], "1.32.0")
    assert ort_cuda.without_tf32([("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
                                 ) == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    ort_cuda.check_session(["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RunnerUnavailable, match="could not start CUDAExecutionProvider .* fell back to "
                                                "CPUExecutionProvider"):
        ort_cuda.check_session(["CPUExecutionProvider"])


@pytest.mark.parametrize("version,cuda,available,device,why", [
    ("2.13.0", "12.8", True, H200, None),
    ("2.13.0+cpu", None, False, None, "no CUDA device on this host (nvidia-smi finds none)"),
    ("2.13.0+cpu", None, False, H200, "torch 2.13.0+cpu here is a CPU-only build, so it cannot use the NVIDIA H200: "
                                      "install a CUDA build of torch"),
    ("2.13.0", "13.0", False, H200, "torch 2.13.0 (built for CUDA 13.0) cannot use the NVIDIA H200 (driver 580.159.03 "
                                    "too old for that CUDA, or the device is not visible to it)"),
])
def test_why_torch_cannot_use_cuda(version, cuda, available, device, why):
    assert torch_cuda.why_not(version, cuda, available, device) == why


@pytest.mark.skipif(host.cuda_device() is not None, reason="this host has a GPU: the refusal does not apply")
@pytest.mark.parametrize("fmt", ["onnx", "torch_export", "torchscript"])
def test_a_host_without_a_gpu_refuses_the_cuda_runners(tmp_path, fmt):
    path = {"onnx": lambda: models.onnx_model(tmp_path)[0], "torch_export": lambda: models.exported_program(tmp_path),
            "torchscript": lambda: models.torchscript(tmp_path)}[fmt]()
    with pytest.raises(RunnerUnavailable, match=r"^no CUDA device on this host \(nvidia-smi finds none\)$"):
        open_runner(fmt, path.parent, [path.name], path.name, hardware="gpu")
    assert open_runner(fmt, path.parent, [path.name], path.name).info.device == "cpu"  # the default still runs


@pytest.mark.skipif(not NO_CUDA, reason="torch has CUDA here: the CPU-build refusal does not apply")
def test_cpu_builds_are_named_when_a_gpu_is_there_but_the_packages_cannot_use_it(tmp_path, monkeypatch):
    """A GPU host with the CPU wheels installed (the wrong image): each runner says which package to swap."""
    import onnxruntime as ort

    monkeypatch.setattr(host, "cuda_device", lambda: dict(H200))
    [onnx_path] = models.onnx_model(tmp_path)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RunnerUnavailable, match="has no CUDAExecutionProvider .* install onnxruntime-gpu"):
            open_runner("onnx", tmp_path, [onnx_path.name], onnx_path.name, hardware="gpu")
    pt2 = models.exported_program(tmp_path)
    if torch.version.cuda is None:
        with pytest.raises(RunnerUnavailable, match=r"is a CPU-only build, so it cannot use the NVIDIA H200"):
            open_runner("torch_export", tmp_path, [pt2.name], pt2.name, hardware="gpu")


@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_the_device_placement_path_gives_the_cpu_answers(tmp_path, fmt):
    """The CUDA runner's loaders move the program and the feeds to a device; on this host the same
    code runs with device "cpu:0" (torch.export's move_to_device_pass, map_location, .to(device))."""
    from app.runners.torch_export_runner import TorchExportRunner
    from app.runners.torchscript_runner import TorchScriptRunner

    path = models.exported_program(tmp_path) if fmt == "torch_export" else models.torchscript(tmp_path)
    cls = TorchExportRunner if fmt == "torch_export" else TorchScriptRunner
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    ref, moved = cls(path, "fp32", 1).run({"x": x}), cls(path, "fp32", 1, device="cpu:0").run({"x": x})
    assert ref.keys() == moved.keys() and all(np.array_equal(ref[k], moved[k]) for k in ref)


def test_a_gpu_validation_on_a_cpu_host_waits_for_the_gpu_queue(tmp_path):
    if host.cuda_device() is not None:
        pytest.skip("this host has a GPU: the validation would run")
    [onnx_path] = models.onnx_model(tmp_path)
    src = Source(root=tmp_path, paths=[onnx_path.name], primary=onnx_path.name, format="onnx", inspection={})
    ref = {"root": str(tmp_path), "paths": [onnx_path.name], "primary": onnx_path.name, "format": "onnx"}
    report = checks.validate_step(src, tmp_path / "o", {"reference": ref, "hardware": "gpu"}).details
    assert report["status"] == "skipped"
    assert report["reason"] == ("no CUDA device on this host (nvidia-smi finds none): waiting for a worker on the 'gpu' "
                                "queue that can run onnx")
    bench = checks.benchmark_step(src, tmp_path / "o", {"hardware": "gpu", "batch_sizes": [1]}).details
    assert bench["status"] == "skipped" and "'gpu' queue" in bench["reason"]


@pytest.mark.skipif(NO_CUDA, reason=f"{NO_CUDA_WHY} (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("fmt", ["torch_export", "torchscript"])
def test_torch_cuda_matches_the_cpu(tmp_path, fmt):
    path = models.exported_program(tmp_path) if fmt == "torch_export" else models.torchscript(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    cpu = open_runner(fmt, tmp_path, [path.name], path.name).run({"x": x})
    gpu_runner = open_runner(fmt, tmp_path, [path.name], path.name, hardware="gpu")
    assert gpu_runner.info.runtime == "torch-cuda" and gpu_runner.info.device == "cuda:0"
    got = gpu_runner.run({"x": x})
    assert all(np.allclose(cpu[k], got[k], rtol=1e-4, atol=1e-5) for k in cpu)


@pytest.mark.skipif(NO_CUDA, reason=f"{NO_CUDA_WHY} (torch.cuda.is_available() is False)")
def test_onnxruntime_cuda_matches_the_cpu(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
    [onnx_path] = models.onnx_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    cpu = open_runner("onnx", tmp_path, [onnx_path.name], onnx_path.name).run({"x": x})
    r = open_runner("onnx", tmp_path, [onnx_path.name], onnx_path.name, hardware="gpu")
    assert r.info.details["providers"][0] == "CUDAExecutionProvider"
    assert np.allclose(cpu["y"], r.run({"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_the_gpu_queue_sandbox_sets_no_address_space_limit(monkeypatch):
    """CUDA reserves more virtual address space than any useful RLIMIT_AS: gpu steps get none."""
    from app.config import Settings

    s = Settings()
    assert s.memory_for("gpu") == 0 and s.memory_for("cpu") == s.convert_memory_mb == 16384
    monkeypatch.setenv("MODELPORT_QUEUE_MEMORY_MB", '{"gpu": 0, "intel": 4096}')
    assert Settings().memory_for("intel") == 4096
