"""The Python SDK over modelport's HTTP API (``modelport upload | convert | wait | gate …`` is built on it).

    from app.client import Client

    mp = Client()                                   # MODELPORT_URL, MODELPORT_API_KEY
    model = mp.upload("model.pt2", name="classifier")
    job = mp.convert(model.id, "onnx").wait(timeout=900)
    art = job.artifact()
    assert art.validation["status"] == "passed"
    mp.deploy("classifier", artifact_id=art.id)
    out = mp.predict("classifier", {"x": np.ones((1, 8), np.float32)})   # {"y": ndarray}

Errors: :class:`ModelportHTTPError` (the server answered with an error; ``.status``, ``.code``,
``.message``, ``.detail``), its subclass :class:`AuthError` (401/403), :class:`Unreachable` (no
answer: connection refused, DNS, timeouts), :class:`JobFailed` (``Job.wait`` on a job that
failed or was cancelled) and :class:`JobTimeout` (``Job.wait`` ran out of time). All derive from
:class:`ClientError`.

Only httpx is imported with this module; numpy when tensors are sent or received, tqdm when a
progress bar is drawn."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import numpy as np

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20
LONG_POLL_S = 60.0  # one GET /v1/jobs/{id}?wait= at most this long; the loop goes on until the caller's timeout


# ------------------------------------------------------------------------------------ errors


class ClientError(Exception):
    """Every error this SDK raises."""


class ModelportHTTPError(ClientError):
    """The server answered with an error status: ``{"error": {"code", "message", "detail"}}``."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None,
                 method: str = "", url: str = ""):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.detail = status, code, message, detail or {}
        self.method, self.url = method, url


class AuthError(ModelportHTTPError):
    """401 (no key, or an invalid, revoked or expired one) or 403 (the key's scope is too low)."""


class Unreachable(ClientError):
    """No answer from the server: connection refused, name resolution, a timeout, a dropped connection."""


class JobFailed(ClientError):
    """A job ended ``failed`` or ``cancelled``; ``.job`` is its last state."""

    def __init__(self, job: Job):
        err = job.error or {}
        msg = err.get("message") if isinstance(err, dict) else str(err)
        super().__init__(f"job {job.id} {job.status}" + (f": {msg}" if msg else ""))
        self.job = job


class JobTimeout(ClientError, TimeoutError):
    """``Job.wait(timeout=)`` ran out before the job ended; ``.job`` is its last state."""

    def __init__(self, job: Job, timeout: float):
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


# ------------------------------------------------------------------------------------ resources


