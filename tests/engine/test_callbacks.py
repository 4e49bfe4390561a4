"""Job notifications on a local receiver (a real HTTP server on 127.0.0.1): signed, retried with
backoff after a failure, never holding up the job; a repeated request with its own callback is
notified too; bad callbacks are refused at the request."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests import models
from tests.helpers import upload

SECRET = "a-callback-secret-of-some-length"


@pytest.fixture
def receiver():
    """Answers 500 to the first POST, 200 after; records every request and signals each one."""
    got: list[dict] = []
    arrived = threading.Semaphore(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append({"headers": dict(self.headers), "body": body})
            self.send_response(500 if len(got) == 1 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            arrived.release()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{srv.server_port}/hook", "got": got, "arrived": arrived}
    srv.shutdown()
    srv.server_close()


def test_a_finished_job_is_posted_signed_and_retried_after_a_failure(embedded_client, receiver, tmp_path):
    c = embedded_client
    m = upload(c, models.exported_program(tmp_path))
    r = c.post(f"/v1/models/{m['id']}/conversions", json={
        "target": "onnx", "benchmark": False, "callback_url": receiver["url"], "callback_secret": SECRET})
    assert r.status_code == 202, r.text
    assert r.json()["callbacks"] == [receiver["url"]]
    job = c.get(f"/v1/jobs/{r.json()['id']}", params={"wait": 300}).json()
    assert job["status"] == "succeeded", job
    assert receiver["arrived"].acquire(timeout=60), "no callback arrived"  # the first: answered 500
    assert receiver["arrived"].acquire(timeout=60), "the callback was not retried after the 500"
    first, second = receiver["got"][:2]
    assert first["body"] == second["body"]
    assert first["headers"]["X-Modelport-Delivery"] == second["headers"]["X-Modelport-Delivery"]
    for req in (first, second):
        want = "sha256=" + hmac.new(SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(req["headers"]["X-Modelport-Signature"], want)
    event = json.loads(second["body"])
    assert event["event"] == "job.succeeded" and second["headers"]["X-Modelport-Event"] == "job.succeeded"
    assert event["job"]["id"] == job["id"] and event["job"]["artifact_id"] == job["artifact_id"]
    deadline = time.monotonic() + 30
    while (d := c.get(f"/v1/jobs/{job['id']}/callbacks").json()["items"][0])["status"] != "delivered":
        assert time.monotonic() < deadline and d["status"] == "pending", d  # recorded just after the 200
        time.sleep(0.05)
    assert d["attempts"] == 2 and d["last_error"] is None and d["delivered_at"]
    assert SECRET not in json.dumps(c.get(f"/v1/jobs/{job['id']}").json())

    # the same request again, with its own callback: the finished job, notified at once
    r = c.post(f"/v1/models/{m['id']}/conversions", json={
        "target": "onnx", "benchmark": False, "callback_url": receiver["url"] + "?again=1",
        "callback_secret": SECRET})
    assert r.status_code == 200 and r.json()["id"] == job["id"]
    assert receiver["arrived"].acquire(timeout=60), "the repeated request's callback did not arrive"
    assert json.loads(receiver["got"][2]["body"])["job"]["id"] == job["id"]


@pytest.mark.parametrize("body, message", [
    ({"callback_url": "ftp://x/y", "callback_secret": SECRET}, "http(s) URL"),
    ({"callback_url": "http://127.0.0.1:1/x"}, "callback_secret (16-256 characters)"),
    ({"callback_url": "http://127.0.0.1:1/x", "callback_secret": "short"}, "callback_secret (16-256 characters)"),
    ({"callback_secret": SECRET}, "callback_secret without callback_url"),
])
def test_bad_callbacks_are_refused_at_the_request(embedded_client, tmp_path, body, message):
    m = upload(embedded_client, models.exported_program(tmp_path))
    r = embedded_client.post(f"/v1/models/{m['id']}/conversions", json={"target": "onnx", **body})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_callback", r.text
    assert message in r.json()["error"]["message"]
    assert embedded_client.get("/v1/jobs", params={"model_id": m["id"]}).json()["items"] == []
