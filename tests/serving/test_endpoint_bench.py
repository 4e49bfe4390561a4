"""Benchmarks through the endpoint (POST /v1/deployments/{name}/benchmark): the sweep's rules as pure
functions (stable windows, the doubling and the 5 % stop rule), the X-Modelport-Batching switch,
and real sweeps against a real uvicorn on a free loopback port (a small ONNX model, a bounded
sweep: short windows, concurrency up to 4) whose stored results, format report rows, refusals and
shutdown are checked."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from app.serving import loadgen
from tests import models
from tests.helpers import FAST_BENCH, make_settings, upload

pytest.importorskip("onnxruntime")

BOUNDED = {"window_ms": 100, "min_window_requests": 5, "max_windows": 4, "max_concurrency": 4, "max_seconds": 40}


# ------------------------------------------------------------------------------ the rules


def _w(rps: float, p50: float) -> dict:
    return {"rps": rps, "p50_ms": p50, "requests": 10, "errors": 0, "seconds": 1.0}


def test_three_windows_must_agree_on_throughput_and_latency():
    assert loadgen.stable([_w(100, 1.0), _w(105, 1.05), _w(96, 0.97)], 10)
    assert not loadgen.stable([_w(100, 1.0), _w(105, 1.05)], 10)  # fewer than 3
    assert not loadgen.stable([_w(100, 1.0), _w(125, 1.0), _w(100, 1.0)], 10)  # throughput off by > 10 % of the mean
    assert not loadgen.stable([_w(100, 1.0), _w(100, 1.4), _w(100, 1.0)], 10)  # p50 off
    assert loadgen.stable([_w(10, 1.0), _w(100, 1.0), _w(101, 1.0), _w(99, 1.0)], 10)  # only the last 3 count
    assert not loadgen.stable([_w(100, None), _w(100, 1.0), _w(100, 1.0)], 10)  # a window with no answers


def test_a_point_reports_its_last_three_windows():
    windows = [_w(50, 2.0), _w(100, 1.0), _w(100, 1.0), _w(100, 1.0)]
    p = loadgen.point(4, windows, [0.001, 0.002, 0.003, 0.004], rows=2, is_stable=True, why=None)
    assert p["requests"] == 30 and p["throughput_rps"] == 10.0 and p["throughput"] == 20.0  # 30 answers / 3 s
    assert p["p50_ms"] == 2.0 and p["p99_ms"] == 4.0 and p["windows"] == 4 and p["window_rps"][0] == 50


def _sweep(throughputs: dict[int, float], clock=None, **kw) -> dict:
    asked = []

    async def measure(c: int) -> dict:
        asked.append(c)
        return {"concurrency": c, "throughput_rps": throughputs[c], "throughput": throughputs[c], "p50_ms": 1.0,
                "p99_ms": 2.0, "errors": 0}

    kw = {"max_concurrency": 64, "growth_pct": 5.0, "deadline": float("inf"), **kw}
    out = asyncio.run(loadgen.sweep(measure, **({"clock": clock} if clock else {}), **kw))
    assert [p["concurrency"] for p in out["points"]] == asked
    return out


def test_the_sweep_doubles_until_throughput_grows_less_than_5_percent():
    out = _sweep({1: 100, 2: 190, 4: 360, 8: 370, 16: 999})
    assert [p["concurrency"] for p in out["points"]] == [1, 2, 4, 8]  # 370 < 360 * 1.05: stop, 16 never run
    assert out["stop_reason"] == "throughput grew +2.8% from concurrency 4 to 8 (less than 5%)"
    assert out["best"]["concurrency"] == 8 and out["best"]["throughput_rps"] == 370
    out = _sweep({1: 100, 2: 104})
    assert [p["concurrency"] for p in out["points"]] == [1, 2] and "+4.0%" in out["stop_reason"]


def test_the_sweep_stops_at_max_concurrency_errors_and_the_deadline():
    out = _sweep({1: 100, 2: 200, 4: 400}, max_concurrency=4)
    assert [p["concurrency"] for p in out["points"]] == [1, 2, 4] and out["stop_reason"] == "reached max_concurrency 4"

    async def failing(c: int) -> dict:
        return {"concurrency": c, "throughput_rps": 10.0 * c, "throughput": 10.0 * c, "p50_ms": 1.0, "p99_ms": 2.0,
                "errors": 3 if c == 2 else 0, "error_sample": "HTTP 503"}

    out = asyncio.run(loadgen.sweep(failing, max_concurrency=64, growth_pct=5, deadline=float("inf")))
    assert [p["concurrency"] for p in out["points"]] == [1, 2]
    assert out["stop_reason"] == "3 failed request(s) at concurrency 2: HTTP 503" and out["best"]["concurrency"] == 1

    ticks = iter([0.0, 5.0, 11.0])  # the clock before each point: the third is past the deadline
    out = _sweep({1: 100, 2: 200, 4: 400}, clock=lambda: next(ticks), deadline=10.0)
    assert [p["concurrency"] for p in out["points"]] == [1, 2]
    assert out["stop_reason"] == "time budget (max_seconds) used up before concurrency 4"


def test_the_batching_header_grammar():
    from app.serving.runtime import ServingError, _parse_batching

    assert _parse_batching("off") is None and _parse_batching("on") == ()
    assert _parse_batching("on;max_batch_size=8") == (8, 0.0)
    assert _parse_batching("ON; max_batch_size=8; max_queue_delay_ms=1.5") == (8, 1.5)
    for bad in ("yes", "on;max_batch_size=1", "on;max_batch_size=8;colour=red", "on;max_queue_delay_ms=1", "off;x"):
        with pytest.raises(ServingError) as e:
            _parse_batching(bad)
        assert e.value.status == 400 and "X-Modelport-Batching must be off, on, or on;max_batch_size=N" in e.value.message


# ------------------------------------------------------------------------------ against a real server


def _queued(c, name: str) -> float:
    """How many requests of ``name`` v1 a dynamic batcher queued (its queue-time histogram's count)."""
    prefix = f'modelport_inference_queue_duration_seconds_count{{model="{name}",version="1"}} '
    return sum(float(ln[len(prefix):]) for ln in c.get("/metrics").text.splitlines() if ln.startswith(prefix))


@pytest.fixture
def server(request, tmp_path):
    """The app on embedded defaults behind a real uvicorn on a free loopback port (settings
    overridden by the test's indirect parameter)."""
    import uvicorn

    from app.main import create_asgi

    settings = make_settings(tmp_path, **getattr(request, "param", {}))
    app = create_asgi(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)  # the poll interval; the condition is uvicorn's started flag, under the deadline
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    yield {"client": client, "app": app, "srv": srv, "thread": thread, "settings": settings, "tmp": tmp_path}
    client.close()
    srv.should_exit = True
    thread.join(30)


def _deploy_artifact(c, tmp, **batching) -> tuple[dict, dict]:
    """The tiny ONNX model converted (validated, benchmarked in-process) and its artifact deployed."""
    m = upload(c, models.onnx_model(tmp)[0])
    r = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", "options": {"optimize": "basic"},
                                                          "benchmark": FAST_BENCH})
    job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    r = c.post("/v1/deployments", json={"name": "tiny", "artifact_id": job["artifact_id"],
                                        **({"batching": batching} if batching else {})})
    assert r.status_code == 201, r.text
    return m, job


