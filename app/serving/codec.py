"""Tensor codecs for serving: the Open Inference Protocol (KServe v2, as Triton speaks it) and the
v1 API (JSON nested lists, ``.npy``, ``.npz``).

Pure functions over ``bytes``/``dict`` and numpy: nothing here knows about HTTP. Every problem with
what a client sent raises :class:`CodecError`, whose message is meant for the client (the HTTP layer
answers 400 ``{"error": msg}``); messages name the tensor and say what was expected and what came.

v2 requests and responses may carry tensors as JSON (``"data"``) or, per Triton's binary tensor data
extension, as raw little-endian row-major bytes after the JSON header, whose length is the
``Inference-Header-Content-Length`` header. ``BYTES`` elements are a 4-byte little-endian unsigned
length followed by the bytes, in binary; UTF-8 strings in JSON. ``BF16`` needs ``ml_dtypes``.

Zero copy: binary v2 inputs are ``np.frombuffer`` views of the request body, not copies. With a
``bytes`` body they are read-only (``arr.flags.writeable`` is False) and keep the body alive; a
runtime that writes into its inputs must copy first.

JSON goes through orjson when it is importable (stdlib ``json`` otherwise, same results): see
:func:`loads`, :func:`dumps` and :func:`dumps_v1`. Outputs are handed to orjson as numpy arrays
(``OPT_SERIALIZE_NUMPY``), so no Python lists are built. Differences from stdlib ``json`` are kept
out of sight: documents orjson refuses (``NaN``/``Infinity`` literals, lone surrogates, UTF-16
bodies, malformed JSON) are parsed again by stdlib ``json``, so they decode as before and errors
carry stdlib's messages; outputs holding NaN or infinities are written by stdlib ``json`` (as
``NaN``/``Infinity``, which tritonclient reads; orjson would write ``null``). One difference
remains: an integer literal beyond the 64-bit range parses as a float (stdlib: a Python int), so
an integer input refuses it as "must be integers" rather than "out of range". Floats are written
as the shortest text that reads back to the same value of the array's dtype (``0.1`` for a
float32 0.1, where ``tolist()`` gives ``0.10000000149011612``).

Big JSON tensors skip Python objects: in a v2 request of 4 KiB or more, each input's ``"data"``
is read by simdjson (pysimdjson) straight into a float64/int64 buffer, flattened, and cast to the
datatype, instead of becoming a list of Python numbers that numpy then walks. Anything that path
can't take (booleans, strings, nulls, a number that doesn't fit, a document simdjson refuses,
duplicate keys) goes through the orjson/stdlib path above, so results and error messages are
the same either way.

Costs (2-core host, [1,3,64,64] FP32): a v2 JSON request decodes in ~0.27 ms (orjson and lists:
~0.56 ms; stdlib ``json``: ~4.5 ms), the same request in binary in ~8 us; encoding it as JSON takes ~0.2 ms (stdlib:
~6.2 ms). Clients that care should still send binary (tritonclient does by default).
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import sys
import zipfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.runners.inputs import is_dynamic as _is_dynamic  # the one rule for dynamic dims

try:  # numpy has no bfloat16; ml_dtypes (a small numpy extension) registers one
    import ml_dtypes as _ml_dtypes

    _BF16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - exercised by monkeypatching DATATYPES
    _BF16 = None

try:  # fast JSON (C/Rust); optional at import time, stdlib json is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised by monkeypatching _USE_ORJSON
    _orjson = None

_USE_ORJSON = _orjson is not None
"""Whether :func:`loads`/:func:`dumps` use orjson; tests set it False to exercise stdlib json."""

try:  # simdjson: numeric JSON arrays straight into a C buffer, no Python float per element
    import simdjson as _simdjson
except ImportError:  # pragma: no cover - exercised by monkeypatching _LAZY_JSON_MIN_BYTES
    _simdjson = None

_LAZY_JSON_MIN_BYTES: int | None = 4096 if _simdjson is not None else None
"""v2 JSON requests at least this big have their tensors' ``data`` read by simdjson (see
:func:`_lazy_v2_doc`); None: never. Below it orjson is cheaper than building the lazy document.
Tests set it to 0 to run every request through that path."""


class CodecError(ValueError):
    """A client sent something the codec can't accept; ``str(e)`` is the message for the client."""


DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # object arrays whose elements are ``bytes``
}
"""v2 datatype -> numpy dtype. ``BF16`` is present only when ml_dtypes is importable."""
if _BF16 is not None:
    DATATYPES["BF16"] = _BF16

_KNOWN_DATATYPES = frozenset(DATATYPES) | {"BF16"}
_BYTES_DTYPE_NAMES = {"object", "str", "string", "bytes", "bytes_", "str_"}
_INPUT_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_LEN = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a v2 datatype string; CodecError for unknown ones and unsupported BF16."""
    dt = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dt is not None:
        return dt
    if datatype == "BF16":
        raise CodecError("BF16 is not supported by this server (it needs the ml_dtypes package)")
    raise CodecError(f"unknown datatype {datatype!r}; supported: {', '.join(DATATYPES)}")


def datatype_of(dtype: Any) -> str:
    """The v2 datatype of a numpy dtype, or of a dtype name as specs write it ("float32",
    "bfloat16", "object", or already a v2 name like "FP32"). ``object``, ``str`` and ``bytes``
    arrays are BYTES. CodecError for dtypes v2 can't carry (complex, datetime, ...)."""
    if isinstance(dtype, np.dtype):  # every request asks this of its arrays: answered once per dtype
        hit = _DATATYPE_OF.get(dtype)
        if hit is None:
            hit = _DATATYPE_OF[dtype] = _datatype_of(dtype)
        return hit
    return _datatype_of(dtype)


