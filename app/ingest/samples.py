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


def attach_calibration(db, store, model_id: str, path: Path, sha: str, inspection: dict[str, Any]) -> dict[str, Any]:
    """Check ``path`` (an .npz with, for every model input, rows of calibration inputs along the first axis) the
    way samples are checked, store it under its digest and record it as a calibration set of the model. Blocking;
    ``path`` is consumed. A static INT8 conversion names it with ``"calibration": "upload:<id>"``."""
    arrays = check_npz(path, inspection, code="bad_calibration")
    names = [i["name"] for i in (inspection.get("inputs") or [])] or list(arrays)
    ranks = {n: arrays[n][1] for n in names if n in arrays}
    flat = [n for n, shape in ranks.items() if not shape]
    if flat:
        raise BadRequest(f"calibration arrays need a first axis of rows (one calibration input each); "
                         f"{', '.join(flat)} {'is a scalar' if len(flat) == 1 else 'are scalars'}", code="bad_calibration")
    rows = min(shape[0] for shape in ranks.values())
    if rows < 1:
        raise BadRequest("the calibration set holds no rows (the first axis is 0)", code="bad_calibration")
    size = path.stat().st_size
    blobs.claim(db, [sha])
    try:
        store.put_file(blob_key(sha), path, move=True)
    except Exception:
        with db.session() as s:
            blobs.release(s, [sha])
        raise
    with db.session() as s:
        if repo.get_model(s, model_id) is None:
            blobs.release(s, [sha])
            s.commit()
            raise NotFound(f"model '{model_id}' was deleted", code="model_not_found")
        cal = repo.add_calibration_set(s, model_id, sha, size, rows, arrays)
        return calibration_out(cal)


def calibration_out(cal) -> dict[str, Any]:
    return {"id": cal.id, "model_id": cal.model_id, "sha256": cal.sha256, "size_bytes": cal.size_bytes,
            "rows": cal.rows, "inputs": {k: {"dtype": v[0], "shape": v[1]} for k, v in (cal.inputs or {}).items()},
            "created_at": cal.created_at.isoformat() if cal.created_at else None,
            "use": {"precision": "int8", "calibration": f"upload:{cal.id}"}}


MAX_MEMBERS = 256
MAX_UNPACKED = 4 * 1024**3
"""An .npz of samples: at most this many arrays and this many bytes unpacked (declared sizes, which
are also all zipfile inflates). Only the arrays' headers are parsed in the API process; the data is
streamed through once, in pieces, to check it is whole."""


def check_npz(path: Path, inspection: dict[str, Any], code: str = "bad_samples") -> dict[str, Any]:
    """``{name: (dtype, shape)}`` of the arrays; 400 unless it is a plain ``.npz`` holding, for every
    model input, an array of its rank, fixed dims and a compatible dtype. Budgets (members, bytes)
    are checked before anything is inflated."""
    import zipfile

    from app.limits import OverBudget, check_zip_directory, zip_tail

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            check_zip_directory(zip_tail(f, size), size, MAX_MEMBERS, "the .npz")
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise OverBudget(f"the .npz has {len(infos)} members, over the limit of {MAX_MEMBERS}")
            unpacked = sum(i.file_size for i in infos)
            if unpacked > MAX_UNPACKED:
                raise OverBudget(f"the .npz unpacks to {unpacked} bytes, more than the {MAX_UNPACKED} allowed")
            arrays = {}
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                arrays[key] = _read_member(zf, info, key)
    except OverBudget as e:
        raise BadRequest(str(e), code=code) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:
        raise BadRequest(f"sample inputs must be an .npz of plain arrays (no pickles): {e}",
                         code=code) from None
    if not arrays:
        raise BadRequest("the .npz holds no arrays", code=code)
    wanted = [i["name"] for i in (inspection.get("inputs") or [])]
    missing = [n for n in wanted if n not in arrays]
    if wanted and missing:
        raise BadRequest(f"the .npz lacks arrays for inputs {', '.join(missing)}; it has {', '.join(arrays)}",
                         code=code, detail={"missing": missing})
    _check_shapes(arrays, inspection, code)
    return {k: (str(dt), list(shape)) for k, (dt, shape) in arrays.items()}


def _read_member(zf, info, key: str):
    """(dtype, shape) of one member, from its .npy header; the rest read through in 1 MiB pieces
    (CRC checked by zipfile) and the length checked against what the header says."""
    import math

    import numpy as np
    from numpy.lib import format as npf

    with zf.open(info) as f:
        try:
            version = npf.read_magic(f)
        except ValueError:
            raise ValueError(f"member {key!r} is not a .npy array") from None
        read = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=10000)
        if dtype.hasobject:
            raise ValueError(f"array {key!r} holds Python objects (it needs pickle), which is refused")
        want, got = math.prod(shape) * dtype.itemsize, 0
        while chunk := f.read(1024 * 1024):
            got += len(chunk)
            if got > want:
                break
    if got != want:
        raise ValueError(f"array {key!r}: its header says shape {list(shape)} of {dtype.name} ({want} bytes) "
                         f"but {'more' if got > want else got} bytes follow")
    return np.dtype(dtype), tuple(shape)


def _check_shapes(arrays: dict[str, Any], inspection: dict[str, Any], code: str = "bad_samples") -> None:
    """Every array that feeds a model input must fit it (rank, fixed dims, dtype): the same rule
    validation applies later (``app.runners.inputs.check_sample``), applied now."""
    from app.runners.base import IOSpec
    from app.runners.inputs import check_sample, np_dtype

    for spec in inspection.get("inputs") or []:
        if spec.get("name") not in arrays:
            continue
        dtype, shape = arrays[spec["name"]]
        want = spec.get("dtype")
        try:
            np_dtype(want)
        except (TypeError, ValueError, ImportError):  # a dtype numpy does not name (Core ML "image"): shapes only
            want = dtype.name
        try:
            check_sample(IOSpec(spec["name"], want, spec.get("shape")), shape, dtype,
                         "calibration array" if code == "bad_calibration" else "sample")
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e), code=code, detail={"input": spec["name"]}) from None
