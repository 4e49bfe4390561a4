"""Plain helpers the API tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

FAST_BENCH = {"batch_sizes": [1, 4], "max_seconds": 3}
S3_KEY, S3_SECRET = "modelport-test-key", "modelport-test-secret"


def serve(app, settings):
    """``app`` behind a real uvicorn on a free loopback port, as `modelport serve` runs it (its
    protocol, which answers inference requests without ASGI; no access log or proxy headers), in a
    thread: ``(server, thread, port)``. Stop it with ``server.should_exit = True; thread.join()``."""
    import socket
    import threading
    import time

    import uvicorn

    from app.main import http_protocol

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        http=http_protocol(settings), access_log=False, proxy_headers=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)  # the poll interval; started is the event, under the deadline above
    return srv, thread, port


def stop_process(proc, log=None) -> None:
    """SIGTERM ``proc`` (a server a test started), SIGKILL it if it has not ended within 20 s, then
    close its ``log`` file."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if log is not None:
        log.close()


def make_settings(tmp_path: Path, **overrides):
    from app.config import Settings

    return Settings(data_dir=tmp_path / "data", **overrides)


def empty_tables(url: str, *tables: str) -> None:
    """Tests of one session share the PostgreSQL database: start each from empty tables (those that
    exist yet; deleting models cascades to their files, jobs and artifacts)."""
    import sqlalchemy as sa

    eng = sa.create_engine(url)
    with eng.begin() as c:
        for table in tables:
            if sa.inspect(c).has_table(table):
                c.execute(sa.text(f"DELETE FROM {table}"))
    eng.dispose()


def upload(client, path: Path) -> dict:
    """Upload one model file raw, under its own name; the model (new or the same bytes seen before)."""
    r = client.post("/v1/models", params={"filename": path.name}, content=path.read_bytes(),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    return r.json()


def run_job(client, model_id: str, target: str, **body) -> dict:
    """Request a conversion and wait for its job, which must succeed."""
    r = client.post(f"/v1/models/{model_id}/conversions", json={"target": target, **body})
    assert r.status_code in (200, 202), r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    return job


def int8_artifact(client, model_id: str, target: str, body: dict) -> dict:
    """Request a static INT8 conversion, wait for its job (which must succeed, its log shown if not) and
    return the artifact, whose file must quantize activations too."""
    r = client.post(f"/v1/models/{model_id}/conversions", json=body)
    assert r.status_code == 202, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 600}).json()
    assert job["status"] == "succeeded", (job, client.get(f"/v1/jobs/{job['id']}/logs").text[-3000:])
    art = client.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert quantized_activations(target, art), art["inspection"]["details"]
    return art


def quantized_activations(target: str, art: dict) -> bool:
    """Whether an artifact quantizes activations too (static INT8), by what its own file says."""
    details = art["inspection"]["details"]
    if target == "onnx":
        return {"QuantizeLinear", "DequantizeLinear"} <= set(details["op_types"])
    if target == "openvino":
        return "FakeQuantize" in set(details["op_types"])
    return {"QUANTIZE", "DEQUANTIZE"} <= set(details["builtin_ops"])  # float I/O around int8 kernels
