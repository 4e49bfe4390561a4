"""PyTorch checkpoints (torch.save) <-> SafeTensors, tensor for tensor."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from app.conversion.edges._common import parse_options, versions
from app.sandbox.io import ConversionError, Result, Source

EXTRA_KEY = "modelport.extra"  # safetensors metadata key holding a checkpoint's non-tensor entries (JSON)


def _load_checkpoint(path: Path):
    import pickle

    import torch

    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    try:
        # weights_only: the allow-listed unpickler; mmap (zip layout only) keeps big files off the heap
        return torch.load(str(path), weights_only=True, map_location="cpu", mmap=zipped)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            "refused to unpickle: the checkpoint holds objects outside torch.load(weights_only=True)'s allow-list "
            f"({str(e).splitlines()[0][:300]})", tool="torch", tool_version=torch.__version__,
            hint="save a plain state dict (model.state_dict()) or upload the model as .pt2 / TorchScript") from None
    except Exception as e:
        raise ConversionError(f"could not read the checkpoint: {type(e).__name__}: {e}"[:1500], tool="torch",
                              tool_version=torch.__version__) from None


def _select(obj: Any, key: str) -> Any:
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    cur = obj
    for part in key.split("."):  # a nested key: "model.encoder"
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list | tuple) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            top = sorted(str(k) for k in obj) if isinstance(obj, dict) else []
            raise ConversionError(f"weights_key '{key}' is not in the checkpoint"
                                  + (f"; its top-level keys: {', '.join(top[:30])}" if top else ""),
                                  hint="set weights_key to one of the top-level keys, or leave it out to convert "
                                       "every tensor")
    return cur


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _flatten(obj: Any, prefix: str, tensors: dict, extra: dict, skipped: dict, depth: int = 0) -> None:
    """Tensors keyed by their path joined with '.' (list items by index), the same scheme as
    :func:`app.formats.pickles.flatten_tensors`; JSON-able leaves go to ``extra``; the rest to ``skipped``."""
    import numpy as np
    import torch

    key = prefix or "tensor"
    if depth > 64:
        skipped[key] = "nested deeper than 64 levels"
    elif isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ConversionError(f"two entries of the checkpoint flatten to the same key '{key}'",
                                  hint="use weights_key to convert one sub-dict")
        tensors[key] = obj
    elif isinstance(obj, np.ndarray) and obj.dtype != object:
        _flatten(torch.from_numpy(np.ascontiguousarray(obj)), prefix, tensors, extra, skipped, depth)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, extra, skipped, depth + 1)
    elif isinstance(obj, list | tuple):
        if not obj and prefix:
            extra[prefix] = []
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors, extra, skipped, depth + 1)
    elif obj is None or isinstance(obj, bool | int | float | str):
        extra[key] = _json_value(obj)
    elif isinstance(obj, np.generic):
        extra[key] = _json_value(obj.item())
    elif isinstance(obj, torch.dtype | torch.device | torch.Size):
        extra[key] = str(obj)
    else:
        skipped[key] = type(obj).__name__


def _storable(tensors: dict) -> tuple[dict, dict[str, Any]]:
    """Plain, dense, contiguous CPU tensors that own their bytes (safetensors refuses shared memory)."""
    import torch

    by_storage: dict[tuple[int, str], list[str]] = {}
    report: dict[str, Any] = {"cloned_shared": [], "made_contiguous": [], "skipped": {}}
    out = {}
    for name, t in tensors.items():
        if t.is_sparse or t.layout != torch.strided:
            report["skipped"][name] = f"{t.layout} tensor (safetensors stores dense tensors only)"
            continue
        if t.is_quantized:
            report["skipped"][name] = "quantized tensor (safetensors stores plain dtypes only)"
            continue
        if t.device.type == "meta":
            report["skipped"][name] = "meta tensor (no data)"
            continue
        t = t.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        if t.numel() > 0:
            by_storage.setdefault((t.untyped_storage().data_ptr(), str(t.device)), []).append(name)
        out[name] = t
    shared = [names for names in by_storage.values() if len(names) > 1]
    report["shared_groups"] = shared
    for names in shared:
        for n in names:
            out[n] = out[n].contiguous().clone()
            report["cloned_shared"].append(n)
    for n, t in out.items():
        if not t.is_contiguous():
            out[n] = t.contiguous()
            report["made_contiguous"].append(n)
    return out, report


def _same(a, b) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def to_safetensors(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """torch.save checkpoint -> one .safetensors file; nested keys joined with '.'; lossless."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from app.conversion.registry import ToSafeTensorsOptions

    opts = parse_options(ToSafeTensorsOptions, options)
    obj = _load_checkpoint(src.primary_path)
    if opts.weights_key:
        obj = _select(obj, opts.weights_key)
    tensors: dict = {}
    extra: dict = {}
    skipped: dict = {}
    _flatten(obj, "", tensors, extra, skipped)
    if not tensors:
        raise ConversionError("the checkpoint holds no tensors" + (f" under '{opts.weights_key}'" if opts.weights_key
                                                                   else ""),
                              hint="set weights_key to the sub-dict holding the weights" if extra else None)
    stored, report = _storable(tensors)
    skipped.update(report.pop("skipped"))
    metadata = {"format": "pt"}
    if extra:
        metadata[EXTRA_KEY] = json.dumps(extra, default=str, sort_keys=True)
    if opts.weights_key:
        metadata["modelport.weights_key"] = opts.weights_key
    target = out_dir / "model.safetensors"
    try:
        save_file(stored, str(target), metadata=metadata)
    except Exception as e:
        raise ConversionError(f"safetensors could not store the tensors: {type(e).__name__}: {e}"[:1500],
                              tool="safetensors", tool_version=versions("safetensors").get("safetensors")) from None
    # lossless: read every tensor back and compare bytes, dtype and shape
    with safe_open(str(target), framework="pt") as f:
        back = set(f.keys())
        if back != set(stored):
            raise ConversionError("the written file does not hold the same keys as the checkpoint")
        for name, t in stored.items():
            if not _same(t, f.get_tensor(name)):
                raise ConversionError(f"tensor '{name}' did not round-trip exactly through safetensors",
                                      tool="safetensors")
    details = {"tensor_count": len(stored), "bytes": sum(t.numel() * t.element_size() for t in stored.values()),
               "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in stored.values()}),
               "skipped": skipped, "extra_keys": sorted(extra), "weights_key": opts.weights_key,
               "verified": "every tensor read back and compared byte for byte", **report}
    warns = []
    if skipped:
        warns.append(f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the checkpoint not stored: "
                     + ", ".join(f"{k} ({v})" for k, v in list(skipped.items())[:10]))
    if report["shared_groups"]:
        warns.append(f"{sum(len(g) for g in report['shared_groups'])} tensors shared storage (tied weights); "
                     "each is stored as its own copy")
    return Result(primary=target.name, details=details, warnings=warns, versions=versions("torch", "safetensors"))


