"""Upload path: the body streamed to disk (``app.api.upload_stream``) is unpacked safely, deduped
by content, detected + inspected + scanned in a child process, then stored as blobs and a catalog row.

Nothing reaches the object store or the catalog until the upload has been checked, and the
temporary directory is always removed, so a refused upload leaves nothing behind."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.catalog import repo
from app.catalog.tables import DEFAULT_PROJECT, Model
from app.errors import BadRequest, NotFound, ServiceUnavailable
from app.ingest import archives, blobs
from app.ingest.inspection import inspect_files
from app.limits import without_nul
from app.storage import blob_key


@dataclass
class Received:
    path: str
    tmp: Path
    sha256: str = ""
    size: int = 0


@dataclass
class Upload:
    workdir: Path
    files: list[Received] = field(default_factory=list)
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    original_filename: str | None = None
    body_bytes: int = 0


def check_name(name: str) -> str:
    rel = archives.safe_relpath(name, what="file name")
    if len(rel) > 1000:
        raise BadRequest("file name is too long", code="bad_filename")
    return rel


@dataclass
class Prepared:
    root: Path
    files: list[dict[str, Any]]  # {path, sha256, size, tmp}
    digest: str
    is_directory: bool
    hint_name: str | None


def _is_model_zip(path: Path, max_files: int = 10_000) -> bool:
    import zipfile

    from app.limits import check_zip_directory, zip_tail

    try:
        with open(path, "rb") as f:
            check_zip_directory(zip_tail(f, path.stat().st_size), path.stat().st_size, max_files)
    except ValueError:
        return False  # extraction refuses it, saying why
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    from app.formats import zip_markers

    top = set(names)
    for _, m in zip_markers():
        if isinstance(m, tuple):
            if all(x in top for x in m):
                return True
        elif any(n == m or n.endswith("/" + m) for n in names):
            return True
    return False


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def prepare(up: Upload, settings) -> Prepared:
    """Unpack a directory archive if that is what came, and compute the content digest."""
    files = up.files
    root = up.workdir / "files"
    root.mkdir()
    if len(files) == 1:
        rec = files[0]
        kind = archives.kind(rec.tmp)
        low = rec.path.lower()
        named_archive = low.endswith((".zip", ".tar", ".tar.gz", ".tgz"))
        if kind is not None and not (kind == "zip" and _is_model_zip(rec.tmp, settings.archive_max_files)) and (
            named_archive or kind != "zip"
        ):
            out = root / "x"
            out.mkdir()
            paths = archives.extract(rec.tmp, out, max_files=settings.archive_max_files,
                                     max_total=settings.archive_max_total_bytes, max_ratio=settings.archive_max_ratio)
            if not paths:
                raise archives.ArchiveError("the archive holds no files", code="empty_upload")
            rec.tmp.unlink()
            entries = []
            for p in paths:
                f = out / p
                entries.append({"path": p, "sha256": _sha256_file(f), "size": f.stat().st_size, "tmp": f})
            return Prepared(out, entries, _manifest_digest(entries), True, _strip_archive_ext(rec.path))
    # plain files: lay them out under their names (hard links, no copies)
    entries = []
    for rec in files:
        dest = root / rec.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        rec.tmp.rename(dest)
        entries.append({"path": rec.path, "sha256": rec.sha256, "size": rec.size, "tmp": dest})
    digest = entries[0]["sha256"] if len(entries) == 1 else _manifest_digest(entries)
    hint = files[0].path if len(files) == 1 else None
    return Prepared(root, entries, digest, False, hint)


def _strip_archive_ext(name: str) -> str:
    low = name.lower()
    for ext in (".tar.gz", ".tgz", ".zip", ".tar"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _manifest_digest(entries: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["path"]):
        h.update(f"{e['path']}\0{e['sha256']}\0{e['size']}\n".encode())
    return h.hexdigest()


def ingest(up: Upload, settings, db, store, project: str = DEFAULT_PROJECT) -> tuple[Model, bool]:
    """Check, store and record an upload as ``project``'s. Returns (model, created): the same bytes
    uploaded again to the same project give its model. Blocking: run in a thread."""
    prep = prepare(up, settings)
    with db.session() as s:
        existing = repo.get_model_by_digest(s, prep.digest, project)
        if existing is not None:
            return existing, False
    inspection = inspect_files(
        prep.root, [e["path"] for e in prep.files], prep.hint_name, accept_unknown=settings.accept_unknown_formats,
        in_subprocess=settings.inspect_in_subprocess, timeout_s=settings.inspect_timeout_s,
        memory_mb=settings.inspect_memory_mb,
    )
    inspection = without_nul(inspection)  # written by a reader of hostile bytes: storable whatever they held
    digests = [e["sha256"] for e in prep.files]
    blobs.claim(db, digests)  # a pending deletion of these bytes is off
    try:
        for e in prep.files:
            key = blob_key(e["sha256"])
            if not store.exists(key):
                store.put_file(key, e["tmp"], move=True)
        # storing can outlast the sweep's grace period (GBs to S3): claim again and make sure nothing
        # was swept meanwhile, writing back what is gone while its bytes are still here
        blobs.claim(db, digests)
        for e in prep.files:
            key = blob_key(e["sha256"])
            if not store.exists(key):
                if not Path(e["tmp"]).exists():
                    raise ServiceUnavailable("the upload's bytes were removed from the object store while it "
                                             "was being stored; send it again", code="store_race")
                store.put_file(key, e["tmp"], move=True)
        primary = inspection.get("primary_file") or prep.files[0]["path"]
        default_name = (up.name or _strip_archive_ext(up.original_filename or primary.rsplit("/", 1)[-1]))
        with db.session() as s:
            repo.ensure_project(s, project)
            model = repo.add_model(
                s,
                project_id=project,
                files=prep.files,
                digest=prep.digest,
                name=default_name[:255],
                format=inspection["format"],
                primary_file=primary,
                is_directory=prep.is_directory,
                size_bytes=sum(e["size"] for e in prep.files),
                file_count=len(prep.files),
                original_filename=up.original_filename,
                user_metadata=up.metadata,
                inspection=inspection,
                warnings=list(inspection.get("warnings", [])),
            )
        return model, True
    except Exception as exc:
        with db.session() as s:  # the sweep keeps whatever something else (a concurrent winner) references
            blobs.release(s, digests)
            winner = repo.get_model_by_digest(s, prep.digest, project) if repo.is_unique_violation(exc) else None
        if winner is not None:  # the same bytes landed concurrently: that one wins
            return winner, False
        raise


def delete(db, store, model_id: str, project: str | None = None) -> None:
    """The model, its jobs, artifacts and checks; its bytes go after the grace period (the sweep),
    its benchmark reports now."""
    with db.session() as s:
        model = repo.get_model(s, model_id, project)
        if model is None:
            raise NotFound(f"no model with id '{model_id}'", code="model_not_found", detail={"model_id": model_id})
        reports = repo.benchmark_keys(s, [a.id for a in repo.list_artifacts(s, model.id)])
        held = repo.model_digests(s, model)
        repo.delete_model(s, model)
        # every digest, not only what looks unreferenced here: two models sharing bytes deleted at once
        # would each still see the other's rows; the sweep checks the references again after the grace period
        blobs.release(s, held)
    for key in reports:
        store.delete(key)
