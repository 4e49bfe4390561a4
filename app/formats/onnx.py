"""ONNX: a protobuf ModelProto (ir_version = 1, graph = 7, opset_import = 8), optionally with
external data files beside it. Read with ``onnx.load(load_external_data=False)``."""

from __future__ import annotations

import posixpath
from collections import Counter

from app.formats import protowire
from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    TritonModel,
    missing_library,
    prod,
)

FORMAT = FormatInfo(
    name="onnx",
    title="ONNX",
    extensions=(".onnx",),
    multi_file=True,
    reader="onnx",
    code_on_load=False,
    runner="onnxruntime_runner",
    other_runners=("onnxruntime_cuda_runner",),
    packages=("onnx",),
    triton=TritonModel(backend="onnxruntime", platform="onnxruntime_onnx", filename="model.onnx",
                       layout="file_or_directory", directory_primary="model.onnx",
                       threads_parameter="intra_op_thread_count", kserve_format=("onnx", "1")),
)


def _looks_onnx(files: ModelFiles, p: str) -> bool:
    fields = protowire.top_level_fields(files.abs(p))
    if not fields:
        return False
    wires: dict[int, set[int]] = {}
    for number, wire in fields:
        wires.setdefault(number, set()).add(wire)
    return wires.get(7) == {2} and wires.get(1) == {0}


def detect(files: ModelFiles) -> Detection | None:
    named = files.by_suffix(".onnx")
    candidates = named + [p for p in files.paths if p not in named]
    for p in candidates:
        if files.size(p) > 0 and _looks_onnx(files, p):
            return Detection("onnx", p, "protobuf ModelProto with ir_version and graph fields")
        if p not in named:
            break  # unnamed files: only a single-file upload is probed
    return None


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    insp = Inspection(format="onnx", primary_file=det.primary)
    try:
        import onnx
        from onnx import helper
    except ImportError:
        missing_library(insp, "onnx", "ONNX graph")
        return insp
    path = files.abs(det.primary)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError and friends
        raise MalformedModel("onnx", f"not a valid ONNX model: {e}") from None
    g = model.graph
    init_names = {i.name for i in g.initializer}

    def spec(vi) -> TensorSpec:
        t = vi.type
        if t.HasField("tensor_type"):
            tt = t.tensor_type
            try:
                dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
            except Exception:
                dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
            if tt.elem_type == onnx.TensorProto.BFLOAT16:
                dtype = "bfloat16"
            shape = None
            if tt.HasField("shape"):
                shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            return TensorSpec(vi.name, dtype, shape)
        kind = t.WhichOneof("value") or "unknown"
        return TensorSpec(vi.name, kind, None)

    insp.inputs = [spec(i) for i in g.input if i.name not in init_names]
    insp.outputs = [spec(o) for o in g.output]
    insp.params = sum(prod(i.dims) for i in g.initializer)
    insp.versions = {
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": " ".join(_text(x) for x in (model.producer_name, model.producer_version) if x) or None,
        "onnx_library": onnx.__version__,
    }
    ops = Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in g.node)
    insp.details = {
        "graph_name": g.name,
        "node_count": len(g.node),
        "op_types": dict(ops.most_common()),
        "initializers": len(g.initializer),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "functions": len(model.functions),
    }
    _external(files, det, model, insp)
    insp.safety = {"status": "safe", "method": "ONNX holds no executable code (custom-op domains are listed)"}
    custom = sorted({n.domain for n in g.node if n.domain not in ("", "ai.onnx", "ai.onnx.ml")})
    if custom:
        insp.warnings.append(f"uses operators from non-standard domains: {', '.join(custom)}")
    return insp


def _text(v) -> str:
    # a damaged file can carry invalid UTF-8 in string fields; protobuf then hands back bytes
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _external(files: ModelFiles, det: Detection, model, insp: Inspection) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    base = posixpath.dirname(det.primary)
    needed: dict[str, int] = {}
    for t in model.graph.initializer:
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            loc = posixpath.normpath(posixpath.join(base, info.location))
            if loc.startswith("../") or posixpath.isabs(info.location):
                raise MalformedModel("onnx", f"initializer '{t.name}' points outside the model directory: "
                                     f"{info.location!r}")
            end = (info.offset or 0) + (info.length or 0)
            needed[loc] = max(needed.get(loc, 0), end)
    insp.details["external_data"] = sorted(needed)
    for loc, end in needed.items():
        if loc not in files.paths:
            raise MalformedModel("onnx", f"the model stores weights in external file '{loc}', which was not uploaded; "
                                 "upload the .onnx together with its data file(s)", missing=loc)
        if files.size(loc) < end:
            raise MalformedModel("onnx", f"external data file '{loc}' has {files.size(loc)} bytes but the model "
                                 f"reads up to byte {end}")
    extra = sorted(set(files.paths) - set(needed) - {det.primary})
    if extra:
        insp.warnings.append(f"uploaded files not referenced by the model: {', '.join(extra[:10])}")
