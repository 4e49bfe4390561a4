"""SafeTensors: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
The header is validated against the file before anything else trusts it."""

from __future__ import annotations

import json
import struct
from collections import Counter

from app.formats.base import Detection, FormatInfo, Inspection, MalformedModel, ModelFiles, prod

FORMAT = FormatInfo(
    name="safetensors",
    title="SafeTensors",
    extensions=(".safetensors",),
    reader="safetensors",
    code_on_load=False,
    weights_only=True,
    packages=("safetensors",),
)

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8), "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "C64": ("complex64", 8),
    "F8_E8M0": ("float8_e8m0fnu", 1), "F4": ("float4_e2m1", 0.5), "F6_E2M3": ("float6_e2m3", 0.75),
    "F6_E3M2": ("float6_e3m2", 0.75),
}


def detect(files: ModelFiles) -> Detection | None:
    if len(files.paths) != 1:
        return None
    p = files.paths[0]
    head = files.head(p, 9)
    if len(head) < 9:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and n >= 2:
        return Detection("safetensors", p, "8-byte header length followed by a JSON object")
    return None


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    path = files.abs(det.primary)
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise MalformedModel("safetensors", f"header declares {n} bytes, over the {MAX_HEADER} byte limit")
        if 8 + n > size:
            raise MalformedModel("safetensors", f"header declares {n} bytes but the file has only {size - 8} "
                                 "after the length prefix")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedModel("safetensors", f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise MalformedModel("safetensors", "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    spans = []
    tensors = []
    for name, t in header.items():
        try:
            dtype_code, shape, (begin, end) = t["dtype"], t["shape"], t["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise MalformedModel("safetensors", f"tensor '{name}' has no dtype/shape/data_offsets") from None
        if dtype_code not in DTYPES:
            raise MalformedModel("safetensors", f"tensor '{name}' has unknown dtype {dtype_code!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise MalformedModel("safetensors", f"tensor '{name}' has an invalid shape {shape!r}")
        dtype, itemsize = DTYPES[dtype_code]
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise MalformedModel("safetensors", f"tensor '{name}' claims bytes {begin}..{end} but the data "
                                 f"section is {data_len} bytes (the header lies about sizes)")
        need = prod(shape) * itemsize
        if end - begin != need:
            raise MalformedModel("safetensors", f"tensor '{name}' {dtype}{shape} needs {int(need)} bytes but "
                                 f"its offsets span {end - begin}")
        spans.append((begin, end, name))
        tensors.append({"name": name, "dtype": dtype, "shape": shape})
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise MalformedModel("safetensors", f"tensor '{name}' starts at {begin}, expected {pos}: the data "
                                 "section has gaps or overlaps")
        pos = end
    if pos != data_len:
        raise MalformedModel("safetensors", f"tensors cover {pos} bytes but the data section is {data_len}")
    insp = Inspection(format="safetensors", primary_file=det.primary)
    insp.params = sum(prod(t["shape"]) for t in tensors)
    insp.details = {
        "tensor_count": len(tensors),
        "dtypes": dict(Counter(t["dtype"] for t in tensors)),
        "metadata": {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {},
        "tensors": tensors[:5000],
        "header_bytes": n,
    }
    insp.safety = {"status": "safe", "method": "SafeTensors holds no code; header validated against the file"}
    insp.unavailable.append("inputs/outputs: SafeTensors holds weights only; the architecture defines the signature")
    return insp
