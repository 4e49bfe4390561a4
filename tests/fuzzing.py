"""Fuzzing machinery shared by tests/test_fuzz_api.py, tests/formats/test_reader_fuzz.py and
bench/fuzz.py (which runs the same with bigger counts): schemathesis over a live server's OpenAPI,
and seeds + mutations (truncated, bit-flipped, size-lying) of every format's files run through
the format readers in an inspection child with its limits."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ the API: schemathesis

SLOW_OPERATIONS = {"POST /v1/models": 4, "PUT /v1/models/{model_id}/samples": 6,
                   "POST /v1/models/{model_id}/calibration-sets": 6}  # inspection child / an npz each


def serve(settings):
    """The served app (as `modelport serve` runs it) on a free loopback port, in a thread."""
    import uvicorn

    from app.main import create_asgi, http_protocol

    app = create_asgi(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                        http=http_protocol(settings)))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return app, srv, thread, f"http://127.0.0.1:{port}"


def run_api_fuzz(base: str, *, headers: dict[str, str], real: dict[str, str], examples: int, seed: int = 0,
                 deadline_s: float = 120.0) -> dict[str, Any]:
    """schemathesis over every operation of ``base``/openapi.json: no 5xx, status codes, content
    types and bodies as documented. Half the cases get a real id or name in their path (``real``)
    so they reach past the 404s. Returns counts and the failures."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    stats: dict[str, Any] = {"cases": 0, "failures": [], "statuses": {}, "operations": 0}
    stop_at = time.monotonic() + deadline_s
    ops = [r.ok() for r in schema.get_all_operations()]
    # making a key turns authentication on (MODELPORT_AUTH=auto): that one goes last
    for op in sorted(ops, key=lambda o: (o.method.upper(), o.path) == ("POST", "/v1/keys")):
        stats["operations"] += 1
        _fuzz_operation(op, base, headers, real, examples, seed, stop_at, checks, stats)
    print(f"fuzz: {stats['operations']} operations, {stats['cases']} cases, statuses "
          f"{sorted(stats['statuses'].items())}, {len(stats['failures'])} failures")
    return stats


def _fuzz_operation(op, base, headers, real, examples, seed, stop_at, checks, stats) -> None:
    import hypothesis

    label = f"{op.method.upper()} {op.path}"
    counter = {"i": 0}

    @hypothesis.settings(max_examples=min(examples, SLOW_OPERATIONS.get(label, examples)), deadline=None,
                         database=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.seed(seed)
    @hypothesis.given(case=op.as_strategy())
    def one(case):
        if time.monotonic() > stop_at:
            return
        counter["i"] += 1
        if counter["i"] % 2 == 0:
            for key, value in real.items():
                if case.path_parameters and key in case.path_parameters:
                    case.path_parameters[key] = value
        response = case.call(base_url=base, headers=headers, timeout=60)
        stats["cases"] += 1
        stats["statuses"][response.status_code] = stats["statuses"].get(response.status_code, 0) + 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check])
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every failed check is a finding
                why = " / ".join(str(x).splitlines()[0] for x in getattr(e, "exceptions", [e]))
                stats["failures"].append(f"{label} -> {response.status_code}: {why[:300]} | "
                                         f"body: {response.text[:200]!r}")

    one()


# ------------------------------------------------------------------ the format readers: seeds


