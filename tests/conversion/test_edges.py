"""Round trips through every edge in app.conversion.registry, run through the sandbox (a child
process, as in production): build a small model here, convert it, run source and artifact on the
same seeded inputs at two batch sizes and compare.

Tolerances (max absolute error; "relative" ones are multiplied by max(1, max |reference output|)):

- fp32 artifacts: 1e-4 absolute (the same float32 math, reordered; measured ~1e-6).
- fp16 weights (OpenVINO compress_to_fp16, onnxruntime float16): 1e-2 relative. fp16 has an 11-bit
  significand (~5e-4 relative per weight); a few layers accumulate that to ~1e-3.
- INT8 weights (NNCF INT8_ASYM per channel, onnxruntime dynamic quantisation): 5e-2 relative.
  Dynamic quantisation also quantises activations to 8 bits, which dominates (measured ~1e-2).

SafeTensors <-> PyTorch is lossless: tensors are compared for exact equality (dtype, shape, bytes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from app.conversion import registry
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.sandbox.io import Source
from app.sandbox.parent import SandboxFailure, run_edge
from tests.conversion import runners

FP32_ATOL = 1e-4
FP16_RTOL = 1e-2
INT8_RTOL = 5e-2  # dynamic int8 of the test CNN: 0.013 of the output scale; without reduce_range (7-bit weights,
# on by default on CPUs without VNNI) it was 0.057 on this AVX2-only CPU: u8s8 products saturate int16 there
BATCHES = (1, 3)
MEASURED: dict[str, float] = {}  # edge -> max abs error seen, printed at the end (pytest -s)


# ----------------------------------------------------------------------------- models


def _cnn():
    import torch
    from torch import nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 8 * 8, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return self.fc(torch.nn.functional.max_pool2d(y, 2).flatten(1))

    torch.manual_seed(0)
    m = CNN().eval()
    with torch.no_grad():  # non-trivial running statistics, so that BN folding is exercised
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m


def _mlp():
    import torch
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


INPUT_SHAPES = {"cnn": (3, 16, 16), "mlp": (12,)}


def inputs(model: str, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + batch)
    return [rng.standard_normal((batch, *INPUT_SHAPES[model])).astype(np.float32)]


def _export(module, example, path: Path) -> Path:
    import torch

    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Source models: cnn.pt2, mlp.pt2 (dynamic batch), qr.pt2 (an op the ONNX exporter lacks)."""
    import torch

    root = tmp_path_factory.mktemp("models")
    _export(_cnn(), (torch.randn(2, *INPUT_SHAPES["cnn"]),), root / "cnn.pt2")
    _export(_mlp(), (torch.randn(2, *INPUT_SHAPES["mlp"]),), root / "mlp.pt2")

    class QR(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.qr(x)[0] + 1

    ep = torch.export.export(QR(), (torch.randn(3, 3),))
    torch.export.save(ep, str(root / "qr.pt2"))
    return root


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MEASURED:
        print("\nmax abs error per edge:\n" + "\n".join(f"  {k}: {v:.3g}" for k, v in sorted(MEASURED.items())))


# ----------------------------------------------------------------------------- helpers


def source(root: Path, paths: list[str], *, specs: dict | None = None, inspection: dict | None = None,
           fmt: str | None = None) -> Source:
    insp = inspection if inspection is not None else detect_and_inspect(ModelFiles(root, paths, paths[0]))
    return Source(root=root, paths=paths, primary=insp.get("primary_file", paths[0]),
                  format=fmt or insp["format"], inspection=insp, input_specs=specs)


def convert(edge_name: str, src: Source, work: Path, options: dict | None = None) -> tuple[dict, Path]:
    edge = registry.by_name(edge_name)
    assert src.format == edge.source
    out_dir = work / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_edge(edge, src, out_dir, options or {}, python=sys.executable, timeout_s=300, memory_mb=16384,
                      log_path=work / "convert.log")
    return result, out_dir


def compare(label: str, model: str, ref_fn, got_fn, *, atol: float | None = None, rtol: float | None = None) -> None:
    for batch in BATCHES:
        x = inputs(model, batch)
        ref, got = ref_fn(x), got_fn(x)
        err = runners.max_abs_err(ref, got)
        MEASURED[label] = max(MEASURED.get(label, 0.0), err)
        bound = atol if atol is not None else rtol * runners.scale(ref)
        assert err < bound, f"{label}: batch {batch}: max abs error {err:.3g} >= {bound:.3g}"


def ir_const_types(xml: Path) -> set[str]:
    import xml.etree.ElementTree as ET

    return {layer.find("data").get("element_type") for layer in ET.parse(xml).getroot().iter("layer")
            if layer.get("type") == "Const"}


@pytest.fixture(scope="module")
def onnx_of(models, tmp_path_factory):
    """The torch_export->onnx artifact of a model, converted once per module."""
    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in cache:
            work = tmp_path_factory.mktemp(f"onnx-{name}")
            cache[name] = convert("torch_export->onnx", source(models, [f"{name}.pt2"]), work)
        return cache[name]

    return get


# ----------------------------------------------------------------------------- torch -> ONNX / TorchScript


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_program_to_onnx(model, models, onnx_of):
    result, out = onnx_of(model)
    assert result["primary"] == "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"], "one self-contained file, no .onnx.data"
    assert result["details"]["external_data"] == []
    assert result["versions"]["torch"] and result["versions"]["onnx"]
    src_insp = detect_and_inspect(ModelFiles(models, [f"{model}.pt2"], f"{model}.pt2"))
    art_insp = detect_and_inspect(ModelFiles(out, ["model.onnx"], "model.onnx"))
    assert art_insp["details"]["external_data"] == []
    for s, a in zip(src_insp["inputs"], art_insp["inputs"], strict=True):
        assert len(s["shape"]) == len(a["shape"])
        for ds, da in zip(s["shape"], a["shape"], strict=True):
            assert isinstance(da, str) if isinstance(ds, str) else da == ds, (s, a)
    assert art_insp["versions"]["opsets"]["ai.onnx"] == 18
    compare("torch_export->onnx", model, lambda x: runners.exported_program(models / f"{model}.pt2", x),
            lambda x: runners.onnxruntime(out / "model.onnx", x), atol=FP32_ATOL)


