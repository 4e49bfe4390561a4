"""Helpers shared by the edge implementations: tool versions, option validation, reading an
exporter's error text, writing ONNX files. Heavy libraries are imported inside functions."""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from app.sandbox.io import ConversionError

# A single ONNX protobuf cannot exceed 2 GiB; leave room for the graph itself.
ONNX_INLINE_LIMIT = 2 * 1024**3 - 64 * 1024**2

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Patterns in converter error text that name the operator they could not handle, most specific first.
_UNSUPPORTED_PATTERNS = (
    # torch.onnx dynamo exporter
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.:]+)'"),
    re.compile(r"No decomposition (?:registered )?for (aten::[\w.]+|aten\.[\w.]+)"),
    # torch.onnx TorchScript exporter
    re.compile(r"Unsupported: ONNX export of operator ([\w.:]+)"),
    re.compile(r"Exporting the operator '?([\w.:]+)'? to ONNX opset version \d+ is not supported"),
    # OpenVINO frontends (PyTorch, ONNX)
    re.compile(r"No conversion rule found for operations: ([^\n]+)"),
    re.compile(r"OpenVINO does not support the following ONNX operations: ([^\n]+)"),
    re.compile(r"Conversion is failed for: ([^\n]+)"),
    # onnxruntime
    re.compile(r"Could not find an implementation for ([\w.]+\(\d+\))"),
    # last resort: the dynamo exporter names the FX node it failed on
    re.compile(r"Error when translating node %\w+ : .*?target=torch\.ops\.([\w.]+)"),
)


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the named distributions, without importing them."""
    out = {}
    for d in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[d] = metadata.version(d)
    return out


def tool_version(dist: str) -> str | None:
    return versions(dist).get(dist)


def unsupported_operator(text: str) -> str | None:
    """The operator(s) an exporter's error text says it cannot convert, or None."""
    for pat in _UNSUPPORTED_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1).strip().rstrip(".")
    return None


def short_error(exc: BaseException, limit: int = 1500) -> str:
    """The useful part of a converter's exception text: exporters append whole graphs and stacks."""
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = "\n".join(lines[:25])
    return out if len(out) <= limit else out[: limit - 1] + "…"


def fail(exc: BaseException, *, doing: str, tool: str, dist: str | None = None, hint: str | None = None,
         unsupported_hint: str | None = None) -> ConversionError:
    """A :class:`ConversionError` for an exception from ``tool``; its traceback goes to the job log."""
    traceback.print_exc(file=sys.stderr)
    full = f"{exc}"
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        full += f"\n{cause}"
        cause = cause.__cause__ or cause.__context__
    op = unsupported_operator(full)
    if op and unsupported_hint:
        hint = unsupported_hint
    msg = f"{doing} failed: " + (f"{tool} cannot convert operator {op}" if op else short_error(exc))
    return ConversionError(msg, tool=tool, tool_version=tool_version(dist or tool), unsupported_operator=op,
                           hint=hint)


def parse_options(model: type, options: dict[str, Any]):
    """Validate ``options`` with the edge's options model from the registry (one source of defaults)."""
    from pydantic import ValidationError

    # "samples": the worker's path of the model's sample inputs (for calibration), not an option of the request
    options = {k: v for k, v in (options or {}).items() if k != "samples"}
    try:
        return model.model_validate(options)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']}" for err in e.errors())
        raise ConversionError(f"invalid options: {problems}", hint="see GET /v1/formats for each edge's options") from None


# ----------------------------------------------------------------------------- ONNX files


def onnx_tensor_bytes(model) -> int:
    """Bytes of the initializer data of an ONNX ModelProto (inline or already loaded)."""
    from onnx import helper

    total = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            total += len(t.raw_data)
            continue
        n = 1
        for d in t.dims:
            n *= int(d)
        try:
            size = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            size = 8
        total += n * size
    return total


def save_onnx(model, path: Path, *, details: dict[str, Any]) -> list[str]:
    """Write ``model`` as one self-contained file when it fits in a protobuf (< 2 GiB), else with its
    tensors in ``<name>.data`` beside it. Returns the files written (relative names)."""
    import onnx

    size = onnx_tensor_bytes(model)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if size < ONNX_INLINE_LIMIT:
        onnx.save_model(model, str(path))
        details["external_data"] = []
        return [path.name]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    details["external_data"] = [data.name]
    return [path.name, data.name]


def onnx_signature(model) -> dict[str, Any]:
    """Input/output names, dtypes and shapes (symbolic dims as strings) of an ONNX ModelProto."""
    from onnx import helper

    init = {i.name for i in model.graph.initializer}

    def spec(vi):
        tt = vi.type.tensor_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = str(tt.elem_type)
        shape = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                 if tt.HasField("shape") else None)
        return {"name": vi.name, "dtype": dtype, "shape": shape}

    return {"inputs": [spec(i) for i in model.graph.input if i.name not in init],
            "outputs": [spec(o) for o in model.graph.output]}


def onnx_opsets(model) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def prune_opset_imports(model) -> list[str]:
    """Drop opset imports of domains no node uses (onnxruntime's optimizer adds all it knows)."""
    used = set()

    def walk(graph):
        for n in graph.node:
            used.add(n.domain or "")
            for a in n.attribute:
                if a.HasField("g"):
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    for f in model.functions:
        used.add(f.domain or "")
        for n in f.node:
            used.add(n.domain or "")
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") in ("", "ai.onnx")]
    dropped = [o.domain for o in model.opset_import if o not in keep]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return dropped
