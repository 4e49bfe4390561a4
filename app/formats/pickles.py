"""Static pickle scanning and an inert, allow-list unpickler.

Why not picklescan / fickling / modelscan: picklescan and modelscan are deny-lists (a global they
do not know is let through as "suspicious"), and fickling's safety check is heuristic. modelport
needs the opposite default, the one ``torch.load(weights_only=True)`` uses: a pickle may name only
globals on an allow-list, and anything else is refused. Two steps:

1. :func:`scan` walks the opcodes with :mod:`pickletools` (nothing is executed) and lists every
   global the pickle would import (``GLOBAL``, ``INST``, ``STACK_GLOBAL`` resolved through the
   memo), as picklescan does.
2. :func:`load_inert` unpickles with every allow-listed global mapped to an inert stand-in that
   only records what it was given (a tensor becomes its dtype, shape and device). No function of
   torch, numpy or anything else runs, so the file's metadata can be read without torch installed
   and without trusting it.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from app.formats.base import MalformedModel, NeedsCode, UnsafeModel

# Storage classes of the legacy typed-storage API, as torch pickles them.
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    "UntypedStorage": "uint8",
}
TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8",
    "bool": "bool", "complex64": "complex64", "complex128": "complex128",
    "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2", "uint16": "uint16", "uint32": "uint32",
    "uint64": "uint64", "qint8": "qint8", "quint8": "quint8", "qint32": "qint32",
}
TORCH_MISC = {"strided", "sparse_coo", "sparse_csr", "contiguous_format", "channels_last",
              "preserve_format", "Size", "device", "per_tensor_affine", "per_channel_affine"}

ALLOWED: dict[str, set[str]] = {
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice", "range", "complex", "bytearray", "bytes", "object"},
    "__builtin__": {"set", "frozenset", "slice", "complex", "bytearray", "object"},
    "_codecs": {"encode"},
    "argparse": {"Namespace"},
    "torch._utils": {
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
        "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_nested_tensor",
    },
    "torch._tensor": {"_rebuild_from_type_v2"},
    # TorchScript's own list/tag helpers (torch/jit/_pickle.py): they only rebuild containers
    "torch.jit._pickle": {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                          "build_complexlist", "build_tensor_from_id", "restore_type_tag"},
    "torch.nn.parameter": {"Parameter"},
    "torch": set(STORAGE_DTYPES) | set(TORCH_DTYPES) | TORCH_MISC | {"Tensor"},
    "torch.storage": {"UntypedStorage", "TypedStorage"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.dtypes": {"Float32DType", "Float64DType", "Int64DType", "Int32DType", "Float16DType", "UInt8DType",
                     "Int8DType", "BoolDType", "Int16DType", "UInt16DType", "UInt32DType", "UInt64DType"},
}

# Globals that make a pickle hostile rather than merely "needs its code".
DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "importlib", "runpy", "pickle",
    "_pickle", "marshal", "ctypes", "pty", "webbrowser", "code", "codeop", "commands", "platform",
    "asyncio", "multiprocessing", "requests", "urllib", "http", "ftplib", "telnetlib", "types",
    "functools", "operator", "pdb", "bdb", "timeit", "tempfile", "pathlib", "io", "signal", "threading",
    "torch.storage._load_from_bytes", "dill", "cloudpickle", "joblib", "_posixsubprocess", "builtins",
    "__builtin__", "nturl2path", "glob", "zipimport", "pip", "setuptools", "distutils",
}


def is_allowed(module: str, name: str) -> bool:
    return name in ALLOWED.get(module, ())


def is_dangerous(module: str, name: str) -> bool:
    root = module.split(".", 1)[0]
    return module in DANGEROUS_MODULES or root in DANGEROUS_MODULES or (
        module == "torch.storage" and name == "_load_from_bytes")


def scan(data: bytes, *, many: bool = False, fmt: str = "pytorch") -> list[tuple[str, str]]:
    """Every (module, name) global that the pickle(s) in ``data`` would import, in order.

    With ``many``, keep reading pickles back to back (the legacy torch.save layout)."""
    found: list[tuple[str, str]] = []
    stream = io.BytesIO(data)
    while True:
        start = stream.tell()
        if start >= len(data):
            break
        memo: dict[int, Any] = {}
        strings: list[Any] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name in ("GLOBAL", "INST"):
                    mod, _, attr = str(arg).partition(" ")
                    found.append((mod, attr))
                elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                              "BINSTRING", "SHORT_BINSTRING"):
                    strings.append(arg)
                elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(int(arg)))
                elif name == "STACK_GLOBAL":
                    if len(strings) < 2 or not all(isinstance(s, str) for s in strings[-2:]):
                        found.append(("<unresolved>", "STACK_GLOBAL"))
                    else:
                        found.append((strings[-2], strings[-1]))
        except Exception as e:  # pickletools raises ValueError and friends on garbage
            if start == 0 or not many:
                raise MalformedModel(fmt, f"not a valid pickle stream: {e}") from None
            break  # legacy layout: raw tensor bytes follow the last pickle
        if not many:
            break
    return found


def check(globals_: list[tuple[str, str]], *, fmt: str = "pytorch", strings: bytes = b"") -> None:
    """Refuse a pickle whose globals leave the allow-list: hostile ones with :class:`UnsafeModel`,
    pickled ``nn.Module`` objects (which need their class code) with :class:`NeedsCode`."""
    offending = sorted({f"{m}.{n}" for m, n in globals_ if not is_allowed(m, n)})
    if not offending:
        return
    dangerous = sorted({f"{m}.{n}" for m, n in globals_ if is_dangerous(m, n) and not is_allowed(m, n)})
    if dangerous or any(g.startswith("<unresolved>") for g in offending):
        raise UnsafeModel(
            fmt,
            "refused: the pickle imports globals outside the allow-list, which would run code on load: "
            + ", ".join(dangerous or offending),
            offending_globals=offending,
            dangerous_globals=dangerous,
        )
    module_like = any(g.startswith(("torch.nn.", "__main__.")) for g in offending) or b"_modules" in strings
    if module_like:
        raise NeedsCode(
            "pytorch_full_model",
            "full model pickle: needs its code; upload a TorchScript, .pt2 or state dict instead "
            f"(it references classes {', '.join(offending[:12])}{' …' if len(offending) > 12 else ''})",
            classes=offending,
        )
    raise UnsafeModel(
        fmt,
        "refused: the pickle imports globals outside the allow-list: " + ", ".join(offending),
        offending_globals=offending,
        dangerous_globals=[],
    )


# ----------------------------------------------------------------------------- inert unpickling


@dataclass
class StorageRef:
    dtype: str
    key: str
    location: str
    numel: int | None


@dataclass
class TensorRef:
    dtype: str
    shape: list[int]
    device: str
    storage_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass
class ArrayRef:
    dtype: str | None
    shape: list[int] | None


class _Stub:
    """Stands in for any allow-listed class: accepts anything, does nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state: Any = None

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, k, v):  # dict-like subclasses
        pass