def test_program_to_torchscript(models, tmp_path):
    result, out = convert("torch_export->torchscript", source(models, ["cnn.pt2"]), tmp_path)
    assert result["primary"] == "model.torchscript"
    assert any("deprecated" in w for w in result["warnings"])
    assert result["details"]["example_shapes"] == {"x": [2, 3, 16, 16]}
    assert result["details"]["dynamic_check"] == "ok"
    assert detect_and_inspect(ModelFiles(out, ["model.torchscript"], "model.torchscript"))["format"] == "torchscript"
    compare("torch_export->torchscript", "cnn", lambda x: runners.exported_program(models / "cnn.pt2", x),
            lambda x: runners.torchscript(out / "model.torchscript", x), atol=FP32_ATOL)


@pytest.fixture(scope="module")
def two_input_torchscript(tmp_path_factory) -> Path:
    """A TorchScript CNN with a second input: forward(x, scale) -> cnn(x) * scale."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = _cnn()

        def forward(self, x, scale):
            return self.cnn(x) * scale

    root = tmp_path_factory.mktemp("ts")
    m = Scaled().eval()
    traced = torch.jit.trace(m, (torch.randn(2, 3, 16, 16), torch.randn(2, 5)))
    torch.jit.save(traced, str(root / "scaled.torchscript"))
    return root


def test_torchscript_to_onnx(two_input_torchscript, tmp_path):
    root = two_input_torchscript
    # given out of forward() order, and with batch 1 (the exporter must not specialise it)
    specs = {"scale": {"shape": [1, 5], "dynamic": {"0": "batch"}},
             "x": {"shape": [1, 3, 16, 16], "dtype": "float32", "dynamic": {"0": "batch"}}}
    result, out = convert("torchscript->onnx", source(root, ["scaled.torchscript"], specs=specs), tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    assert result["details"]["example_shapes"] == {"x": [2, 3, 16, 16], "scale": [2, 5]}
    insp = detect_and_inspect(ModelFiles(out, ["model.onnx"], "model.onnx"))
    assert [i["name"] for i in insp["inputs"]] == ["x", "scale"]
    assert insp["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert insp["inputs"][1]["shape"] == ["batch", 5]
    assert insp["outputs"][0]["shape"][0] == "batch"
    assert insp["versions"]["opsets"]["ai.onnx"] == 17

    def with_scale(x):
        rng = np.random.default_rng(7 + x[0].shape[0])
        return [x[0], rng.standard_normal((x[0].shape[0], 5)).astype(np.float32)]

    compare("torchscript->onnx", "cnn", lambda x: runners.torchscript(root / "scaled.torchscript", with_scale(x)),
            lambda x: runners.onnxruntime(out / "model.onnx", with_scale(x)), atol=FP32_ATOL)


def test_torchscript_to_onnx_needs_specs(two_input_torchscript, tmp_path):
    specs = {"x": {"shape": [1, 3, 16, 16]}}
    with pytest.raises(SandboxFailure) as ei:
        convert("torchscript->onnx", source(two_input_torchscript, ["scaled.torchscript"], specs=specs), tmp_path)
    err = ei.value.error
    assert "inputs without a spec: scale" in err["message"]
    assert err["hint"] and "scale" in err["hint"]


# ----------------------------------------------------------------------------- OpenVINO


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_to_openvino(precision, models, onnx_of, cnn_onnx_external, tmp_path):
    if precision == "fp16":  # one case reads its weights from an external data file
        src = source(cnn_onnx_external, ["cnn.onnx", "cnn.onnx.data"])
    else:
        src = source(onnx_of("cnn")[1], ["model.onnx"])
    result, out = convert("onnx->openvino", src, tmp_path, {"precision": precision})
    assert result["primary"] == "model.xml"
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml"]
    types = ir_const_types(out / "model.xml")
    if precision == "fp32":
        assert "f32" in types and not types & {"f16", "bf16"}, types  # save_model's fp16 default must be off
    elif precision == "fp16":
        assert "f16" in types and "f32" not in types, types
    else:
        assert types & {"u8", "i8"}, types
        assert result["versions"].get("nncf")
    assert detect_and_inspect(ModelFiles(out, ["model.xml", "model.bin"], "model.xml"))["format"] == "openvino"
    kw = {"atol": FP32_ATOL} if precision == "fp32" else {"rtol": FP16_RTOL if precision == "fp16" else INT8_RTOL}
    compare(f"onnx->openvino:{precision}", "cnn", lambda x: runners.exported_program(models / "cnn.pt2", x),
            lambda x: runners.openvino(out / "model.xml", x), **kw)


def test_program_to_openvino(models, tmp_path):
    result, out = convert("torch_export->openvino", source(models, ["mlp.pt2"]), tmp_path)
    assert result["details"]["inputs"][0]["shape"] == "[?,12]"  # static dims pinned, batch dynamic
    assert "f32" in ir_const_types(out / "model.xml") and "f16" not in ir_const_types(out / "model.xml")
    compare("torch_export->openvino:fp32", "mlp", lambda x: runners.exported_program(models / "mlp.pt2", x),
            lambda x: runners.openvino(out / "model.xml", x), atol=FP32_ATOL)


# ----------------------------------------------------------------------------- ONNX -> ONNX


@pytest.fixture(scope="module")
def cnn_onnx_external(onnx_of, tmp_path_factory) -> Path:
    """The CNN's ONNX with its weights in an external data file."""
    import onnx

    _, onnx_dir = onnx_of("cnn")
    root = tmp_path_factory.mktemp("external")
    onnx.save_model(onnx.load(str(onnx_dir / "model.onnx")), str(root / "cnn.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="cnn.onnx.data", size_threshold=0)
    return root


@pytest.mark.parametrize("options,tol", [
    ({"optimize": "basic"}, {"atol": FP32_ATOL}),
    ({"optimize": "extended"}, {"atol": FP32_ATOL}),
    ({"precision": "fp16"}, {"rtol": FP16_RTOL}),
    ({"optimize": "none", "precision": "fp16", "keep_io_types": False}, {"rtol": FP16_RTOL}),
    ({"precision": "int8", "per_channel": True}, {"rtol": INT8_RTOL}),
], ids=["basic", "extended", "fp16", "fp16-io", "int8"])
def test_onnx_transform(options, tol, models, cnn_onnx_external, tmp_path):
    import onnx

    src = source(cnn_onnx_external, ["cnn.onnx", "cnn.onnx.data"])
    result, out = convert("onnx->onnx:transform", src, tmp_path, options)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"], "external data folded into one file"
    m = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in m.graph.node}
    inits = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in m.graph.initializer}
    if options.get("precision") == "fp16":
        assert np.dtype("float16") in inits and np.dtype("float32") not in inits
        want = "float32" if options.get("keep_io_types", True) else "float16"
        assert result["details"]["inputs"][0]["dtype"] == want
    elif options.get("precision") == "int8":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "ConvInteger" in ops, ops
    elif options["optimize"] == "extended":
        assert "FusedConv" in ops and any("com.microsoft" in w for w in result["warnings"])
    else:
        assert "BatchNormalization" not in ops  # folded into the Conv
    assert {o.domain for o in m.opset_import} <= {"", "com.microsoft"}, "unused opset imports are dropped"
    label = "onnx->onnx:" + "+".join(f"{k}={v}" for k, v in options.items())
    compare(label, "cnn", lambda x: runners.exported_program(models / "cnn.pt2", x),
            lambda x: runners.onnxruntime(out / "model.onnx", x), **tol)


