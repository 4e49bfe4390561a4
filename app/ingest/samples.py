"""Sample inputs of a model: an ``.npz`` of plain arrays (no pickles), one per model input, kept
as a blob and reused by every later validation of the model's artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.catalog import repo
from app.errors import BadRequest, NotFound
from app.ingest import blobs
from app.storage import blob_key

MAX_BYTES = 1024**3


def attach(db, store, model_id: str, path: Path, sha: str, inspection: dict[str, Any]) -> dict[str, Any]:
    """Check ``path`` against the model's inputs, store it under its digest and make it the model's
    samples (the ones replaced are released). Blocking; ``path`` is consumed."""
    names = check_npz(path, inspection)
    blobs.claim(db, [sha])  # a pending deletion of these bytes is off
    try:
        store.put_file(blob_key(sha), path, move=True)
    except Exception:
        with db.session() as s:
            blobs.release(s, [sha])  # claimed: the sweep decides again
        raise
    with db.session() as s:
        current = repo.get_model(s, model_id)
        if current is None:
            blobs.release(s, [sha])
            s.commit()
            raise NotFound(f"model '{model_id}' was deleted", code="model_not_found")
        if current.samples_sha256 not in (None, sha):
            # the samples they replace, and these too: two uploads racing each read the same old digest, and
            # the one overwritten would hold on to its bytes; the sweep keeps whatever is still referenced then
            blobs.release(s, [current.samples_sha256, sha])
        current.samples_sha256 = sha
    return {"model_id": model_id, "samples_sha256": sha, "inputs": names}


def check_npz(path: Path, inspection: dict[str, Any]) -> dict[str, Any]:
    """``{name: (dtype, shape)}`` of the arrays; 400 unless it is a plain ``.npz`` holding an array
    for every model input."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: (str(z[k].dtype), list(z[k].shape)) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise BadRequest(f"sample inputs must be an .npz of plain arrays (no pickles): {e}",
                         code="bad_samples") from None
    if not arrays:
        raise BadRequest("the .npz holds no arrays", code="bad_samples")
    wanted = [i["name"] for i in (inspection.get("inputs") or [])]
    missing = [n for n in wanted if n not in arrays]
    if wanted and missing:
        raise BadRequest(f"the .npz lacks arrays for inputs {', '.join(missing)}; it has {', '.join(arrays)}",
                         code="bad_samples", detail={"missing": missing})
    return arrays
