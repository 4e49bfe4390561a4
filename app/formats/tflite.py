"""TFLite flatbuffers (``.tflite``).

Detection: the flatbuffer file identifier ``TFL3`` at bytes 4..8 (the first four bytes are the
root table offset). The file name is only a hint.

Inspection reads the flatbuffer with the ``tflite`` package (generated schema classes, no
interpreter): subgraphs, inputs/outputs of subgraph 0 (name, dtype, shape; ``shape_signature``
-1 dims become ``None``), per-tensor quantization (scale / zero point), operator codes (builtin
names, custom ops), signature defs, metadata names, and ``params`` as the number of elements in
constant tensors (tensors backed by a non-empty buffer, each buffer counted once).

The Python flatbuffers runtime does no verification, so every table access goes through
:func:`_read` which turns any decoding error into :class:`MalformedModel`, and vector lengths are
checked against the file size before they are iterated (a garbled length could otherwise ask for
billions of items). Large files are memory-mapped, never read whole.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable
from typing import Any, TypeVar

from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    missing_library,
    prod,
)

FORMAT = FormatInfo(
    name="tflite",
    title="TFLite",
    extensions=(".tflite",),
    reader="tflite",
    notes="TensorFlow Lite / LiteRT flatbuffer; inspected from the schema, never run at upload",
    code_on_load=False,
    runner="tflite_runner",
    packages=("tflite",),
)

IDENT = b"TFL3"
MIN_SIZE = 16  # root offset + identifier + a vtable offset at the very least

# tflite.TensorType enum -> numpy-style names
TENSOR_TYPES: dict[int, str] = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
    11: "complex128",
    12: "uint64",
    13: "resource",
    14: "variant",
    15: "uint32",
    16: "uint16",
    17: "int4",
    18: "bfloat16",
}

T = TypeVar("T")


def _is_tflite(files: ModelFiles, rel: str) -> bool:
    try:
        head = files.head(rel, 8)
    except OSError:
        return False
    return len(head) >= 8 and head[4:8] == IDENT


def detect(files: ModelFiles) -> Detection | None:
    candidates = [p for p in files.paths if _is_tflite(files, p)]
    if not candidates:
        return None
    # Prefer a file named like TFLite, then the largest.
    candidates.sort(key=lambda p: (not p.lower().endswith(".tflite"), -files.size(p)))
    primary = candidates[0]
    return Detection(
        format="tflite",
        primary=primary,
        reason="flatbuffer file identifier 'TFL3' at bytes 4..8",
    )


class _Malformed(Exception):
    pass


def _read(fn: Callable[..., T], what: str, *args: Any) -> T:
    """Run one flatbuffer access; any decoding error means the bytes are not a valid TFLite."""
    try:
        return fn(*args)
    except _Malformed:
        raise
    except Exception as exc:  # struct.error, IndexError, ValueError, TypeError, UnicodeError, …
        raise _Malformed(f"cannot read {what}: {type(exc).__name__}: {exc}") from exc


def _count(n: int, limit: int, what: str) -> int:
    if n < 0 or n > limit:
        raise _Malformed(f"{what} claims {n} entries, more than the file can hold")
    return n


def _str(b: bytes | None) -> str | None:
    if b is None:
        return None
    return b.decode("utf-8", errors="replace")


def _shape(t: Any, limit: int, what: str) -> tuple[list[int | None] | None, list[int]]:
    """(shape with dynamic dims as None, static shape) for a tflite.Tensor."""
    n = _count(_read(t.ShapeLength, what), limit, what)
    static = [int(_read(t.Shape, what, i)) for i in range(n)]
    shape: list[int | None] = list(static)
    sig_n = _read(t.ShapeSignatureLength, what)
    if sig_n:
        _count(sig_n, limit, what)
        sig = [int(_read(t.ShapeSignature, what, i)) for i in range(sig_n)]
        if len(sig) == len(static):
            shape = [None if d < 0 else d for d in sig]
    shape = [None if (d is not None and d < 0) else d for d in shape]
    return shape, static


def _quant(t: Any, limit: int, what: str) -> dict[str, Any] | None:
    q = _read(t.Quantization, what)
    if q is None:
        return None
    ns = _count(_read(q.ScaleLength, what), limit, what)
    nz = _count(_read(q.ZeroPointLength, what), limit, what)
    if not ns and not nz:
        return None
    cap = 16  # per-channel scales can be long; keep the report small
    scale = [float(_read(q.Scale, what, i)) for i in range(min(ns, cap))]
    zero = [int(_read(q.ZeroPoint, what, i)) for i in range(min(nz, cap))]
    out: dict[str, Any] = {
        "scale": scale[0] if ns == 1 else scale,
        "zero_point": zero[0] if nz == 1 else zero,
    }
    if ns > 1:
        out["per_channel"] = ns
        out["quantized_dimension"] = int(_read(q.QuantizedDimension, what))
        if ns > cap:
            out["truncated"] = True
    return out


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    insp = Inspection(format="tflite", primary_file=det.primary)
    path = files.abs(det.primary)
    size = path.stat().st_size
    if size < MIN_SIZE:
        raise MalformedModel("tflite", f"TFLite file '{det.primary}' is truncated ({size} bytes)")
    try:
        import tflite  # noqa: F401
        from tflite.Model import Model
        from tflite.utils import BUILTIN_OPCODE2NAME
    except ImportError:
        missing_library(insp, "tflite", "TFLite graph (inputs, outputs, operators)")
        with open(path, "rb") as f:
            head = f.read(8)
        insp.details["file_identifier"] = head[4:8].decode("ascii", "replace")
        return insp

    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            _inspect_model(insp, buf, size, Model, BUILTIN_OPCODE2NAME)
        except _Malformed as exc:
            raise MalformedModel(
                "tflite", f"TFLite file '{det.primary}' is malformed or truncated: {exc}"
            ) from None
        finally:
            # A view still held by a traceback would make close() raise; the map is then
            # released when the last view goes.
            with contextlib.suppress(BufferError):
                buf.close()
    return insp


def _name_by_signature(insp: Inspection, signatures: list[dict[str, Any]], in_q: list[dict], out_q: list[dict]) -> None:
    """Name inputs and outputs after the model's only signature when it maps exactly the main
    subgraph's I/O tensors under distinct names (``x``, not ``serving_default_x:0``); the TFLite
    runner names them by the same rule. Tensor names stay in ``details.tensor_names``."""
    if len(signatures) != 1 or signatures[0]["subgraph_index"] != 0:
        return
    sig = signatures[0]
    ins = {m["tensor_index"]: m["name"] for m in sig["inputs"]}
    outs = {m["tensor_index"]: m["name"] for m in sig["outputs"]}
    if set(ins) != {q["index"] for q in in_q} or set(outs) != {q["index"] for q in out_q}:
        return
    if len(set(ins.values()) | set(outs.values())) != len(ins) + len(outs) or not all([*ins.values(), *outs.values()]):
        return
    insp.details["tensor_names"] = {"inputs": [t.name for t in insp.inputs], "outputs": [t.name for t in insp.outputs]}
    for specs, quant, names in ((insp.inputs, in_q, ins), (insp.outputs, out_q, outs)):
        for spec, q in zip(specs, quant, strict=True):
            spec.name = q["name"] = names[q["index"]]


def _inspect_model(insp: Inspection, buf: Any, size: int, Model: Any, opnames: dict[int, str]) -> None:
    root = int.from_bytes(buf[0:4], "little")
    if root < 8 or root + 4 > size:
        raise _Malformed(f"root table offset {root} is outside the file ({size} bytes)")
    model = _read(Model.GetRootAs, "model table", buf, 0)
    limit = size // 4  # no vector in the file can have more 4-byte entries than this

    schema_version = int(_read(model.Version, "schema version"))
    insp.versions["tflite_schema"] = schema_version
    desc = _str(_read(model.Description, "description"))
    if desc:
        insp.details["description"] = desc

    # Operator codes.
    n_codes = _count(_read(model.OperatorCodesLength, "operator codes"), limit, "operator codes")
    op_codes: list[dict[str, Any]] = []
    for i in range(n_codes):
        oc = _read(model.OperatorCodes, "operator code", i)
        code = int(_read(oc.BuiltinCode, "operator code"))
        custom = _str(_read(oc.CustomCode, "operator code"))
        name = opnames.get(code, f"UNKNOWN_{code}")
        entry: dict[str, Any] = {"builtin": name, "version": int(_read(oc.Version, "operator code"))}
        if name == "CUSTOM":
            entry["custom"] = custom
        op_codes.append(entry)

    # Buffers (index 0 is the conventional empty sentinel).
    n_buf = _count(_read(model.BuffersLength, "buffers"), limit, "buffers")
    buf_sizes: list[int] = []
    for i in range(n_buf):
        b = _read(model.Buffers, "buffer", i)
        n = int(_read(b.DataLength, "buffer data"))
        if n:
            _count(n, size, "buffer data")
            buf_sizes.append(n)
            continue
        off, sz = int(_read(b.Offset, "buffer offset")), int(_read(b.Size, "buffer size"))
        if off > 1:  # >2 GiB models keep buffers after the flatbuffer (offset 1 = placeholder)
            if off + sz > size:
                raise _Malformed(f"buffer {i} lies beyond the end of the file (offset {off}, size {sz})")
            buf_sizes.append(sz)
        else:
            buf_sizes.append(0)

    # Subgraphs.
    n_sg = _count(_read(model.SubgraphsLength, "subgraphs"), limit, "subgraphs")
    if n_sg == 0:
        raise _Malformed("the model has no subgraphs")
    subgraphs: list[dict[str, Any]] = []
    counted: set[int] = set()
    params = 0
    used_ops: dict[str, int] = {}
    primary_io: tuple[list[TensorSpec], list[TensorSpec], list[dict], list[dict]] | None = None
    for s in range(n_sg):
        sg = _read(model.Subgraphs, "subgraph", s)
        n_t = _count(_read(sg.TensorsLength, "tensors"), limit, "tensors")
        tensors = [_read(sg.Tensors, "tensor", j) for j in range(n_t)]
        for j, t in enumerate(tensors):
            bidx = int(_read(t.Buffer, "tensor buffer index"))
            if bidx < 0 or (bidx and bidx >= n_buf):
                raise _Malformed(f"tensor {j} of subgraph {s} refers to buffer {bidx} of {n_buf}")
            if bidx and buf_sizes[bidx] and bidx not in counted:
                counted.add(bidx)
                _, static = _shape(t, limit, "tensor shape")
                params += prod(static)

        def io(
            which: str, sg: Any = sg, tensors: list = tensors, s: int = s
        ) -> tuple[list[TensorSpec], list[dict]]:
            n = _count(_read(getattr(sg, f"{which}Length"), which.lower()), limit, which.lower())
            specs: list[TensorSpec] = []
            quant: list[dict] = []
            for k in range(n):
                idx = int(_read(getattr(sg, which), which.lower(), k))
                if not 0 <= idx < len(tensors):
                    raise _Malformed(f"subgraph {s} {which.lower()} refers to tensor {idx} of {len(tensors)}")
                t = tensors[idx]
                name = _str(_read(t.Name, "tensor name")) or f"tensor_{idx}"
                ttype = int(_read(t.Type, "tensor type"))
                shape, _ = _shape(t, limit, "tensor shape")
                specs.append(
                    TensorSpec(name=name, dtype=TENSOR_TYPES.get(ttype, f"tflite_type_{ttype}"), shape=shape)
                )
                q = _quant(t, limit, "quantization")
                quant.append({"name": name, "index": idx, **({"quantization": q} if q else {})})
            return specs, quant

        ins, in_q = io("Inputs")
        outs, out_q = io("Outputs")
        n_ops = _count(_read(sg.OperatorsLength, "operators"), limit, "operators")
        for k in range(n_ops):
            op = _read(sg.Operators, "operator", k)
            oi = int(_read(op.OpcodeIndex, "operator opcode index"))
            if not 0 <= oi < n_codes:
                raise _Malformed(f"operator {k} of subgraph {s} uses opcode {oi} of {n_codes}")
            e = op_codes[oi]
            key = (e.get("custom") or "CUSTOM") if e["builtin"] == "CUSTOM" else e["builtin"]
            used_ops[key] = used_ops.get(key, 0) + 1
        subgraphs.append(
            {
                "index": s,
                "name": _str(_read(sg.Name, "subgraph name")),
                "tensors": n_t,
                "operators": n_ops,
                "inputs": [t.to_dict() for t in ins],
                "outputs": [t.to_dict() for t in outs],
            }
        )
        if primary_io is None:
            primary_io = (ins, outs, in_q, out_q)

    assert primary_io is not None
    insp.inputs, insp.outputs, in_q, out_q = primary_io
    insp.params = params

    # Signature defs (TF 2.5+ converters write them; keys map to subgraphs).
    n_sig = _count(_read(model.SignatureDefsLength, "signature defs"), limit, "signature defs")
    signatures: list[dict[str, Any]] = []
    for i in range(n_sig):
        sd = _read(model.SignatureDefs, "signature def", i)

        def tmap(which: str, sd: Any = sd) -> list[dict[str, Any]]:
            n = _count(_read(getattr(sd, f"{which}Length"), "signature"), limit, "signature")
            out = []
            for k in range(n):
                tm = _read(getattr(sd, which), "signature tensor map", k)
                out.append(
                    {
                        "name": _str(_read(tm.Name, "signature name")),
                        "tensor_index": int(_read(tm.TensorIndex, "signature")),
                    }
                )
            return out

        signatures.append(
            {
                "key": _str(_read(sd.SignatureKey, "signature key")),
                "subgraph_index": int(_read(sd.SubgraphIndex, "signature subgraph")),
                "inputs": tmap("Inputs"),
                "outputs": tmap("Outputs"),
            }
        )
    _name_by_signature(insp, signatures, in_q, out_q)

    # Metadata (names; min_runtime_version is a short string buffer).
    n_md = _count(_read(model.MetadataLength, "metadata"), limit, "metadata")
    metadata: list[str] = []
    for i in range(n_md):
        md = _read(model.Metadata, "metadata", i)
        name = _str(_read(md.Name, "metadata name")) or ""
        metadata.append(name)
        bi = int(_read(md.Buffer, "metadata buffer"))
        if name == "min_runtime_version" and 0 < bi < n_buf and 0 < buf_sizes[bi] <= 64:
            b = _read(model.Buffers, "metadata buffer", bi)
            raw = bytes(_read(b.DataAsNumpy, "metadata buffer"))
            value = raw.split(b"\0", 1)[0].decode("ascii", "replace")
            if value:  # some converters write a second, empty entry
                insp.versions.setdefault("min_runtime_version", value)

    builtin_ops = sorted({e["builtin"] for e in op_codes if e["builtin"] != "CUSTOM"})
    custom_ops = sorted({e["custom"] or "" for e in op_codes if e["builtin"] == "CUSTOM"})
    insp.details.update(
        {
            "subgraphs": subgraphs,
            "operator_codes": op_codes,
            "builtin_ops": builtin_ops,
            "custom_ops": custom_ops,
            "op_counts": dict(sorted(used_ops.items())),
            "quantization": {"inputs": in_q, "outputs": out_q},
            "quantized": any("quantization" in q for q in (*in_q, *out_q)),
            "signature_defs": signatures,
            "metadata": metadata,
            "buffers": n_buf,
        }
    )
    if custom_ops:
        insp.warnings.append(
            "uses custom operators that a stock TFLite runtime lacks: "
            + ", ".join(c or "<unnamed>" for c in custom_ops)
        )
    if any(e["builtin"].startswith("UNKNOWN_") for e in op_codes):
        insp.warnings.append("uses builtin operator codes newer than this reader's schema")