# ----------------------------------------------------------------------------- SafeTensors <-> PyTorch


def _flatten(obj, prefix="", out=None):
    """The documented key scheme, written independently of the implementation."""
    import torch

    out = {} if out is None else out
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out)
    return out


def _assert_identical(a: dict, b: dict) -> None:
    import torch

    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].contiguous().reshape(-1).view(torch.uint8),
                           b[k].contiguous().reshape(-1).view(torch.uint8)), k


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A training checkpoint: nested model + optimizer state, a list, a transposed (non-contiguous)
    tensor, several dtypes, tied tensors and non-tensor entries."""
    import torch

    torch.manual_seed(3)
    root = tmp_path_factory.mktemp("ckpt")
    model = _mlp()
    shared = torch.randn(6, 4)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": {"state": {0: {"exp_avg": torch.randn(32, 12), "step": torch.tensor(7.0)}},
                      "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}]},
        "tied": {"encoder.embed": shared, "decoder.embed": shared, "decoder.half": shared[:3]},
        "extras": [torch.arange(6).reshape(2, 3).t(), torch.tensor([True, False]), torch.randn(3).half(),
                   torch.randn(2).bfloat16()],
        "epoch": 12, "step": 3400, "arch": "mlp", "best": None,
    }
    torch.save(ckpt, str(root / "ckpt.pt"))
    return root


def test_checkpoint_to_safetensors_and_back(checkpoint, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = source(checkpoint, ["ckpt.pt"])
    result, out = convert("pytorch->safetensors", src, tmp_path / "a")
    original = _flatten(torch.load(str(checkpoint / "ckpt.pt"), weights_only=True))
    stored = load_file(str(out / "model.safetensors"))
    _assert_identical(original, stored)
    # the same key scheme as the upload-time inspection
    assert set(stored) == {t["name"] for t in src.inspection["details"]["tensors"]}
    d = result["details"]
    assert d["tensor_count"] == len(original)
    assert d["skipped"] == {}
    assert sorted(d["cloned_shared"]) == ["tied.decoder.embed", "tied.decoder.half", "tied.encoder.embed"]
    assert "extras.0" in d["made_contiguous"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        extra = json.loads(f.metadata()["modelport.extra"])
    assert extra["epoch"] == 12 and extra["step"] == 3400 and extra["arch"] == "mlp" and extra["best"] is None
    assert extra["optimizer.param_groups.0.lr"] == 0.01
    MEASURED["pytorch->safetensors"] = 0.0

    back_src = source(out, ["model.safetensors"])
    result2, out2 = convert("safetensors->pytorch", back_src, tmp_path / "b")
    assert result2["primary"] == "model.pt"
    back = torch.load(str(out2 / "model.pt"), weights_only=True)
    _assert_identical(original, back)
    assert json.loads(result2["details"]["extra"])["epoch"] == 12
    MEASURED["safetensors->pytorch"] = 0.0


def test_weights_key_selects_a_sub_dict(checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    result, out = convert("pytorch->safetensors", source(checkpoint, ["ckpt.pt"]), tmp_path, {"weights_key": "model"})
    stored = load_file(str(out / "model.safetensors"))
    _assert_identical(dict(torch.load(str(checkpoint / "ckpt.pt"), weights_only=True)["model"]), stored)
    assert result["details"]["weights_key"] == "model"


def test_tied_weights_model_round_trip(tmp_path):
    import torch
    from torch import nn

    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embed.weight  # tied

        def forward(self, ids):
            return self.head(torch.tanh(self.body(self.embed(ids))))

    torch.manual_seed(5)
    model = TiedLM().eval()
    root = tmp_path / "src"
    root.mkdir()
    torch.save(model.state_dict(), str(root / "tied.pt"))
    result, out = convert("pytorch->safetensors", source(root, ["tied.pt"]), tmp_path / "a")
    assert result["details"]["shared_groups"] == [["embed.weight", "head.weight"]]
    assert any("shared storage" in w for w in result["warnings"])
    _, out2 = convert("safetensors->pytorch", source(out, ["model.safetensors"]), tmp_path / "b")
    state = torch.load(str(out2 / "model.pt"), weights_only=True)
    _assert_identical(model.state_dict(), state)
    fresh = TiedLM().eval()
    fresh.load_state_dict(state)
    ids = torch.randint(0, 20, (3, 5))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


# ----------------------------------------------------------------------------- failures


def test_unsupported_operator_is_a_structured_failure(models, tmp_path):
    with pytest.raises(SandboxFailure) as ei:
        convert("torch_export->onnx", source(models, ["qr.pt2"]), tmp_path)
    err = ei.value.error
    assert err["unsupported_operator"] == "aten.linalg_qr"
    assert err["tool"] == "torch.onnx" and err["tool_version"]
    assert "aten.linalg_qr" in err["message"] and err["hint"]
    assert "seconds" in err
    assert not (tmp_path / "out" / ".export").exists()


def test_corrupt_program_is_a_structured_failure(models, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    data = (models / "cnn.pt2").read_bytes()
    (root / "broken.pt2").write_bytes(data[: len(data) // 3])
    src = Source(root=root, paths=["broken.pt2"], primary="broken.pt2", format="torch_export", inspection={})
    with pytest.raises(SandboxFailure) as ei:
        convert("torch_export->openvino", src, tmp_path)
    err = ei.value.error
    assert "could not load the torch.export archive" in err["message"]
    assert err["tool"] == "torch" and err["hint"]


def _onnx_with(opset: int, ir: int, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    onnx.save_model(m, str(path))
    return path


@pytest.mark.parametrize("edge,runtime", [("onnx->onnx:transform", "onnxruntime"), ("onnx->openvino", "openvino")])
def test_opset_newer_than_runtime_fails_before_converting(edge, runtime, tmp_path):
    from app.conversion.compat import limits

    lim = limits(runtime)
    top = lim.max_opsets["ai.onnx"]
    root = tmp_path / "src"
    root.mkdir()
    _onnx_with(top + 1, 10, root / "new.onnx")
    with pytest.raises(SandboxFailure) as ei:
        convert(edge, source(root, ["new.onnx"]), tmp_path)
    err = ei.value.error
    assert err["message"] == f"the model uses opset {top + 1} but {runtime} {lim.version} supports up to {top}"
    assert err["tool"] == runtime and err["hint"]


# ----------------------------------------------------------------------------- in process


def test_onnx_over_the_protobuf_limit_keeps_external_data(onnx_of, tmp_path, monkeypatch):
    import onnx

    from app.conversion.edges import _common

    monkeypatch.setattr(_common, "ONNX_INLINE_LIMIT", 0)  # pretend the model is over 2 GiB
    details: dict = {}
    written = _common.save_onnx(onnx.load(str(onnx_of("cnn")[1] / "model.onnx")), tmp_path / "model.onnx",
                                details=details)
    assert written == ["model.onnx", "model.onnx.data"] and details["external_data"] == ["model.onnx.data"]
    insp = detect_and_inspect(ModelFiles(tmp_path, written, "model.onnx"))
    assert insp["details"]["external_data"] == ["model.onnx.data"]
    x = inputs("cnn", 3)
    assert runners.max_abs_err(runners.onnxruntime(onnx_of("cnn")[1] / "model.onnx", x),
                               runners.onnxruntime(tmp_path / "model.onnx", x)) == 0.0


def test_onnxruntime_limits_are_what_onnxruntime_enforces(tmp_path):
    import onnxruntime as ort

    from app.conversion.compat import KNOWN, _minor, limits

    lim = limits("onnxruntime")
    top, ir = lim.max_opsets["ai.onnx"], lim.max_ir_version
    ort.InferenceSession(str(_onnx_with(top, ir, tmp_path / "ok.onnx")), providers=["CPUExecutionProvider"])
    for opset, irv in ((top + 1, ir), (top, ir + 1)):
        with pytest.raises(Exception):  # noqa: B017 (onnxruntime's own exception types)
            ort.InferenceSession(str(_onnx_with(opset, irv, tmp_path / "bad.onnx")), providers=["CPUExecutionProvider"])
    known = KNOWN["onnxruntime"].get(_minor(lim.version))
    if known:
        assert known == (top, ir), f"update compat.KNOWN for onnxruntime {lim.version}: {(top, ir)}"


def test_openvino_limits(tmp_path):
    from app.conversion.compat import KNOWN, _minor, check_onnx_for, limits

    lim = limits("openvino")
    assert lim.max_opsets["ai.onnx"] >= 18
    known = KNOWN["openvino"].get(_minor(lim.version))
    if known:
        assert known == (lim.max_opsets["ai.onnx"], lim.max_ir_version), lim
    # OpenVINO does not refuse a newer IR version: a warning, not a failure
    warns = check_onnx_for("openvino", lim.max_ir_version + 1, {"": 17})
    assert warns and "IR version" in warns[0]
    assert check_onnx_for("openvino", 8, {"ai.onnx": 17, "com.example": 3}) == []


def test_unsupported_operator_patterns():
    from app.conversion.edges._common import unsupported_operator

    assert unsupported_operator("No ONNX function found for <OpOverload(op='aten.linalg_eig', "
                                "overload='default')>") == "aten.linalg_eig"
    assert unsupported_operator("Exporting the operator 'aten::linalg_qr' to ONNX opset version 17 is not "
                                "supported") == "aten::linalg_qr"
    assert unsupported_operator("Unsupported: ONNX export of operator aten::unfold, x") == "aten::unfold"
    assert unsupported_operator("Summary:\n-- No conversion rule found for operations: aten.linalg_qr.default\n"
                                ) == "aten.linalg_qr.default"
    assert unsupported_operator("No decomposition for aten::foo") == "aten::foo"
    assert unsupported_operator("something else went wrong") is None


def test_int8_without_nncf_is_a_clear_error(tmp_path, monkeypatch):
    import openvino as ov

    from app.conversion.edges import openvino as edge
    from app.sandbox.io import ConversionError

    model = ov.convert_model(str(_onnx_with(17, 8, tmp_path / "relu.onnx")))
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    with pytest.raises(ConversionError) as ei:
        edge._save(model, tmp_path, "int8", {}, [])
    assert ei.value.tool == "nncf" and ei.value.hint == "install modelport[openvino] (nncf)"


# ----------------------------------------------------------------------------- TFLite (TF toolchain)


def tflite_inspection(path: Path) -> dict:
    insp = detect_and_inspect(ModelFiles(path.parent, [path.name], path.name))
    assert insp["format"] == "tflite"
    return insp


def run_tflite_edge(src: Source, work: Path, options: dict, python: str) -> tuple[dict, Path]:
    out_dir = work / "out"
    out_dir.mkdir()
    result = run_edge(registry.by_name("onnx->tflite"), src, out_dir, options, python=python, timeout_s=600,
                      memory_mb=16384, log_path=work / "convert.log")
    return result, out_dir


@pytest.mark.parametrize("model,precision", [("cnn", "fp32"), ("mlp", "fp32"), ("cnn", "fp16"), ("cnn", "int8")])
def test_onnx_to_tflite(model, precision, models, onnx_of, tf_python, tmp_path):
    edge = registry.by_name("onnx->tflite")
    assert edge.toolchain == "tf" and edge.queue == "cpu.tf"
    src = source(onnx_of(model)[1], ["model.onnx"])
    result, out_dir = run_tflite_edge(src, tmp_path, {"precision": precision}, tf_python)
    assert result["primary"] == "model.tflite" and sorted(p.name for p in out_dir.iterdir()) == ["model.tflite"]
    assert result["versions"]["onnx2tf"] and result["versions"]["tensorflow"].startswith("2.19")
    insp = tflite_inspection(out_dir / "model.tflite")
    assert insp["details"]["custom_ops"] == []  # builtin ops only: GELU's Erf did not become FlexErf
    (inp,) = insp["inputs"]
    # the source's layout and dynamic batch survive: [batch, 3, 16, 16], not channels-last
    assert inp["shape"][1:] == list(INPUT_SHAPES[model]) and inp["shape"][0] in (None, -1, "batch"), inp
    if model == "cnn":
        assert result["details"]["kept_input_layout"] == [src.inspection["inputs"][0]["name"]]
    kw = {"atol": FP32_ATOL} if precision == "fp32" else {"rtol": FP16_RTOL if precision == "fp16" else INT8_RTOL}
    compare(f"onnx->tflite:{precision}:{model}", model, lambda x: runners.exported_program(models / f"{model}.pt2", x),
            lambda x: runners.tflite(out_dir / "model.tflite", x), **kw)
    if precision == "int8":
        assert any("dynamic-range" in w for w in result["warnings"])


def test_onnx_to_tflite_refuses_select_tf_ops(tf_python, tmp_path):
    """ONNX Det has no TFLite builtin: onnx2tf emits FlexMatrixDeterminant, which stock TFLite
    runtimes can't run, so the conversion fails and names it instead of storing that artifact."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root = tmp_path / "src"
    root.mkdir()
    onnx.save(model, str(root / "det.onnx"))
    with pytest.raises(SandboxFailure) as ei:
        run_tflite_edge(source(root, ["det.onnx"]), tmp_path, {"precision": "fp32"}, tf_python)
    err = ei.value.error
    assert "FlexMatrixDeterminant" in err["message"] and err["unsupported_operator"] == "MatrixDeterminant"
    assert err["tool"] == "onnx2tf" and "ONNX Runtime" in err["hint"]
    assert list((tmp_path / "out").iterdir()) == []


