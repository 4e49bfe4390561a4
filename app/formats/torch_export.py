"""torch.export ExportedProgram archives (``torch.export.save``, ``.pt2``): a zip with
``archive_format`` = ``pt2``, ``models/<name>.json`` (the serialized graph and signature) and
``data/weights``. Read as JSON; nothing is deserialized into torch."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from app.formats import pickles, torchzip
from app.formats.base import Detection, FormatInfo, Inspection, MalformedModel, ModelFiles, TensorSpec

FORMAT = FormatInfo(
    name="torch_export",
    title="torch.export program (.pt2)",
    extensions=(".pt2",),
    code_on_load=False,
    runner="torch_export_runner",
    other_runners=("torch_cuda_runner",),
    zip_markers=("archive_format",),
    packages=("torch", "onnxscript"),
)

# torch._export.serde.schema.ScalarType
SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz", 34: "uint32",
    35: "uint64",
}
_SYM = re.compile(r"Symbol\('([^']+)'")


def detect(files: ModelFiles) -> Detection | None:
    if len(files.paths) != 1:
        return None
    p = files.paths[0]
    if files.head(p, 4) != torchzip.ZIP_MAGIC:
        return None
    members = torchzip.names(files.abs(p)) or []
    fmt_member = torchzip.member_ending(members, "archive_format")
    models = [m for m in members if "/models/" in f"/{m}" and m.endswith(".json")]
    if fmt_member and models:
        return Detection("torch_export", p, "zip archive with archive_format and models/*.json (torch.export layout)",
                         {"models": models, "archive_format": fmt_member})
    return None


def _dim(size: dict[str, Any]) -> int | str | None:
    if "as_int" in size:
        return int(size["as_int"])
    expr = size.get("as_expr", {}).get("expr_str", "")
    m = _SYM.match(expr)
    return m.group(1) if m else (expr or None)


def _spec(name: str, tv: dict[str, Any]) -> TensorSpec:
    meta = tv.get(name)
    if meta is None:
        return TensorSpec(name, None, None)
    return TensorSpec(name, SCALAR_TYPES.get(meta.get("dtype")), [_dim(s) for s in meta.get("sizes", [])])


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    path = files.abs(det.primary)
    insp = Inspection(format="torch_export", primary_file=det.primary)
    fmt = torchzip.read_member(path, det.extra["archive_format"], "torch_export", 64).decode("ascii", "replace")
    insp.versions["archive_format"] = fmt.strip()
    model_member = sorted(det.extra["models"], key=lambda m: (not m.endswith("/model.json"), m))[0]
    try:
        doc = json.loads(torchzip.read_member(path, model_member, "torch_export", 256 * 1024**2))
        gm = doc["graph_module"]
        sig = gm["signature"]
        tv = gm["graph"]["tensor_values"]
    except (ValueError, KeyError, TypeError) as e:
        raise MalformedModel("torch_export", f"{model_member} is not a serialized ExportedProgram: {e}") from None
    insp.versions["torch_version"] = doc.get("torch_version")
    insp.versions["schema_version"] = doc.get("schema_version")
    insp.versions["opset_version"] = doc.get("opset_version")
    inputs, params, buffers = [], 0, 0
    kinds: Counter[str] = Counter()
    for spec in sig.get("input_specs", []):
        kind, body = next(iter(spec.items()))
        kinds[kind] += 1
        arg = body.get("arg", {})
        if kind == "user_input":
            t = arg.get("as_tensor")
            if t:
                inputs.append(_spec(t["name"], tv))
            else:
                inputs.append(TensorSpec(next(iter(arg.values()), {}).get("name", "input") if arg else "input",
                                         None, None))
        elif kind in ("parameter", "buffer", "tensor_constant"):
            meta = tv.get(arg.get("name"), {})
            n = 1
            for s in meta.get("sizes", []):
                d = _dim(s)
                n *= d if isinstance(d, int) else 1
            if kind == "parameter":
                params += n
            else:
                buffers += n
    outputs = []
    for spec in sig.get("output_specs", []):
        kind, body = next(iter(spec.items()))
        if kind == "user_output":
            t = body.get("arg", {}).get("as_tensor")
            outputs.append(_spec(t["name"], tv) if t else TensorSpec("output", None, None))
    insp.inputs, insp.outputs = inputs, outputs
    insp.params = params
    insp.details["buffers_elements"] = buffers
    insp.details["input_kinds"] = dict(kinds)
    ranges = doc.get("range_constraints", {})
    insp.details["dynamic_dims"] = {k: {"min": v.get("min_val"), "max": v.get("max_val")} for k, v in ranges.items()}
    nodes = gm["graph"].get("nodes", [])
    insp.details["node_count"] = len(nodes)
    insp.details["op_types"] = dict(Counter(n.get("target", "?") for n in nodes).most_common(50))
    insp.details["models"] = det.extra["models"]
    scanned = []
    for m in torchzip.names(path) or []:
        if "/data/" in f"/{m}" and m.endswith((".pt", ".pkl")) or m.endswith("/data.pkl"):
            data = torchzip.read_member(path, m, "torch_export")
            if data[:4] == torchzip.ZIP_MAGIC:  # a nested torch.save zip (sample inputs)
                import io
                import zipfile

                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    for inner in z.namelist():
                        if inner.endswith("data.pkl"):
                            pickles.check(pickles.scan(z.read(inner), fmt="torch_export"), fmt="torch_export")
            elif data[:1] == b"\x80":
                pickles.check(pickles.scan(data, fmt="torch_export"), fmt="torch_export")
            scanned.append(m)
    insp.safety = {"status": "safe", "method": "JSON graph; pickled members scanned against the allow-list",
                   "pickles_scanned": scanned}
    return insp
