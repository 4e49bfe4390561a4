"""The SQL of blob lifetime: deletion requests, one row per digest (see ``app.ingest.blobs`` for
the protocol that makes shared, content-addressed blobs safe to delete)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.catalog.tables import BlobDeletion, utcnow


def request_deletions(s: Session, shas: Iterable[str]) -> None:
    """Upsert a request per digest; a digest asked for again starts its grace period over."""
    rows = [{"sha256": sha, "requested_at": utcnow()} for sha in sorted(set(shas))]
    if not rows:
        return
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(BlobDeletion).values(rows)
    s.execute(stmt.on_conflict_do_update(index_elements=["sha256"],
                                         set_={"requested_at": stmt.excluded.requested_at}))


def cancel_deletions(s: Session, shas: list[str]) -> None:
    """Remove the requests (waits for a sweep holding one of the rows)."""
    s.execute(delete(BlobDeletion).where(BlobDeletion.sha256.in_(shas)).execution_options(synchronize_session=False))


def due_deletions(s: Session, cutoff: dt.datetime, limit: int) -> list[str]:
    return list(s.scalars(select(BlobDeletion.sha256).where(BlobDeletion.requested_at <= cutoff)
                          .order_by(BlobDeletion.requested_at).limit(limit)))


def take_deletion(s: Session, sha: str, cutoff: dt.datetime) -> bool:
    """Delete the request row if it is still due, holding it until the transaction ends."""
    return bool(s.execute(delete(BlobDeletion)
                          .where(BlobDeletion.sha256 == sha, BlobDeletion.requested_at <= cutoff)
                          .execution_options(synchronize_session=False)).rowcount)


def postpone_deletion(s: Session, sha: str) -> None:
    """To the back of the line (a failed store delete must not block newer requests)."""
    s.execute(update(BlobDeletion).where(BlobDeletion.sha256 == sha)
              .values(requested_at=utcnow()).execution_options(synchronize_session=False))