def to_pytorch(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """.safetensors -> a torch.save (zip) state dict with the same keys and tensors."""
    import torch
    from safetensors import safe_open

    from app.conversion.registry import NoOptions

    parse_options(NoOptions, options)
    try:
        with safe_open(str(src.primary_path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:
        raise ConversionError(f"could not read the safetensors file: {type(e).__name__}: {e}"[:1500],
                              tool="safetensors", tool_version=versions("safetensors").get("safetensors")) from None
    target = out_dir / "model.pt"
    torch.save(state, str(target))
    back = torch.load(str(target), weights_only=True, map_location="cpu")
    bad = [k for k in state if k not in back or not _same(state[k], back[k])]
    if bad or set(back) != set(state):
        raise ConversionError(f"tensors did not round-trip exactly through torch.save: {', '.join(bad[:10])}",
                              tool="torch", tool_version=torch.__version__)
    details: dict[str, Any] = {"tensor_count": len(state),
                               "bytes": sum(t.numel() * t.element_size() for t in state.values()),
                               "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in state.values()}),
                               "metadata": {k: v for k, v in metadata.items() if k != EXTRA_KEY},
                               "verified": "every tensor read back and compared byte for byte"}
    warns = []
    if EXTRA_KEY in metadata:
        details["extra"] = metadata[EXTRA_KEY]
        warns.append(f"the file's non-tensor entries ({EXTRA_KEY} metadata) are not part of the state dict; "
                     "they are in details.extra")
    return Result(primary=target.name, details=details, warnings=warns, versions=versions("torch", "safetensors"))
