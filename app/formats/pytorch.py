"""PyTorch state dicts and checkpoints saved with ``torch.save``: the zip layout
(``<name>/data.pkl`` + ``<name>/data/<key>``) and the legacy one (pickles back to back, then raw
storages). Read with the inert allow-list unpickler: nothing in the file is executed, and torch
need not be installed."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from app.formats import pickles, torchzip
from app.formats.base import Detection, FormatInfo, Inspection, MalformedModel, ModelFiles

FORMAT = FormatInfo(
    name="pytorch",
    title="PyTorch state dict / checkpoint",
    extensions=(".pt", ".pth", ".bin", ".ckpt", ".pkl"),
    notes="pickle-based; scanned against an allow-list, read without executing anything",
    code_on_load=True,
    weights_only=True,
    zip_markers=("data.pkl",),
    packages=("torch",),
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16, "qint8": 1, "quint8": 1,
            "qint32": 4, "float8_e4m3fn": 1, "float8_e5m2": 1, "uint16": 2, "uint32": 4, "uint64": 8}
CHECKPOINT_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network",
                          "ema", "model_ema", "params", "weights")


def _is_pickle_head(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def detect(files: ModelFiles) -> Detection | None:
    if len(files.paths) != 1:
        return None
    p = files.paths[0]
    head = files.head(p, 8)
    if head[:4] == torchzip.ZIP_MAGIC:
        members = torchzip.names(files.abs(p)) or []
        pkl = torchzip.member_ending(members, "data.pkl")
        if pkl and pkl.count("/") <= 1:
            return Detection("pytorch", p, "zip archive with data.pkl (torch.save layout)", {"layout": "zip"})
        return None
    if _is_pickle_head(head):
        return Detection("pytorch", p, f"pickle stream (protocol {head[1]})", {"layout": "pickle"})
    return None


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    path = files.abs(det.primary)
    insp = Inspection(format="pytorch", primary_file=det.primary)
    if det.extra.get("layout") == "zip":
        members = torchzip.names(path)
        if members is None:
            raise MalformedModel("pytorch", "the zip archive is corrupt")
        pkl = torchzip.member_ending(members, "data.pkl")
        data = torchzip.read_member(path, pkl, "pytorch")
        obj = _scan_and_load(data, insp)
        top = pkl.rsplit("/", 1)[0] + "/" if "/" in pkl else ""
        sizes = torchzip.member_sizes(path)
        insp.details["layout"] = "zip"
        for meta in ("version", ".format_version", "byteorder"):
            if top + meta in sizes:
                insp.versions[meta.lstrip(".")] = (
                    torchzip.read_member(path, top + meta, "pytorch", 64).decode("ascii", "replace").strip())
        tensors = pickles.flatten_tensors(obj)
        _check_storages(tensors, lambda key: sizes.get(f"{top}data/{key}"))
    else:
        with open(path, "rb") as f:
            data = f.read()
        obj = _load_legacy_or_plain(data, insp)
        tensors = pickles.flatten_tensors(obj)
    _describe(obj, tensors, insp)
    return insp


def _scan_and_load(data: bytes, insp: Inspection) -> Any:
    globals_ = pickles.scan(data, fmt="pytorch")
    pickles.check(globals_, fmt="pytorch", strings=data if len(data) < 64 * 1024**2 else b"")
    insp.safety = {
        "status": "safe",
        "method": "static opcode scan + allow-list; read with an inert unpickler (nothing executed)",
        "globals": sorted({f"{m}.{n}" for m, n in globals_}),
    }
    return pickles.load_inert(data, fmt="pytorch")


def _load_legacy_or_plain(data: bytes, insp: Inspection) -> Any:
    globals_ = pickles.scan(data, many=True, fmt="pytorch")
    pickles.check(globals_, fmt="pytorch", strings=data[: 64 * 1024**2])
    insp.safety = {
        "status": "safe",
        "method": "static opcode scan + allow-list; read with an inert unpickler (nothing executed)",
        "globals": sorted({f"{m}.{n}" for m, n in globals_}),
    }
    stream = io.BytesIO(data)
    first = _load_one(stream)
    if first != LEGACY_MAGIC:
        insp.details["layout"] = "pickle"
        return first
    insp.details["layout"] = "legacy"
    protocol = _load_one(stream)
    sys_info = _load_one(stream)
    insp.versions["protocol_version"] = protocol
    if isinstance(sys_info, dict):
        insp.details["sys_info"] = {str(k): v for k, v in sys_info.items() if isinstance(v, (int, str, bool, dict))}
    main = pickles.InertUnpickler(stream, fmt="pytorch", legacy=True)
    obj = _load_one(stream, main)
    keys = _load_one(stream)
    # Raw storages follow in the order of ``keys``, each an int64 element count then the bytes.
    if isinstance(keys, list):
        insp.details["storages"] = len(keys)
        needed = 0
        for key in keys:
            ref = main.storages.get(str(key))
            if ref is None or ref.numel is None:
                raise MalformedModel("pytorch", f"legacy checkpoint lists storage {key!r} that no tensor declares")
            needed += 8 + ref.numel * ITEMSIZE.get(ref.dtype, 1)
        remaining = len(data) - stream.tell()
        if remaining < needed:
            raise MalformedModel("pytorch", f"legacy checkpoint is truncated: tensor data needs {needed} bytes, "
                                 f"{remaining} remain")
    return obj


def _load_one(stream: io.BytesIO, unpickler: pickles.InertUnpickler | None = None) -> Any:
    # Like torch's legacy loader: successive pickles from one stream (pickle stops at STOP).
    try:
        return (unpickler or pickles.InertUnpickler(stream, fmt="pytorch", legacy=True)).load()
    except (pickles.UnsafeModel, MalformedModel):
        raise
    except Exception as e:
        raise MalformedModel("pytorch", f"could not read the pickle: {type(e).__name__}: {e}") from None


def _check_storages(tensors: dict[str, pickles.TensorRef], member_size) -> None:
    seen: dict[str, int] = {}
    for name, t in tensors.items():
        if t.storage_key is None or t.storage_key in seen:
            continue
        size = member_size(t.storage_key)
        if size is None:
            raise MalformedModel("pytorch", f"tensor '{name}' points at storage data/{t.storage_key}, "
                                 "which is missing from the archive")
        seen[t.storage_key] = size
        need = t.numel * ITEMSIZE.get(t.dtype, 1)
        if size < need:
            raise MalformedModel("pytorch", f"tensor '{name}' needs {need} bytes but its storage "
                                 f"data/{t.storage_key} holds {size}")


def _describe(obj: Any, tensors: dict[str, pickles.TensorRef], insp: Inspection) -> None:
    insp.params = sum(t.numel for t in tensors.values())
    devices = sorted({t.device for t in tensors.values()})
    insp.details["tensor_count"] = len(tensors)
    insp.details["dtypes"] = dict(Counter(t.dtype for t in tensors.values()))
    insp.details["devices"] = devices
    if any(d.startswith("cuda") for d in devices):
        insp.warnings.append(f"tensors were saved on {', '.join(d for d in devices if d.startswith('cuda'))}; "
                             "they are mapped to CPU when converted")
    insp.details["tensors"] = [{"name": k, "dtype": t.dtype, "shape": t.shape, "device": t.device}
                               for k, t in list(tensors.items())[:5000]]
    if isinstance(obj, dict) and obj and all(isinstance(v, pickles.TensorRef) for v in obj.values()):
        kind = "state_dict"
    elif isinstance(obj, dict):
        kind = "checkpoint"
        insp.details["checkpoint_keys"] = {str(k): _summary(v) for k, v in list(obj.items())[:200]}
        weights = [k for k in CHECKPOINT_WEIGHT_KEYS if isinstance(obj.get(k), dict)]
        if weights:
            insp.details["weights_key"] = weights[0]
    elif isinstance(obj, pickles.TensorRef):
        kind = "tensor"
    else:
        kind = "other"
    insp.details["kind"] = kind
    insp.details["key_scheme"] = "nested keys joined with '.'; list items by index"
    insp.unavailable.append("inputs/outputs: a state dict holds weights only; the architecture's code defines "
                            "the signature (give input_specs and an architecture to convert)")


def _summary(v: Any) -> str:
    if isinstance(v, pickles.TensorRef):
        return f"tensor {v.dtype}{v.shape}"
    if isinstance(v, dict):
        n = len(pickles.flatten_tensors(v))
        return f"dict ({len(v)} keys, {n} tensors)"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__} ({len(v)} items)"
    if isinstance(v, (int, float, str, bool)) or v is None:
        return repr(v)[:80]
    return type(v).__name__
