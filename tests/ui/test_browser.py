"""The web UI end to end in a real browser: Debian's Chromium driven by Playwright, against the real
app served by uvicorn on a loopback port (embedded defaults in a temp dir, keys on). Sign in (and a
wrong key refused), upload by drag and drop with its progress, watch a conversion and report-all
finish live, the report's charts drawn with one mark per number (read through Chart.js's own API
and compared with GET /v1/models/{id}/report), deploy, predict. Screenshots of the model page go to
tests/ui/artifacts/ (MODELPORT_UI_ARTIFACTS elsewhere)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app import auth
from tests import models
from tests.helpers import stop_process

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MODELPORT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MODELPORT_UI_ARTIFACTS") or REPO / "tests" / "ui" / "artifacts")
BENCH_SECONDS = "2"
TERMINAL = ("succeeded", "failed", "cancelled")
REFUSED = "error: Failed to load resource: the server responded with a status of 401 (Unauthorized)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp: Path, keys: list[tuple[str, str]]):
    """uvicorn running the served app (fast path in front) on embedded defaults in ``tmp``, with
    ``keys`` ((project, scope)) made first; (process, url, tokens, log path)."""
    from app.catalog.db import Database, upgrade
    from app.config import Settings

    settings = Settings(data_dir=tmp / "data")
    db = Database(settings.resolved_database_url)
    upgrade(db.engine)
    tokens = [auth.create_key(db, settings, project=p, scope=s, name=f"ui {s}")[1] for p, s in keys]
    db.dispose()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(MODELPORT_DATA_DIR=str(settings.data_dir), MODELPORT_EMBEDDED_CONCURRENCY="2",
               MODELPORT_LOG_LEVEL="warning")
    log_path = tmp / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed after the process
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_asgi", "--factory", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, url, tokens, log, log_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-server")
    proc, url, (write, read), log, log_path = _serve(tmp, [("ui", "write"), ("ui", "read")])
    yield {"url": url, "write": write, "read": read, "log": log_path, "tmp": tmp}
    stop_process(proc, log)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh tab (1366x800, a laptop's screen) whose console errors and page errors are collected."""
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    yield pg
    context.close()


def _sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/ui")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#signin-key", key)
    page.press("#signin-key", "Enter")
    page.wait_for_selector("#content:not([hidden])")
    assert page.problems == [REFUSED], page.problems  # the first look, without a key
    page.problems.clear()