def seeds(out: Path, tf_models: Path | None) -> dict[str, dict[str, Any]]:
    """One real file set per format: {label: {"files": {relpath: bytes}, "hint": name, "primary": relpath}}."""
    from tests import models

    out.mkdir(parents=True, exist_ok=True)
    got: dict[str, dict[str, Any]] = {}

    def single(label: str, path: Path) -> None:
        got[label] = {"files": {path.name: path.read_bytes()}, "hint": path.name, "primary": path.name}

    def tree(label: str, root: Path, hint: str, primary: str) -> None:
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        got[label] = {"files": files, "hint": hint, "primary": primary}

    onnx = models.onnx_model(out)[0]
    single("onnx", onnx)
    single("pytorch", models.state_dict(out))
    single("torchscript", models.torchscript(out))
    single("torch_export", models.exported_program(out))
    single("safetensors", models.safetensors_file(out))
    import openvino as ov

    ir = out / "ir"
    ir.mkdir(exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx)), str(ir / "model.xml"), compress_to_fp16=False)
    tree("openvino", ir, "model.xml", "model.xml")
    (out / "model.mlmodel").write_bytes(_coreml_spec())
    single("coreml", out / "model.mlmodel")
    (out / "model.engine").write_bytes(_tensorrt_plan())
    single("tensorrt", out / "model.engine")
    if tf_models is not None:
        tree("savedmodel", tf_models / "savedmodel", "savedmodel", "saved_model.pb")
        single("keras", tf_models / "functional.keras")
        single("keras_h5", tf_models / "functional.h5")
        single("tflite", tf_models / "dense.tflite")
    return got


def _coreml_spec() -> bytes:
    """A tiny NeuralNetwork Core ML spec (1x1 convolution), written by coremltools' builder."""
    import numpy as np
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    b = NeuralNetworkBuilder([("data", datatypes.Array(3, 8, 8))], [("prob", datatypes.Array(2, 8, 8))],
                             disable_rank5_shape_mapping=True)
    b.add_convolution("conv", kernel_channels=3, output_channels=2, height=1, width=1, stride_height=1,
                      stride_width=1, border_mode="valid", groups=1, W=np.ones((2, 3, 1, 1), np.float32),
                      b=np.zeros(2, np.float32), has_bias=True, input_name="data", output_name="prob")
    return b.spec.SerializeToString()


def _tensorrt_plan() -> bytes:
    """A plan header as app.formats.tensorrt reads it (no engine can be built here: no GPU)."""
    head = bytearray(512)
    head[0:4] = b"ftrt"
    head[8] = 239
    head[24:27] = bytes((10, 3, 0))
    return bytes(head)


# ------------------------------------------------------------------ mutations

EXTREMES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1)


def mutate(seed: dict[str, Any], rng: random.Random, kind: str) -> dict[str, bytes]:
    """One mutated file set: ``kind`` is truncate, bitflip or lie (a size or offset field made extreme)."""
    files = dict(seed["files"])
    name = seed["primary"] if rng.random() < 0.75 else rng.choice(sorted(files))
    data = bytearray(files[name])
    n = len(data)
    if kind == "truncate":
        cut = rng.randrange(0, min(n, 4096)) if rng.random() < 0.6 else rng.randrange(0, max(n, 1))
        data = data[:cut]
    elif kind == "bitflip":
        span = min(n, 4096) if rng.random() < 0.6 else n
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(span)
            data[i] ^= 1 << rng.randrange(8)
    else:
        data = _lie(bytes(data), name, rng)
    files[name] = bytes(data)
    return files


