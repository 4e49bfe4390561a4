"""The SDK (app/client.py) and the client commands of the CLI (app/cli.py), end to end: a real
`modelport serve` on a free port (embedded defaults: SQLite, local store, in-process executor, all
under tmp), the CLI run as subprocesses (`python -m app.cli ...`), real exit codes and JSON.

The main server gets an admin key through its own API (POST /v1/keys while it is open, which turns
authentication on; or ``MODELPORT_API_KEY``, also given to it as ``MODELPORT_ADMIN_KEY``, when it
already requires one), and every CLI call reads that key from ``MODELPORT_API_KEY``, as a CI job
would. A second server with no key anywhere runs open; it covers the open mode and, once stopped,
the unreachable server."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app import client as sdk
from tests import models

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
WAIT = "600"  # --timeout of every waiting CLI call (the test's own limit is pytest-timeout's)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """This process's environment without MODELPORT_* (a developer's URL or key must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}


class Server:
    """`modelport serve` in a child process; `start` polls /healthz under a deadline."""

    def __init__(self, data_dir: Path, **env: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.env = {**_clean_env(), "MODELPORT_DATA_DIR": str(data_dir), **env}
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, deadline_s: float = 120) -> Server:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"modelport serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"modelport serve did not answer /healthz within {deadline_s} s:\n{self.log()}")
            time.sleep(0.1)  # the poll interval; readiness is /healthz answering, under the deadline above

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class CLI:
    """`python -m app.cli ...` against one server, with the key in MODELPORT_API_KEY."""

    def __init__(self, url: str, api_key: str | None):
        self.env = {**_clean_env(), "MODELPORT_URL": url}
        if api_key:
            self.env["MODELPORT_API_KEY"] = api_key

    def __call__(self, *args, expect: int | None = 0, env: dict[str, str] | None = None,
                 timeout: float = 900) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT,
                             env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if expect is not None:
            assert out.returncode == expect, (f"modelport {' '.join(map(str, args))}: exit {out.returncode}, "
                                              f"expected {expect}\nstdout: {out.stdout[-3000:]}\n"
                                              f"stderr: {out.stderr[-3000:]}")
        return out

    def json(self, *args, expect: int | None = 0, **kw):
        out = self(*args, "--json", expect=expect, **kw)
        try:
            return json.loads(out.stdout)
        except ValueError:
            pytest.fail(f"--json printed something that is not JSON: {out.stdout[-2000:]!r}")


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env_key = os.environ.get("MODELPORT_API_KEY")
    srv = Server(tmp_path_factory.mktemp("modelport-data"), **({"MODELPORT_ADMIN_KEY": env_key} if env_key else {}))
    try:
        yield srv.start()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_key(server) -> str:
    """An admin key of the test server, through the public API: made with POST /v1/keys while the
    server is still open (which turns authentication on), or MODELPORT_API_KEY when the server
    already requires a key."""
    r = httpx.post(f"{server.url}/v1/keys", json={"name": "tests", "scope": "admin"}, timeout=30)
    if r.status_code == 201:
        return r.json()["key"]
    if r.status_code == 401 and os.environ.get("MODELPORT_API_KEY"):
        return os.environ["MODELPORT_API_KEY"]
    pytest.fail(f"cannot get an admin key from the test server ({r.status_code} {r.text[:300]}); set MODELPORT_API_KEY")


@pytest.fixture(scope="module")
def mp(server, api_key) -> CLI:
    return CLI(server.url, api_key)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def uploaded(mp, files) -> dict:
    return mp.json("upload", models.exported_program(files), "--name", "tiny")


@pytest.fixture(scope="module")
def converted(mp, uploaded) -> dict:
    """`convert MODEL --target onnx --wait`: the job's JSON with its final artifact's validation."""
    return mp.json("convert", uploaded["id"], "--target", "onnx", "--wait", "--timeout", WAIT)


@pytest.fixture(scope="module")
def torchscript_model(mp, files) -> dict:
    return mp.json("upload", models.torchscript(files), "--name", "tiny-ts")


