"""Defects of the step runner, each with the behaviour that was wrong: checks on another queue
got the cpu time limit; benchmark results went to the object store inside an open catalog
transaction; the report asked the catalog once per artifact, twice over."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import event

from tests import models
from tests.helpers import FAST_BENCH, run_job, upload


@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    return models.exported_program(tmp_path_factory.mktemp("step-context"))


def test_a_check_gets_the_time_limit_of_its_own_queue(embedded_client, pt2):
    c = embedded_client
    m = upload(c, pt2)
    job = run_job(c, m["id"], "openvino", benchmark=False)
    settings = c.app.state.settings
    settings.queue_timeouts["intel"] = 0.2  # OpenVINO checks run on intel; cpu keeps its 1800 s
    try:
        r = c.post(f"/v1/artifacts/{job['artifact_id']}/benchmarks", json={"batch_sizes": [1], "max_seconds": 20})
        assert r.status_code == 202, r.text
        bench_job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 120}).json()
    finally:
        settings.queue_timeouts.pop("intel")
    assert bench_job["steps"][0]["queue"] == "intel"
    b = c.get(f"/v1/artifacts/{job['artifact_id']}/benchmarks").json()["items"][0]
    assert b["status"] == "failed"
    assert b["reason"] == "the benchmark ran longer than its 0.2s time limit and was stopped"


def test_benchmark_results_are_stored_outside_the_catalog_transaction(embedded_client, pt2, monkeypatch):
    """While the object store writes a benchmark's JSON, another connection can write the SQLite
    catalog: no transaction holds its write lock over object-store I/O."""
    c = embedded_client
    store = c.app.state.store
    db_path = c.app.state.db.engine.url.database
    seen = []
    put_file = store.put_file

    def put_and_probe(key, path, **kw):
        if key.startswith("benchmarks/"):
            probe = sqlite3.connect(db_path, timeout=0.5)
            try:
                probe.execute("BEGIN IMMEDIATE")  # fails with 'database is locked' under an open write transaction
                probe.execute("ROLLBACK")
                seen.append("free")
            except sqlite3.OperationalError as e:
                seen.append(str(e))
            finally:
                probe.close()
        return put_file(key, path, **kw)

    monkeypatch.setattr(store, "put_file", put_and_probe)
    m = upload(c, pt2)
    job = run_job(c, m["id"], "onnx", benchmark=FAST_BENCH)
    assert seen == ["free"]
    art = c.get(f"/v1/artifacts/{job['artifact_id']}").json()
    assert art["benchmark"]["status"] == "ok" and store.exists(art["benchmark"]["object_key"])


def _report_selects(c, model_id: str) -> tuple[dict, int]:
    engine = c.app.state.db.engine
    statements = []

    def count(conn, cursor, statement, *args):  # the report's own: not the key check (cached, every 10 s)
        background = ("api_keys", "callback_deliveries", "step_dispatches")  # key cache, the two outboxes' threads
        if statement.lstrip().upper().startswith("SELECT") and not any(t in statement for t in background):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        report = c.get(f"/v1/models/{model_id}/report").json()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return report, len(statements)


def test_the_report_asks_the_catalog_a_fixed_number_of_times(embedded_client, pt2):
    c = embedded_client
    m = upload(c, pt2)
    run_job(c, m["id"], "onnx", options={"opset": 17}, benchmark=FAST_BENCH)
    one, n_one = _report_selects(c, m["id"])
    run_job(c, m["id"], "onnx", options={"opset": 18}, benchmark=FAST_BENCH)
    run_job(c, m["id"], "torchscript", benchmark=FAST_BENCH)
    three, n_three = _report_selects(c, m["id"])
    assert len(one["rows"]) == 1 and len(three["rows"]) == 3
    assert all(r["validation"] == "passed" and r["p50_ms"] > 0 for r in three["rows"])
    assert three["host"]["logical_cores"] >= 1
    # the model, its artifacts (with their files), the latest validations, benchmarks and endpoint sweeps:
    # none per artifact
    assert n_three == n_one <= 9


def test_checks_write_no_report_file(tmp_path, pt2):
    from app.pipeline import checks
    from app.sandbox.io import Source

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / pt2.name).write_bytes(pt2.read_bytes())
    src = Source(root=tmp_path / "in", paths=[pt2.name], primary=pt2.name, format="torch_export", inspection={})
    result = checks.benchmark_step(src, out, {"batch_sizes": [1], "max_seconds": 2})
    assert list(out.iterdir()) == []  # the report travels in the result, not through a file nobody reads
    assert result.details["status"] == "ok" and result.details["batches"]["1"]["p50_ms"] > 0