def _drop(page, selector: str, path: Path) -> None:
    """Drag a file from outside onto ``selector``, as a person would: dragenter, dragover, drop."""
    dt = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "application/octet-stream" }));
            return dt;
        }""", [path.name, base64.b64encode(path.read_bytes()).decode()])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": dt})


def _jobs_done(page, n: int, timeout_s: float) -> list[str]:
    """Wait (bounded) until the jobs table shows ``n`` jobs, every one finished; their statuses."""
    page.wait_for_function(
        """([n, terminal]) => {
            const rows = [...document.querySelectorAll('#jobs-table tbody tr[data-status]')];
            return rows.length === n && rows.every((r) => terminal.includes(r.dataset.status));
        }""", arg=[n, list(TERMINAL)], timeout=timeout_s * 1000)
    return page.eval_on_selector_all("#jobs-table tbody tr[data-status]", "rs => rs.map(r => r.dataset.status)")


CHART_MARKS = """() => Object.fromEntries(['chart-latency', 'chart-size', 'chart-error', 'chart-pareto', 'chart-load']
    .map((id) => {
        const chart = Chart.getChart(document.getElementById(id));
        return [id, chart.data.datasets.map((d, i) => ({label: d.label, marks: chart.getDatasetMeta(i).data.length,
                                                          data: d.data}))];
    }))"""


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(server, page):
    url = server["url"]
    page.goto(f"{url}/ui")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.is_hidden("#content") and page.text_content("#session-info") == "Not signed in"
    for key, said in (("mp_00000000_" + "x" * 40, "unknown API key"), ("not-a-key", "not a modelport API key")):
        page.fill("#signin-key", key)
        page.click("#signin-form button[type=submit]")
        page.wait_for_function("s => document.querySelector('#signin-error').textContent.includes(s)", arg=said)
        assert page.text_content("#signin-error").startswith("Sign-in failed: ")
        assert page.is_hidden("#content") and page.evaluate("sessionStorage.length") == 0
    write = server["write"]
    page.fill("#signin-key", write)
    page.press("#signin-key", "Enter")
    page.wait_for_selector("#content:not([hidden])")
    key_id = re.match(r"mp_([0-9a-f]{8})_", write).group(1)
    assert page.text_content("#session-info") == f"Project ui · write key {key_id}"
    assert page.evaluate("sessionStorage.getItem('modelport.apiKey')") == write
    assert write not in page.url and page.is_hidden("#signin")
    page.reload()  # the same tab keeps it
    page.wait_for_selector("#content:not([hidden])")
    assert page.text_content("#session-info").endswith(key_id)
    page.click("#sign-out")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.length") == 0
    # the browser logs each refused request: the two looks without a key (at first, after signing out) and the
    # two wrong keys, nothing else
    assert page.problems == [REFUSED] * 4


def test_upload_convert_report_all_charts_deploy_predict(server, page, tmp_path):
    url, key = server["url"], server["write"]
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    onnx = models.onnx_model(tmp_path)[0]
    _sign_in(page, url, key)

    # drag and drop, with the progress bar filled by the upload's own progress events
    _drop(page, "#dropzone", onnx)
    page.wait_for_selector("#upload-status a")
    assert page.text_content("#upload-status").startswith("Uploaded tiny.onnx (ONNX, 973 B).")
    assert page.eval_on_selector("#upload-progress", "p => p.value") == 100
    sent = page.text_content("#upload-bytes")
    assert re.fullmatch(r"[\d.]+ (B|KiB) of [\d.]+ (B|KiB) \(100 %\)", sent), sent  # the multipart body's size
    model = api.get("/v1/models").json()["items"][0]
    assert model["name"] == "tiny.onnx" and model["size_bytes"] == onnx.stat().st_size
    row = page.locator(f"#models-table tr[data-model-id='{model['id']}']")
    assert row.locator("th").text_content() == "tiny.onnx" and "safe" in row.text_content()
    page.fill("#search", "zzz")  # search by name: the API's ?name=
    page.wait_for_function("() => document.querySelector('#list-summary').textContent === 'No model matches the search.'")
    page.fill("#search", "TIN")
    page.wait_for_selector(f"#models-table tr[data-model-id='{model['id']}']")

    # the model page: its inspection
    page.click(f"#models-table tr[data-model-id='{model['id']}'] a")
    page.wait_for_selector("#model-body:not([hidden])")
    assert page.url == f"{url}/ui/models/{model['id']}"
    assert page.text_content("#model-name") == "tiny.onnx"
    assert [c.text_content() for c in page.locator("#inputs-table tbody tr").first.locator("th, td").all()] == \
        ["x", "float32", "[batch, 8]"]
    assert [c.text_content() for c in page.locator("#outputs-table tbody tr").first.locator("th, td").all()] == \
        ["y", "float32", "[batch, 3]"]
    assert "192" in page.text_content("#model-summary") and page.text_content("#safety .badge") == "safe"

    # convert to onnx fp16, watched live: the row is there before the job ends, and ends by itself
    page.select_option("#convert-target", "onnx")
    page.select_option("#convert-precision", "fp16")
    page.fill("#bench-seconds", BENCH_SECONDS)
    page.click("#convert-button")
    page.wait_for_selector("#jobs-table tbody tr[data-status]")
    first_seen = page.get_attribute("#jobs-table tbody tr[data-status]", "data-status")
    assert first_seen not in TERMINAL, first_seen

    # report-all while it runs: every format and precision variant, each a job of its own; the form's onnx
    # fp16 job is reused (it is named first), not made again
    page.click("#report-all-button")
    page.wait_for_function("() => document.querySelector('#actions-status').textContent.startsWith('Report-all:')")
    said = page.text_content("#actions-status")
    jobs = api.get("/v1/jobs", params={"model_id": model["id"]}).json()["items"]
    assert f"Report-all: {len(jobs)} job(s) (onnx fp16, " in said, said
    assert "tflite left out" in page.text_content("#skipped")  # no worker has the TF toolchain here
    statuses = _jobs_done(page, len(jobs), 150)  # the table follows them by itself, no reload
    assert statuses == ["succeeded"] * len(jobs) and len(jobs) >= 5
    page.wait_for_function("n => document.querySelectorAll('#artifacts-table tbody tr[data-artifact-id]').length === n",
                           arg=len(jobs))

    # logs of a job
    first = page.locator("#jobs-table tbody tr[data-status]").first
    first.locator("button[aria-controls]").click()
    logs = page.locator("#jobs-table pre.logs").first
    page.wait_for_function("() => document.querySelector('#jobs-table pre.logs').textContent.includes('### step 0:')")
    assert "[succeeded]" in logs.text_content()
    assert first.locator("button[aria-controls]").get_attribute("aria-expanded") == "true"

    # the charts: one mark per number of the report, read through Chart.js
    report = api.get(f"/v1/models/{model['id']}/report").json()
    rows = report["rows"]
    page.wait_for_function("n => document.querySelectorAll('#report-table tbody tr').length === n", arg=len(rows))
    charts = page.evaluate(CHART_MARKS)
    measured = [r for r in rows if r["p50_ms"] is not None]
    assert len(rows) == len(jobs) and len(measured) == len(rows)
    assert [(d["label"], d["marks"]) for d in charts["chart-latency"]] == [("p50", len(measured)), ("p99", len(measured))]
    assert charts["chart-latency"][0]["data"] == [r["p50_ms"] for r in measured]
    assert charts["chart-latency"][1]["data"] == [r["p99_ms"] for r in measured]
    assert charts["chart-size"][0]["marks"] == len(rows)
    assert charts["chart-size"][0]["data"] == [r["size_bytes"] for r in rows]
    validated = [r for r in rows if r["max_abs_err"] is not None]
    assert charts["chart-error"][0]["marks"] == len(validated) == len(rows)
    drawn = charts["chart-error"][0]["data"]  # exact matches (0) sit at the axis floor, below every error
    for r, v in zip(validated, drawn, strict=True):
        assert v == r["max_abs_err"] if r["max_abs_err"] > 0 else \
            v < min([e["max_abs_err"] for e in validated if e["max_abs_err"] > 0], default=1)
    assert charts["chart-load"][0]["data"] == [r["load_ms"] for r in rows]
    # the scatter: every measured artifact, validated ones apart from the others; the front the report marks
    # among the validated, and it is the real front. What fails here is a synthetic-calibrated int8 variant
    # (OpenVINO's on this 8-wide MLP is off by ~2 with made-up calibration data): its own verdict, shown crossed
    proven = [r for r in rows if r["deployable"]]
    unproven = [r for r in rows if not r["deployable"]]
    assert all(r["precision"] == "int8" and r["validation"] == "failed" for r in unproven), unproven
    front = [r for r in rows if r["pareto"]]
    beaten = [r for r in proven if any(q["size_bytes"] <= r["size_bytes"] and q["p50_ms"] <= r["p50_ms"]
                                       and (q["size_bytes"], q["p50_ms"]) != (r["size_bytes"], r["p50_ms"])
                                       for q in proven)]
    assert front and sorted(r["artifact_id"] for r in front) == sorted(
        r["artifact_id"] for r in proven if r not in beaten)
    scatter = {d["label"]: d for d in charts["chart-pareto"]}
    assert set(scatter) == {"validated", "Pareto front"} | ({"not validated"} if unproven else set())
    assert scatter["validated"]["marks"] == len(proven) and scatter["Pareto front"]["marks"] == len(front)
    assert scatter.get("not validated", {"marks": 0})["marks"] == len(unproven)
    assert [(p["x"], p["y"]) for p in scatter["Pareto front"]["data"]] == \
        sorted((r["size_bytes"], r["p50_ms"]) for r in front)
    for fig in ("chart-latency", "chart-size", "chart-error", "chart-pareto", "chart-load"):  # what a screen reader gets
        assert page.text_content(f"#{fig}-desc").count(":") >= len(rows), fig

    # a recommendation per priority, with the numbers behind it
    recs = page.locator("#recommendations article.rec")
    assert recs.count() == len(report["recommendations"]) == 5
    speed = next(r for r in report["recommendations"] if r["key"] == "speed_cpu")
    card = page.locator("article.rec[data-key=speed_cpu]")
    assert card.locator("h4").text_content() == speed["priority"]
    chosen = next(r for r in rows if r["artifact_id"] == speed["choice"]["artifact_id"])
    assert card.locator(".choice strong").text_content() == f"{chosen['format']} {chosen['precision']}"
    assert speed["because"] in card.text_content() and f"{chosen['p50_ms']:.3f} ms" in card.text_content()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "model-page-full.png"), full_page=True)
    page.locator("#report").screenshot(path=str(ARTIFACTS / "model-page-report.png"))

    # deploy (the fastest validated artifact is offered first) and predict on the example inputs
    assert page.input_value("#deploy-source") == f"artifact:{chosen['artifact_id']}"
    page.fill("#deploy-name", "tiny-ui")
    page.click("#deploy-button")
    page.wait_for_selector("#deploy-status[data-kind=ok]", timeout=60_000)
    assert re.match(r"Deployed tiny-ui v1: ready \(loaded in [\d.]+ ms\)\.", page.text_content("#deploy-status"))
    page.wait_for_selector("#deployments-table tr[data-deployment='tiny-ui']")
    page.wait_for_function("() => document.querySelector('#predict-input').value.length > 0")
    assert "generated values of the inspected inputs (x float32 [1, 8])" in page.text_content("#examples-source")
    sent = json.loads(page.input_value("#predict-input"))
    page.click("#predict-button")
    page.wait_for_selector("#predict-status[data-kind=ok]")
    assert re.match(r"tiny-ui answered in [\d.]+ ms \(round trip from this page\): y \[1, 3\]\.",
                    page.text_content("#predict-status"))
    shown = json.loads(page.text_content("#predict-output"))
    direct = api.post("/v1/deployments/tiny-ui/predict", json=sent).json()["outputs"]
    np.testing.assert_allclose(np.asarray(shown["y"]), np.asarray(direct["y"]), rtol=1e-6)
    page.locator("#deploy").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "model-page-deployed.png"), full_page=True)
    assert page.problems == []


def test_a_read_key_sees_everything_and_changes_nothing(server, page, tmp_path):
    url = server["url"]
    writer = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {server['write']}"}, timeout=60)
    path = models.onnx_model(tmp_path, name="readonly.onnx")[0]
    r = writer.post("/v1/models", params={"filename": path.name}, content=path.read_bytes())
    assert r.status_code in (200, 201), r.text
    model = r.json()
    _sign_in(page, url, server["read"])
    assert page.text_content("#session-info").startswith("Project ui · read key ")
    assert page.is_disabled("#upload-files")
    assert "needs a write key" in page.text_content("#upload-status")
    page.goto(f"{url}/ui/models/{model['id']}")
    page.wait_for_selector("#model-body:not([hidden])")
    for button in ("#convert-button", "#report-all-button", "#deploy-button"):
        assert page.is_disabled(button), button
    page.click("#load-examples")  # reading is allowed: the example inputs come
    page.wait_for_function("() => document.querySelector('#predict-input').value.startsWith('{\"inputs\"')")
    assert page.problems == []


def test_a_server_without_keys_needs_no_sign_in(browser, tmp_path):
    proc, url, _, log, _ = _serve(tmp_path, [])
    try:
        context = browser.new_context(viewport={"width": 1366, "height": 800})
        page = context.new_page()
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.goto(f"{url}/ui")
        page.wait_for_selector("#content:not([hidden])")
        assert page.is_hidden("#signin") and page.is_hidden("#sign-out")
        assert page.text_content("#session-info") == "Keys are off on this server: acting for project default"
        # the list loads after the page shows: wait for its summary, then read it
        page.wait_for_function("() => document.querySelector('#list-summary').textContent.length > 0")
        assert page.text_content("#list-summary") == "No models yet: upload one."
        page.set_input_files("#upload-files", str(models.onnx_model(tmp_path)[0]))  # the keyboard's way in
        page.wait_for_selector("#upload-status a")  # shown before the list reloads: wait for the row
        page.wait_for_selector("#models-table tbody tr[data-model-id]")
        assert page.locator("#models-table tbody tr").count() == 1
        page.goto(f"{url}/ui/models/{'0' * 32}")
        page.wait_for_function("() => document.querySelector('#model-error').textContent.length > 0")
        assert page.text_content("#model-error") == f"No model with id {'0' * 32} in this project."
        context.close()
        assert problems == ["Failed to load resource: the server responded with a status of 404 (Not Found)"]
    finally:
        stop_process(proc, log)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