# ------------------------------------------------------------------------------------ the happy path


def test_upload_prints_the_model_and_is_idempotent(mp, uploaded, files):
    assert uploaded["format"] == "torch_export" and uploaded["name"] == "tiny"
    assert uploaded["inspection"]["inputs"][0]["name"] == "x"
    again = mp("upload", files / "tiny.pt2", "--progress")
    assert again.stdout.split()[0] == uploaded["id"]  # the same bytes: the same model
    assert "upload" in again.stderr  # --progress draws the bar on stderr even without a terminal
    assert "upload" not in mp("upload", files / "tiny.pt2").stderr  # no terminal, no --progress: no bar


def test_upload_several_files_and_a_directory(mp, tmp_path):
    onnx_files = models.onnx_model(tmp_path, external=True)  # tiny.onnx + tiny.onnx.data
    multi = mp.json("upload", *onnx_files, "--name", "ext", "--metadata", '{"team": "ci"}')
    assert multi["format"] == "onnx" and multi["file_count"] == 2 and multi["metadata"] == {"team": "ci"}
    folder = tmp_path / "ext_model"
    folder.mkdir()
    for f in onnx_files:
        f.rename(folder / f.name)
    as_dir = mp.json("upload", folder)  # sent as a .tar.gz
    assert as_dir["format"] == "onnx" and as_dir["file_count"] == 2
    assert mp.json("upload", folder, folder, expect=2)["error"]["message"].startswith("upload: a directory")


def test_convert_wait_succeeds_and_is_validated(converted, uploaded):
    assert converted["status"] == "succeeded" and converted["model_id"] == uploaded["id"]
    assert converted["validation"] == "passed" and converted["timed_out"] is False
    assert converted["artifact_id"] and converted["plan"] == ["torch_export->onnx", "validate:onnx", "benchmark:onnx"]


def test_jobs_wait_and_logs(mp, uploaded, converted):
    jobs = mp.json("jobs", "--model", uploaded["id"])
    assert converted["id"] in [j["id"] for j in jobs]
    assert converted["id"] in [j["id"] for j in mp.json("jobs", "--status", "succeeded")]
    assert mp.json("jobs", "--status", "failed", "--model", uploaded["id"]) == []
    waited = mp.json("wait", converted["id"], "--timeout", "30")
    assert [(w["id"], w["status"], w["validation"]) for w in waited] == [(converted["id"], "succeeded", "passed")]
    human = mp("wait", converted["id"]).stdout
    assert converted["id"] in human and "validation passed" in human
    assert "### step 0: torch_export->onnx [succeeded]" in mp("logs", converted["id"]).stdout
    # the global options work before and after the command
    assert mp("--url", mp.env["MODELPORT_URL"], "jobs", "--model", uploaded["id"]).stdout.count(converted["id"]) == 1
    assert mp("jobs", "--url", mp.env["MODELPORT_URL"], "--model", uploaded["id"]).stdout.count(converted["id"]) == 1


def test_report_json_and_markdown(mp, uploaded, converted):
    report = mp.json("report", uploaded["id"])
    rows = [r for r in report["rows"] if r["artifact_id"] == converted["artifact_id"]]
    assert rows and rows[0]["format"] == "onnx" and rows[0]["precision"] == "fp32"
    assert rows[0]["validation"] == "passed" and rows[0]["p50_ms"] > 0
    md = mp("report", uploaded["id"]).stdout
    assert md.startswith("# Format report: tiny") and "| onnx | fp32 |" in md
    assert mp("report", uploaded["id"], "--md").stdout == md


def test_download_the_artifact(mp, converted, tmp_path, server, api_key):
    import onnx

    got = mp.json("download", converted["artifact_id"], tmp_path)
    path = Path(got["path"])
    assert path.parent == tmp_path and path.suffix == ".onnx" and path.stat().st_size == got["size_bytes"]
    onnx.checker.check_model(onnx.load(str(path)))
    with sdk.Client(server.url, api_key) as c:
        art = c.job(converted["id"]).artifact()
        assert art.validation["status"] == "passed" and art.validation_status == "passed"
        again = art.download(tmp_path / "copy.onnx")
        assert again.read_bytes() == path.read_bytes()
        assert not list(tmp_path.glob("*.part"))


