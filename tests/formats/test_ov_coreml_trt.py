"""OpenVINO IR, Core ML and TensorRT engines: detection from bytes, inspection, malformed uploads.

The OpenVINO and Core ML models are built here from small torch models with the real toolchains;
every expected name, dtype and shape comes from how a test built its model. TensorRT cannot be
installed here, so its engines are synthetic headers laid out as ``app.formats.tensorrt`` documents.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import sys
import warnings
import xml.etree.ElementTree as StdET  # only for files this test wrote itself
from pathlib import Path

import pytest

import app.formats as registry
import app.formats.coreml as coreml
import app.formats.openvino as openvino
import app.formats.tensorrt as tensorrt
from app.formats.base import Detection, FormatError, MalformedModel, ModelFiles

# --- helpers ----------------------------------------------------------------------------------


def files_in(root: Path, hint: str | None = None) -> ModelFiles:
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return ModelFiles(root=root, paths=paths, hint_name=hint)


def specs(tensors) -> list[tuple]:
    return [(t.name, t.dtype, t.shape) for t in tensors]


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def only_these_formats(monkeypatch):
    """The registry restricted to this file's formats, so its end-to-end path runs without the
    other format modules."""
    monkeypatch.setattr(registry, "FORMAT_MODULES", ("openvino", "coreml", "tensorrt"))


# --- OpenVINO IR ------------------------------------------------------------------------------

OV_BATCH_DIM = None  # the exported batch axis is dynamic


def _two_input_model():
    import torch

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.conv = torch.nn.Conv2d(2, 2, 1)

        def forward(self, x, y):
            return torch.relu(self.lin(x)), self.conv(y)

    return TwoHeads().eval()


@pytest.fixture(scope="module")
def ov_ir(tmp_path_factory):
    """model.xml + model.bin converted from ONNX, with a dynamic batch on ``x``/``out``."""
    import openvino as ov
    import torch

    work = tmp_path_factory.mktemp("ov")
    model = _two_input_model()
    onnx_path = work / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 4), torch.randn(1, 2, 5, 5)),
            str(onnx_path),
            dynamo=False,  # the TorchScript exporter: onnxscript is not installed
            input_names=["x", "y"],
            output_names=["out", "feat"],
            dynamic_axes={"x": {0: "batch"}, "out": {0: "batch"}},
        )
    ir = work / "ir"
    ir.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(ir / "model.xml"), compress_to_fp16=False)
    return {"dir": ir, "onnx": onnx_path, "params": numel(model)}


OV_INPUTS = [("x", "float32", [OV_BATCH_DIM, 4]), ("y", "float32", [1, 2, 5, 5])]
OV_OUTPUTS = [("out", "float32", [OV_BATCH_DIM, 3]), ("feat", "float32", [1, 2, 5, 5])]


def _copy_ir(ov_ir, dest: Path, *, xml_name="model.xml", bin_name: str | None = "model.bin") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ov_ir["dir"] / "model.xml", dest / xml_name)
    if bin_name:
        shutil.copy(ov_ir["dir"] / "model.bin", dest / bin_name)
    return dest


def test_openvino_detect_pairs_xml_and_bin(ov_ir):
    files = files_in(ov_ir["dir"], "model.xml")
    det = openvino.detect(files)
    assert det is not None and det.format == "openvino"
    assert det.primary == "model.xml"
    assert det.extra["bin"] == "model.bin"
    assert "<net" in det.reason


def test_openvino_inspect_with_openvino(ov_ir):
    files = files_in(ov_ir["dir"], "model.xml")
    insp = openvino.inspect(files, openvino.detect(files))
    root = StdET.parse(ov_ir["dir"] / "model.xml").getroot()  # our own file: stdlib is fine here

    assert specs(insp.inputs) == OV_INPUTS
    assert specs(insp.outputs) == OV_OUTPUTS
    assert insp.versions["ir_version"] == int(root.get("version")) >= 10
    assert insp.details["model_name"] == root.get("name")
    assert insp.params == ov_ir["params"]
    # compress_to_fp16=False: every weight and input stays float32
    assert set(insp.details["precisions"]["Const"]) == {"float32"}
    assert insp.details["precisions"]["Parameter"] == {"float32": 2}
    ops = insp.details["op_types"]
    assert ops["Parameter"] == 2 and ops["Result"] == 2
    assert ops["Convolution"] == 1 and ops["MatMul"] == 1
    assert insp.details["bin_bytes"] == (ov_ir["dir"] / "model.bin").stat().st_size
    assert insp.unavailable == []
    assert insp.to_dict()["signature_complete"] is True


def test_openvino_xml_fallback_matches_openvino(ov_ir, monkeypatch):
    files = files_in(ov_ir["dir"], "model.xml")
    det = openvino.detect(files)
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    insp = openvino.inspect(files, det)
    assert specs(insp.inputs) == OV_INPUTS
    assert specs(insp.outputs) == OV_OUTPUTS
    assert insp.params == ov_ir["params"]
    assert insp.details["signature_source"] == "xml"
    assert any("openvino" in u for u in insp.unavailable)


def test_openvino_detected_by_content_not_name(ov_ir, tmp_path):
    d = _copy_ir(ov_ir, tmp_path, xml_name="graph.txt", bin_name="graph.bin")
    files = files_in(d, "graph.txt")
    det = openvino.detect(files)
    assert det is not None and det.primary == "graph.txt" and det.extra["bin"] == "graph.bin"
    assert specs(openvino.inspect(files, det).inputs) == OV_INPUTS


def test_openvino_xml_without_bin(ov_ir, tmp_path):
    d = _copy_ir(ov_ir, tmp_path, bin_name=None)
    files = files_in(d, "model.xml")
    det = openvino.detect(files)
    assert det is not None and det.extra["bin"] is None
    with pytest.raises(MalformedModel) as ei:
        openvino.inspect(files, det)
    err = ei.value
    assert err.code == "malformed_model" and err.status_code == 422
    assert "model.bin" in err.message and "not" in err.message
    assert err.detail["missing"] == "model.bin"


def test_openvino_truncated_bin(ov_ir, tmp_path):
    d = _copy_ir(ov_ir, tmp_path)
    full = (d / "model.bin").stat().st_size
    with open(d / "model.bin", "r+b") as f:
        f.truncate(full // 2)
    files = files_in(d, "model.xml")
    with pytest.raises(MalformedModel) as ei:
        openvino.inspect(files, openvino.detect(files))
    msg = ei.value.message
    # OpenVINO writes exactly the Const data into the .bin, so the XML needs all `full` bytes
    assert "model.bin" in msg and str(full // 2) in msg and str(full) in msg
    assert ei.value.detail["bin_bytes"] == full // 2


def test_openvino_corrupt_graph_is_malformed_not_a_crash(ov_ir, tmp_path):
    d = _copy_ir(ov_ir, tmp_path)
    xml = (d / "model.xml").read_text()
    (d / "model.xml").write_text(xml.replace('type="MatMul"', 'type="NoSuchOperation"', 1))
    files = files_in(d, "model.xml")
    with pytest.raises(MalformedModel) as ei:
        openvino.inspect(files, openvino.detect(files))
    assert "OpenVINO cannot read" in ei.value.message


@pytest.mark.parametrize(
    "text",
    [
        '<?xml version="1.0"?><svg version="1.1"><rect/></svg>',
        '<?xml version="1.0"?><net name="no-version"><layers/></net>',
        "<?xml version='1.0'?><project><modelVersion>4.0.0</modelVersion></project>",
        "not xml at all",
    ],
)
def test_openvino_rejects_other_xml(tmp_path, text):
    (tmp_path / "model.xml").write_text(text)
    assert openvino.detect(files_in(tmp_path, "model.xml")) is None


def test_openvino_entities_are_refused(tmp_path):
    lol = (
        '<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        '<net name="&b;" version="11"><layers/></net>\n'
    )
    (tmp_path / "model.xml").write_text(lol)
    files = files_in(tmp_path, "model.xml")
    det = openvino.detect(files)
    assert det is not None and det.extra.get("unparseable")
    with pytest.raises(MalformedModel) as ei:
        openvino.inspect(files, det)
    assert "DTD" in ei.value.message


def test_openvino_zero_byte_xml_via_registry(tmp_path, only_these_formats):
    (tmp_path / "model.xml").write_bytes(b"")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(MalformedModel) as ei:
        registry.detect_and_inspect(files_in(tmp_path, "model.xml"))
    assert ei.value.format == "openvino"
    assert "named like OpenVINO IR" in ei.value.message


def test_openvino_end_to_end_via_registry(ov_ir, only_these_formats):
    out = registry.detect_and_inspect(files_in(ov_ir["dir"], "model.xml"))
    assert out["format"] == "openvino" and out["extension_hint"] == "openvino"
    assert out["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [None, 4]}
    assert out["signature_complete"] is True
    json.dumps(out)  # the API returns it as JSON


# --- Core ML ----------------------------------------------------------------------------------

CM_BATCH = (1, 16)


@pytest.fixture(scope="module")
def ct():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("coremltools")


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory, ct):
    """An mlprogram .mlpackage converted from torch.export, with a ranged batch dimension."""
    import numpy as np
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.relu(self.lin(x))

    model = Small().eval()
    batch = torch.export.Dim("batch", min=CM_BATCH[0], max=CM_BATCH[1])
    ep = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(
            ep.run_decompositions({}),
            convert_to="mlprogram",
            outputs=[ct.TensorType(name="y", dtype=np.float32)],
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS16,
        )
    ml.author = "modelport tests"
    ml.short_description = "relu(linear(x))"
    ml.user_defined_metadata["purpose"] = "fixture"
    root = tmp_path_factory.mktemp("cm")
    ml.save(str(root / "small.mlpackage"))
    return {
        "root": root,
        "params": numel(model),
        "spec_version": ml.get_spec().specificationVersion,
    }


def test_coreml_package_detect(mlpackage):
    files = files_in(mlpackage["root"], "small.mlpackage")
    det = coreml.detect(files)
    assert det is not None and det.format == "coreml"
    assert det.extra["kind"] == "mlpackage" and det.extra["package"] == "small.mlpackage"
    assert det.primary == "small.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    assert "Manifest.json" in det.reason


def test_coreml_package_inspect(mlpackage, ct):
    files = files_in(mlpackage["root"], "small.mlpackage")
    insp = coreml.inspect(files, coreml.detect(files))
    assert specs(insp.inputs) == [("x", "float32", [None, 4])]
    assert insp.details["shape_ranges"]["x"] == [list(CM_BATCH), [4, 4]]
    # the description leaves the output shape out; the program's main function has it
    assert specs(insp.outputs) == [("y", "float32", [None, 3])]
    assert insp.details["model_type"] == "mlProgram"
    assert insp.versions["specification_version"] == mlpackage["spec_version"]
    assert insp.versions["specification_version"] == ct._SPECIFICATION_VERSION_IOS_16
    assert insp.versions["minimum_deployment_target"] == "iOS16"
    assert insp.params == mlpackage["params"]
    assert "main" in insp.details["functions"]
    md = insp.details["metadata"]
    assert md["author"] == "modelport tests" and md["shortDescription"] == "relu(linear(x))"
    assert md["userDefined"]["purpose"] == "fixture"
    if sys.platform != "darwin":
        assert insp.details["runnable"] is False and "macOS" in insp.details["runnable_reason"]
    assert insp.to_dict()["signature_complete"] is True


def test_coreml_package_files_relative_to_inside(mlpackage):
    files = files_in(mlpackage["root"] / "small.mlpackage", "small.mlpackage")
    det = coreml.detect(files)
    assert det is not None and det.primary == "Data/com.apple.CoreML/model.mlmodel"
    assert specs(coreml.inspect(files, det).inputs) == [("x", "float32", [None, 4])]


def test_coreml_package_without_weights(mlpackage, tmp_path):
    pkg = shutil.copytree(mlpackage["root"] / "small.mlpackage", tmp_path / "small.mlpackage")
    shutil.rmtree(Path(pkg) / "Data/com.apple.CoreML/weights")
    files = files_in(tmp_path, "small.mlpackage")
    with pytest.raises(MalformedModel) as ei:
        coreml.inspect(files, coreml.detect(files))
    assert "weights/weight.bin" in ei.value.message


def test_coreml_package_garbage_model(mlpackage, tmp_path):
    pkg = Path(shutil.copytree(mlpackage["root"] / "small.mlpackage", tmp_path / "small.mlpackage"))
    (pkg / "Data/com.apple.CoreML/model.mlmodel").write_bytes(os.urandom(64))
    files = files_in(tmp_path, "small.mlpackage")
    det = coreml.detect(files)
    assert det is not None  # the manifest says Core ML …
    with pytest.raises(MalformedModel) as ei:  # … but the model inside is not
        coreml.inspect(files, det)
    assert "not a Core ML model specification" in ei.value.message


def test_coreml_package_missing_model(mlpackage, tmp_path):
    pkg = Path(shutil.copytree(mlpackage["root"] / "small.mlpackage", tmp_path / "small.mlpackage"))
    (pkg / "Data/com.apple.CoreML/model.mlmodel").unlink()
    files = files_in(tmp_path, "small.mlpackage")
    det = coreml.detect(files)
    assert det is not None and det.extra["model_present"] is False
    with pytest.raises(MalformedModel) as ei:
        coreml.inspect(files, det)
    assert "model.mlmodel" in ei.value.message


def test_coreml_bare_mlprogram_spec(mlpackage, tmp_path):
    src = mlpackage["root"] / "small.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    shutil.copy(src, tmp_path / "small.mlmodel")
    files = files_in(tmp_path, "small.mlmodel")
    det = coreml.detect(files)
    assert det is not None and det.extra == {
        "kind": "mlmodel",
        "model": "small.mlmodel",
        "model_type": "mlProgram",
    }
    insp = coreml.inspect(files, det)
    assert specs(insp.outputs) == [("y", "float32", [None, 3])]
    assert any("external weights" in w for w in insp.warnings)


def _nn_builder(ct, w_shape=(2, 3, 1, 1)):
    import numpy as np
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder(
        [("data", datatypes.Array(3, 8, 8))],
        [("prob", datatypes.Array(2, 8, 8))],
        disable_rank5_shape_mapping=True,
    )
    w = np.random.rand(*w_shape).astype(np.float32)
    b = np.zeros(w_shape[0], np.float32)
    builder.add_convolution(
        "conv",
        kernel_channels=3,
        output_channels=2,
        height=1,
        width=1,
        stride_height=1,
        stride_width=1,
        border_mode="valid",
        groups=1,
        W=w,
        b=b,
        has_bias=True,
        input_name="data",
        output_name="prob",
    )
    return builder.spec, w.size + b.size


def test_coreml_neuralnetwork_mlmodel_enumerated_shapes(ct, tmp_path):
    from coremltools.proto import FeatureTypes_pb2

    spec, n_weights = _nn_builder(ct)
    arr = spec.description.input[0].type.multiArrayType
    arr.dataType = FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    for shape in ([3, 8, 8], [3, 16, 16]):
        arr.enumeratedShapes.shapes.add().shape.extend(shape)
    spec.description.output[0].type.multiArrayType.dataType = FeatureTypes_pb2.ArrayFeatureType.DOUBLE
    spec.description.metadata.author = "builder"
    (tmp_path / "nn.mlmodel").write_bytes(spec.SerializeToString())

    files = files_in(tmp_path, "nn.mlmodel")
    det = coreml.detect(files)
    assert det is not None and det.extra["model_type"] == "neuralNetwork"
    insp = coreml.inspect(files, det)
    assert specs(insp.inputs) == [("data", "float32", [3, None, None])]
    assert insp.details["enumerated_shapes"]["data"] == [[3, 8, 8], [3, 16, 16]]
    assert specs(insp.outputs) == [("prob", "float64", [2, 8, 8])]
    assert insp.versions["specification_version"] == spec.specificationVersion
    assert insp.params == n_weights
    assert insp.details["metadata"]["author"] == "builder"


def test_coreml_image_input(ct, tmp_path):
    from coremltools.proto import FeatureTypes_pb2

    spec, _ = _nn_builder(ct)
    img = spec.description.input[0].type.imageType
    img.width, img.height = 8, 8
    img.colorSpace = FeatureTypes_pb2.ImageFeatureType.BGR
    (tmp_path / "img.mlmodel").write_bytes(spec.SerializeToString())
    files = files_in(tmp_path, "img.mlmodel")
    insp = coreml.inspect(files, coreml.detect(files))
    assert specs(insp.inputs) == [("data", "uint8", [1, 3, 8, 8])]
    assert insp.details["images"]["data"] == {"width": 8, "height": 8, "color_space": "BGR"}


def test_coreml_without_coremltools(ct, tmp_path, monkeypatch):
    spec, _ = _nn_builder(ct)
    (tmp_path / "nn.mlmodel").write_bytes(spec.SerializeToString())
    files = files_in(tmp_path, "nn.mlmodel")
    det = coreml.detect(files)
    monkeypatch.setitem(sys.modules, "coremltools.proto", None)
    insp = coreml.inspect(files, det)
    assert insp.inputs is None and insp.details["model_type"] == "neuralNetwork"
    assert any("coremltools" in u for u in insp.unavailable)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    tag = varint(number << 3 | wire)
    if wire == 0:
        return tag + varint(payload)  # type: ignore[arg-type]
    return tag + varint(len(payload)) + payload  # type: ignore[arg-type]


def test_coreml_does_not_match_onnx_or_saved_model(ov_ir, tmp_path):
    # a real ONNX model: fields 1 (ir_version), 2 (producer_name) … 7 (graph), 8 (opset_import)
    shutil.copy(ov_ir["onnx"], tmp_path / "model.onnx")
    # a SavedModel's saved_model.pb: field 1 (schema version) and field 2 (meta graphs) only
    meta_graph = _field(1, 2, _field(4, 2, b"serve"))
    (tmp_path / "saved_model.pb").write_bytes(_field(1, 0, 1) + _field(2, 2, meta_graph))
    # the OpenVINO pair too
    shutil.copy(ov_ir["dir"] / "model.bin", tmp_path / "model.bin")
    files = files_in(tmp_path)
    for rel in files.paths:
        assert coreml.spec_model_type(files, rel) is None, rel
    assert coreml.detect(files) is None


def test_coreml_hand_built_minimal_spec(tmp_path):
    """The wire walker alone: field 1 varint + field 2 message + one type field >= 200."""
    body = _field(1, 0, 7) + _field(2, 2, b"") + _field(202, 2, b"")
    (tmp_path / "p.bin").write_bytes(body)
    assert coreml.spec_model_type(files_in(tmp_path), "p.bin") == (202, "pipeline")
    (tmp_path / "p.bin").write_bytes(body + _field(203, 2, b""))  # unknown top-level field
    assert coreml.spec_model_type(files_in(tmp_path), "p.bin") is None
    (tmp_path / "p.bin").write_bytes(body[:-1])  # truncated
    assert coreml.spec_model_type(files_in(tmp_path), "p.bin") is None


def test_coreml_garbage_and_zero_byte(tmp_path, only_these_formats):
    (tmp_path / "garbage.mlmodel").write_bytes(b"\x08\x07" + os.urandom(200))
    files = files_in(tmp_path, "garbage.mlmodel")
    assert coreml.detect(files) is None
    with pytest.raises(MalformedModel) as ei:
        registry.detect_and_inspect(files)
    assert ei.value.format == "coreml" and "named like Core ML" in ei.value.message

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.mlmodel").write_bytes(b"")
    files = files_in(empty, "model.mlmodel")
    assert coreml.detect(files) is None
    with pytest.raises(MalformedModel):
        registry.detect_and_inspect(files)
    forced = Detection(format="coreml", primary="model.mlmodel", reason="test", extra={"kind": "mlmodel"})
    with pytest.raises(MalformedModel) as ei:
        coreml.inspect(files, forced)
    assert "empty" in ei.value.message


def test_coreml_end_to_end_via_registry(mlpackage, only_these_formats):
    out = registry.detect_and_inspect(files_in(mlpackage["root"], "small.mlpackage"))
    assert out["format"] == "coreml" and out["format_title"] == "Core ML"
    assert out["outputs"] == [{"name": "y", "dtype": "float32", "shape": [None, 3]}]
    json.dumps(out)


# --- TensorRT ---------------------------------------------------------------------------------


def synthetic_plan(version=(10, 3, 0), serialization=239, size=512) -> bytes:
    """A plan header as app.formats.tensorrt reads it: magic, serialization version at byte 8,
    TensorRT major/minor/patch at bytes 24-26, then filler standing in for the engine."""
    head = bytearray(size)
    head[0:4] = b"ftrt"
    head[8] = serialization
    head[24:27] = bytes(version)
    return bytes(head)


def test_tensorrt_raw_plan(tmp_path):
    (tmp_path / "model.engine").write_bytes(synthetic_plan((10, 3, 0), 239))
    files = files_in(tmp_path, "model.engine")
    det = tensorrt.detect(files)
    assert det is not None and det.format == "tensorrt" and det.extra["plan_offset"] == 0
    insp = tensorrt.inspect(files, det)
    assert insp.versions["tensorrt_built_with"] == "10.3.0"
    assert insp.versions["serialization_version"] == 239
    assert insp.details["header"]["best_effort"] is True
    assert insp.details["loadable"] == tensorrt.LOADABLE
    assert insp.details["plan_bytes"] == 512
    if importlib.util.find_spec("tensorrt") is None:
        assert insp.inputs is None and insp.outputs is None
        assert any("TensorRT is not installed here" in u for u in insp.unavailable)
    assert insp.to_dict()["signature_complete"] is False


def test_tensorrt_detected_by_content_not_name(tmp_path):
    (tmp_path / "weights.dat").write_bytes(synthetic_plan((8, 6, 1), 205))
    det = tensorrt.detect(files_in(tmp_path, "weights.dat"))
    assert det is not None and det.primary == "weights.dat"
    insp = tensorrt.inspect(files_in(tmp_path), det)
    assert insp.versions["tensorrt_built_with"] == "8.6.1"


def test_tensorrt_implausible_version_is_not_reported(tmp_path):
    (tmp_path / "x.plan").write_bytes(synthetic_plan((200, 200, 200)))
    files = files_in(tmp_path)
    insp = tensorrt.inspect(files, tensorrt.detect(files))
    assert "tensorrt_built_with" not in insp.versions
    assert insp.details["header"]["tensorrt_version"] is None


def test_tensorrt_ultralytics_wrapper(tmp_path):
    meta = {"task": "detect", "imgsz": [640, 640], "names": {"0": "cup"}}
    blob = json.dumps(meta).encode()
    (tmp_path / "yolo.engine").write_bytes(struct.pack("<I", len(blob)) + blob + synthetic_plan((10, 8, 0)))
    files = files_in(tmp_path, "yolo.engine")
    det = tensorrt.detect(files)
    assert det is not None and det.extra["plan_offset"] == 4 + len(blob)
    insp = tensorrt.inspect(files, det)
    assert insp.details["metadata"] == meta and insp.details["wrapper"] == "ultralytics"
    assert insp.versions["tensorrt_built_with"] == "10.8.0"


def test_tensorrt_truncated_header(tmp_path):
    (tmp_path / "cut.engine").write_bytes(synthetic_plan()[:12])
    files = files_in(tmp_path, "cut.engine")
    det = tensorrt.detect(files)
    assert det is not None
    with pytest.raises(MalformedModel) as ei:
        tensorrt.inspect(files, det)
    assert ei.value.code == "malformed_model" and "truncated" in ei.value.message
    assert "12 bytes" in ei.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"FTRT" + bytes(60),  # case matters
        b"\x00ftrt" + bytes(60),  # not at offset 0
        struct.pack("<I", 9) + b'{"a": 1}x' + b"nope" + bytes(40),  # wrapper without a plan after it
    ],
)
def test_tensorrt_not_detected(tmp_path, content, only_these_formats):
    (tmp_path / "model.engine").write_bytes(content)
    files = files_in(tmp_path, "model.engine")
    assert tensorrt.detect(files) is None
    with pytest.raises(FormatError) as ei:
        registry.detect_and_inspect(files)
    assert ei.value.code == "malformed_model" and "named like TensorRT engine" in ei.value.message


def test_formats_do_not_claim_each_other(ov_ir, mlpackage, tmp_path):
    (tmp_path / "model.engine").write_bytes(synthetic_plan())
    ov_files = files_in(ov_ir["dir"])
    cm_files = files_in(mlpackage["root"])
    trt_files = files_in(tmp_path)
    assert coreml.detect(ov_files) is None and tensorrt.detect(ov_files) is None
    assert openvino.detect(cm_files) is None and tensorrt.detect(cm_files) is None
    assert openvino.detect(trt_files) is None and coreml.detect(trt_files) is None


def test_openvino_bounded_dim_and_no_weights(tmp_path, monkeypatch):
    """A graph without Const data needs no .bin; a bounded dim is None with its bounds kept."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([ov.Dimension(1, 8), 3], ov.Type.f16, name="a")
    relu = ops.relu(param)
    relu.output(0).set_names({"b"})
    ov.save_model(ov.Model([relu], [param], "bounded"), str(tmp_path / "n.xml"))
    (tmp_path / "n.bin").unlink(missing_ok=True)
    files = files_in(tmp_path, "n.xml")
    det = openvino.detect(files)
    for with_openvino in (True, False):
        if not with_openvino:
            monkeypatch.setitem(sys.modules, "openvino", None)
        insp = openvino.inspect(files, det)
        assert specs(insp.inputs) == [("a", "float16", [None, 3])]
        assert specs(insp.outputs) == [("b", "float16", [None, 3])]
        assert insp.details["dim_bounds"]["a"] == [[1, 8], None]
        assert insp.details["model_name"] == "bounded"
        assert insp.params == 0
