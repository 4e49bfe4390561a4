"""Tensor codec: v2 (JSON and Triton binary) round trips for every datatype, compatibility with the
real tritonclient request builder and response parser, v1 JSON/.npy/.npz, spec checks, and the
client-facing error messages (each names the tensor and what was expected and got)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.http as th

from app.serving import codec
from app.serving.codec import CodecError

ALL = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
       "FP16", "FP32", "FP64", "BYTES", "BF16"]
generate = th.InferenceServerClient.generate_request_body


def parse(body: bytes, headers: dict[str, str]):
    hl = headers.get("Inference-Header-Content-Length")
    return th.InferenceServerClient.parse_response_body(body, header_length=int(hl) if hl else None)


def sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(7)
    n = int(np.prod(shape))
    if datatype == "BYTES":
        items = [b"", "h\u00e9llo".encode(), b"x" * 300, b"a\x00b", b"z", "\u2603".encode()]
        return np.array((items * n)[:n], dtype=object).reshape(shape)
    dt = codec.DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        arr = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
        arr.flat[0], arr.flat[-1] = info.min, info.max
        return arr
    return rng.standard_normal(shape).astype(np.float32).astype(dt)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert [x if isinstance(x, bytes) else x.encode() for x in got.ravel().tolist()] == want.ravel().tolist()
    else:
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def raises(fn, *parts: str) -> str:
    with pytest.raises(CodecError) as e:
        fn()
    msg = str(e.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def v2(inputs: list[dict], binary: bytes = b"", **extra) -> tuple[bytes, int | None]:
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + binary, (len(header) if binary else None)


# ---------------------------------------------------------------------------------------------
# datatypes


def test_datatypes_map_both_ways():
    assert set(codec.DATATYPES) == set(ALL)
    for name, dt in codec.DATATYPES.items():
        assert codec.numpy_dtype(name) == dt
        assert codec.datatype_of(dt) == name
    assert codec.datatype_of("float32") == "FP32"
    assert codec.datatype_of("bfloat16") == "BF16"
    assert codec.datatype_of("object") == "BYTES"
    assert codec.datatype_of(np.dtype("U3")) == "BYTES"
    assert codec.datatype_of("INT64") == "INT64"
    raises(lambda: codec.datatype_of("complex64"), "complex64")


def test_unknown_datatype_lists_supported():
    body, hl = v2([{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}])
    raises(lambda: codec.decode_v2_request(body, hl), "input 'x'", "unknown datatype 'FP8'", "FP32", "BYTES", "INT64")


def test_bf16_unsupported_without_ml_dtypes(monkeypatch):
    monkeypatch.delitem(codec.DATATYPES, "BF16")
    body, hl = v2([{"name": "x", "shape": [1], "datatype": "BF16", "parameters": {"binary_data_size": 2}}],
                  b"\x00\x00")
    raises(lambda: codec.decode_v2_request(body, hl), "input 'x'", "BF16 is not supported")


# ---------------------------------------------------------------------------------------------
# round trips through the real tritonclient


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_client_request_decodes(datatype, binary):
    x = sample(datatype)
    if datatype == "BF16" and not binary:  # tritonclient refuses BF16 as JSON; build it by hand
        body, hl = v2([{"name": "x", "shape": [2, 3], "datatype": "BF16",
                        "data": x.astype(np.float32).ravel().tolist()}])
    else:
        inp = th.InferInput("x", list(x.shape), datatype).set_data_from_numpy(x, binary_data=binary)
        body, hl = generate([inp], outputs=[th.InferRequestedOutput("y", binary_data=binary)], request_id="r-1")
    assert (hl is not None) == binary
    req = codec.decode_v2_request(body, hl)
    assert list(req.inputs) == ["x"]
    assert_same(req.inputs["x"], x)


@pytest.mark.parametrize("datatype", ALL)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_parses_in_client(datatype, binary):
    y = sample(datatype, (3, 2))
    body, headers = codec.encode_v2_response("m", "2", "r-9", {"y": y}, binary=binary)
    res = parse(body, headers)
    assert_same(res.as_numpy("y"), y)
    doc = res.get_response()
    assert (doc["id"], doc["model_name"], doc["model_version"]) == ("r-9", "m", "2")
    assert doc["outputs"][0]["datatype"] == datatype
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert int(headers["Inference-Header-Content-Length"]) < len(body)
    else:
        assert headers == {"Content-Type": "application/json"}
        json.loads(body)


def test_client_mixed_request_and_default_binary_output():
    a, b = sample("FP32", (1, 3, 8, 8)), sample("BYTES", (2,))
    ia = th.InferInput("a", list(a.shape), "FP32").set_data_from_numpy(a, binary_data=True)
    ib = th.InferInput("b", [2], "BYTES").set_data_from_numpy(b, binary_data=False)
    ic = th.InferInput("c", [4], "INT64").set_data_from_numpy(np.arange(4), binary_data=True)
    body, hl = generate([ia, ib, ic], parameters={"custom": 5})  # no outputs: binary_data_output=True
    req = codec.decode_v2_request(body, hl)
    assert list(req.inputs) == ["a", "b", "c"]
    assert_same(req.inputs["a"], a)
    assert_same(req.inputs["b"], b)
    assert_same(req.inputs["c"], np.arange(4))
    assert req.binary_output_default is True and req.requested is None and req.id is None
    assert req.parameters["custom"] == 5

    out, headers = codec.encode_v2_response("m", None, req.id, {"p": a * 2, "q": b}, binary=req.wants_binary,
                                            requested=req.requested)
    res = parse(out, headers)
    assert_same(res.as_numpy("p"), a * 2)
    assert_same(res.as_numpy("q"), b)
    assert "model_version" not in res.get_response() and "id" not in res.get_response()


def test_requested_outputs_and_per_output_binary():
    y, z = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int32)
    ix = th.InferInput("x", [1], "FP32").set_data_from_numpy(np.zeros(1, np.float32))
    outs = [th.InferRequestedOutput("z", binary_data=False), th.InferRequestedOutput("y", binary_data=True)]
    req = codec.decode_v2_request(*generate([ix], outputs=outs))
    assert req.requested == ["z", "y"]
    assert req.outputs[0]["binary_data"] is False and req.outputs[1]["binary_data"] is True
    assert (req.wants_binary("z"), req.wants_binary("y")) == (False, True)
    body, headers = codec.encode_v2_response("m", "1", None, {"y": y, "z": z, "w": y},
                                             binary=req.wants_binary, requested=req.requested)
    res = parse(body, headers)
    assert [o["name"] for o in res.get_response()["outputs"]] == ["z", "y"]  # request order; w left out
    assert "data" in res.get_output("z") and "parameters" in res.get_output("y")
    assert_same(res.as_numpy("y"), y)
    assert_same(res.as_numpy("z"), z)


def test_encode_binary_as_set_and_unknown_requested():
    y = np.ones((1, 10), np.float32)
    body, headers = codec.encode_v2_response("m", "1", None, {"y": y, "z": y}, binary={"z"})
    res = parse(body, headers)
    assert "data" in res.get_output("y") and res.get_output("z")["parameters"] == {"binary_data_size": 40}
    raises(lambda: codec.encode_v2_response("m", "1", None, {"y": y, "z": y}, binary=False, requested=["nope"]),
           "requested output 'nope'", "available: y, z")


def test_encode_layouts_and_special_values():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    outs = {"t": base.T, "be": base.astype(">f4"), "s": np.float64(2.5), "h": base.astype(np.float16),
            "u": np.array(["ab", "\u00e9"]), "e": np.zeros((0, 4), np.int8)}
    for binary in (True, False):
        res = parse(*codec.encode_v2_response("m", "1", None, outs, binary=binary))
        assert_same(res.as_numpy("t"), base.T.copy())
        assert_same(res.as_numpy("be"), base)
        assert res.as_numpy("s").shape == () and res.as_numpy("s") == 2.5
        assert_same(res.as_numpy("h"), base.astype(np.float16))
        assert [x if isinstance(x, str) else x.decode() for x in res.as_numpy("u")] == ["ab", "\u00e9"]
        assert res.as_numpy("e").shape == (0, 4)
    body, _ = codec.encode_v2_response("m", "1", None, {"y": np.array([1.5], np.float16)}, binary=False)
    assert b'"data":[1.5]' in body and b": " not in body  # compact separators, FP16 as plain floats


def test_encode_errors_name_the_output():
    raises(lambda: codec.encode_v2_response("m", "1", None, {"y": np.array([b"\xff"], dtype=object)}, binary=False),
           "output 'y'", "UTF-8", "binary")
    raises(lambda: codec.encode_v2_response("m", "1", None, {"c": np.zeros(2, np.complex64)}, binary=True),
           "output 'c'", "complex64")


# ---------------------------------------------------------------------------------------------
# v2 decoding details


def test_json_nested_and_flat_data():
    x = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    for data in (x.tolist(), x.ravel().tolist(), [x[0].tolist(), x[1].tolist()]):
        req = codec.decode_v2_request(*v2([{"name": "x", "shape": [2, 3, 4], "datatype": "INT32", "data": data}]))
        assert_same(req.inputs["x"], x)
    # ragged nesting with the right count is flattened row-major, as Triton does
    req = codec.decode_v2_request(*v2([{"name": "r", "shape": [3], "datatype": "FP32", "data": [[1, 2], [3]]}]))
    assert req.inputs["r"].tolist() == [1, 2, 3] and req.inputs["r"].dtype == np.float32


def test_json_numbers_convert_to_datatype():
    cases = [("FP32", [1, 2.5], np.float32), ("FP64", [1, 2], np.float64), ("UINT64", [2**64 - 1, 0], np.uint64),
             ("INT8", [-128, 127], np.int8), ("BOOL", [True, False], np.bool_), ("FP16", [0.5, 3], np.float16)]
    for datatype, data, dt in cases:
        req = codec.decode_v2_request(*v2([{"name": "x", "shape": [2], "datatype": datatype, "data": data}]))
        assert req.inputs["x"].dtype == dt and req.inputs["x"].tolist() == data
    for datatype in ("FP32", "INT64", "BOOL", "BYTES"):
        req = codec.decode_v2_request(*v2([{"name": "e", "shape": [0, 5], "datatype": datatype, "data": []}]))
        assert req.inputs["e"].shape == (0, 5) and req.inputs["e"].dtype == codec.DATATYPES[datatype]


def test_binary_inputs_are_zero_copy_views():
    x = np.arange(12, dtype=np.float32)
    body, hl = v2([{"name": "x", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}}],
                  x.tobytes())
    req = codec.decode_v2_request(body, hl)
    assert req.inputs["x"].flags.writeable is False  # a view of the immutable body
    mutable = bytearray(body)
    arr = codec.decode_v2_request(mutable, hl).inputs["x"]
    mutable[hl:hl + 4] = np.float32(42).tobytes()
    assert arr[0, 0] == 42  # shares memory with the body: no copy was made


def test_bytes_binary_elements():
    items = [b"", b"\xff\xfe not utf-8", b"abc"]
    raw = b"".join(struct.pack("<I", len(s)) + s for s in items)
    body, hl = v2([{"name": "s", "shape": [3, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
                  raw)
    s = codec.decode_v2_request(body, hl).inputs["s"]
    assert s.shape == (3, 1) and s.dtype == object and s.ravel().tolist() == items
    res = parse(*codec.encode_v2_response("m", "1", None, {"s": s}, binary=True))
    assert res.as_numpy("s").ravel().tolist() == items


def test_request_level_fields():
    body, hl = v2([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], id="abc",
                  parameters={"binary_data_output": True, "priority": 2},
                  outputs=[{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}])
    req = codec.decode_v2_request(body, hl)
    assert req.id == "abc" and req.binary_output_default is True and req.parameters["priority"] == 2
    assert [(o["name"], o["binary_data"]) for o in req.outputs] == [("y", None), ("z", False)]
    assert (req.wants_binary("y"), req.wants_binary("z"), req.wants_binary("other")) == (True, False, True)


# ---------------------------------------------------------------------------------------------
# v2 errors: each names the input and what was expected and got


def dec(inputs, binary=b"", header_length="auto", **extra):
    body, hl = v2(inputs, binary, **extra)
    return lambda: codec.decode_v2_request(body, hl if header_length == "auto" else header_length)


def fp32(name="x", shape=(2, 3), **kw):
    return {"name": name, "shape": list(shape), "datatype": "FP32", **kw}


def test_json_count_mismatch():
    raises(dec([fp32(data=[1, 2, 3, 4, 5])]), "input 'x'", "shape [2, 3]", "needs 6 elements", "got 5")
    raises(dec([fp32(data=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])]), "input 'x'", "needs 6", "got 9")


@pytest.mark.parametrize("datatype,data,parts", [
    ("FP32", [1, "2", 3], ["FP32 data must be numbers", "element 1 is '2'"]),
    ("FP32", [1, None], ["element 1 is None"]),
    ("FP32", [True, False], ["must be numbers", "element 0 is True"]),
    ("FP64", [[1, 2], ["a", 3]], ["element 2 is 'a'"]),
    ("INT32", [1, 2.5], ["INT32 data must be integers", "element 1 is 2.5"]),
    ("INT64", [1, "7"], ["must be integers", "element 1 is '7'"]),
    ("INT8", [1, 300], ["element 1 (300) is out of range for INT8", "[-128, 127]"]),
    ("UINT8", [-1, 2], ["element 0 (-1) is out of range for UINT8"]),
    ("UINT64", [-1, 2**63], ["element 0 (-1) is out of range for UINT64"]),
    ("INT64", [2**63, 1], ["out of range for INT64"]),
    ("BOOL", [1, 0], ["BOOL data must be true/false", "element 0 is 1"]),
    ("BYTES", ["a", 5], ["BYTES data must be strings", "element 1 is 5"]),
])
def test_json_type_errors(datatype, data, parts):
    raises(dec([{"name": "inp", "shape": [2], "datatype": datatype, "data": data}]), "input 'inp'", *parts)


def test_binary_size_errors():
    raw = np.zeros(6, np.float32).tobytes()
    p = {"binary_data_size": 20}
    raises(dec([fp32(parameters=p)], raw[:20]), "input 'x'", "binary_data_size is 20", "shape [2, 3]", "needs 24")
    raises(dec([fp32(parameters={"binary_data_size": 24})], raw[:20]),
           "input 'x'", "binary_data_size is 24", "only 20 bytes")
    raises(dec([fp32(parameters={"binary_data_size": 24})], raw + b"\x00" * 3),
           "3 bytes of binary data are left over", "add up to 24", "has 27")
    raises(dec([fp32(parameters={"binary_data_size": 24})], raw, header_length=None),
           "not valid JSON", "binary tensor data needs the Inference-Header-Content-Length header")
    raises(dec([fp32(parameters={"binary_data_size": 24})], header_length=None),
           "input 'x'", "binary_data_size 24", "no Inference-Header-Content-Length")
    raises(dec([fp32(data=[1] * 6)], b"\x00" * 4), "4 bytes of binary data are left over")
    raises(dec([fp32(parameters={"binary_data_size": -1})], raw), "input 'x'", "non-negative integer", "-1")
    raises(dec([fp32(parameters={"binary_data_size": 24}, data=[1] * 6)], raw), "input 'x'", "both")
    raises(dec([{"name": "b", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}], b"\x01\x02"),
           "input 'b'", "0 or 1")


def test_bytes_binary_errors():
    def one(raw, shape=(2,)):
        return dec([{"name": "s", "shape": list(shape), "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(raw)}}], raw)

    good = struct.pack("<I", 2) + b"ab"
    raises(one(good), "input 's'", "shape [2]", "needs 2 BYTES elements", "got 1")
    raises(one(good + struct.pack("<I", 9) + b"abc"), "input 's'", "element 1 says 9 bytes", "only 3")
    raises(one(good + b"\x01\x00"), "input 's'", "truncated")


def test_header_and_structure_errors():
    good = [fp32(data=[1] * 6)]
    body, _ = v2(good)
    raises(lambda: codec.decode_v2_request(body, len(body) + 1), "Inference-Header-Content-Length is",
           f"only {len(body)} bytes")
    raises(lambda: codec.decode_v2_request(body, -3), "Inference-Header-Content-Length", "-3")
    raises(lambda: codec.decode_v2_request(body, "abc"), "Inference-Header-Content-Length must be an integer")
    raises(lambda: codec.decode_v2_request(b'{"inputs": [', None), "not valid JSON")
    raises(lambda: codec.decode_v2_request(b"[" * 100_000, None), "not valid JSON")
    raises(lambda: codec.decode_v2_request(b"\xff\xfe\x00", None), "not valid JSON")
    raises(lambda: codec.decode_v2_request(b"[1]", None), "JSON object")
    raises(lambda: codec.decode_v2_request(b'{"outputs": []}', None), "no 'inputs'")
    raises(dec([fp32(data=[1] * 6), fp32(data=[2] * 6)]), "input 'x' appears more than once")
    raises(dec([fp32(shape=(2, -3), data=[])]), "input 'x'", "non-negative integers", "[2, -3]")
    raises(dec([fp32(shape=(2, 1.5), data=[])]), "input 'x'", "non-negative integers")
    raises(dec([fp32(shape=(True,), data=[1])]), "input 'x'", "non-negative integers")
    raises(dec([{"name": "x", "shape": "2", "datatype": "FP32", "data": [1, 2]}]), "input 'x'", "'shape'")
    raises(dec([{"name": "x", "shape": [1], "data": [1]}]), "input 'x' has no datatype")
    raises(dec([fp32()]), "input 'x' has no data")
    raises(dec([fp32(data=5)]), "input 'x'", "must be a list")
    raises(dec([{"shape": [1], "datatype": "FP32", "data": [1]}]), "inputs[0] has no name")
    raises(dec([fp32(parameters={"shared_memory_region": "r"})]), "input 'x'", "shared memory")
    raises(dec(good, id=7), "'id' must be a string")
    raises(dec(good, parameters={"binary_data_output": "yes"}), "binary_data_output")
    raises(dec(good, outputs=[{"name": "y"}, {"name": "y"}]), "output 'y' is requested more than once")
    raises(dec(good, outputs=[{"name": "y", "parameters": {"classification": 3}}]), "output 'y'", "classification")
    raises(dec(good, outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), "output 'y'", "binary_data")


# ---------------------------------------------------------------------------------------------
# v1


SPECS = {"x": ("float32", [None, 3]), "ids": ("int64", ["batch", 2]), "flag": ("bool", [])}


def test_v1_json_decodes_to_spec_dtypes():
    got = codec.decode_v1_json({"inputs": {"x": [[1, 2, 3.5]], "ids": [[1, 2], [3, 4]], "flag": True}}, SPECS)
    assert got["x"].dtype == np.float32 and got["x"].shape == (1, 3) and got["x"][0, 2] == 3.5
    assert got["ids"].dtype == np.int64 and got["ids"].tolist() == [[1, 2], [3, 4]]
    assert got["flag"].dtype == np.bool_ and got["flag"].shape == ()
    untyped = codec.decode_v1_json({"inputs": {"a": [[1, 2]], "b": [0.5], "t": [["x", "y"]]}}, None)
    assert untyped["a"].dtype == np.int64 and untyped["b"].dtype == np.float64
    assert untyped["t"].dtype == object and untyped["t"].tolist() == [["x", "y"]]
    text = codec.decode_v1_json({"inputs": {"s": [["a", "b"], ["c", "d"]]}}, {"s": ("object", [None, 2])})
    assert text["s"].shape == (2, 2) and text["s"][1, 0] == "c"
    bf = codec.decode_v1_json({"inputs": {"b": [1.5, 2]}}, {"b": ("bfloat16", [2])})
    assert bf["b"].dtype == np.float32
    codec.check_inputs(bf, [("b", "bfloat16", [2])])
    big = codec.decode_v1_json({"inputs": {"x": [[2**70, 1, 2]]}}, {"x": ("float32", [None, 3])})
    assert big["x"].shape == (1, 3) and big["x"].dtype == np.float32


def test_v1_json_errors():
    ok = {"x": [[1, 2, 3]], "ids": [[1, 2]], "flag": False}
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "x": [[1, 2, 3, 4, 5]]}}, SPECS),
           "input 'x'", "dim 1 must be 3, got 5")
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "x": [1, 2, 3]}}, SPECS),
           "input 'x'", "expected rank 2", "[?, 3]", "got rank 1", "[3]")
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "x": [["1", 2, 3]]}}, SPECS),
           "input 'x'", "float32", "must be numbers", "element 0 is '1'")
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "ids": [[1.5, 2]]}}, SPECS),
           "input 'ids'", "must be integers", "1.5")
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "x": [[1, 2, 3], [4]]}}, SPECS),
           "input 'x'", "not a regular nested list")
    raises(lambda: codec.decode_v1_json({"inputs": {**ok, "y": [1]}}, SPECS),
           "unknown input 'y'", "'x', 'ids', 'flag'")
    raises(lambda: codec.decode_v1_json({"inputs": {"x": [[1, 2, 3]]}}, SPECS),
           "missing inputs 'ids', 'flag'", "the model's inputs are")
    raises(lambda: codec.decode_v1_json({"x": [1]}, SPECS), '{"inputs"')
    raises(lambda: codec.decode_v1_json({"inputs": {"a": [[1], [1, 2]]}}, None), "input 'a'", "regular")
    raises(lambda: codec.decode_v1_json({"inputs": {"a": [None]}}, None), "input 'a'", "numbers")


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_npy_and_npz():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_same(codec.decode_npy(npy(x)), x)
    assert_same(codec.decode_npy(npy(np.asfortranarray(x))), x)
    got = codec.decode_npz(npz(a=x, b=np.array([1, 2])))
    assert list(got) == ["a", "b"] and got["a"].dtype == np.float32
    raises(lambda: codec.decode_npy(npy(np.array([{"a": 1}], dtype=object))), "Python objects", "refused")
    raises(lambda: codec.decode_npz(npz(a=x, o=np.array([b"a"], dtype=object))), "array 'o'", "Python objects")
    raises(lambda: codec.decode_npy(npz(a=x)), "npz archive")
    raises(lambda: codec.decode_npz(npy(x)), "single .npy")
    raises(lambda: codec.decode_npy(b"not numpy at all"), "not a .npy file")
    raises(lambda: codec.decode_npy(npy(x)[:-5]), "not a valid .npy")
    raises(lambda: codec.decode_npz(b"PK\x03\x04garbage"), "not a valid .npz")
    raises(lambda: codec.decode_npz(npz(a=np.zeros(1000)), max_bytes=100), "more than the 100 allowed")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "hi")
    raises(lambda: codec.decode_npz(buf.getvalue()), "'notes.txt'", "not a .npy array")


def test_encode_npz_and_v1_json():
    outs = {"file": np.arange(4, dtype=np.int16).reshape(2, 2), "s": np.array(["a", "bc"], dtype=object),
            "b": np.array([b"x", b"yz"], dtype=object), "h": np.array([1.5], dtype=codec.DATATYPES["BF16"])}
    with np.load(io.BytesIO(codec.encode_npz(outs)), allow_pickle=False) as z:
        assert z.files == ["file", "s", "b", "h"]
        assert_same(z["file"], outs["file"])
        assert z["s"].tolist() == ["a", "bc"] and z["b"].tolist() == [b"x", b"yz"]
    raises(lambda: codec.encode_npz({"o": np.array([{}], dtype=object)}), "output 'o'", ".npz")
    doc = codec.encode_v1_json({"y": np.arange(4, dtype=np.float32).reshape(2, 2), "s": outs["b"].reshape(2, 1),
                                "h": outs["h"], "z": np.float64(1.25)})
    assert doc == {"outputs": {"y": [[0.0, 1.0], [2.0, 3.0]], "s": [["x"], ["yz"]], "h": [1.5], "z": 1.25}}
    json.dumps(doc)


# ---------------------------------------------------------------------------------------------
# check_inputs


@dataclass
class Spec:
    name: str
    dtype: str | None
    shape: list | None


def test_check_inputs_accepts():
    inputs = {"x": np.zeros((4, 3, 8), np.float32), "m": np.zeros((4, 5), np.int64)}
    codec.check_inputs(inputs, [("x", "float32", [None, 3, 8]), ("m", "int64", ["batch", -1])])
    codec.check_inputs(inputs, [Spec("x", "FP32", [-1, 3, "w"]), Spec("m", None, None)])
    codec.check_inputs({"b": np.zeros(2, np.float32)}, [("b", "bfloat16", [2])])  # runtimes feed bf16 as fp32
    codec.check_inputs({"s": np.array([b"a"], dtype=object)}, [("s", "object", [1])])
    codec.check_inputs({"s": np.array(["a"])}, [("s", "str", [None])])
    codec.check_inputs({"q": np.zeros(1, np.float32)}, [("q", "complex32", [1])])  # unknown dtype: no check


def test_check_inputs_errors():
    specs = [("x", "float32", [None, 3, 8]), ("m", "int64", [2])]
    x, m = np.zeros((1, 3, 8), np.float32), np.zeros(2, np.int64)
    raises(lambda: codec.check_inputs({"x": x, "m": m, "z": m}, specs), "unknown input 'z'", "'x', 'm'")
    raises(lambda: codec.check_inputs({"x": x}, specs), "missing input 'm'", "'x', 'm'")
    raises(lambda: codec.check_inputs({"x": x.astype(np.float64), "m": m}, specs),
           "input 'x'", "expected dtype float32 (FP32)", "got float64 (FP64)")
    raises(lambda: codec.check_inputs({"x": x, "m": m.astype(np.int32)}, specs),
           "input 'm'", "expected dtype int64 (INT64)", "got int32 (INT32)")
    raises(lambda: codec.check_inputs({"x": x[0], "m": m}, specs),
           "input 'x'", "expected rank 3", "[?, 3, 8]", "got rank 2", "[3, 8]")
    raises(lambda: codec.check_inputs({"x": np.zeros((1, 3, 5), np.float32), "m": m}, specs),
           "input 'x'", "dim 2 must be 8, got 5")
    raises(lambda: codec.check_inputs({"s": np.zeros(1)}, [("s", "object", [1])]), "input 's'", "object (BYTES)")


def test_non_finite_floats_round_trip_as_json():
    y = np.array([np.nan, np.inf, -np.inf, 1], np.float32)
    res = parse(*codec.encode_v2_response("m", "1", None, {"y": y}, binary=False))
    assert np.array_equal(res.as_numpy("y"), y, equal_nan=True)
    req = codec.decode_v2_request(b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[NaN,-Infinity]}]}',
                                  None)
    assert np.isnan(req.inputs["x"][0]) and req.inputs["x"][1] == -np.inf


# ---------------------------------------------------------------------------------------------
# JSON helpers: orjson when importable, stdlib json otherwise (both paths give the same results)


@pytest.fixture(params=[True, False], ids=["orjson", "stdlib"])
def json_impl(request, monkeypatch):
    if request.param:
        pytest.importorskip("orjson")
    monkeypatch.setattr(codec, "_USE_ORJSON", request.param)
    return request.param


def test_orjson_is_used_when_installed():
    pytest.importorskip("orjson")
    assert codec._USE_ORJSON
    assert codec.dumps({"y": np.array([0.1], np.float32)}) == b'{"y":[0.1]}'  # shortest float32 text


def test_loads_accepts_what_stdlib_accepts(json_impl):
    doc = {"a": [1, 2.5, -3e-7, True, None, "h\u00e9llo \u2603"], "b": {"c": 2**64 - 1, "d": -2**63}}
    raw = json.dumps(doc).encode()
    assert codec.loads(raw) == doc
    assert codec.loads(bytearray(raw)) == doc and codec.loads(memoryview(raw)) == doc
    assert codec.loads(raw.decode()) == doc
    nonfinite = codec.loads(b"[NaN, Infinity, -Infinity]")  # stdlib extensions orjson refuses
    assert np.isnan(nonfinite[0]) and nonfinite[1:] == [np.inf, -np.inf]
    assert codec.loads(b'"\\ud800"') == "\ud800"  # lone surrogate
    assert codec.loads('{"x": [1]}'.encode("utf-16")) == {"x": [1]}  # stdlib detects UTF-16/32


@pytest.mark.parametrize("bad", [b'{"inputs": [', b"[1] x", b"\xff\xfe\x00", b"", b"[" * 100_000])
def test_loads_raises_value_error_like_stdlib(json_impl, bad):
    with pytest.raises(ValueError) as e:
        codec.loads(bad)
    try:
        json.loads(bad)
    except json.JSONDecodeError as want:  # the same message as stdlib's
        assert str(e.value) == str(want)
    except RecursionError:
        assert "nested too deeply" in str(e.value)
    except ValueError as want:
        assert str(e.value) == str(want)


NUMERIC = [d for d in ALL if d not in ("BYTES", "BF16")]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_dumps_arrays_as_lists(json_impl, datatype):
    x = sample(datatype, (2, 3, 4))
    for arr in (x, x[:, ::2], x.transpose(2, 0, 1), x.astype(x.dtype.newbyteorder(">")), x[0, 0, 0]):
        got = json.loads(codec.dumps({"t": arr}))["t"]
        assert np.array_equal(np.array(got, dtype=x.dtype), arr), arr.dtype
        assert json.loads(codec.dumps(arr)) == got


def test_dumps_non_finite_and_fallbacks(json_impl):
    y = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    assert codec.dumps({"y": y}) == b'{"y":[NaN,Infinity,-Infinity,1.5]}'  # as stdlib; orjson would write null
    assert codec.dumps([1.0, float("nan")]) == b"[1.0,NaN]"
    assert codec.dumps({"s": "\ud800", "n": 2**70}) == b'{"s":"\\ud800","n":1180591620717411303424}'
    assert json.loads(codec.dumps({"e": np.zeros((2, 0), np.int8), "z": np.float64(1.25)})) == {"e": [[], []], "z": 1.25}
    with pytest.raises(TypeError):
        codec.dumps({"o": object()})


@pytest.mark.parametrize("datatype", ALL)
def test_dumps_v1_matches_encode_v1_json(json_impl, datatype):
    y = sample(datatype, (2, 3))
    outs = {"y": y, "t": y.T, "s": y[0, 0]}
    got = json.loads(codec.dumps_v1(outs))
    want = codec.encode_v1_json(outs)
    assert list(got["outputs"]) == ["y", "t", "s"]
    for name, value in want["outputs"].items():
        if datatype in ("BYTES", "BOOL") or y.dtype.kind in "iu":
            assert got["outputs"][name] == value
        else:  # floats: the shortest text for the dtype, so compare at that precision
            as_f32 = np.float32 if datatype == "BF16" else y.dtype
            assert np.array_equal(np.array(got["outputs"][name], as_f32), np.array(value, as_f32))
    raises(lambda: codec.dumps_v1({"c": np.zeros(2, np.complex64)}), "output 'c'", "complex64")
    raises(lambda: codec.dumps_v1({"b": np.array([b"\xff"], dtype=object)}), "output 'b'", "not UTF-8")


def test_dumps_v1_non_finite(json_impl):
    body = codec.dumps_v1({"y": np.array([[np.nan, 1]], np.float32)})
    assert body == b'{"outputs":{"y":[[NaN,1.0]]}}'


@pytest.mark.parametrize("datatype", ALL)
def test_json_paths_agree_between_orjson_and_stdlib(monkeypatch, datatype):
    pytest.importorskip("orjson")
    y = sample(datatype, (3, 2))
    req_body, hl = v2([{"name": "x", "shape": [3, 2], "datatype": datatype,
                        "data": json.loads(codec.dumps(codec._to_json_list("x", y, datatype, flat=True)))}],
                      id="r", outputs=[{"name": "y"}])
    fast_req = codec.decode_v2_request(req_body, hl)
    fast_res = parse(*codec.encode_v2_response("m", "1", "r", {"y": y}))
    monkeypatch.setattr(codec, "_USE_ORJSON", False)
    slow_req = codec.decode_v2_request(req_body, hl)
    slow_res = parse(*codec.encode_v2_response("m", "1", "r", {"y": y}))
    assert_same(fast_req.inputs["x"], slow_req.inputs["x"])
    assert (fast_req.id, fast_req.requested) == (slow_req.id, slow_req.requested)
    assert_same(fast_res.as_numpy("y"), y)
    assert_same(slow_res.as_numpy("y"), y)


def test_v2_decode_errors_under_stdlib_fallback(monkeypatch):
    monkeypatch.setattr(codec, "_USE_ORJSON", False)
    raises(lambda: codec.decode_v2_request(b'{"inputs": [', None), "not valid JSON")
    raises(lambda: codec.decode_v2_request(b"[" * 100_000, None), "not valid JSON")
    raw = np.zeros(2, np.float32).tobytes()
    body, _ = v2([{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], raw)
    raises(lambda: codec.decode_v2_request(body, None), "not valid JSON", "Inference-Header-Content-Length")
    req = codec.decode_v2_request(body, len(body) - 8)
    assert req.inputs["x"].tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------
# simdjson path for big v2 JSON requests: same arrays and same errors as the orjson/list path

needs_simdjson = pytest.mark.skipif(codec._simdjson is None, reason="pysimdjson is not installed")


def _t(name="x", shape=(2,), datatype="FP32", data=None, **extra) -> dict:
    t = {"name": name, "shape": list(shape), "datatype": datatype, **extra}
    if data is not None:
        t["data"] = data
    return t


def _doc(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


SIMDJSON_CASES = {
    "fp32 flat": _doc(_t(data=[0.1, -2.5])),
    "fp32 nested": _doc(_t(shape=(2, 2), data=[[1, 2.5], [3e-7, -4]])),
    "fp32 ragged": _doc(_t(shape=(3,), data=[[1], [2, 3]])),
    "fp32 mixed depth": _doc(_t(shape=(3,), data=[1, [2, 3]])),
    "fp32 wrong count": _doc(_t(shape=(3,), data=[1, 2])),
    "fp32 bool element": _doc(_t(data=[True, 1.5])),
    "fp32 all bools": _doc(_t(data=[True, False])),
    "fp32 string": _doc(_t(data=["1.5", 2])),
    "fp32 null": _doc(_t(data=[None, 2])),
    "fp32 overflows to inf": _doc(_t(data=[1e308, -1e308])),
    "fp32 beyond double": b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1e400,1]}]}',
    "fp32 NaN literal": b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[NaN,1]}]}',
    "fp16": _doc(_t(datatype="FP16", data=[0.1, 70000])),
    "fp64 exact": _doc(_t(shape=(3,), datatype="FP64", data=[0.1, 2**53 + 1, -0.0])),
    "bf16": _doc(_t(datatype="BF16", data=[0.1, 3])),
    "int8 in range": _doc(_t(datatype="INT8", data=[-128, 127])),
    "int8 out of range": _doc(_t(datatype="INT8", data=[-129, 1])),
    "uint8 negative": _doc(_t(datatype="UINT8", data=[-1, 1])),
    "int32 float element": _doc(_t(datatype="INT32", data=[1.0, 2])),
    "int64 limits": _doc(_t(datatype="INT64", data=[-2**63, 2**63 - 1])),
    "int64 too big": _doc(_t(datatype="INT64", data=[2**63, 1])),
    "uint64 above int64": _doc(_t(datatype="UINT64", data=[2**64 - 1, 0])),
    "uint32 nested": _doc(_t(shape=(2, 1), datatype="UINT32", data=[[2**32 - 1], [0]])),
    "bool": _doc(_t(datatype="BOOL", data=[True, False])),
    "bool as ints": _doc(_t(datatype="BOOL", data=[1, 0])),
    "bytes": _doc(_t(datatype="BYTES", data=["h\u00e9llo", ""])),
    "empty": _doc(_t(shape=(0,), data=[])),
    "empty nested": _doc(_t(shape=(2, 0), data=[[], []])),
    "data not a list": _doc(_t(data=5)),
    "data an object": _doc(_t(data={"a": 1})),
    "two inputs": _doc(_t("a", data=[1, 2]), _t("b", (1, 2), "INT16", [[3, 4]])),
    "repeated input": _doc(_t(data=[1, 2]), _t(data=[3, 4])),
    "duplicate key in input": b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}]}',
    "duplicate top-level key": b'{"inputs":[],"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}',
    "inputs not a list": b'{"inputs":{"name":"x"}}',
    "input not an object": b'{"inputs":[5]}',
    "no inputs": b'{"id":"q"}',
    "not an object": b"[1, 2]",
    "not JSON": b'{"inputs": [',
    "with id, parameters, outputs": _doc(_t(data=[1, 2]), id="r1", parameters={"binary_data_output": True},
                                         outputs=[{"name": "y", "parameters": {"binary_data": False}}]),
    "unknown datatype": _doc(_t(datatype="FP8", data=[1, 2])),
    "int beyond 64 bits": _doc(_t(data=[10**20, 1])),
    "int beyond 64 bits elsewhere": _doc(_t(data=[1, 2]), parameters={"n": 10**20}),
    "ints beyond float64 precision": _doc(_t(shape=(3,), data=[2**60 + 2**36 + 1, -(2**62 + 1), 2**64 - 1])),
    "ints beyond float64 precision to fp64": _doc(_t(datatype="FP64", data=[2**60 + 2**36 + 1, 2**64 - 1])),
    "mixed int and float beyond 2**53": _doc(_t(data=[2**60 + 2**36 + 1, 0.5])),
    "nested deeper than simdjson takes": b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":'
                                         + b"[" * 1100 + b"1" + b"]" * 1100 + b"}]}",
    "NUL in a key": b'{"id\\u0000":"a","id":"b","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}',
    "many keys": _doc(_t(data=[1, 2]), **{f"k{i}": i for i in range(100)}),
    "many keys in an input": _doc(_t(data=[1, 2], **{f"k{i}": i for i in range(100)})),
}


@needs_simdjson
@pytest.mark.parametrize("body", list(SIMDJSON_CASES.values()), ids=list(SIMDJSON_CASES))
def test_simdjson_path_agrees_with_list_path(monkeypatch, body):
    def decode(threshold):
        monkeypatch.setattr(codec, "_LAZY_JSON_MIN_BYTES", threshold)
        try:
            r = codec.decode_v2_request(body, None)
        except CodecError as e:
            return "error", str(e)
        tensors = {k: (v.dtype.str, v.shape, v.tolist() if v.dtype == object else v.tobytes())
                   for k, v in r.inputs.items()}
        return tensors, r.id, r.parameters, r.outputs, r.binary_output_default

    with np.errstate(over="ignore"):
        assert decode(0) == decode(None)


@needs_simdjson
def test_simdjson_path_reads_numbers_without_lists(monkeypatch):
    x = sample("FP32", (1, 3, 16, 16))
    body, _ = v2([{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                  {"name": "n", "shape": [3], "datatype": "INT64", "data": [1, -2, 3]}], id="big")
    assert len(body) >= codec._LAZY_JSON_MIN_BYTES  # the default threshold takes this request

    def no_lists(*a, **k):
        raise AssertionError("the list path ran")

    monkeypatch.setattr(codec, "_loads", no_lists)
    monkeypatch.setattr(codec, "_json_tensor_slow", no_lists)
    req = codec.decode_v2_request(body, None)
    assert req.id == "big"
    assert_same(req.inputs["x"], x)
    assert_same(req.inputs["n"], np.array([1, -2, 3], np.int64))
    for arr in req.inputs.values():  # numpy's own memory, not a view of the parser's buffer
        assert arr.flags.writeable and (arr.base if arr.base is not None else arr).flags.owndata


@needs_simdjson
def test_small_requests_keep_orjson(monkeypatch):
    body, _ = v2([{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}])
    assert len(body) < codec._LAZY_JSON_MIN_BYTES
    monkeypatch.setattr(codec, "_lazy_v2_doc", lambda h: pytest.fail("simdjson path for a small request"))
    assert codec.decode_v2_request(body, None).inputs["x"].tolist() == [1, 2]


@needs_simdjson
def test_simdjson_path_with_binary_inputs(monkeypatch):
    monkeypatch.setattr(codec, "_LAZY_JSON_MIN_BYTES", 0)
    raw = np.arange(4, dtype=np.float32).tobytes()
    body, hl = v2([_t("a", (2,), "FP32", [0.5, 1.5]),
                   _t("b", (4,), "FP32", parameters={"binary_data_size": 16})], raw)
    req = codec.decode_v2_request(body, hl)
    assert req.inputs["a"].tolist() == [0.5, 1.5] and req.inputs["b"].tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------
# V2Plan: a header decoded once, reused for the next request with the same header


def _binary_request(header: dict, *arrays: np.ndarray) -> tuple[bytes, int]:
    h = json.dumps(header).encode()
    return h + b"".join(a.tobytes() for a in arrays), len(h)


def test_a_plan_reads_new_data_under_the_same_header_and_reuses_the_response_header():
    x1 = np.arange(6, dtype=np.float32).reshape(2, 3)
    x2 = -x1
    n = np.array([[7]], np.int64)
    header = {"id": "r1", "inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x1.nbytes}},
        {"name": "n", "shape": [1, 1], "datatype": "INT64", "parameters": {"binary_data_size": n.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    body1, hl = _binary_request(header, x1, n)
    plan = codec.V2Plan.of(codec.decode_v2_request(body1, hl), hl, len(body1))
    assert plan.reusable and plan.binary_size == x1.nbytes + n.nbytes
    body2, _ = _binary_request(header, x2, n + 1)
    feeds = plan.feeds(body2)
    np.testing.assert_array_equal(feeds["x"], x2)
    np.testing.assert_array_equal(feeds["n"], n + 1)
    assert list(feeds) == ["x", "n"] and feeds["n"].dtype == np.int64

    out1 = {"y": np.ones((2, 4), np.float32), "z": np.zeros(1, np.float32)}
    payload1, headers1 = plan.encode("m", "1", out1)
    want1, wanth1 = codec.encode_v2_response("m", "1", "r1", out1, binary=True, requested=["y"])
    assert (payload1, headers1) == (want1, wanth1)
    out2 = {"y": np.full((2, 4), 3, np.float32), "z": np.zeros(1, np.float32)}  # kept header, new data
    assert plan.encode("m", "1", out2) == codec.encode_v2_response("m", "1", "r1", out2, binary=True,
                                                                   requested=["y"])
    out3 = {"y": np.ones((5, 4), np.float32), "z": np.zeros(1, np.float32)}  # a new shape: a new header
    payload3, headers3 = plan.encode("m", "1", out3)
    assert json.loads(payload3[:int(headers3["Inference-Header-Content-Length"])])["outputs"][0]["shape"] == [5, 4]
    assert json.loads(payload3[:int(headers3["Inference-Header-Content-Length"])])["id"] == "r1"


def test_no_plan_is_reusable_for_json_data_bytes_or_bool():
    x = np.ones((1, 2), np.float32)
    json_body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode()
    assert not codec.V2Plan.of(codec.decode_v2_request(json_body, None), None, len(json_body)).reusable
    b = np.array([True, False])
    body, hl = _binary_request({"inputs": [{"name": "b", "shape": [2], "datatype": "BOOL",
                                            "parameters": {"binary_data_size": 2}}]}, b)
    assert not codec.V2Plan.of(codec.decode_v2_request(body, hl), hl, len(body)).reusable  # 0/1 checked each time
    s = struct.pack("<I", 2) + b"hi"
    h = json.dumps({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": len(s)}}]}).encode()
    assert not codec.V2Plan.of(codec.decode_v2_request(h + s, len(h)), len(h), len(h) + len(s)).reusable
    mixed, hl = _binary_request({"inputs": [
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        {"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, x)
    assert not codec.V2Plan.of(codec.decode_v2_request(mixed, hl), hl, len(mixed)).reusable


def test_dumps_writes_nan_as_stdlib_does_and_null_as_null():
    assert codec.dumps({"a": np.array([1.0, np.nan], np.float32)}) == b'{"a":[1.0,NaN]}'
    assert codec.dumps({"a": None, "b": np.array([1.5], np.float32)}) == b'{"a":null,"b":[1.5]}'
    assert codec.dumps({"a": float("inf")}) == b'{"a":Infinity}'
