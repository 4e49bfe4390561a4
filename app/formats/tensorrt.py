"""TensorRT serialized engine (a "plan": ``.engine``, ``.plan``, ``.trt``).

NVIDIA does not document the plan layout. What this module relies on, and how sure it is:

- Magic ``b"ftrt"`` at offset 0 of a raw plan (TensorRT 8 and later). Not checked against a real
  engine here (TensorRT cannot be installed on this host), but corroborated by independent code
  that tests plan bytes for it, among them Torch-TensorRT's own runtime
  (``engine_field.startswith(b"ftrt")``) and several projects that unwrap Ultralytics engines.
  Detection depends on it alone.
- The Ultralytics wrapper: ``uint32 little-endian length`` + that many bytes of JSON metadata +
  the raw plan. Taken from the same projects' unwrapping code; recognised only when the JSON
  parses and ``ftrt`` follows it.
- Best effort, reported under ``details["header"]`` and marked as such: the byte at offset 8 is
  the plan's serialization version (NVIDIA/TensorRT#3073 reports 205, 213 and 232 for TensorRT
  8.2, 8.4 and 8.5, and TensorRT 10.x error messages print 239/240), and bytes 24, 25 and 26 are
  the TensorRT major, minor and patch version that built the plan (an NVIDIA comment on the same
  issue, used by Autoware's ``tensorrt_common``). A version outside plausible ranges is not
  reported.

Inputs and outputs are only knowable by deserializing the engine with the TensorRT runtime on a
GPU; when the ``tensorrt`` module is importable that is tried (this path is untested here).

An engine modelport built carries a record beside it, ``<engine>.json`` (kind
:data:`RECORD_KIND`): the GPU name and compute capability and the TensorRT version it was built
with, its precision, flags and optimisation profile. Inspection reports it under
``details["engine_record"]``; the runner checks a host against it.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from typing import Any

from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    TritonModel,
)

FORMAT = FormatInfo(
    name="tensorrt",
    title="TensorRT engine",
    extensions=(".engine", ".plan", ".trt"),
    reader="tensorrt",
    notes="tied to the GPU model and TensorRT version that built it",
    code_on_load=False,
    runner="tensorrt_runner",
    packages=("tensorrt",),
    triton=TritonModel(backend="tensorrt", platform="tensorrt_plan", filename="model.plan",
                       kserve_format=("tensorrt", "8"),
                       notes=("a TensorRT engine runs only on the GPU model and TensorRT version that built it: "
                              "the Triton image must carry that TensorRT",)),
)

MAGIC = b"ftrt"
HEADER_BYTES = 32  # the fields read below end at byte 27; a real plan is far larger
_SERIALIZATION_VERSION_AT = 8
_VERSION_AT = 24  # major, minor, patch at 24, 25, 26
_WRAPPER_META_MAX = 1 << 20
LOADABLE = "only on a GPU of the same model with the same TensorRT version"

_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "FP8": "float8_e4m3fn",
    "INT4": "int4",
    "FP4": "float4_e2m1fn",
}


RECORD_KIND = "modelport.tensorrt-engine/1"
RECORD_MAX_BYTES = 1 << 20


def record_name(primary: str) -> str:
    """Where an engine's build record lives: ``model.engine`` -> ``model.engine.json``."""
    return primary + ".json"


def read_record(root, paths: list[str], primary: str) -> dict[str, Any] | None:
    """The build record beside ``primary`` in the file set, when there is a well-formed one."""
    from pathlib import Path

    rel = record_name(primary)
    path = Path(root) / rel
    if rel not in paths or not path.is_file() or path.stat().st_size > RECORD_MAX_BYTES:
        return None
    try:
        rec = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == RECORD_KIND else None