def _check_mode(d: dict, max_concurrency: int, growth_pct: float = 5.0) -> list[int]:
    """The stored sweep of one mode: doubling concurrency from 1, sane numbers, and the stop rule."""
    pts = d["points"]
    conc = [p["concurrency"] for p in pts]
    assert conc == [2 ** i for i in range(len(conc))] and conc[-1] <= max_concurrency, conc
    for p in pts:
        assert p["errors"] == 0 and p["requests"] > 0 and p["throughput_rps"] > 0, p
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"], p
        assert isinstance(p["stable"], bool) and (p["stable"] or p["unstable_reason"]), p
        assert set(p["answered_by"]) == {str(os.getpid())}, p  # this process's uvicorn answered
    thr = [p["throughput_rps"] for p in pts]
    for a, b in zip(thr, thr[1:-1], strict=False):  # every doubling before the last grew enough to go on
        assert b >= a * (1 + growth_pct / 100), thr
    if d["stop_reason"].startswith("throughput grew"):
        assert len(thr) >= 2 and thr[-1] < thr[-2] * (1 + growth_pct / 100), (thr, d["stop_reason"])
    else:
        assert d["stop_reason"] == f"reached max_concurrency {max_concurrency}" and conc[-1] == max_concurrency
    assert d["best"]["throughput_rps"] == max(thr)
    return conc


