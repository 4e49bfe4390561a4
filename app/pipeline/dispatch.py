"""Hand a step to whatever runs steps: Celery by task name (the API never imports task modules),
through a transactional outbox.

Every transaction that queues a step also writes its message (``record``: a ``step_dispatches``
row); after the commit, ``send`` hands it to the dispatcher and deletes the row. When the broker is
down the send fails, the row stays and the request that queued the step still succeeds: a relay
thread (``start_relay``: in the API process and in every worker) sends what is due, with backoff,
once the broker is back. So a step is never committed as queued with no message on its way, and
a message sent twice does nothing (the step is claimed with a compare-and-set)."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from app.catalog import repo
from app.catalog.tables import utcnow

log = logging.getLogger("modelport.dispatch")
RELAY_AFTER_S = 5.0  # a row the request itself is still sending is not the relay's yet
BACKOFF_S = (1, 2, 4, 8, 15, 30)
LEASE_S = 30.0  # a claimed row whose relay died is taken again after this


class CeleryDispatcher:
    def __init__(self, celery_app=None, broker_url: str | None = None):
        if celery_app is None:
            from celery import Celery

            celery_app = Celery("modelport-api", broker=broker_url)
            celery_app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry=True,
                                   # a broker that is down fails a send within seconds: the outbox keeps the message
                                   broker_transport_options={"socket_connect_timeout": 3, "socket_timeout": 10})
        self.app = celery_app

    def enqueue(self, step_id: str, queue: str) -> None:
        self.app.send_task("modelport.run_step", args=[step_id], queue=queue,
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                                     "interval_max": 1})


def record(s, step_id: str, queue: str) -> None:
    """Inside the transaction that queues the step: its message, sent after the commit."""
    repo.add_dispatch(s, step_id, queue, utcnow() + dt.timedelta(seconds=RELAY_AFTER_S))


def send(db, dispatcher, step_id: str, queue: str) -> bool:
    """After the commit: hand the step to ``dispatcher`` and drop its outbox row. False (logged, the
    row kept for the relay) when the broker cannot take it now."""
    try:
        dispatcher.enqueue(step_id, queue)
    except Exception as e:  # the broker is down: the relay sends it when it is back
        log.warning("step %s: the broker did not take its message (%s: %s); the relay sends it later",
                    step_id, type(e).__name__, str(e)[:200])
        try:
            with db.session() as s:
                repo.failed_dispatch(s, step_id, f"{type(e).__name__}: {e}", utcnow() + dt.timedelta(seconds=1))
        except Exception:  # the catalog is down too: the row is there, due in RELAY_AFTER_S
            log.warning("step %s: could not note the failed send", step_id, exc_info=True)
        return False
    try:
        with db.session() as s:
            repo.sent_dispatch(s, step_id)
    except Exception:  # sent, but the row stays: the relay sends it again, which is harmless
        log.warning("step %s: sent, but its outbox row could not be removed", step_id, exc_info=True)
    return True


def relay_due(db, dispatcher, *, now: dt.datetime | None = None, limit: int = 100) -> list[tuple[str, bool]]:
    """Send the outbox rows that are due; (step id, sent) for each one tried."""
    now = now or utcnow()
    with db.session() as s:
        due = repo.due_dispatches(s, now, limit)
    out = []
    for step_id, queue, attempts in due:
        with db.session() as s:
            if not repo.claim_dispatch(s, step_id, attempts, now + dt.timedelta(seconds=LEASE_S)):
                continue  # another relay has it
        try:
            dispatcher.enqueue(step_id, queue)
        except Exception as e:
            wait = BACKOFF_S[min(attempts, len(BACKOFF_S) - 1)]
            with db.session() as s:
                repo.failed_dispatch(s, step_id, f"{type(e).__name__}: {e}", utcnow() + dt.timedelta(seconds=wait))
            out.append((step_id, False))
            break  # the broker is down: the rest wait for the next round instead of each timing out now
        with db.session() as s:
            repo.sent_dispatch(s, step_id)
        out.append((step_id, True))
    if out:
        log.info("relayed %d of %d queued step messages", sum(ok for _, ok in out), len(out))
    return out


def start_relay(db, dispatcher, stop: threading.Event, every_s: float = 1.0) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(every_s):
            try:
                relay_due(db, dispatcher)
            except Exception:  # the catalog is unreachable: next round
                log.warning("relaying step messages failed", exc_info=True)

    thread = threading.Thread(target=loop, name="modelport-dispatch-relay", daemon=True)
    thread.start()
    return thread