_DATATYPE_OF: dict[np.dtype, str] = {}


def _datatype_of(dtype: Any) -> str:
    if isinstance(dtype, str):
        if dtype in _KNOWN_DATATYPES:
            return dtype
        if dtype == "bfloat16":
            return "BF16"
        if dtype in _BYTES_DTYPE_NAMES:
            return "BYTES"
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise CodecError(f"dtype {dtype!r} has no v2 datatype") from None
    if dt.kind in "OSU":
        return "BYTES"
    if dt.byteorder in "<>":
        dt = dt.newbyteorder("=")
    if _BF16 is not None and dt == _BF16:
        return "BF16"
    for name, candidate in DATATYPES.items():
        if candidate == dt and name != "BYTES":
            return name
    raise CodecError(f"dtype {dt.name} has no v2 datatype")


# --------------------------------------------------------------------------------------------
# JSON


def loads(body: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads`` for request bodies, with orjson when available.

    Accepts what stdlib ``json.loads`` accepts (orjson refusals are retried with stdlib, so
    ``NaN``, lone surrogates and UTF-16/32 bodies still parse) and raises what it raises: a
    ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError``) for anything that is not JSON,
    also for nesting too deep to parse (stdlib's ``RecursionError`` becomes a ``ValueError``)."""
    try:
        return _loads(body)
    except RecursionError as e:
        raise ValueError(f"JSON nested too deeply: {e}") from None


def _loads(body: bytes | bytearray | memoryview | str) -> Any:
    """Like :func:`loads` but lets stdlib's ``RecursionError`` through."""
    if _USE_ORJSON:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass  # stdlib decides: it accepts more (NaN, surrogates, UTF-16) and its errors are the ones we report
    if isinstance(body, memoryview):
        body = body.tobytes()
    return json.loads(body)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes of ``obj`` (dicts, lists, str, numbers and numpy arrays/scalars, which
    become nested lists), with orjson when available. NaN and infinities are written as stdlib
    ``json`` writes them (``NaN``, ``Infinity``): a document holding any goes through stdlib. A
    ``TypeError`` for objects JSON can't hold."""
    if _USE_ORJSON:
        try:
            out = _orjson.dumps(obj, default=_json_default, option=_orjson.OPT_SERIALIZE_NUMPY)
        except _orjson.JSONEncodeError:
            out = None  # e.g. str with lone surrogates or ints beyond 64 bits: stdlib handles them
        # orjson writes NaN and infinities as null: only a document with a null in it is searched for them
        if out is not None and (b"null" not in out or not _has_non_finite(obj)):
            return out
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _has_non_finite(obj: Any) -> bool:
    """Whether a NaN or infinity hides in ``obj`` (float arrays, floats, in dicts and lists;
    the lists codecs build hold no floats but an array's, so this stays cheap)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        t = type(o)
        if t is str or t is int or t is bool or o is None:  # most of a response document: nothing to see
            continue
        if t is dict:
            stack.extend(o.values())
        elif t is list:
            stack.extend(o)
        elif isinstance(o, (np.ndarray, np.generic)):
            kind = o.dtype.kind
            if kind == "f":
                if not np.isfinite(o).all():
                    return True
            elif kind == "O":
                stack.extend(np.ravel(o).tolist())
            elif kind not in "biu":  # bfloat16 and other extension dtypes: let stdlib (tolist) write them
                return True
        elif isinstance(o, float):
            if not math.isfinite(o):
                return True
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple):
            stack.extend(o)
    return False



# --------------------------------------------------------------------------------------------
# v2 requests


@dataclass
class V2Request:
    """A decoded v2 inference request.

    ``inputs`` keeps the request's order. ``outputs`` is what the client asked for, each
    ``{"name", "binary_data": bool | None, "parameters": {...}}`` (empty: all outputs).
    ``binary_output_default`` is the request-level ``parameters.binary_data_output``."""

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    binary_output_default: bool = False
    binary_inputs: bool = False  # every input's data came in binary, after the JSON header

    @property
    def requested(self) -> list[str] | None:
        """Names of the requested outputs, or None for all of them."""
        return [o["name"] for o in self.outputs] or None

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary: its own ``binary_data`` if given, else the
        request's ``binary_data_output``. Pass it as ``encode_v2_response(binary=...)``."""
        for o in self.outputs:
            if o["name"] == name and o["binary_data"] is not None:
                return o["binary_data"]
        return self.binary_output_default


def decode_v2_request(body: bytes, header_length: int | None) -> V2Request:
    """Decode a v2 ``/infer`` request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: the body is all
    JSON). Inputs with ``parameters.binary_data_size`` take their bytes, in input order, from what
    follows the JSON header; those arrays are read-only views of ``body`` (see the module doc)."""
    if isinstance(header_length, str):
        try:
            header_length = int(header_length)
        except ValueError:
            raise CodecError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not isinstance(body, bytes | bytearray):
        body = bytes(body)
    total = len(body)
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if isinstance(header_length, bool) or not isinstance(header_length, int) or header_length < 0:
            raise CodecError(f"Inference-Header-Content-Length must be a non-negative integer, got {header_length!r}")
        if header_length > total:
            raise CodecError(f"Inference-Header-Content-Length is {header_length} but the request body "
                             f"has only {total} bytes")
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    doc = _lazy_v2_doc(header) if _LAZY_JSON_MIN_BYTES is not None and len(header) >= _LAZY_JSON_MIN_BYTES else None
    try:
        if doc is None:
            doc = _loads(header)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        hint = ""
        if header_length is None and isinstance(e, json.JSONDecodeError) and e.msg == "Extra data":
            hint = (" (bytes follow the JSON object: a request with binary tensor data needs the "
                    "Inference-Header-Content-Length header)")
        raise CodecError(f"the request is not valid JSON: {e}{hint}") from None
    if not isinstance(doc, dict):
        raise CodecError("the request must be a JSON object with an 'inputs' list")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise CodecError(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise CodecError("'parameters' must be a JSON object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise CodecError(f"parameters.binary_data_output must be true or false, got {binary_default!r}")
    outputs = _decode_requested_outputs(doc.get("outputs"))

    if "inputs" not in doc:
        raise CodecError("the request has no 'inputs'")
    raw_inputs = doc["inputs"]
    if not isinstance(raw_inputs, list):
        raise CodecError("'inputs' must be a list of tensors")

    inputs: dict[str, np.ndarray] = {}
    offset = n_binary = 0
    for i, inp in enumerate(raw_inputs):
        if not isinstance(inp, dict):
            raise CodecError(f"inputs[{i}] must be a JSON object with name, shape, datatype and data")
        name = inp.get("name")
        if not isinstance(name, str) or not name:
            raise CodecError(f"inputs[{i}] has no name")
        if name in inputs:
            raise CodecError(f"input {name!r} appears more than once")
        datatype = inp.get("datatype")
        if datatype is None:
            raise CodecError(f"input {name!r} has no datatype")
        try:
            dtype = numpy_dtype(datatype)
        except CodecError as e:
            raise CodecError(f"input {name!r}: {e}") from None
        shape = _shape(name, inp.get("shape"))
        count = math.prod(shape)
        params = inp.get("parameters") or {}
        if not isinstance(params, dict):
            raise CodecError(f"input {name!r}: 'parameters' must be a JSON object")
        if any(k in params for k in _INPUT_SHM_KEYS):
            raise CodecError(f"input {name!r}: shared memory is not supported; send the data in the request")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in inp:
                raise CodecError(f"input {name!r} has both 'data' and parameters.binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise CodecError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            left = len(binary) - offset
            if size > left:
                if header_length is None:
                    raise CodecError(f"input {name!r} has binary_data_size {size} but the request has no "
                                     "Inference-Header-Content-Length header (needed for binary data)")
                raise CodecError(f"input {name!r}: binary_data_size is {size} but only {left} bytes of binary "
                                 "data are left in the request")
            inputs[name] = _binary_tensor(name, datatype, dtype, shape, count, binary, offset, size)
            offset += size
            n_binary += 1
        elif "data" in inp:
            arr = _json_tensor(name, datatype, dtype, inp["data"])
            if arr.size != count:
                raise CodecError(f"input {name!r}: shape {shape} needs {count} elements, got {arr.size}")
            inputs[name] = arr.reshape(shape)
        else:
            raise CodecError(f"input {name!r} has no data: give 'data' or parameters.binary_data_size")
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} bytes of binary data are left over after the last input "
                         f"(the inputs' binary_data_size add up to {offset}, the body has {len(binary)} "
                         "after the JSON header)")
    return V2Request(request_id, inputs, parameters, outputs, binary_default,
                     binary_inputs=header_length is not None and offset == len(binary) and n_binary == len(inputs))


@dataclass(slots=True)
class V2Plan:
    """How to read a v2 binary request whose JSON header was seen before, and write its response.

    Clients send the same header again and again (the same tensors, shapes and options; only the
    binary data differ), so the serving path decodes and checks a header once
    (:func:`decode_v2_request`, then the model's input and bound checks) and keeps this plan,
    keyed by the header's exact bytes: the next such request is numpy views of its body. Only
    for headers with every input in binary and of a fixed-size type whose bytes need no check
    (not BYTES, not BOOL). The response header is kept too, while the outputs keep their dtypes
    and shapes and all go back in binary; anything else is encoded as usual."""

    request_id: str | None
    tensors: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...] | None  # name, dtype, shape, count, offset
    binary_size: int
    requested: list[str] | None
    binary: Callable[[str], bool]
    limits: Any = None  # the bounds the inputs were checked against (the caller's)
    out_key: tuple | None = None  # (name, dtype, shape) of each output the kept response header describes
    out_header: bytes | None = None
    out_headers: dict[str, str] | None = None

    @classmethod
    def of(cls, req: V2Request, header_length: int | None = None, body_length: int = 0) -> V2Plan:
        """The plan of a request :func:`decode_v2_request` decoded (``header_length`` and
        ``body_length`` as it was given). It always encodes the response; :attr:`reusable` says
        whether it can also read the next request with the same header."""
        per_output = {o["name"]: o.get("binary_data") for o in req.outputs}
        default = req.binary_output_default

        def binary(out_name: str) -> bool:
            flag = per_output.get(out_name)
            return default if flag is None else bool(flag)

        tensors, offset = [], header_length or 0
        for name, arr in req.inputs.items():
            tensors.append((name, arr.dtype, arr.shape, arr.size, offset))
            offset += arr.nbytes
        reusable = (_LITTLE and req.binary_inputs and header_length is not None and offset == body_length
                    and all(arr.dtype.kind in "fiuc" for arr in req.inputs.values()))  # BYTES, BOOL: checked each time
        return cls(req.id, tuple(tensors) if reusable else None, body_length - (header_length or 0),
                   req.requested, binary)

    @property
    def reusable(self) -> bool:
        return self.tensors is not None

    def feeds(self, body: bytes) -> dict[str, np.ndarray]:
        return {name: np.frombuffer(body, dtype, count, offset).reshape(shape)
                for name, dtype, shape, count, offset in self.tensors}

    def encode(self, model_name: str, model_version: str | None,
               outputs: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
        """:func:`encode_v2_response` for this request, reusing the last response header when it still fits."""
        names = self.requested or list(outputs)
        try:
            arrays = [outputs[n] for n in names]
        except KeyError:
            arrays = None
        if arrays is not None and self.out_key is not None:
            key = tuple((n, getattr(a, "dtype", None), getattr(a, "shape", None))
                        for n, a in zip(names, arrays, strict=True))
            if key == self.out_key:  # every output an array, as when the header was kept
                return b"".join([self.out_header, *(np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                                                    for a in arrays)]), self.out_headers
        payload, headers = encode_v2_response(model_name, model_version, self.request_id, outputs,
                                              binary=self.binary, requested=self.requested)
        if arrays is not None and all(self.binary(n) and isinstance(a, np.ndarray) and a.dtype.kind in "fiucb"
                                      and a.dtype.byteorder in "=|<" for n, a in zip(names, arrays, strict=True)):
            hl = int(headers["Inference-Header-Content-Length"])
            self.out_key = tuple((n, a.dtype, a.shape) for n, a in zip(names, arrays, strict=True))
            self.out_header, self.out_headers = payload[:hl], headers
        return payload, headers


_LAZY_MAX_KEYS = 32
"""Objects with more keys go to the list path: simdjson looks keys up by a linear scan, and a v2
request object has a handful."""


def _lazy_v2_doc(header: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    """The request document with every ``inputs[i]["data"]`` array left as a ``simdjson.Array``
    (read later by :func:`_json_tensor`), everything else as plain Python values; None whenever
    this path might not give what the list path gives, which then parses the request as usual:
    a document simdjson refuses (numbers beyond 64 bits, nesting deeper than 1024, NaN literals,
    invalid UTF-8 or surrogates), a top level that is not an object, an object that repeats a key
    (simdjson keeps the first, JSON parsers here the last), has more than ``_LAZY_MAX_KEYS`` keys,
    or a key holding NUL (simdjson's lookup stops at it).

    A fresh parser per call: a simdjson parser can't parse again while proxies into its last
    document live, and an exception's traceback can keep them alive; making one costs ~0.1 us."""
    try:
        return _lazy_v2_doc_or_none(header)
    except Exception:  # anything simdjson raises (ValueError, RuntimeError, KeyError, ...): list path decides
        return None


def _lazy_v2_doc_or_none(header: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    root = _simdjson.Parser().parse(header if isinstance(header, bytes) else bytes(header))
    Object, Array = _simdjson.Object, _simdjson.Array
    if not isinstance(root, Object):
        return None

    def plain(v: Any) -> Any:
        if isinstance(v, Object):
            return v.as_dict()
        return v.as_list() if isinstance(v, Array) else v

    def fields(obj: Any) -> list[str] | None:
        keys = list(obj.keys())
        if len(keys) > _LAZY_MAX_KEYS or len(set(keys)) != len(keys) or any("\0" in k for k in keys):
            return None
        return keys

    keys = fields(root)
    if keys is None:
        return None
    doc: dict[str, Any] = {}
    for key in keys:
        value = root[key]
        if key == "inputs" and isinstance(value, Array):
            inputs = []
            for item in value:
                if isinstance(item, Object):
                    item_keys = fields(item)
                    if item_keys is None:
                        return None
                    entry = {k: item[k] for k in item_keys}
                    inputs.append({k: v if k == "data" and isinstance(v, Array) else plain(v) for k, v in entry.items()})
                else:
                    inputs.append(plain(item))
            doc[key] = inputs
        else:
            doc[key] = plain(value)
    return doc


def _decode_requested_outputs(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CodecError("'outputs' must be a list")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, o in enumerate(raw):
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str) or not name:
            raise CodecError(f"outputs[{i}] must be a JSON object with a name")
        if name in seen:
            raise CodecError(f"output {name!r} is requested more than once")
        seen.add(name)
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise CodecError(f"output {name!r}: 'parameters' must be a JSON object")
        flag = params.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise CodecError(f"output {name!r}: binary_data must be true or false, got {flag!r}")
        if "shared_memory_region" in params:
            raise CodecError(f"output {name!r}: shared memory is not supported")
        if params.get("classification"):
            raise CodecError(f"output {name!r}: the classification extension is not supported")
        out.append({"name": name, "binary_data": flag, "parameters": params})
    return out


MAX_RANK = 32
MAX_ELEMENTS = 2**40
"""A tensor's shape may not promise more elements than this (not counting zero dims): numpy could
not even describe it, and no body carries it."""


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise CodecError(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative integers, "
                         f"got {str(shape)[:200]}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise CodecError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {str(shape)[:200]}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise CodecError(f"input {name!r}: shape {str(shape)[:200]} has more elements than any request can carry")
    return shape


def _binary_tensor(name: str, datatype: str, dtype: np.dtype, shape: list[int], count: int,
                   binary: memoryview, offset: int, size: int) -> np.ndarray:
    if datatype == "BYTES":
        arr = _parse_bytes(name, binary[offset:offset + size])
        if arr.size != count:
            raise CodecError(f"input {name!r}: shape {shape} needs {count} BYTES elements, got {arr.size}")
        return arr.reshape(shape)
    expected = count * dtype.itemsize
    if size != expected:
        raise CodecError(f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of {datatype} "
                         f"needs {expected}")
    if datatype == "BOOL" and count:
        raw = np.frombuffer(binary, dtype=np.uint8, count=count, offset=offset)
        if raw.max() > 1:
            raise CodecError(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
    arr = np.frombuffer(binary, dtype=dtype if _LITTLE else dtype.newbyteorder("<"), count=count, offset=offset)
    return arr.reshape(shape)


def _parse_bytes(name: str, buf: memoryview) -> np.ndarray:
    items: list[bytes] = []
    pos, end = 0, len(buf)
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            raise CodecError(f"input {name!r}: BYTES data is truncated (a 4-byte length prefix is cut off)")
        (n,) = unpack(buf, pos)
        pos += 4
        if pos + n > end:
            raise CodecError(f"input {name!r}: BYTES element {len(items)} says {n} bytes but only "
                             f"{end - pos} are left")
        items.append(bytes(buf[pos:pos + n]))
        pos += n
    return _object_array(items)


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


# --------------------------------------------------------------------------------------------
# JSON lists -> arrays (shared by v2 "data" and v1 JSON)


def _json_tensor(name: str, datatype: str, dtype: np.dtype, data: Any, *, text: bool = False) -> np.ndarray:
    """JSON ``data`` (flat or nested lists) as an array of ``dtype``, type-checked.

    The fast path lets numpy build the array from the lists and checks the dtype it inferred (so
    strings for FP32 or floats for INT64 are caught without a Python loop over the elements);
    ragged lists, huge integers and wrong types take a Python path that names the bad element.
    The result's shape is whatever the nesting gives; callers check the count and reshape.
    ``text``: BYTES elements stay ``str`` (v1) instead of becoming UTF-8 ``bytes`` (v2).
    ``data`` may also be a ``simdjson.Array`` (from :func:`_lazy_v2_doc`): numbers go straight
    into an array (flattened, as v2 flattens nested data anyway); anything else is read as lists."""
    if _simdjson is not None and isinstance(data, _simdjson.Array):
        arr = _buffer_tensor(data, dtype)
        if arr is not None:
            return arr
        data = data.as_list()
    if not isinstance(data, list):
        raise CodecError(f"input {name!r}: data must be a list, got {type(data).__name__}")
    if dtype.kind == "O":
        flat = _flatten(data)
        for i, x in enumerate(flat):
            if not isinstance(x, str):
                raise CodecError(f"input {name!r}: {datatype} data must be strings; element {i} is {x!r}")
        return _object_array(flat if text else [s.encode("utf-8") for s in flat])
    try:
        arr = np.array(data)
    except (ValueError, TypeError):  # ragged nesting
        arr = None
    if arr is not None:
        kind = arr.dtype.kind
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=dtype)
        if dtype.kind == "b":
            if kind == "b":
                return arr
        elif dtype.kind in "iu":
            if kind in "iu" and (arr.dtype == dtype or _in_range(arr, dtype)):
                return arr.astype(dtype, copy=False)
        elif kind in "iuf":  # float or bfloat16 targets take any number
            return arr.astype(dtype, copy=False)
    return _json_tensor_slow(name, datatype, dtype, data)


def _buffer_tensor(data: Any, dtype: np.dtype) -> np.ndarray | None:
    """A flat array of ``dtype`` from a ``simdjson.Array`` of numbers, or None where the list
    path must decide (booleans, strings, nulls, floats for an integer type, out of range)."""
    kind = dtype.kind
    if kind in "bO":
        return None
    if kind in "iu":
        arr = _as_buffer(data, "i")
        if arr is None or (arr.size and dtype != arr.dtype and not _in_range(arr, dtype)):
            return None
    else:  # float16/32/64 and bfloat16 take any number, as on the list path, which makes all-integer
        # data int64 (or uint64) first: one rounding to the float type, not two through float64
        arr = _as_buffer(data, "i")
        if arr is None:
            arr = _as_buffer(data, "u")
        if arr is None:
            arr = _as_buffer(data, "d")
        if arr is None:
            return None
    return arr.astype(dtype)  # a copy: owns its memory, writeable, native byte order


def _as_buffer(data: Any, of_type: str) -> np.ndarray | None:
    """The numbers of a ``simdjson.Array`` as int64 ("i"), uint64 ("u") or float64 ("d"), flattened;
    None when one of them isn't of that type (simdjson stops at the first)."""
    try:
        return np.frombuffer(data.as_buffer(of_type=of_type), dtype={"i": np.int64, "u": np.uint64, "d": np.float64}[of_type])
    except (TypeError, ValueError, RuntimeError):  # INCORRECT_TYPE, NUMBER_OUT_OF_RANGE, ...
        return None


def _in_range(arr: np.ndarray, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= int(arr.min()) and int(arr.max()) <= info.max


def _json_tensor_slow(name: str, datatype: str, dtype: np.dtype, data: list) -> np.ndarray:
    flat = _flatten(data)
    if dtype.kind == "b":
        for i, x in enumerate(flat):
            if not isinstance(x, bool):
                raise CodecError(f"input {name!r}: {datatype} data must be true/false; element {i} is {x!r}")
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        for i, x in enumerate(flat):
            if isinstance(x, bool) or not isinstance(x, int):
                raise CodecError(f"input {name!r}: {datatype} data must be integers; element {i} is {x!r}")
            if not info.min <= x <= info.max:
                raise CodecError(f"input {name!r}: element {i} ({x}) is out of range for {datatype} "
                                 f"[{info.min}, {info.max}]")
    else:
        for i, x in enumerate(flat):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise CodecError(f"input {name!r}: {datatype} data must be numbers; element {i} is {x!r}")
    try:
        return np.array(flat, dtype=dtype)
    except (OverflowError, ValueError) as e:
        raise CodecError(f"input {name!r}: data does not fit {datatype}: {e}") from None


def _flatten(data: list) -> list:
    """Row-major leaves of nested lists, without recursion (nesting depth is the client's choice)."""
    if not any(isinstance(x, list) for x in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


# --------------------------------------------------------------------------------------------
# v2 responses


def encode_v2_response(model_name: str, model_version: str | None, request_id: str | None,
                       outputs: Mapping[str, np.ndarray], *,
                       binary: bool | Collection[str] | Callable[[str], bool] = False,
                       requested: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """A v2 response body and its headers (Content-Type, and Inference-Header-Content-Length when
    any output is binary).

    ``binary``: True/False for all outputs, a set of output names, or a predicate (e.g.
    :meth:`V2Request.wants_binary`). ``requested``: only these outputs, in this order (None or
    empty: all, in the model's order); an unknown name is a CodecError."""
    if requested:
        missing = [n for n in requested if n not in outputs]
        if missing:
            raise CodecError(f"requested output {missing[0]!r} is not an output of the model; available: "
                             f"{', '.join(outputs)}")
        names: Iterable[str] = requested
    else:
        names = outputs
    if callable(binary):
        is_binary = binary
    elif isinstance(binary, bool):
        is_binary = (lambda _n: True) if binary else (lambda _n: False)
    else:
        chosen = {binary} if isinstance(binary, str) else set(binary)
        is_binary = chosen.__contains__

    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    doc["model_name"] = model_name
    if model_version is not None:
        doc["model_version"] = model_version
    tensors: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for name in names:
        arr = np.asarray(outputs[name])
        try:
            datatype = datatype_of(arr.dtype)
        except CodecError as e:
            raise CodecError(f"output {name!r}: {e}") from None
        t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if is_binary(name):
            raw = _to_binary(name, arr, datatype)
            t["parameters"] = {"binary_data_size": raw.nbytes if isinstance(raw, np.ndarray) else len(raw)}
            chunks.append(raw)
        else:
            t["data"] = _json_data(name, arr, datatype, flat=True)
        tensors.append(t)
    doc["outputs"] = tensors
    header = dumps(doc)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream",
                                         "Inference-Header-Content-Length": str(len(header))}


def _to_binary(name: str, arr: np.ndarray, datatype: str) -> bytes | np.ndarray:
    """The wire bytes of one tensor: a uint8 view where possible (no copy until the final join)."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for x in _bytes_elements(name, arr):
            parts.append(_LEN.pack(len(x)))
            parts.append(x)
        return b"".join(parts)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _bytes_elements(name: str, arr: np.ndarray) -> list[bytes]:
    out = []
    for x in arr.reshape(-1).tolist():
        if isinstance(x, bytes):
            out.append(x)
        elif isinstance(x, str):
            out.append(x.encode("utf-8"))
        else:
            raise CodecError(f"output {name!r}: BYTES elements must be bytes or str, got {type(x).__name__}")
    return out


def _to_json_list(name: str, arr: np.ndarray, datatype: str, *, flat: bool) -> Any:
    if datatype == "BF16":
        arr = arr.astype(np.float32)
    elif datatype == "BYTES":
        try:
            items = [x.decode("utf-8") if isinstance(x, bytes) else x for x in arr.reshape(-1).tolist()]
        except UnicodeDecodeError:
            raise CodecError(f"output {name!r} holds bytes that are not UTF-8 and can't go in JSON; "
                             "ask for it as binary data") from None
        if flat:
            return items
        return _object_array(items).reshape(arr.shape).tolist()
    return arr.reshape(-1).tolist() if flat else arr.tolist()


def _json_data(name: str, arr: np.ndarray, datatype: str, *, flat: bool) -> Any:
    """What :func:`dumps` writes for one output: with orjson a C-contiguous native-endian array
    of a dtype it serializes natively (no Python lists), else :func:`_to_json_list`'s lists."""
    if not _USE_ORJSON or datatype == "BYTES" or arr.ndim == 0:
        return _to_json_list(name, arr, datatype, flat=flat)
    if datatype == "BF16":
        arr = arr.astype(np.float32)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    return arr.reshape(-1) if flat else arr


# --------------------------------------------------------------------------------------------
# v1 API


def decode_v1_json(obj: Any, specs: Mapping[str, tuple[Any, list | None]] | None) -> dict[str, np.ndarray]:
    """``{"inputs": {"x": [[...]]}}`` -> arrays. With ``specs`` (name -> (dtype, shape); dtype a
    numpy name like "float32" or None; shape entries None/str/<=0 for dynamic dims, shape None for
    unknown rank) lists become the spec's dtype (type-checked: strings for float32 are refused) and
    rank and fixed dims are checked. Without specs numpy infers the dtype. Strings for ``object``
    inputs stay ``str``; numbers for a ``bfloat16`` input become float32."""
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), dict):
        raise CodecError('the request must be a JSON object {"inputs": {"<input name>": <nested list>, ...}}')
    raw: dict[str, Any] = obj["inputs"]
    if specs is not None:
        _check_names(raw, list(specs))
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if not isinstance(value, list):
            value = [value] if isinstance(value, (int, float, str)) else value
            scalar = True
        else:
            scalar = False
        dtype_spec, shape_spec = specs[name] if specs is not None else (None, None)
        dtype = _spec_dtype(dtype_spec)
        if _BF16 is not None and dtype == _BF16:
            dtype = np.dtype(np.float32)  # what the runtimes take for a bfloat16 input (see check_inputs)
        if dtype is None:
            arr = _infer_json(name, value)
        else:
            arr = _json_tensor(name, _dtype_label(dtype), dtype, value, text=True)
            if arr.ndim == 1 and value and isinstance(value[0], list):  # came back flat: rebuild the nesting
                arr = arr.reshape(_nested_shape(name, value))
        if scalar:
            arr = arr.reshape(())
        if shape_spec is not None:
            _check_shape(name, arr, shape_spec)
        out[name] = arr
    return out


def _infer_json(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        raise CodecError(f"input {name!r} is not a regular nested list (rows of different lengths)") from None
    if arr.dtype.kind not in "biufU":
        raise CodecError(f"input {name!r} must be a nested list of numbers, booleans or strings")
    return arr.astype(object) if arr.dtype.kind == "U" else arr


def _nested_shape(name: str, value: list) -> list[int]:
    """The shape of regular nested lists, level by level; ragged ones are a CodecError."""
    shape: list[int] = []
    level: list = [value]
    while level and isinstance(level[0], list):
        if not all(isinstance(x, list) for x in level) or len({len(x) for x in level}) != 1:
            raise CodecError(f"input {name!r} is not a regular nested list (rows of different lengths)")
        shape.append(len(level[0]))
        level = [y for x in level for y in x]
    if any(isinstance(x, list) for x in level):
        raise CodecError(f"input {name!r} is not a regular nested list (rows of different lengths)")
    return shape


def decode_npy(body: bytes) -> np.ndarray:
    """One array from ``.npy`` bytes: a view of the body (read-only for ``bytes``), its header
    checked against the bytes that follow before anything is allocated. Pickles and object arrays
    are refused."""
    head = bytes(body[:6])
    if head != _NPY_MAGIC:
        if head[:4] == _ZIP_MAGIC:
            raise CodecError("expected one .npy array but the body is an .npz archive")
        raise CodecError("the body is not a .npy file (it does not start with the .npy magic bytes)")
    return _npy_view(body, "the body")


def _npy_view(buf: bytes | bytearray | memoryview, what: str, key: str | None = None) -> np.ndarray:
    from numpy.lib import format as npf

    f = io.BytesIO(buf)
    try:
        version = npf.read_magic(f)
        read = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, fortran, dtype = read(f, max_header_size=10000)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise CodecError(f"{what} is not a valid .npy file: {e}") from None
    if dtype.hasobject:
        if key is not None:
            raise CodecError(f"array {key!r} in the .npz holds Python objects (it needs pickle), which is refused; "
                             "send numeric arrays")
        raise CodecError("the .npy holds an array of Python objects (it needs pickle), which is refused; "
                         "send numeric arrays")
    count = math.prod(shape)
    left = len(buf) - f.tell()
    if count * dtype.itemsize != left:
        raise CodecError(f"{what} is not a valid .npy file: its header says shape {list(shape)} of {dtype.name} "
                         f"({count * dtype.itemsize} bytes) but {left} bytes follow it")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def decode_npz(body: bytes, *, max_bytes: int | None = None, max_members: int = 1024) -> dict[str, np.ndarray]:
    """Arrays by name from ``.npz`` bytes (``x.npy`` -> "x"). Pickles and object arrays are
    refused. Budgets checked before anything is inflated: at most ``max_members`` members (read
    from the archive's end, before its directory is parsed) and ``max_bytes`` uncompressed in all
    (each member's declared size, which is also all zipfile will inflate); each array is parsed
    once, its header checked against its bytes."""
    head = bytes(body[:6])
    if head[:4] != _ZIP_MAGIC:
        if head == _NPY_MAGIC:
            raise CodecError("expected an .npz archive but the body is a single .npy array")
        raise CodecError("the body is not an .npz archive (it does not start with the zip magic bytes)")
    from app.limits import OverBudget, check_zip_directory

    try:
        check_zip_directory(bytes(body[-70000:]), len(body), max_members, "the .npz")
        zf = zipfile.ZipFile(io.BytesIO(body))
    except OverBudget as e:
        raise CodecError(str(e)) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise CodecError(f"the body is not a valid .npz archive: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise CodecError(f"the .npz has {len(infos)} members, over the limit of {max_members}")
        size = sum(i.file_size for i in infos)
        if max_bytes is not None and size > max_bytes:
            raise CodecError(f"the .npz unpacks to {size} bytes, more than the {max_bytes} allowed")
        out: dict[str, np.ndarray] = {}
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                data = zf.read(info)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
                raise CodecError(f"array {key!r} in the .npz is not valid: {e}") from None
            if not data.startswith(_NPY_MAGIC):
                raise CodecError(f"member {key!r} of the .npz is not a .npy array")
            try:
                out[key] = _npy_view(data, f"array {key!r} in the .npz", key)
            except CodecError as e:
                msg = str(e)
                if "Python objects" in msg:
                    raise
                raise CodecError(msg.replace("is not a valid .npy file", "is not valid")) from None
    return out


def encode_npz(outputs: Mapping[str, np.ndarray]) -> bytes:
    """Outputs as an uncompressed ``.npz``, no pickles: object arrays of str become unicode
    arrays and of bytes become ``S`` arrays (numpy drops trailing NUL bytes of ``S`` elements)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in outputs.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "O":
                arr = _object_to_fixed(name, arr)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def _object_to_fixed(name: str, arr: np.ndarray) -> np.ndarray:
    items = arr.reshape(-1).tolist()
    if all(isinstance(x, str) for x in items):
        return np.array(items, dtype=str).reshape(arr.shape)
    if all(isinstance(x, bytes) for x in items):
        return np.array(items, dtype=bytes).reshape(arr.shape)
    raise CodecError(f"output {name!r} holds Python objects that can't be written to .npz")


def encode_v1_json(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"outputs": {name: nested list}}``; BF16 as floats, bytes as UTF-8 strings. To send it,
    :func:`dumps_v1` gives the same document as bytes, faster."""
    return {"outputs": _v1_outputs(outputs, _to_json_list)}


def dumps_v1(outputs: Mapping[str, np.ndarray]) -> bytes:
    """The v1 JSON response body: ``dumps(encode_v1_json(outputs))`` without building the nested
    lists when orjson is available (arrays go to it as they are). CodecError as encode_v1_json."""
    return dumps({"outputs": _v1_outputs(outputs, _json_data)})


def _v1_outputs(outputs: Mapping[str, np.ndarray], convert: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in outputs.items():
        arr = np.asarray(value)
        try:
            datatype = datatype_of(arr.dtype)
        except CodecError as e:
            raise CodecError(f"output {name!r}: {e}") from None
        out[name] = convert(name, arr, datatype, flat=False)
    return out


# --------------------------------------------------------------------------------------------
# checks against a model's input specs


def check_inputs(inputs: Mapping[str, np.ndarray], specs: Iterable[Any]) -> None:
    """Check decoded inputs against the model's specs: ``(name, dtype, shape)`` tuples or objects
    with those attributes (IOSpec). dtype None = anything; a ``bfloat16`` input also takes float32
    (runtimes without bfloat16 get float32) and an ``object`` one any str/bytes array. No casting:
    a float64 tensor for a float32 input is an error. Shape None = any rank; dims None, str or <= 0
    are dynamic."""
    specs = [tuple(s) if isinstance(s, tuple | list) else (s.name, s.dtype, s.shape) for s in specs]
    _check_names(inputs, [s[0] for s in specs])
    for name, dtype_spec, shape_spec in specs:
        arr = inputs[name]
        want = _spec_dtype(dtype_spec)
        if want is not None and not _dtype_ok(arr.dtype, want):
            raise CodecError(f"input {name!r}: expected dtype {_dtype_label(want)}, got {_dtype_label(arr.dtype)}")
        if shape_spec is not None:
            _check_shape(name, arr, shape_spec)


def _check_names(given: Iterable[str], expected: list[str]) -> None:
    given = list(given)
    listing = ", ".join(repr(n) for n in expected) or "none"
    unknown = [n for n in given if n not in expected]
    if unknown:
        raise CodecError(f"unknown input {unknown[0]!r}; the model's inputs are: {listing}")
    missing = [n for n in expected if n not in given]
    if missing:
        which = ", ".join(repr(n) for n in missing)
        raise CodecError(f"missing input{'s' if len(missing) > 1 else ''} {which}; the model's inputs are: {listing}")


def _spec_dtype(spec: Any) -> np.dtype | None:
    """A spec's dtype (numpy name, v2 name or dtype) as numpy; None when absent or not understood."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec in DATATYPES:
            return DATATYPES[spec]
        if spec in _BYTES_DTYPE_NAMES:
            return np.dtype(object)
    try:
        return np.dtype(spec)
    except TypeError:
        return None


def _dtype_ok(got: np.dtype, want: np.dtype) -> bool:
    if got == want:
        return True
    if want.kind == "O":
        return got.kind in "OSU"
    return _BF16 is not None and want == _BF16 and got == np.float32


@functools.lru_cache(maxsize=256)
def _dtype_label(dt: np.dtype) -> str:
    try:
        return f"{dt.name} ({datatype_of(dt)})" if dt.kind != "O" else "object (BYTES)"
    except CodecError:
        return dt.name


def _fmt_shape(shape: list) -> str:
    return "[" + ", ".join("?" if _is_dynamic(d) else str(d) for d in shape) + "]"


def _check_shape(name: str, arr: np.ndarray, shape: list) -> None:
    if arr.ndim != len(shape):
        raise CodecError(f"input {name!r}: expected rank {len(shape)} (shape {_fmt_shape(shape)}), "
                         f"got rank {arr.ndim} (shape {list(arr.shape)})")
    for i, (want, got) in enumerate(zip(shape, arr.shape, strict=True)):
        if not _is_dynamic(want) and want != got:
            raise CodecError(f"input {name!r}: dim {i} must be {want}, got {got} "
                             f"(expected shape {_fmt_shape(shape)}, got {list(arr.shape)})")


__all__ = [
    "DATATYPES", "CodecError", "V2Plan", "V2Request", "check_inputs", "datatype_of", "decode_npy", "decode_npz",
    "decode_v1_json", "decode_v2_request", "dumps", "dumps_v1", "encode_npz", "encode_v1_json",
    "encode_v2_response", "loads", "numpy_dtype",
]
