"""Inference answered by the HTTP protocol without ASGI (app.api.server + FastPath.answer_now),
against a real uvicorn with modelport's protocol, over raw sockets: the direct answer is the ASGI
answer byte for byte, requests split across reads, pipelined and mixed with other routes keep their
order, Connection: close and HTTP/1.0 close, a waiting handler finishes in a task, metrics count
direct answers, and the header deadline still holds on a connection a direct answer kept open."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import numpy as np
import pytest

from tests import models
from tests.helpers import make_settings, serve


def _wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import httpx

    from app.main import create_asgi

    tmp = tmp_path_factory.mktemp("direct")
    # the tiny model always runs on the event loop here (inline), whatever the load on this host
    settings = make_settings(tmp, request_header_timeout_s=1.0, serving_inline_us=1e6)
    app = create_asgi(settings)
    srv, thread, port = serve(app, settings)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    path = models.onnx_model(tmp)[0]
    m = client.post("/v1/models", params={"filename": path.name}, content=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"}).json()
    r = client.post("/v1/deployments", json={"name": "tiny", "model_id": m["id"],
                                             "batching": {"max_batch_size": 8, "max_queue_delay_ms": 0}})
    assert r.status_code == 201 and r.json()["versions"][0]["status"] == "ready", r.text
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    yield {"port": port, "client": client, "sess": sess, "app": app}
    client.close()
    srv.should_exit = True
    thread.join(20)


def _v2_binary(x: np.ndarray, *, extra_headers: str = "", version: str = "1.1", request_id: str | None = None) -> bytes:
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                       "parameters": {"binary_data_size": x.nbytes}}],
           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    header = json.dumps({"id": request_id, **doc} if request_id else doc).encode()
    body = header + x.tobytes()
    return (f"POST /v2/models/tiny/infer HTTP/{version}\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n"
            f"{extra_headers}\r\n").encode() + body


def _v1_json(x: np.ndarray) -> bytes:
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    return (f"POST /v1/deployments/tiny/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _read(f) -> tuple[int, dict[str, str], bytes]:
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 "), status
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(status.split()[1]), headers, f.read(int(headers["content-length"]))


def _v2_output(headers: dict[str, str], body: bytes) -> np.ndarray:
    hl = int(headers["inference-header-content-length"])
    out = json.loads(body[:hl])["outputs"][0]
    return np.frombuffer(body[hl:], np.float32).reshape(out["shape"])


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def test_a_whole_request_is_answered_directly_and_as_asgi_would(live):
    from app.api.server import ANSWERED

    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)  # as small as the load probe's
    want = live["sess"].run(None, {"x": x})[0]
    req = _v2_binary(x)
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        s.sendall(req)
        _read(f)  # the first request of a key or name may look them up (ASGI); the rest need not
        before = dict(ANSWERED)
        s.sendall(req)
        st, direct_h, direct_body = _read(f)
        assert ANSWERED["direct"] == before.get("direct", 0) + 1 and ANSWERED["asgi"] == before.get("asgi", 0), \
            (before, ANSWERED)
        assert st == 200
        np.testing.assert_allclose(_v2_output(direct_h, direct_body), want, rtol=1e-5, atol=1e-6)

        # the same request in two reads: its body is still arriving when the first read ends, so the
        # ASGI task reads the rest; the answer is the same, byte for byte, headers but the date too
        split = len(req) - 10
        s.sendall(req[:split])
        _wait_for(lambda: ANSWERED["asgi"] == before.get("asgi", 0) + 1, "the split request to go to ASGI")
        s.sendall(req[split:])
        st2, asgi_h, asgi_body = _read(f)
        assert st2 == 200 and asgi_body == direct_body
        assert {k: v for k, v in asgi_h.items() if k != "date"} == {k: v for k, v in direct_h.items() if k != "date"}
        assert direct_h["x-modelport-worker"].isdigit() and "date" in direct_h


def test_pipelined_requests_keep_their_order_mixed_with_other_routes(live):
    """A direct answer, a FastAPI route, and two requests bigger than the load probe's (run on a
    thread, so their handlers wait) sent in one write: answered in order."""
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    y = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        s.sendall(_v2_binary(x) + health + _v1_json(y) + _v2_binary(y))  # one write: four requests
        answers = [_read(f) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    np.testing.assert_allclose(_v2_output(answers[0][1], answers[0][2]), live["sess"].run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)
    assert json.loads(answers[1][2])["status"] == "ok"
    np.testing.assert_allclose(np.asarray(json.loads(answers[2][2])["outputs"]["y"], np.float32),
                               live["sess"].run(None, {"x": y})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_v2_output(answers[3][1], answers[3][2]), live["sess"].run(None, {"x": y})[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["connection-close", "http-1.0"])
def test_a_request_that_ends_its_connection_is_answered_then_closed(live, how):
    x = np.ones((1, 8), np.float32)
    req = _v2_binary(x, extra_headers="Connection: close\r\n") if how == "connection-close" \
        else _v2_binary(x, version="1.0")
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        s.sendall(req)  # warm (ASGI at most once), on its own connection: closed after
        st, h, _ = _read(f)
        assert st == 200 and h["connection"] == "close" and f.read() == b""
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        s.sendall(req)
        st, h, body = _read(f)
        assert st == 200 and h["connection"] == "close"
        np.testing.assert_allclose(_v2_output(h, body), live["sess"].run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        assert f.read() == b""  # the server closed it


def test_a_header_seen_before_reads_each_new_body_and_the_plans_stay_bounded(live):
    """The same v2 header with new data each time: every answer is the model's for that data (the
    plan keeps how to read the body, never what was in it); 70 distinct headers (their ids differ)
    leave at most 64 plans on the loaded version."""
    from app.serving.dataplane import PLANS_KEPT

    rng = np.random.default_rng(5)
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        for _ in range(5):
            x = rng.standard_normal((1, 8)).astype(np.float32)
            s.sendall(_v2_binary(x))
            st, h, body = _read(f)
            assert st == 200
            np.testing.assert_allclose(_v2_output(h, body), live["sess"].run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        for i in range(PLANS_KEPT + 6):
            x = rng.standard_normal((1, 8)).astype(np.float32)
            s.sendall(_v2_binary(x, request_id=f"r{i}"))
            st, h, body = _read(f)
            hl = int(h["inference-header-content-length"])
            assert st == 200 and json.loads(body[:hl])["id"] == f"r{i}"
            np.testing.assert_allclose(_v2_output(h, body), live["sess"].run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    (lm,) = [m for m in live["app"].state.models.loaded.values() if m.name.endswith("tiny")]
    assert 1 <= len(lm.v2_plans) <= PLANS_KEPT


def test_errors_are_answered_directly_in_each_routes_shape(live):
    x = np.ones((1, 8), np.float32)
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        s.sendall(_v2_binary(x).replace(b"/v2/models/tiny/", b"/v2/models/nope/"))
        st, _, body = _read(f)
        assert st == 404 and "nope" in json.loads(body)["error"]
        s.sendall(_v2_binary(np.ones((1, 4), np.float32)))
        st, _, body = _read(f)
        assert st == 400 and "dim 1 must be 8" in json.loads(body)["error"], body
        s.sendall(_v2_binary(x))  # the connection goes on
        assert _read(f)[0] == 200


def test_a_handler_that_waits_finishes_in_a_task(live):
    """Through the dynamic batcher (X-Modelport-Batching: on) the handler waits for its batch: the
    answer comes from the task that goes on from there, and /metrics counts it with the rest."""
    from app.api.server import ANSWERED

    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    c = live["client"]

    def success() -> float:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith('modelport_inference_request_success_total{model="tiny",version="1"}'):
                return float(line.split()[-1])
        return 0.0

    start, waited = success(), ANSWERED["direct_waited"]
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        for _ in range(3):
            s.sendall(_v2_binary(x, extra_headers="X-Modelport-Batching: on\r\n"))
            st, h, body = _read(f)
            assert st == 200
            np.testing.assert_allclose(_v2_output(h, body), live["sess"].run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert ANSWERED["direct_waited"] >= waited + 2
    assert success() == start + 3  # recorded once each answer was written, before the next request


def test_the_header_deadline_holds_after_a_direct_answer(live):
    """A request whose headers stop half way, on a connection a direct answer kept open, gets 408
    within the deadline (1 s here): its timer is armed by the read that leaves headers incomplete."""
    x = np.ones((1, 8), np.float32)
    with _connect(live["port"]) as s, s.makefile("rb") as f:
        for _ in range(2):
            s.sendall(_v2_binary(x))
            assert _read(f)[0] == 200
        t0 = time.monotonic()
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n")
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 408"), status
        assert time.monotonic() - t0 < 10


def test_eager_runs_until_the_first_wait_then_goes_on_in_a_task():
    from app.api.fastpath import eager

    async def no_wait(v):
        return v * 2

    assert eager(no_wait(21)) == (True, 42)

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        steps = []

        async def waits():
            steps.append("before")
            got = await fut
            steps.append("after")
            return got + 1

        done, rest = eager(waits())
        assert not done and steps == ["before"]
        loop.call_later(0.01, fut.set_result, 41)
        assert await rest == 42 and steps == ["before", "after"]

        fut2 = loop.create_future()

        async def fails():
            await fut2
            raise ValueError("from the rest")

        done, rest = eager(fails())
        fut2.set_result(None)
        with pytest.raises(ValueError, match="from the rest"):
            await rest

        cancelled = []

        async def cancellable():
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        done, rest = eager(cancellable())
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled == [True]

    asyncio.run(main())