def _plan_offset(files: ModelFiles, rel: str) -> tuple[int, dict[str, Any] | None] | None:
    """Where the raw plan starts in ``rel`` (0, or after an Ultralytics metadata prefix)."""
    try:
        size = files.size(rel)
        head = files.head(rel, 8)
    except OSError:
        return None
    if head.startswith(MAGIC):
        return 0, None
    if len(head) < 8 or head[4:5] != b"{":
        return None
    (meta_len,) = struct.unpack("<I", head[:4])
    if meta_len < 2 or meta_len > _WRAPPER_META_MAX or 4 + meta_len + len(MAGIC) > size:
        return None
    with open(files.abs(rel), "rb") as f:
        f.seek(4)
        meta_bytes = f.read(meta_len)
        if f.read(len(MAGIC)) != MAGIC:
            return None
    try:
        meta = json.loads(meta_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return 4 + meta_len, meta if isinstance(meta, dict) else {"value": meta}


def detect(files: ModelFiles) -> Detection | None:
    ordered = files.by_suffix(*FORMAT.extensions) + [
        p for p in files.paths if not p.lower().endswith(FORMAT.extensions)
    ]
    for rel in ordered:
        found = _plan_offset(files, rel)
        if found is None:
            continue
        offset, meta = found
        reason = 'TensorRT plan magic "ftrt" at offset 0'
        if offset:
            reason = (
                f'Ultralytics metadata header ({offset - 4} bytes of JSON) followed by the "ftrt" plan magic'
            )
        return Detection(
            format="tensorrt",
            primary=rel,
            reason=reason,
            extra={"plan_offset": offset, "wrapper_metadata": meta},
        )
    return None


def read_header(data: bytes) -> dict[str, Any]:
    """The best-effort header fields of a raw plan (``data`` starts at the magic)."""
    if len(data) < HEADER_BYTES or not data.startswith(MAGIC):
        raise ValueError("short header")
    header: dict[str, Any] = {"magic": MAGIC.decode(), "best_effort": True}
    serialization = data[_SERIALIZATION_VERSION_AT]
    header["serialization_version"] = serialization
    major, minor, patch = data[_VERSION_AT : _VERSION_AT + 3]
    if 5 <= major <= 30 and minor < 100 and patch < 100:
        header["tensorrt_version"] = f"{major}.{minor}.{patch}"
    else:
        header["tensorrt_version"] = None
        header["note"] = f"bytes 24-26 ({major}, {minor}, {patch}) do not look like a TensorRT version"
    return header


def _with_runtime(plan: bytes, insp: Inspection) -> bool:
    try:
        import tensorrt as trt
    except ImportError:
        return False
    insp.versions["tensorrt_reader"] = getattr(trt, "__version__", None)
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        engine = runtime.deserialize_cuda_engine(plan)
    except Exception as e:  # no GPU, no CUDA driver, …
        insp.unavailable.append(f"inputs and outputs: TensorRT could not deserialize the engine here ({e})")
        return True
    if engine is None:
        insp.unavailable.append(
            "inputs and outputs: TensorRT could not deserialize the engine here (built with another "
            "TensorRT version or for another GPU, or corrupted)"
        )
        return True
    insp.inputs, insp.outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype_name = str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
        dims = [None if d < 0 else int(d) for d in engine.get_tensor_shape(name)]
        spec = TensorSpec(name=name, dtype=_TRT_DTYPES.get(dtype_name, dtype_name.lower()), shape=dims)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            insp.inputs.append(spec)
        else:
            insp.outputs.append(spec)
    insp.details["layers"] = engine.num_layers
    insp.details["optimization_profiles"] = engine.num_optimization_profiles
    return True


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    rel = det.primary
    offset = int(det.extra.get("plan_offset", 0))
    insp = Inspection(format="tensorrt", primary_file=rel)
    size = files.size(rel)
    with open(files.abs(rel), "rb") as f:
        f.seek(offset)
        head = f.read(HEADER_BYTES)
    try:
        header = read_header(head)
    except ValueError:
        raise MalformedModel(
            "tensorrt",
            f"'{rel}' starts like a TensorRT engine but is only {size - offset} bytes from the plan "
            f"magic; a plan header alone is at least {HEADER_BYTES} bytes, so the file is truncated",
            size=size,
        ) from None
    insp.details["header"] = header
    insp.details["plan_bytes"] = size - offset
    insp.details["loadable"] = LOADABLE
    if det.extra.get("wrapper_metadata") is not None:
        insp.details["wrapper"] = "ultralytics"
        insp.details["metadata"] = det.extra["wrapper_metadata"]
    record = read_record(files.root, files.paths, rel)
    if record is not None:
        insp.details["engine_record"] = record
        insp.details["built_for"] = {**record.get("gpu", {}), "tensorrt": record.get("tensorrt_version")}
    if header.get("tensorrt_version"):
        insp.versions["tensorrt_built_with"] = header["tensorrt_version"]
    elif record is not None and record.get("tensorrt_version"):
        insp.versions["tensorrt_built_with"] = str(record["tensorrt_version"])
    insp.versions["serialization_version"] = header["serialization_version"]

    if importlib.util.find_spec("tensorrt") is None:
        insp.unavailable.append("inputs and outputs: TensorRT is not installed here")
        return insp
    with open(files.abs(rel), "rb") as f:
        f.seek(offset)
        plan = f.read()
    if not _with_runtime(plan, insp):
        insp.unavailable.append("inputs and outputs: TensorRT is not installed here")
    return insp