class _Namespace(_Stub):
    def __setstate__(self, state):
        self.state = state


def _storage_type(name: str):
    return ("storage_type", STORAGE_DTYPES.get(name, "uint8"))


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    if isinstance(storage, StorageRef):
        return TensorRef(storage.dtype, [int(s) for s in size], storage.location, storage.key)
    return TensorRef("unknown", [int(s) for s in size], "unknown")


def _rebuild_meta(dtype, size, stride, requires_grad, *rest):
    return TensorRef(str(dtype), [int(s) for s in size], "meta")


def _rebuild_parameter(data, *rest):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


def _rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params, *rest):
    t = _rebuild_tensor(storage, storage_offset, size, stride)
    t.extra["quantized"] = True
    return t


def _np_reconstruct(*args):
    return ArrayRef(None, None)


class InertUnpickler(pickle.Unpickler):
    def __init__(self, file, *, fmt: str, legacy: bool = False):
        super().__init__(file, encoding="latin1")
        self.fmt = fmt
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str):
        if not is_allowed(module, name):
            raise UnsafeModel(self.fmt, f"refused: the pickle imports {module}.{name}, outside the allow-list")
        if module == "collections":
            return OrderedDict
        if module in ("builtins", "__builtin__"):
            return {"set": set, "frozenset": frozenset, "slice": slice, "range": range, "complex": complex,
                    "bytearray": bytearray, "bytes": bytes, "object": _Stub}[name]
        if module == "_codecs":
            import codecs

            return lambda s, enc="utf-8": codecs.encode(s, enc) if isinstance(s, str) else s
        if module == "argparse":
            return _Namespace
        if module == "torch._utils":
            return {
                "_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
                "_rebuild_tensor_v3": _rebuild_tensor, "_rebuild_parameter": _rebuild_parameter,
                "_rebuild_parameter_with_state": _rebuild_parameter, "_rebuild_qtensor": _rebuild_qtensor,
                "_rebuild_meta_tensor_no_storage": _rebuild_meta,
            }.get(name, _Stub)
        if module == "torch._tensor":
            return _rebuild_from_type
        if module == "torch.jit._pickle":
            return lambda *args: args[0] if args else None
        if module == "torch":
            if name in STORAGE_DTYPES:
                return _storage_type(name)
            if name in TORCH_DTYPES:
                return TORCH_DTYPES[name]
            return _Stub
        if module.startswith("numpy"):
            return _np_reconstruct if name in ("_reconstruct", "scalar") else _Stub
        return _Stub

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise MalformedModel(self.fmt, f"unexpected persistent id in pickle: {str(pid)[:80]}")
        stype = pid[1]
        dtype = stype[1] if isinstance(stype, tuple) and stype[:1] == ("storage_type",) else str(stype)
        if len(pid) < 5:
            raise MalformedModel(self.fmt, "truncated storage reference in pickle")
        key, location, numel = str(pid[2]), str(pid[3]), pid[4]
        ref = StorageRef(dtype, key, location, int(numel) if isinstance(numel, int) else None)
        self.storages.setdefault(key, ref)
        return ref


def load_inert(data: bytes, *, fmt: str = "pytorch", legacy: bool = False) -> Any:
    try:
        return InertUnpickler(io.BytesIO(data), fmt=fmt, legacy=legacy).load()
    except (UnsafeModel, MalformedModel):
        raise
    except RecursionError:
        raise MalformedModel(fmt, "pickle nests too deeply") from None
    except Exception as e:
        raise MalformedModel(fmt, f"could not read the pickle: {type(e).__name__}: {e}") from None


def flatten_tensors(obj: Any, prefix: str = "", out: dict[str, TensorRef] | None = None,
                    depth: int = 0) -> dict[str, TensorRef]:
    """Tensors in a nested checkpoint, keyed by their path joined with '.' (the documented key
    scheme: ``{"model": {"fc.weight": t}}`` becomes ``model.fc.weight``; list items use their index)."""
    out = {} if out is None else out
    if depth > 64:
        return out
    if isinstance(obj, TensorRef):
        out[prefix or "tensor"] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            flatten_tensors(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten_tensors(v, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)
    elif isinstance(obj, _Stub) and isinstance(obj.state, dict):
        flatten_tensors(obj.state, prefix, out, depth + 1)
    return out