def test_a_sweep_through_the_endpoint_with_and_without_batching_lands_in_the_report(server):
    c = server["client"]
    m, job = _deploy_artifact(c, server["tmp"], max_batch_size=8)
    r = c.post("/v1/deployments/tiny/benchmark", json=BOUNDED)
    assert r.status_code == 202, r.text
    b = r.json()
    assert b["status"] == "running" and b["results"] == {} and b["artifact_id"] == job["artifact_id"]
    assert b["links"]["self"] == f"/v1/deployments/tiny/benchmark/{b['id']}"

    again = c.post("/v1/deployments/tiny/benchmark", json=BOUNDED)  # one at a time: they would measure each other
    assert again.status_code == 409 and again.json()["error"]["code"] == "benchmark_running"
    assert again.json()["error"]["detail"]["id"] == b["id"]

    done = c.get(b["links"]["self"], params={"wait": 120}).json()
    assert done["status"] == "succeeded", done
    res = done["results"]
    assert res["path"] == "/v2/models/tiny/versions/1/infer" and res["protocol"] == "v2_binary" and res["rows"] == 1
    assert set(res["modes"]) == {"batched", "unbatched"} and res["skipped"] == {}
    assert res["modes"]["batched"]["batching"] == {"max_batch_size": 8, "max_queue_delay_ms": 0.0,
                                                   "from": "the deployment"}
    assert res["modes"]["unbatched"]["batching"] is None
    for d in res["modes"].values():
        _check_mode(d, BOUNDED["max_concurrency"])

    assert _queued(c, "tiny") > 0  # the batched sweep went through a dynamic batcher (only a batcher records queue time)

    report = c.get(f"/v1/models/{m['id']}/report").json()
    (row,) = [r for r in report["rows"] if r["artifact_id"] == job["artifact_id"]]
    assert row["p50_ms"] is not None  # the in-process number ...
    e = row["endpoint"]  # ... and beside it, the endpoint's
    assert e["benchmark_id"] == b["id"] and e["deployment"] == "tiny" and e["version"] == 1
    assert [p["concurrency"] for p in e["modes"]["batched"]["points"]] == \
        [p["concurrency"] for p in res["modes"]["batched"]["points"]]
    assert e["modes"]["unbatched"]["best"] == res["modes"]["unbatched"]["best"]
    md = c.get(f"/v1/models/{m['id']}/report", params={"format": "md"}).text
    assert "## Through the endpoint" in md and "| onnx fp32 (" in md and "| tiny v1 | batched | 1 |" in md


def test_a_deployment_without_batching_is_measured_with_the_requested_batcher(server):
    c = server["client"]
    m = upload(c, models.onnx_model(server["tmp"])[0])
    assert c.post("/v1/deployments", json={"name": "up", "model_id": m["id"]}).status_code == 201
    r = c.post("/v1/deployments/up/benchmark", json={**BOUNDED, "modes": ["batched"], "max_batch_size": 4,
                                                      "protocol": "v2_json", "rows": 2, "max_concurrency": 2})
    assert r.status_code == 202, r.text
    done = c.get(r.json()["links"]["self"], params={"wait": 120}).json()
    assert done["status"] == "succeeded", done
    res = done["results"]
    assert set(res["modes"]) == {"batched"} and res["protocol"] == "v2_json" and res["rows"] == 2
    assert res["modes"]["batched"]["batching"]["max_batch_size"] == 4
    assert "has no batching configured" in res["modes"]["batched"]["batching"]["from"]
    _check_mode(res["modes"]["batched"], 2)
    for p in res["modes"]["batched"]["points"]:
        assert p["throughput"] == pytest.approx(2 * p["throughput_rps"], rel=1e-3)  # samples/s = 2 rows/request
    assert c.get(f"/v1/models/{m['id']}/report").json()["model"]["endpoint"]["benchmark_id"] == done["id"]