def test_onnx_to_tflite_keeps_input_and_output_names(tf_python, tmp_path):
    """onnx2tf orders TFLite inputs by name (amp before zed) and names tensors serving_default_*:0;
    the TFLite runner and inspection name them by the signature, so they line up with the ONNX
    model's by name, and the pipeline's validation compares the right tensors."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from app.runners import open_runner

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["zed", "w"], ["h"]), helper.make_node("Mul", ["h", "amp"], ["y"]),
         helper.make_node("Relu", ["h"], ["r"])], "two",
        [helper.make_tensor_value_info("zed", TensorProto.FLOAT, ["n", 8]),
         helper.make_tensor_value_info("amp", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root = tmp_path / "src"
    root.mkdir()
    onnx.save(model, str(root / "two.onnx"))
    _, out_dir = run_tflite_edge(source(root, ["two.onnx"]), tmp_path, {"precision": "fp32"}, tf_python)
    insp = tflite_inspection(out_dir / "model.tflite")
    assert sorted(t["name"] for t in insp["inputs"]) == ["amp", "zed"]
    assert sorted(t["name"] for t in insp["outputs"]) == ["r", "y"]
    ref = open_runner("onnx", root, ["two.onnx"], "two.onnx")
    got = open_runner("tflite", out_dir, ["model.tflite"], "model.tflite")
    assert sorted(s.name for s in got.inputs()) == ["amp", "zed"]
    feeds = {"zed": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32),
             "amp": np.array([[2.0], [-0.5]], np.float32)}
    want, have = ref.run(feeds), got.run(feeds)
    assert sorted(have) == ["r", "y"]
    for name in ("y", "r"):
        np.testing.assert_allclose(have[name], want[name], atol=1e-5)
