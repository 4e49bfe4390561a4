"""When a blob may leave the object store.

Blobs are content-addressed and shared: two models, or a model and an artifact, holding the same
bytes hold one blob. So "the last reference went away, delete the blob" races with a writer that
is about to reference the same bytes: an upload that found the blob already stored (and so did not
write it) and commits its catalog row just after the deleter checked the references would be left
pointing at nothing. Deletion is therefore deferred and guarded by one catalog row per digest:

- :func:`release` — in the transaction that drops references, record a deletion request for each
  digest that may now be unreferenced. Nothing leaves the store yet.
- :func:`claim` — whatever is about to reference blobs (an upload, a conversion storing its
  artifact, sample inputs) first removes any requests for those digests, in its own committed
  transaction, and only then checks for or writes the blob. Removing the row waits for a sweep of
  that digest in progress (the sweep holds the row), so afterwards the blob is either still there
  or already gone, and ``store.exists`` says which.
- :func:`sweep` — for each request older than the grace period, in one transaction: delete the
  request row (locking it; on SQLite, taking the write lock), check that nothing references the
  digest, delete the blob from the store, commit. A claim that got there first leaves no row, and
  the sweep moves on.

The grace period (``MODELPORT_BLOB_GC_GRACE_S``) covers a writer that claimed before the request
existed: it has that long between its claim and committing its reference (seconds in practice).
Sweeps run on a thread of every worker (the embedded executor's too), every
``MODELPORT_BLOB_GC_EVERY_S``; several may run at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable

from app.catalog import blobs as sql
from app.catalog import repo
from app.catalog.tables import utcnow
from app.storage import blob_key

log = logging.getLogger("modelport.blobs")


def release(s, shas: Iterable[str]) -> None:
    """Ask for these blobs to be deleted once they have stayed unreferenced for the grace period
    (in the caller's transaction; a digest asked for again starts its grace period over)."""
    sql.request_deletions(s, shas)


def claim(db, shas: Iterable[str]) -> None:
    """Cancel pending deletions of these blobs before checking for or writing them (own
    transaction, committed on return; waits for a sweep of one of them that is in progress)."""
    wanted = sorted(set(shas))
    if wanted:
        with db.session() as s:
            sql.cancel_deletions(s, wanted)


def sweep(db, store, grace_s: float, *, limit: int = 200, budget_s: float = 30.0,
          now: dt.datetime | None = None) -> list[str]:
    """Delete the blobs whose deletion was asked for more than ``grace_s`` ago and that nothing
    references now, oldest request first, for at most ``budget_s``. Returns their digests. A failed
    store delete keeps its request, moved to the back of the line (so it can't block newer ones)."""
    started = time.monotonic()
    cutoff = (now or utcnow()) - dt.timedelta(seconds=grace_s)
    with db.session() as s:
        due = sql.due_deletions(s, cutoff, limit)
    deleted: list[str] = []
    for sha in due:
        if time.monotonic() - started > budget_s:
            break
        try:
            with db.session() as s:
                if sql.take_deletion(s, sha, cutoff) and not repo.blob_referenced(s, sha):
                    store.delete(blob_key(sha))  # inside the transaction: a claim waits for it
                    deleted.append(sha)
        except Exception as e:  # rolled back, so the request is still there: retry it later
            log.warning("deleting blob %s failed: %s", sha, e)
            try:
                with db.session() as s:
                    sql.postpone_deletion(s, sha)
            except Exception:  # the catalog is down as well: the next sweep sees the same order
                pass
    return deleted


def start_sweeper(db, store, settings, stop: threading.Event) -> threading.Thread:
    """Sweep every ``MODELPORT_BLOB_GC_EVERY_S`` on a thread of its own (a slow object store must
    not hold up a worker's heartbeat)."""

    def loop() -> None:
        while not stop.wait(settings.blob_gc_every_s):
            try:
                sweep(db, store, settings.blob_gc_grace_s)
            except Exception:  # the catalog is unreachable: try again next round
                log.warning("blob sweep failed", exc_info=True)

    thread = threading.Thread(target=loop, name="modelport-blob-sweep", daemon=True)
    thread.start()
    return thread