@pytest.mark.parametrize("server", [{"serving_inline_us": 1e9}], indirect=True)  # every call counts as fast
def test_the_batching_header_on_predict_requests(server):
    c = server["client"]
    m = upload(c, models.onnx_model(server["tmp"])[0])
    assert c.post("/v1/deployments", json={"name": "up", "model_id": m["id"]}).status_code == 201
    assert "runs inline" in c.get("/v1/deployments/up").json()["versions"][0]["batching_note"]
    x = np.ones((2, 8), np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    plain = c.post("/v2/models/up/infer", json=body).json()["outputs"][0]["data"]
    queued = 0.0
    for header, batched in (("off", False), ("on;max_batch_size=4", True), ("on;max_batch_size=4;max_queue_delay_ms=1",
                                                                            True)):
        r = c.post("/v2/models/up/infer", json=body, headers={"X-Modelport-Batching": header})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == plain, (header, r.text)
        r = c.post("/v1/deployments/up/predict", json={"inputs": {"x": x.tolist()}},
                   headers={"X-Modelport-Batching": header})
        assert r.status_code == 200, (header, r.text)
        now = _queued(c, "up")  # an inline model: only "on" puts its requests through a batcher
        assert now == queued + (2 if batched else 0), (header, now, queued)
        queued = now
    r = c.post("/v2/models/up/infer", json=body, headers={"X-Modelport-Batching": "on"})
    assert r.status_code == 400 and "has no dynamic batching configured" in r.json()["error"]
    r = c.post("/v1/deployments/up/predict", json={"inputs": {"x": x.tolist()}}, headers={"X-Modelport-Batching": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_batching"


def test_refusals(server):
    c = server["client"]
    r = c.post("/v1/deployments/nope/benchmark", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "deployment_not_found"
    m = upload(c, models.onnx_model(server["tmp"])[0])
    assert c.post("/v1/deployments", json={"name": "up", "model_id": m["id"]}).status_code == 201
    for bad, where in (({"window_ms": 10}, "window_ms"), ({"modes": ["sideways"]}, "modes"), ({"colour": 1}, "colour"),
                       ({"modes": []}, "modes")):
        r = c.post("/v1/deployments/up/benchmark", json=bad)
        assert r.status_code == 422 and where in r.json()["error"]["message"], r.text
    r = c.get("/v1/deployments/up/benchmark/0123")
    assert r.status_code == 404 and r.json()["error"]["code"] == "endpoint_benchmark_not_found"


def test_a_sweep_whose_process_stopped_reads_as_failed_and_blocks_nothing(server):
    from app.catalog import repo

    c = server["client"]
    m = upload(c, models.onnx_model(server["tmp"])[0])
    assert c.post("/v1/deployments", json={"name": "up", "model_id": m["id"]}).status_code == 201
    long = {**BOUNDED, "max_concurrency": 1024, "growth_pct": 0, "max_seconds": 600, "window_ms": 1000,
            "max_windows": 100, "stability_pct": 0.001}  # would run for minutes
    b = c.post("/v1/deployments/up/benchmark", json=long).json()
    assert b["status"] == "running"
    server["srv"].should_exit = True  # the server stops mid-sweep: the sweep is recorded as failed, saying why
    server["thread"].join(60)
    assert not server["thread"].is_alive()
    from app.catalog.db import Database

    db = Database(server["settings"].resolved_database_url)
    with db.session() as s:
        row = repo.get_endpoint_benchmark(s, b["id"])
        assert row.status == "failed" and row.reason == "the server stopped before the benchmark finished"
        # and one whose process died without a word (no heartbeat for a minute) reads as failed too
        repo.update_endpoint_benchmark(s, b["id"], status="running",
                                       heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120))
    from app.serving.endpoint_bench import view

    with db.session() as s:
        v = view(repo.get_endpoint_benchmark(s, b["id"]))
        assert v["status"] == "failed" and "stopped before it finished: no heartbeat since" in v["reason"]
        assert repo.running_endpoint_benchmarks(s, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)) == []
    db.dispose()
