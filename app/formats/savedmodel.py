"""TensorFlow SavedModel (a directory: ``saved_model.pb`` + ``variables/`` + ``assets/``).

Detection: a file named ``saved_model.pb`` whose top-level protobuf wire format is exactly what
the ``SavedModel`` message allows (field 1 varint ``saved_model_schema_version``, field 2
length-delimited ``meta_graphs``), walked to the end of the file; or a ``saved_model.pbtxt``
whose text mentions ``meta_graphs``. The directory may sit under a top folder
(``mymodel/saved_model.pb``); the shallowest match wins. A non-empty ``saved_model.pb`` whose
header does not parse is still claimed when the SavedModel layout says so (a sibling
``variables/variables.*``) or the upload is named ``*.savedmodel``; :func:`inspect` then raises
:class:`MalformedModel`. Otherwise a stray file that merely has that name is not claimed.

Inspection never imports TensorFlow and never loads the graph: the outer ``SavedModel`` wire
format is decoded by hand and each ``MetaGraphDef`` is parsed with the protobuf classes that
``tensorboard`` ships (``tensorboard.compat.proto.meta_graph_pb2``). Reported: tags, signature
defs (inputs/outputs by signature key, dtype, shape with -1 -> ``None``; method name), TF
version, and ``params`` from the variables described in the object graph (TF2) or the
variable ops' ``shape`` attributes (TF1 graphs). The primary inputs/outputs are those of the
``serving_default`` signature, else of the first signature.

Without ``tensorboard`` installed, inspection reports the signatures as unavailable and still
returns the format and schema version.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

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
    name="savedmodel",
    title="TensorFlow SavedModel",
    extensions=(".savedmodel",),
    directory=True,
    multi_file=True,
    reader="tensorboard",
    notes="upload the SavedModel directory as an archive; saved_model.pb is read as protobuf, never loaded",
    code_on_load=True,
    runner="tensorflow_runner",
    packages=("tensorflow",),
    triton=TritonModel(backend="tensorflow", platform="tensorflow_savedmodel", filename="model.savedmodel",
                       layout="directory", kserve_format=("tensorflow", "2")),
)

SERVING_DEFAULT = "serving_default"

# tensorflow.DataType -> numpy-style names (quantized and exotic types keep a tf-style name).
DTYPES: dict[int, str] = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    14: "bfloat16",
    15: "qint16",
    16: "quint16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    20: "resource",
    21: "variant",
    22: "uint32",
    23: "uint64",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
    26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz",
    29: "int4",
    30: "uint4",
    31: "int2",
    32: "uint2",
    33: "float4_e2m1fn",
}

# Graph ops that call back into the Python process that built the graph. They cannot run
# without that Python code, so a SavedModel holding them is reported, not rejected.
PY_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


class _WireError(Exception):
    pass


# --- protobuf wire format -------------------------------------------------------------------


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    try:
        return protowire.varint(data, pos)
    except ValueError as e:
        raise _WireError(str(e)) from None


def _saved_model_fields(data: bytes | memoryview) -> tuple[int | None, list[tuple[int, int]]]:
    """Decode the outer ``SavedModel`` message: (schema version, [(start, end) of each
    MetaGraphDef]). Any other field or wire type, or a length past the end, is an error."""
    pos = 0
    version: int | None = None
    metas: list[tuple[int, int]] = []
    n = len(data)
    while pos < n:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            version, pos = _varint(data, pos)
        elif field == 2 and wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > n:
                raise _WireError(f"meta graph {len(metas)} claims {length} bytes, past the end of the file")
            metas.append((pos, pos + length))
            pos += length
        else:
            raise _WireError(f"unexpected top-level field {field} (wire type {wire}) at byte {pos}")
    return version, metas


def _looks_like_saved_model_pb(head: bytes) -> bool:
    """Cheap header check: the first field is schema version (varint) or a meta graph."""
    if not head:
        return False
    try:
        key, pos = _varint(head, 0)
        if key == 0x08:
            version, pos = _varint(head, pos)
            if version > 16:
                return False
            if pos >= len(head):
                return True
            key, pos = _varint(head, pos)
        if key != 0x12:
            return False
        _varint(head, pos)  # a length follows
    except _WireError:
        return False
    return True


# --- detection ------------------------------------------------------------------------------


def _depth(p: str) -> int:
    return p.count("/")


def _has_variables_dir(files: ModelFiles, rel: str) -> bool:
    parent = str(PurePosixPath(rel).parent)
    prefix = "" if parent == "." else f"{parent}/"
    return any(p.startswith(f"{prefix}variables/variables.") for p in files.paths)


def detect(files: ModelFiles) -> Detection | None:
    hinted = bool(files.hint_name and files.hint_name.lower().endswith(FORMAT.extensions))
    fallback: Detection | None = None
    for rel in sorted(files.by_basename("saved_model.pb"), key=_depth):
        try:
            head = files.head(rel, 64)
        except OSError:
            continue
        if _looks_like_saved_model_pb(head):
            return Detection(
                format="savedmodel",
                primary=rel,
                reason="saved_model.pb with a SavedModel protobuf header (schema version / meta graphs)",
                extra={"text_format": False},
            )
        if fallback is None and head and (hinted or _has_variables_dir(files, rel)):
            # The SavedModel layout (or the upload's name) says SavedModel but the bytes are not:
            # claim it so that inspect() reports it as a malformed SavedModel.
            fallback = Detection(
                format="savedmodel",
                primary=rel,
                reason="SavedModel directory layout (saved_model.pb next to variables/), header unreadable",
                extra={"text_format": False, "header_ok": False},
            )
    if fallback is not None:
        return fallback
    for rel in sorted(files.by_basename("saved_model.pbtxt"), key=_depth):
        try:
            head = files.head(rel, 4096)
        except OSError:
            continue
        if b"meta_graphs" in head or b"saved_model_schema_version" in head:
            return Detection(
                format="savedmodel",
                primary=rel,
                reason="saved_model.pbtxt in protobuf text format with meta_graphs",
                extra={"text_format": True},
            )
    return None


# --- inspection -----------------------------------------------------------------------------


def _shape(ts: Any) -> list[int | str | None] | None:
    if ts.unknown_rank:
        return None
    return [None if d.size < 0 else int(d.size) for d in ts.dim]


def _dtype(v: int) -> str | None:
    if v == 0:
        return None
    return DTYPES.get(v, f"tf_dtype_{v}")


def _tensor_info(key: str, info: Any) -> tuple[TensorSpec, dict[str, Any]]:
    enc = info.WhichOneof("encoding")
    detail: dict[str, Any] = {"name": key, "encoding": enc}
    if enc == "name":
        detail["tensor"] = info.name
    elif enc == "coo_sparse":
        detail["values_tensor"] = info.coo_sparse.values_tensor_name
    elif enc == "composite_tensor":
        detail["components"] = len(info.composite_tensor.components)
    spec = TensorSpec(
        name=key,
        dtype=_dtype(info.dtype),
        shape=_shape(info.tensor_shape) if info.HasField("tensor_shape") else None,
    )
    detail.update(spec.to_dict())
    return spec, detail


def _signature(sig: Any) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, Any]]:
    ins, in_d = [], []
    for k in sorted(sig.inputs):
        s, d = _tensor_info(k, sig.inputs[k])
        ins.append(s)
        in_d.append(d)
    outs, out_d = [], []
    for k in sorted(sig.outputs):
        s, d = _tensor_info(k, sig.outputs[k])
        outs.append(s)
        out_d.append(d)
    return ins, outs, {"method_name": sig.method_name, "inputs": in_d, "outputs": out_d}


def _variables(mg: Any) -> tuple[int | None, int]:
    """(total elements, count) of the variables the meta graph describes; None when a shape is
    not fully known."""
    total = 0
    count = 0
    known = True
    nodes = mg.object_graph_def.nodes
    if len(nodes):
        for node in nodes:
            if node.WhichOneof("kind") != "variable":
                continue
            v = node.variable
            count += 1
            if v.shape.unknown_rank or any(d.size < 0 for d in v.shape.dim):
                known = False
            else:
                total += prod([d.size for d in v.shape.dim])
        return (total if known else None), count
    # TF1 graphs: variable ops carry their shape as an attribute.
    for node in mg.graph_def.node:
        if node.op not in ("VariableV2", "Variable", "VarHandleOp"):
            continue
        count += 1
        shp = node.attr["shape"].shape if "shape" in node.attr else None
        if shp is None or shp.unknown_rank or any(d.size < 0 for d in shp.dim):
            known = False
        else:
            total += prod([d.size for d in shp.dim])
    return (total if known else None), count


def _ops(mg: Any) -> set[str]:
    ops = {n.op for n in mg.graph_def.node}
    for fn in mg.graph_def.library.function:
        ops.update(n.op for n in fn.node_def)
    return ops


def _parse_text(data: bytes) -> list[Any]:
    """Parse a saved_model.pbtxt into MetaGraphDef messages via a SavedModel message type
    declared at run time on top of tensorboard's MetaGraphDef."""
    from google.protobuf import descriptor_pb2, descriptor_pool, text_format
    from google.protobuf.message_factory import GetMessageClass
    from tensorboard.compat.proto import meta_graph_pb2

    pool = descriptor_pool.Default()
    full = "modelport.savedmodel.SavedModel"
    try:
        desc = pool.FindMessageTypeByName(full)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto(
            name="modelport/savedmodel.proto",
            package="modelport.savedmodel",
            syntax="proto3",
            dependency=[meta_graph_pb2.DESCRIPTOR.name],
        )
        msg = fdp.message_type.add(name="SavedModel")
        msg.field.add(
            name="saved_model_schema_version",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
        msg.field.add(
            name="meta_graphs",
            number=2,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
            type_name="." + meta_graph_pb2.MetaGraphDef.DESCRIPTOR.full_name,
        )
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName(full)
    sm = GetMessageClass(desc)()
    # TF writes its own package name ("tensorflow."); tensorboard's copies live in
    # "tensorboard.", which only matters for Any type URLs, which text format spells out.
    text = data.decode("utf-8").replace("type.googleapis.com/tensorflow.", "type.googleapis.com/tensorboard.")
    text_format.Parse(text, sm, allow_unknown_field=True, allow_unknown_extension=True)
    return list(sm.meta_graphs)


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    insp = Inspection(format="savedmodel", primary_file=det.primary)
    path = files.abs(det.primary)
    data = path.read_bytes()
    text = bool(det.extra.get("text_format")) or det.primary.endswith(".pbtxt")

    base = PurePosixPath(det.primary).parent
    prefix = "" if str(base) == "." else f"{base}/"
    index = f"{prefix}variables/variables.index"
    has_vars = index in files.paths
    shards = [p for p in files.paths if p.startswith(f"{prefix}variables/variables.data-")]
    assets = [
        p for p in files.paths if p.startswith(f"{prefix}assets/") or p.startswith(f"{prefix}assets.extra/")
    ]
    insp.details["directory"] = prefix.rstrip("/") or "."
    insp.details["variables"] = {
        "index": has_vars,
        "shards": len(shards),
        "bytes": sum(files.size(p) for p in shards),
    }
    insp.details["assets"] = len(assets)
    insp.details["fingerprint"] = f"{prefix}fingerprint.pb" in files.paths

    metas_raw: list[tuple[int, int]] = []
    if not text:
        try:
            version, metas_raw = _saved_model_fields(memoryview(data))
        except _WireError as exc:
            raise MalformedModel(
                "savedmodel",
                f"TensorFlow SavedModel '{det.primary}' is not a valid SavedModel protobuf: {exc}",
            ) from None
        if not metas_raw:
            raise MalformedModel("savedmodel", f"TensorFlow SavedModel '{det.primary}' holds no meta graphs")
        insp.versions["saved_model_schema"] = version if version is not None else 0

    try:
        from tensorboard.compat.proto import meta_graph_pb2
    except ImportError:
        missing_library(insp, "tensorboard", "SavedModel signatures (inputs, outputs, tags)")
        insp.details["meta_graphs"] = len(metas_raw) if not text else None
        return insp

    from google.protobuf.message import DecodeError

    metas: list[Any] = []
    if text:
        try:
            metas = _parse_text(data)
        except Exception as exc:  # text_format.ParseError, UnicodeDecodeError
            raise MalformedModel(
                "savedmodel",
                f"TensorFlow SavedModel '{det.primary}' is not a valid SavedModel text proto: {exc}",
            ) from None
        if not metas:
            raise MalformedModel("savedmodel", f"TensorFlow SavedModel '{det.primary}' holds no meta graphs")
    else:
        for i, (start, end) in enumerate(metas_raw):
            mg = meta_graph_pb2.MetaGraphDef()
            try:
                mg.ParseFromString(data[start:end])
            except DecodeError as exc:
                raise MalformedModel(
                    "savedmodel",
                    f"TensorFlow SavedModel '{det.primary}': meta graph {i} does not parse: {exc}",
                ) from None
            metas.append(mg)
    del data

    graphs: list[dict[str, Any]] = []
    primary: tuple[list[TensorSpec], list[TensorSpec]] | None = None
    first: tuple[list[TensorSpec], list[TensorSpec]] | None = None
    params: int | None = None
    all_ops: set[str] = set()
    for mg in metas:
        info = mg.meta_info_def
        tags = list(info.tags)
        sigs: dict[str, Any] = {}
        for key in sorted(mg.signature_def):
            ins, outs, d = _signature(mg.signature_def[key])
            sigs[key] = d
            if key == SERVING_DEFAULT and primary is None:
                primary = (ins, outs)
            if first is None and not key.startswith("__"):  # skip "__saved_model_init_op"
                first = (ins, outs)
        n_params, n_vars = _variables(mg)
        if params is None and n_vars:
            params = n_params
        ops = _ops(mg)
        all_ops |= ops
        graphs.append(
            {
                "tags": tags,
                "signatures": sigs,
                "variables": n_vars,
                "functions": len(mg.graph_def.library.function),
                "nodes": len(mg.graph_def.node),
            }
        )
        if info.tensorflow_version and "tensorflow" not in insp.versions:
            insp.versions["tensorflow"] = info.tensorflow_version
        if info.tensorflow_git_version and "tensorflow_git" not in insp.versions:
            insp.versions["tensorflow_git"] = info.tensorflow_git_version
        if mg.graph_def.HasField("versions") and "graph_producer" not in insp.versions:
            insp.versions["graph_producer"] = mg.graph_def.versions.producer

    chosen = primary or first
    if chosen is not None:
        insp.inputs, insp.outputs = chosen
        insp.details["primary_signature"] = (
            SERVING_DEFAULT
            if primary
            else next(k for g in graphs for k in g["signatures"] if not k.startswith("__"))
        )
    else:
        insp.warnings.append(
            "the SavedModel has no signatures; inputs and outputs are not knowable from the file"
        )
    insp.params = params
    insp.details["meta_graphs"] = graphs
    insp.details["tags"] = sorted({t for g in graphs for t in g["tags"]})
    insp.details["signatures"] = sorted({k for g in graphs for k in g["signatures"]})

    if any(g["variables"] for g in graphs) and not has_vars:
        insp.warnings.append(
            "saved_model.pb describes variables but variables/variables.index is missing; "
            "the model cannot be loaded without its variables"
        )
    callbacks = sorted(all_ops & PY_CALLBACK_OPS)
    if callbacks:
        insp.safety = {
            "status": "contains_code",
            "ops": callbacks,
            "message": "the graph calls back into Python ("
            + ", ".join(callbacks)
            + "); it cannot run without the "
            "Python code that built it",
        }
        insp.warnings.append(insp.safety["message"])
    return insp
