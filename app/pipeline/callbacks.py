"""Job notifications: a signed POST to each callback URL when a job ends.

A conversion request may name ``callback_url`` (and ``callback_secret``, 16+ characters). When the
job reaches a terminal state, a delivery row is written in the same transaction (an outbox), and a
sender thread in the API process drains the outbox: POST of JSON ``{"event": "job.succeeded", "job":
{...}}`` with ``X-Modelport-Event``, ``X-Modelport-Delivery`` (its id: retries repeat it, so a
receiver can drop duplicates) and ``X-Modelport-Signature: sha256=<HMAC-SHA256 of the body under the
secret>`` (GitHub's webhook scheme). A 2xx is delivered; anything else (or no answer in
``TIMEOUT_S``) is retried after 1, 2, 4, 8, 16 and 32 s, then marked ``failed`` with the last
error. The job never waits for any of it. A delivery is claimed with a compare-and-set, so several
API replicas send each once."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
from typing import Any

from app.catalog import repo
from app.catalog.tables import utcnow

log = logging.getLogger("modelport.callbacks")
BACKOFF_S = (1, 2, 4, 8, 16, 32)
TIMEOUT_S = 5.0
LEASE_S = 60.0  # a claimed delivery whose sender died is retried after this


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check(url: str | None, secret: str | None) -> dict[str, str] | None:
    """A callback to register, or None; 422 naming what is wrong."""
    from urllib.parse import urlsplit

    from app.errors import Unprocessable

    if not url:
        if secret:
            raise Unprocessable("callback_secret without callback_url", code="invalid_callback")
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise Unprocessable("callback_url must be an http(s) URL of at most 2048 characters", code="invalid_callback")
    if not secret or len(secret) < 16 or len(secret) > 256:
        raise Unprocessable("callback_secret (16-256 characters) is needed to sign the callback; the receiver checks "
                            "X-Modelport-Signature with it", code="invalid_callback")
    return {"url": url, "secret": secret}


def payload(job) -> dict[str, Any]:
    last = job.steps[-1] if job.steps else None
    artifact = next((st.output_artifact_id for st in reversed(job.steps) if st.output_artifact_id), None)
    return {"event": f"job.{job.status}",
            "job": {"id": job.id, "model_id": job.model_id, "target": job.target, "options": job.options,
                    "status": job.status, "error": job.error, "artifact_id": artifact,
                    "finished_at": job.finished_at.isoformat() if job.finished_at else None,
                    "last_step": last.edge if last else None, "links": {"job": f"/v1/jobs/{job.id}"}}}


def enqueue(job, only: list[dict[str, str]] | None = None) -> None:
    """Inside the transaction that ends ``job``: one delivery per registered callback (or ``only``)."""
    from app.catalog.tables import CallbackDelivery

    body = payload(job)
    for cb in only if only is not None else job.callbacks or []:
        job.deliveries.append(CallbackDelivery(url=cb["url"], secret=cb["secret"], payload=body))


def deliver_due(db, *, post=None, now: dt.datetime | None = None, limit: int = 20) -> list[tuple[str, str]]:
    """Send what is due now; (delivery id, outcome) for each one tried."""
    import httpx

    post = post or (lambda url, content, headers: httpx.post(url, content=content, headers=headers,
                                                             timeout=TIMEOUT_S))
    now = now or utcnow()
    with db.session() as s:
        due = [(d.id, d.attempts) for d in repo.due_deliveries(s, now, limit)]
    out = []
    for delivery_id, attempts in due:
        with db.session() as s:  # claim: the attempt counter is the compare-and-set
            d = repo.claim_delivery(s, delivery_id, attempts, now + dt.timedelta(seconds=LEASE_S))
            if d is None:
                continue
            url, secret, body = d.url, d.secret, json.dumps(d.payload, separators=(",", ":")).encode()
            event = d.payload.get("event", "job")
        headers = {"Content-Type": "application/json", "X-Modelport-Event": event,
                   "X-Modelport-Delivery": delivery_id, "X-Modelport-Signature": sign(secret, body),
                   "User-Agent": "modelport-callbacks"}
        try:
            r = post(url, body, headers)
            error = None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
        except Exception as e:  # unreachable, timed out: retried like any failure
            error = f"{type(e).__name__}: {e}"[:500]
        tried = attempts + 1
        with db.session() as s:
            if error is None:
                repo.finish_delivery(s, delivery_id, "delivered", None, None)
                out.append((delivery_id, "delivered"))
            elif tried > len(BACKOFF_S):
                repo.finish_delivery(s, delivery_id, "failed", error, None)
                out.append((delivery_id, "failed"))
                log.warning("callback %s to %s failed for good after %d attempts: %s", delivery_id, url, tried, error)
            else:
                repo.finish_delivery(s, delivery_id, "pending", error,
                                     utcnow() + dt.timedelta(seconds=BACKOFF_S[tried - 1]))
                out.append((delivery_id, "retry"))
    return out


def start_sender(db, stop: threading.Event, every_s: float = 0.5) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            try:
                deliver_due(db)
            except Exception:  # the catalog is unreachable: next round
                log.warning("sending callbacks failed", exc_info=True)

    thread = threading.Thread(target=loop, name="modelport-callbacks", daemon=True)
    thread.start()
    return thread


def view(d) -> dict[str, Any]:
    return {"id": d.id, "url": d.url, "event": d.payload.get("event"), "status": d.status, "attempts": d.attempts,
            "last_error": d.last_error, "created_at": d.created_at.isoformat(),
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