def test_deploy_and_predict_match_torch(mp, converted, tmp_path, server, api_key):
    import torch

    dep = mp.json("deploy", "tiny", "--artifact", converted["artifact_id"])
    assert dep["name"] == "tiny" and dep["versions"][-1]["status"] == "ready"
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    with torch.no_grad():
        want = models.tiny_module()(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    out = mp.json("predict", "tiny", "--input", f"x={tmp_path / 'x.npy'}", "--output", tmp_path / "y.npz")
    (name, got), = out["outputs"].items()
    assert got["dtype"] == "float32" and got["shape"] == [3, 3]
    np.testing.assert_allclose(np.array(got["data"], np.float32), want, rtol=1e-5, atol=1e-5)
    with np.load(tmp_path / "y.npz") as saved:
        np.testing.assert_allclose(saved[name], want, rtol=1e-5, atol=1e-5)
    human = mp("predict", "tiny", "-i", tmp_path / "x.npy").stdout  # a bare .npy: the one input
    assert human.startswith(f"{name}: float32 [3, 3]")
    np.savez(tmp_path / "in.npz", x=x)
    assert mp.json("predict", "tiny", "-i", tmp_path / "in.npz")["outputs"][name]["shape"] == [3, 3]
    with sdk.Client(server.url, api_key) as c:  # the SDK: .npz both ways, dtypes kept
        y = c.predict("tiny", {"x": x})
        assert y[name].dtype == np.float32
        np.testing.assert_allclose(y[name], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c.predict("tiny", x)[name], want, rtol=1e-5, atol=1e-5)  # one array: .npy
    bad = mp.json("predict", "tiny", "-i", f"nope={tmp_path / 'x.npy'}", expect=2)  # the server's 400
    assert bad["error"]["status"] == 400 and "nope" in bad["error"]["message"]


# ------------------------------------------------------------------------------------ the gate


def test_gate_against_itself_passes(mp, uploaded, converted, tmp_path):
    summary = tmp_path / "summary.md"
    out = mp("gate", uploaded["id"], "--baseline", uploaded["id"], "--max-error", "1e-4", "--summary", summary)
    assert out.stdout.startswith("## modelport gate: ✅ passed")
    assert "| format | precision | metric | baseline | candidate | change | verdict |" in out.stdout
    assert "| onnx | fp32 | p50 latency |" in out.stdout
    assert summary.read_text() == out.stdout
    res = mp.json("gate", uploaded["id"], "--baseline", uploaded["id"])
    assert res["passed"] is True and res["failures"] == [] and res["markdown"].startswith("## modelport gate")


def test_gate_with_an_allowance_no_report_can_meet_fails(mp, uploaded, converted):
    """A negative allowance demands an improvement; -100% can never be met, so the same report
    fails it: the gate really gates. (Write `=` before a negative value: argparse reads a leading
    '-' as a flag.)"""
    res = mp.json("gate", uploaded["id"], "--baseline", uploaded["id"], "--max-size-growth=-100%", expect=3)
    assert res["passed"] is False
    assert [(f["format"], f["metric"], f["verdict"]) for f in res["failures"]] == [("onnx", "size_bytes", "FAIL")]
    out = mp("gate", uploaded["id"], "--baseline", uploaded["id"], "--max-size-growth=-100%", expect=3)
    assert "❌ failed" in out.stdout and "**FAIL**" in out.stdout and "regression" in out.stderr


def _wide_pt2(out: Path) -> Path:
    """The same interface as tests.models' tiny model ([batch, 8] -> [batch, 3]) with a 512-wide
    hidden layer: a candidate whose artifacts are ~30x larger."""
    import torch

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(8, 512), torch.nn.ReLU(), torch.nn.Linear(512, 3)).eval()
    ep = torch.export.export(net, (torch.randn(2, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = out / "wide.pt2"
    torch.export.save(ep, path)
    return path


def test_gate_catches_a_planted_size_regression(mp, uploaded, converted, files):
    wide = mp.json("upload", _wide_pt2(files), "--name", "tiny")
    job = mp.json("convert", wide["id"], "--target", "onnx", "--no-benchmark", "--wait", "--timeout", WAIT)
    assert job["status"] == "succeeded" and job["validation"] == "passed"
    res = mp.json("gate", wide["id"], "--baseline", uploaded["id"], expect=3)
    fails = {(f["format"], f["precision"], f["metric"]) for f in res["failures"]}
    assert fails == {("onnx", "fp32", "size_bytes")}
    size = next(c for c in res["comparisons"] if c["metric"] == "size_bytes" and c["format"] == "onnx")
    assert size["candidate"] > 5 * size["baseline"]
    latency = next(c for c in res["comparisons"] if c["metric"] == "p50_ms" and c["format"] == "onnx")
    assert latency["verdict"] == "n/a"  # the candidate was not benchmarked: shown, never a failure
    # the other way round the artifact shrank: nothing regressed
    assert mp.json("gate", uploaded["id"], "--baseline", wide["id"])["passed"] is True


# ------------------------------------------------------------------------------------ exit codes


def test_validation_failure_exits_3(mp, torchscript_model):
    specs = json.dumps({"x": {"shape": [2, 8], "dtype": "float32", "dynamic": {"0": "batch"}}})
    exact = json.dumps({"atol": 0, "rtol": 0, "atol_scale": 0})  # float32 rounding differs: cannot pass
    job = mp.json("convert", torchscript_model["id"], "--target", "onnx", "--input-specs", specs, "--tolerance", exact,
                  "--no-benchmark", "--wait", "--timeout", WAIT, expect=3)
    assert job["status"] == "succeeded" and job["validation"] == "failed"
    assert "outside atol 0" in job["validation_reason"]
    assert mp.json("wait", job["id"], expect=3)[0]["validation"] == "failed"
    refused = mp.json("deploy", "tiny-ts", "--artifact", job["artifact_id"], expect=3)  # 409 not_validated
    assert refused["error"]["status"] == 409 and refused["error"]["code"] == "not_validated"
    assert mp.json("deploy", "tiny-ts", "--artifact", job["artifact_id"], "--force")["versions"][-1]["forced"] is True


def test_failed_job_exits_1(mp, torchscript_model, server, api_key):
    wrong = json.dumps({"x": {"shape": [2, 5], "dtype": "float32"}})  # the model takes [*, 8]
    job = mp.json("convert", torchscript_model["id"], "--target", "onnx", "--input-specs", wrong, "--no-benchmark",
                  "--wait", "--timeout", WAIT, expect=1)
    assert job["status"] == "failed" and job["artifact_id"] is None and job["error"]["message"]
    out = mp("wait", job["id"], expect=1)
    assert "failed" in out.stdout and "error:" in out.stderr
    with sdk.Client(server.url, api_key) as c, pytest.raises(sdk.JobFailed) as e:
        c.job(job["id"]).wait()
    assert e.value.job.status == "failed"


def test_wait_that_runs_out_of_time_exits_1(mp, uploaded):
    job = mp.json("convert", uploaded["id"], "--target", "torchscript", "--no-benchmark", "--no-validate")
    assert job["status"] in ("queued", "running")
    out = mp.json("wait", job["id"], "--timeout", "0.2", expect=1)
    assert out[0]["timed_out"] is True and out[0]["status"] not in ("succeeded", "failed")
    done = mp("wait", job["id"], "--timeout", WAIT, "--progress", "--json")  # the step bar on stderr
    assert json.loads(done.stdout)[0]["status"] == "succeeded" and "job " in done.stderr


def test_requests_the_server_refuses_exit_2(mp, uploaded, files):
    r = mp.json("convert", uploaded["id"], "--target", "nonsense", expect=2)
    assert r["error"]["status"] == 422 and r["error"]["code"] == "unknown_target"
    r = mp.json("convert", uploaded["id"], "--target", "onnx", "--options", '{"bogus": 1}', expect=2)
    assert r["error"]["code"] == "invalid_options"
    assert mp.json("report", "no-such-model", expect=2)["error"]["status"] == 404
    assert mp.json("wait", "no-such-job", expect=2)["error"]["code"] == "job_not_found"
    assert mp.json("deploy", "x", "--model", "no-such-model", expect=2)["error"]["status"] == 404
    (files / "junk.bin").write_bytes(b"not a model at all" * 10)
    refused = mp.json("upload", files / "junk.bin", expect=2)["error"]
    assert refused["status"] in (415, 422) and refused["code"]


def test_usage_errors_exit_2(mp, uploaded, tmp_path):
    for args in (["jobs", "--bogus"], ["convert", uploaded["id"]], ["convert", uploaded["id"], "-t", "onnx",
                 "--options", "not json"], ["convert", uploaded["id"], "-t", "onnx", "--options", "[1]"],
                 ["deploy", "x"], ["deploy", "x", "--artifact", "a", "--model", "m"], ["predict", "x"],
                 ["gate", uploaded["id"]], ["gate", uploaded["id"], "--baseline", "b", "--max-size-growth", "lots"],
                 ["report", uploaded["id"], "--md", "--json"], ["no-such-command"]):
        out = mp(*args, expect=2)
        assert "usage:" in out.stderr, args
    missing = mp.json("upload", tmp_path / "missing.onnx", expect=2)
    assert "no such file" in missing["error"]["message"]
    assert "no such file" in mp("predict", "x", "-i", f"x={tmp_path / 'missing.npy'}", expect=2).stderr
    np.save(tmp_path / "a.npy", np.zeros(2))
    np.save(tmp_path / "b.npy", np.zeros(2))
    assert "NAME=" in mp("predict", "x", "-i", tmp_path / "a.npy", "-i", tmp_path / "b.npy", expect=2).stderr


def test_auth_refused_exits_4(mp, server, api_key):
    """The server holds a key, so authentication is on: no key or an unknown one is 401, a read
    key asked to write is 403 — all exit 4, with the server's reason."""
    no_key = {**mp.env}
    no_key.pop("MODELPORT_API_KEY", None)
    out = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "--json"], cwd=ROOT, env=no_key,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 4, out.stderr
    assert json.loads(out.stdout)["error"]["status"] == 401
    bogus = f"mp_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    assert mp.json("jobs", "--api-key", bogus, expect=4)["error"]["status"] == 401
    assert mp.json("jobs", env={"MODELPORT_API_KEY": bogus}, expect=4)["error"]["status"] == 401
    made = httpx.post(f"{server.url}/v1/keys", json={"name": "ci-read", "scope": "read"},
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert made.status_code == 201, made.text
    read_key = made.json()["key"]
    mp("jobs", "--api-key", read_key)  # reading is allowed
    denied = mp.json("convert", "anything", "--target", "onnx", "--api-key", read_key, expect=4)
    assert denied["error"]["status"] == 403
    with sdk.Client(server.url, api_key=read_key) as c, pytest.raises(sdk.AuthError) as e:
        c.convert("anything", "onnx")
    assert e.value.status == 403 and e.value.code == "insufficient_scope"


def test_open_server_then_stopped_server_exits_4(tmp_path):
    srv = Server(tmp_path / "open-data").start()
    try:
        cli = CLI(srv.url, None)
        assert cli.json("jobs") == []  # no key anywhere: the server runs open
        with sdk.Client(srv.url) as c:
            assert c.health()["status"] == "ok" and c.jobs() == []
    finally:
        srv.stop()
    out = cli.json("jobs", expect=4)
    assert "unreachable" in out["error"]["message"]
    assert "unreachable" in cli("wait", "some-job", expect=4).stderr
    with sdk.Client(srv.url) as c, pytest.raises(sdk.Unreachable):
        c.jobs()


def test_help_documents_the_exit_codes(mp):
    top = mp("--help").stdout
    for cmd in ("serve", "worker", "db", "formats", "upload", "convert", "wait", "gate", "deploy", "predict"):
        assert cmd in top
    for line in ("0  ok", "1  a job failed", "2  usage error", "3  validation failed", "4  the server is unreachable"):
        assert line in top
    assert "3  validation failed" in mp("gate", "--help").stdout
    assert "--max-latency-regression" in mp("gate", "--help").stdout


# ------------------------------------------------------------------------------------ the SDK without a server


def test_sdk_error_shapes_and_auth_header():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        if request.url.path == "/v1/jobs/j1":
            return httpx.Response(404, json={"error": {"code": "job_not_found", "message": "no job", "detail": {"a": 1}}})
        if request.url.path == "/v2/x":
            return httpx.Response(400, json={"error": "v2 says no"})
        if request.url.path == "/v1/jobs/j2":
            return httpx.Response(401, json={"error": {"code": "missing_api_key", "message": "key!", "detail": {}}})
        if request.url.path == "/v1/jobs/j3":
            return httpx.Response(502, text="bad gateway")
        raise httpx.ConnectError("refused", request=request)

    c = sdk.Client("http://mp.test", api_key="mp_0123abcd_" + "s" * 30, transport=httpx.MockTransport(handler))
    with pytest.raises(sdk.ModelportHTTPError) as e:
        c.job("j1")
    assert (e.value.status, e.value.code, e.value.message, e.value.detail) == (404, "job_not_found", "no job", {"a": 1})
    assert not isinstance(e.value, sdk.AuthError)
    assert seen["auth"] == "Bearer mp_0123abcd_" + "s" * 30
    with pytest.raises(sdk.ModelportHTTPError) as e:
        c._json("GET", "/v2/x")
    assert e.value.message == "v2 says no"
    with pytest.raises(sdk.AuthError) as e:
        c.job("j2")
    assert e.value.status == 401
    with pytest.raises(sdk.ModelportHTTPError) as e:
        c.job("j3")
    assert e.value.status == 502 and "bad gateway" in e.value.message
    with pytest.raises(sdk.Unreachable):
        c.job("other")
    with pytest.raises(ValueError):
        c.deploy("n")
    with pytest.raises(FileNotFoundError):
        c.upload("/no/such/file.onnx")


def test_sdk_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MODELPORT_URL", "http://example.invalid:9/")
    monkeypatch.setenv("MODELPORT_API_KEY", "mp_00000000_" + "k" * 24)
    c = sdk.Client()
    assert c.url == "http://example.invalid:9" and c.api_key.startswith("mp_00000000_")
    monkeypatch.delenv("MODELPORT_URL")
    monkeypatch.delenv("MODELPORT_API_KEY")
    c = sdk.Client()
    assert c.url == sdk.DEFAULT_URL and c.api_key is None and "authorization" not in c._http.headers


def test_importing_the_sdk_and_the_gate_stays_light():
    code = ("import sys, app.client, app.gate, app.cli; "
            "print(','.join(m for m in ('torch', 'numpy', 'onnxruntime', 'tqdm', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


# ------------------------------------------------------------------------------------ GPU routing, rebuild
# (last: they add jobs and artifacts to the shared model, which the tests above count)


def test_rebuild_makes_the_artifact_again_and_convert_can_ask_for_gpu_checks(mp, uploaded, converted, server,
                                                                              api_key):
    out = mp.json("rebuild", converted["artifact_id"], "--no-benchmark", "--wait", "--timeout", WAIT)
    assert out["status"] == "succeeded" and out["validation"] == "passed", out
    assert out["plan"] == ["torch_export->onnx", "validate:onnx"] and out["artifact_id"] != converted["artifact_id"]
    job = mp.json("convert", uploaded["id"], "--target", "onnx", "--hardware", "gpu", "--no-benchmark")
    assert [(s["kind"], s["queue"]) for s in job["steps"]] == [("convert", "cpu"), ("validate", "gpu")]
    r = httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel", headers={"Authorization": f"Bearer {api_key}"},
                   timeout=30)
    assert r.status_code == 200, r.text