class Resource:
    """A JSON object from the API; its keys read as attributes (``model.format``), ``.data`` is the dict."""

    def __init__(self, client: Client, data: dict[str, Any]):
        self._client = client
        self.data = data

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data")
        if data is not None and name in data:
            return data[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    def __repr__(self) -> str:
        extra = "".join(f" {k}={self.data[k]!r}" for k in ("status", "format", "name") if k in self.data)
        return f"<{type(self).__name__} {self.data.get('id')}{extra}>"


class Model(Resource):
    id: str

    def artifacts(self) -> list[Artifact]:
        return self._client.artifacts(self.id)

    def report(self, markdown: bool = False) -> dict[str, Any] | str:
        return self._client.report(self.id, markdown=markdown)


class Artifact(Resource):
    id: str

    @property
    def validation(self) -> dict[str, Any] | None:
        """The latest validation (``status`` passed / failed / skipped, ``max_abs_err``, ``reason``, ``report``)."""
        return self.data.get("validation")

    @property
    def validation_status(self) -> str | None:
        v = self.validation
        return v.get("status") if v else None

    @property
    def benchmark(self) -> dict[str, Any] | None:
        return self.data.get("benchmark")

    def download(self, dest: str | os.PathLike, progress: bool = False) -> Path:
        return self._client.download(self.id, dest, progress=progress)


class Job(Resource):
    id: str

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Job:
        self.data = self._client._json("GET", f"/v1/jobs/{self.id}")
        return self

    def wait(self, timeout: float | None = None, progress: bool = False, check: bool = True) -> Job:
        """Long-poll until the job ends (or ``timeout`` seconds; None: no limit). Raises
        :class:`JobFailed` for a failed or cancelled job when ``check``, :class:`JobTimeout` on time-out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _StepBar(self) if progress else None
        try:
            while not self.done:
                left = LONG_POLL_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise JobTimeout(self, timeout or 0)
                w = round(min(LONG_POLL_S, left), 3)
                self.data = self._client._json("GET", f"/v1/jobs/{self.id}", params={"wait": w},
                                               timeout=w + self._client.timeout)
                if bar:
                    bar.update(self)
        finally:
            if bar:
                bar.close()
        if check and self.status != "succeeded":
            raise JobFailed(self)
        return self

    def artifact(self) -> Artifact | None:
        """The job's final artifact (the last conversion step's output), once the job succeeded."""
        aid = self.data.get("artifact_id")
        return self._client.artifact(aid) if aid else None

    def logs(self) -> str:
        return self._client._request("GET", f"/v1/jobs/{self.id}/logs").text

    def cancel(self) -> Job:
        self.data = self._client._json("POST", f"/v1/jobs/{self.id}/cancel")
        return self


class JobList(list):
    """The jobs ``report_all`` made (or found); ``.skipped``: the targets it left out, each with why."""

    skipped: list[dict[str, Any]]

    def __init__(self, jobs: Iterable[Job] = (), skipped: list[dict[str, Any]] | None = None):
        super().__init__(jobs)
        self.skipped = skipped or []


class Deployment(Resource):
    pass


# ------------------------------------------------------------------------------------ client


class Client:
    """One modelport server. ``url`` defaults to ``MODELPORT_URL`` (else http://127.0.0.1:8000),
    ``api_key`` to ``MODELPORT_API_KEY`` (sent as ``Authorization: Bearer``; none: the server
    must be running open). ``timeout`` bounds each request's connect and read, not a job's wait."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 *, transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("MODELPORT_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("MODELPORT_API_KEY") or None)
        self.timeout = float(timeout)
        headers = {"User-Agent": "modelport-client/0.1"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout, transport=transport,
                                  follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _request(self, method: str, path: str, *, stream: bool = False, timeout: float | None = None,
                 **kw: Any) -> httpx.Response:
        t = httpx.Timeout(self.timeout if timeout is None else timeout, connect=min(self.timeout, 30.0))
        try:
            req = self._http.build_request(method, path, timeout=t, **kw)
            resp = self._http.send(req, stream=stream)
        except httpx.TimeoutException as e:
            raise Unreachable(f"{method} {self.url}{path}: timed out ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise Unreachable(f"{method} {self.url}{path}: {type(e).__name__}: {e or 'no answer'}") from e
        if resp.status_code >= 400:
            if stream:
                resp.read()
                resp.close()
            raise _http_error(resp)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        try:
            return resp.json()
        except ValueError as e:
            raise ModelportHTTPError(resp.status_code, "bad_response", f"not JSON: {resp.text[:200]!r}",
                                     method=method, url=str(resp.url)) from e

    # -- models

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def upload(self, path: str | os.PathLike | Iterable[str | os.PathLike], name: str | None = None,
               metadata: dict[str, Any] | None = None, progress: bool = False) -> Model:
        """Upload one file (raw body), several files of one model (multipart: OpenVINO ``.xml`` +
        ``.bin``, ONNX + external data) or a directory (SavedModel, ``.mlpackage``: sent as a
        ``.tar.gz``). The same content uploaded again returns the existing model."""
        paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
        if not paths:
            raise ValueError("upload: give at least one path")
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"upload: no such file or directory: {p}")
        params: dict[str, str] = {}
        if name:
            params["name"] = name
        if metadata is not None:
            params["metadata"] = json.dumps(metadata)
        if len(paths) == 1 and paths[0].is_dir():
            with tempfile.TemporaryDirectory(prefix="modelport-upload-") as tmp:
                archive = Path(tmp) / f"{paths[0].resolve().name}.tar.gz"
                with tarfile.open(archive, "w:gz") as tf:
                    tf.add(paths[0], arcname=paths[0].resolve().name)
                return self._upload_raw(archive, params, "application/gzip", progress)
        if any(p.is_dir() for p in paths):
            raise ValueError("upload: a directory is uploaded on its own (it is sent as one archive)")
        if len(paths) == 1:
            return self._upload_raw(paths[0], params, "application/octet-stream", progress)
        total = sum(p.stat().st_size for p in paths)
        bar = _bar(total, "upload") if progress else None
        handles = [_ProgressFile(open(p, "rb"), bar) for p in paths]  # noqa: SIM115 - closed below
        try:
            files = [("files", (p.name, h, "application/octet-stream")) for p, h in zip(paths, handles, strict=True)]
            data = dict(params)
            return Model(self, self._json("POST", "/v1/models", files=files, data=data,
                                          timeout=max(self.timeout, 600.0)))
        finally:
            for h in handles:
                h.close()
            if bar:
                bar.close()

    def _upload_raw(self, path: Path, params: dict[str, str], content_type: str, progress: bool) -> Model:
        size = path.stat().st_size
        bar = _bar(size, "upload") if progress else None

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    if bar:
                        bar.update(len(chunk))
                    yield chunk

        try:
            return Model(self, self._json(
                "POST", "/v1/models", params={"filename": path.name, **params}, content=body(),
                headers={"Content-Type": content_type, "Content-Length": str(size)},
                timeout=max(self.timeout, 600.0)))
        finally:
            if bar:
                bar.close()

    def model(self, model_id: str) -> Model:
        return Model(self, self._json("GET", f"/v1/models/{model_id}"))

    def models(self, name: str | None = None, format: str | None = None) -> list[Model]:
        params = {k: v for k, v in (("name", name), ("format", format)) if v}
        return [Model(self, m) for m in self._paged("/v1/models", params)]

    def delete_model(self, model_id: str) -> None:
        self._request("DELETE", f"/v1/models/{model_id}")

    def artifacts(self, model_id: str) -> list[Artifact]:
        return [Artifact(self, a) for a in self._json("GET", f"/v1/models/{model_id}/artifacts")["items"]]

    def report(self, model_id: str, markdown: bool = False) -> dict[str, Any] | str:
        """The format report: JSON (``rows``, ``recommendations``), or its Markdown."""
        if markdown:
            return self._request("GET", f"/v1/models/{model_id}/report", params={"format": "md"}).text
        return self._json("GET", f"/v1/models/{model_id}/report")

    # -- conversions and jobs

    def convert(self, model_id: str, target: str, options: dict[str, Any] | None = None,
                input_specs: dict[str, Any] | None = None, validate: bool = True,
                benchmark: bool | dict[str, Any] = True, tolerance: dict[str, Any] | None = None,
                hardware: str | None = None) -> Job:
        """Request a conversion (validated and benchmarked by default): its job, not yet waited for.
        ``hardware`` ("gpu"): validate and benchmark on that hardware's runtime where a format has one."""
        body: dict[str, Any] = {"target": target, "options": options or {}, "validate": validate,
                                "benchmark": benchmark}
        if hardware is not None:
            body["hardware"] = hardware
        if input_specs is not None:
            body["input_specs"] = input_specs
        if tolerance is not None:
            body["tolerance"] = tolerance
        return Job(self, self._json("POST", f"/v1/models/{model_id}/conversions", json=body))

    def rebuild(self, artifact_id: str, validate: bool = True, benchmark: bool | dict[str, Any] = True) -> Job:
        """Make an artifact again with the same edge and options on its edge's queue (a TensorRT engine for
        the GPU of the gpu worker that takes it): its job."""
        return Job(self, self._json("POST", f"/v1/artifacts/{artifact_id}/rebuild",
                                    json={"validate": validate, "benchmark": benchmark}))

    def report_all(self, model_id: str, benchmark: bool | dict[str, Any] = True,
                   input_specs: dict[str, Any] | None = None, tolerance: dict[str, Any] | None = None) -> JobList:
        """Convert to every reachable target and precision variant; the jobs (``.skipped``: what was left out)."""
        body: dict[str, Any] = {"benchmark": benchmark}
        if input_specs is not None:
            body["input_specs"] = input_specs
        if tolerance is not None:
            body["tolerance"] = tolerance
        out = self._json("POST", f"/v1/models/{model_id}/report-all", json=body)
        return JobList((Job(self, j) for j in out["jobs"]), out.get("skipped") or [])

    def job(self, job_id: str) -> Job:
        return Job(self, self._json("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, model_id: str | None = None, status: str | None = None) -> list[Job]:
        params = {k: v for k, v in (("model_id", model_id), ("status", status)) if v}
        return [Job(self, j) for j in self._paged("/v1/jobs", params)]

    def _paged(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._json("GET", path, params={**params, "limit": 500, "offset": offset})
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", 0):
                return

    # -- artifacts

    def artifact(self, artifact_id: str) -> Artifact:
        return Artifact(self, self._json("GET", f"/v1/artifacts/{artifact_id}"))

    def validations(self, artifact_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/artifacts/{artifact_id}/validations")["items"]

    def benchmarks(self, artifact_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/v1/artifacts/{artifact_id}/benchmarks")["items"]

    def download(self, artifact_id: str, dest: str | os.PathLike, progress: bool = False) -> Path:
        """An artifact's bytes: its file for a one-file artifact, a zip of its files otherwise. ``dest``:
        a file path, or an existing directory (the server's file name is used). Written atomically."""
        resp = self._request("GET", f"/v1/artifacts/{artifact_id}/download", stream=True,
                             timeout=max(self.timeout, 600.0))
        try:
            target = Path(dest)
            if target.is_dir():
                target = target / _attachment_name(resp, f"artifact-{artifact_id}")
            total = int(resp.headers.get("content-length") or 0) or None
            bar = _bar(total, "download") if progress else None
            part = target.with_name(target.name + ".part")
            try:
                with open(part, "wb") as f:
                    for chunk in resp.iter_bytes(CHUNK):
                        f.write(chunk)
                        if bar:
                            bar.update(len(chunk))
                part.replace(target)
            except httpx.TransportError as e:
                part.unlink(missing_ok=True)
                raise Unreachable(f"download of artifact {artifact_id} broke off: {e}") from e
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            finally:
                if bar:
                    bar.close()
        finally:
            resp.close()
        return target

    # -- serving

    def deploy(self, name: str, artifact_id: str | None = None, model_id: str | None = None, force: bool = False,
               *, version: int | None = None, runtime: dict[str, Any] | None = None,
               batching: dict[str, Any] | None = None) -> Deployment:
        """Deploy an artifact (its validation must have passed, unless ``force``) or an uploaded model
        as a new version of ``name``."""
        if (artifact_id is None) == (model_id is None):
            raise ValueError("deploy: give exactly one of artifact_id and model_id")
        body: dict[str, Any] = {"name": name, "force": force}
        for k, v in (("artifact_id", artifact_id), ("model_id", model_id), ("version", version),
                     ("runtime", runtime), ("batching", batching)):
            if v is not None:
                body[k] = v
        return Deployment(self, self._json("POST", "/v1/deployments", json=body, timeout=max(self.timeout, 300.0)))

    def deployment(self, name: str) -> Deployment:
        return Deployment(self, self._json("GET", f"/v1/deployments/{name}"))

    def undeploy(self, name: str) -> None:
        self._request("DELETE", f"/v1/deployments/{name}")

    def predict(self, name: str, inputs: Mapping[str, np.ndarray] | np.ndarray,
                version: str | int | None = None) -> dict[str, np.ndarray]:
        """Outputs by name. ``inputs``: arrays by input name (sent as ``.npz``), or one array for a
        one-input model (sent as ``.npy``); outputs come back as ``.npz``, dtypes kept."""
        import numpy as np

        buf = io.BytesIO()
        if isinstance(inputs, Mapping):
            np.savez(buf, **{k: np.asarray(v) for k, v in inputs.items()})
            ctype = "application/x-npz"
        else:
            np.save(buf, np.asarray(inputs), allow_pickle=False)
            ctype = "application/x-npy"
        params = {"version": str(version)} if version is not None else None
        resp = self._request("POST", f"/v1/deployments/{name}/predict", content=buf.getvalue(), params=params,
                             headers={"Content-Type": ctype, "Accept": "application/x-npz"})
        with np.load(io.BytesIO(resp.content), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


# ------------------------------------------------------------------------------------ helpers


def _http_error(resp: httpx.Response) -> ModelportHTTPError:
    code, message, detail = f"http_{resp.status_code}", resp.reason_phrase or "error", {}
    try:
        body = resp.json()
    except ValueError:
        body = None
        if resp.text:
            message = resp.text[:500]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict):
            code, message = str(err.get("code") or code), str(err.get("message") or message)
            detail = err.get("detail") or {}
        elif isinstance(err, str):  # the v2 shape {"error": "..."}
            message = err
        elif isinstance(err, list):  # FastAPI's own 422 for a request it could not parse
            code, message, detail = "invalid_request", "; ".join(str(e.get("msg", e)) for e in err), {"errors": err}
    cls = AuthError if resp.status_code in (401, 403) else ModelportHTTPError
    return cls(resp.status_code, code, message, detail if isinstance(detail, dict) else {"detail": detail},
               method=resp.request.method, url=str(resp.request.url))


def _attachment_name(resp: httpx.Response, fallback: str) -> str:
    m = re.search(r'filename="?([^";]+)"?', resp.headers.get("content-disposition", ""))
    name = Path(m.group(1)).name if m else ""
    return name if name and name not in (".", "..") else fallback


def _bar(total: int | None, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, file=sys.stderr, leave=False)


class _ProgressFile:
    """A binary file whose reads advance a progress bar (httpx reads multipart parts in chunks)."""

    def __init__(self, f, bar):
        self._f, self._bar = f, bar

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if self._bar and data:
            self._bar.update(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


class _StepBar:
    """A job's progress: steps done out of steps planned, the current step's edge and status."""

    def __init__(self, job: Job):
        from tqdm import tqdm

        steps = job.data.get("steps") or []
        self._bar = tqdm(total=max(len(steps), 1), unit="step", desc=f"job {job.id[:8]}", file=sys.stderr,
                         leave=False)
        self._done = 0
        self.update(job)

    def update(self, job: Job) -> None:
        steps = job.data.get("steps") or []
        done = sum(st.get("status") == "succeeded" for st in steps)
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done
        current = next((st for st in steps if st.get("status") != "succeeded"), None)
        self._bar.set_postfix_str(f"{current['edge']} {current['status']}" if current else job.status)

    def close(self) -> None:
        self._bar.close()