def _lie(data: bytes, name: str, rng: random.Random) -> bytearray:
    out = bytearray(data)
    value = rng.choice(EXTREMES) if rng.random() < 0.7 else rng.getrandbits(rng.choice((16, 32, 64)))
    if name.endswith(".safetensors") and len(out) >= 8 and rng.random() < 0.7:
        struct.pack_into("<Q", out, 0, value % 2**64)  # the header length
        return out
    if out[:2] == b"PK" and rng.random() < 0.8:
        return _lie_zip(out, value, rng)
    if name.endswith(".xml") and rng.random() < 0.8:
        text = out.decode("utf-8", "replace")
        import re

        fields = [m for m in re.finditer(r'(offset|size)="(\d+)"', text)]
        if fields:
            m = rng.choice(fields)
            text = text[:m.start(2)] + str(value) + text[m.end(2):]
            return bytearray(text.encode())
    if rng.random() < 0.3 and len(out) > 8:  # a protobuf length varint made huge
        at = rng.randrange(0, min(len(out) - 5, 512))
        out[at:at + 5] = b"\xff\xff\xff\xff\x0f"
        return out
    width = rng.choice((4, 8))
    if len(out) >= width:
        at = rng.randrange(0, max(1, min(len(out) - width, 1024)) // width + 1) * width
        at = min(at, len(out) - width)
        out[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    return out


def _lie_zip(out: bytearray, value: int, rng: random.Random) -> bytearray:
    """A zip whose directory lies: an entry's sizes or offset, or the end record's count/size/offset."""
    eocd = out.rfind(b"PK\x05\x06")
    entries = [i for i in range(len(out)) if out[i:i + 4] == b"PK\x01\x02"] if eocd > 0 else []
    if eocd < 0 or not entries or rng.random() < 0.25:
        if eocd >= 0:
            field = rng.choice(((10, "<H"), (12, "<L"), (16, "<L")))  # entries, directory size, its offset
            struct.pack_into(field[1], out, eocd + field[0], value % (2 ** (8 * struct.calcsize(field[1]))))
        return out
    at = rng.choice(entries)
    field = rng.choice(((20, "<L"), (24, "<L"), (42, "<L"), (28, "<H")))  # compressed, size, local offset, name len
    struct.pack_into(field[1], out, at + field[0], value % (2 ** (8 * struct.calcsize(field[1]))))
    return out


# ------------------------------------------------------------------ running cases in an inspection child

CHILD = """
import json, resource, signal, sys, time
limit = int(sys.argv[1]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
from app.ingest.inspection import _run
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    t = time.perf_counter()
    res = _run(req)
    ms = (time.perf_counter() - t) * 1000
    err = res.get("error") or {}
    print(json.dumps({"i": req["i"], "ok": bool(res.get("ok")), "status": err.get("status", 200),
                      "code": err.get("code", "ok"), "ms": round(ms, 2),
                      "message": (err.get("message") or "")[:300]}, default=str), flush=True)
"""


def write_case(root: Path, files: dict[str, bytes]) -> list[str]:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return sorted(files)


def run_reader_cases(cases: list[dict[str, Any]], *, per_case_s: float, memory_mb: int) -> list[dict[str, Any]]:
    """Each case ({"root", "paths", "hint_name"}) through detection + inspection in a long-lived
    child under an address-space limit, as the inspection child runs them; a case the child dies on
    or takes longer than ``per_case_s`` over is reported as ``crashed`` / ``hung`` and the child is
    restarted for the rest."""
    results: list[dict[str, Any]] = []
    i = 0
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    while i < len(cases):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(memory_mb)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
        ready = lines.get(timeout=120)
        if ready is None:
            raise RuntimeError("the fuzz child did not start")
        try:
            while i < len(cases):
                c = cases[i]
                proc.stdin.write(json.dumps({"i": i, "root": c["root"], "paths": c["paths"],
                                             "hint_name": c["hint_name"], "accept_unknown": False}) + "\n")
                proc.stdin.flush()
                try:
                    line = lines.get(timeout=per_case_s)
                except queue.Empty:
                    results.append({"i": i, "ok": False, "status": None, "code": "hung", "ms": per_case_s * 1000})
                    i += 1
                    break
                if line is None:
                    results.append({"i": i, "ok": False, "status": None, "code": "crashed",
                                    "ms": None, "returncode": proc.wait(10)})
                    i += 1
                    break
                results.append(json.loads(line))
                i += 1
        except BrokenPipeError:
            results.append({"i": i, "ok": False, "status": None, "code": "crashed", "ms": None})
            i += 1
        finally:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(10)
    return results


def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def make_cases(seed_sets: dict[str, dict[str, Any]], root: Path, per_format: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for label, s in sorted(seed_sets.items()):
        for k in range(per_format):
            kind = ("truncate", "bitflip", "lie")[k % 3]
            d = root / f"{label}-{k:05d}"
            files = mutate(s, rng, kind)
            paths = write_case(d, files)
            cases.append({"format": label, "kind": kind, "root": str(d), "paths": paths, "hint_name": s["hint"]})
    return cases


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
