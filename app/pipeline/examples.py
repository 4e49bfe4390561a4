"""Inputs to try a prediction with (``GET /v1/models/{id}/example-inputs``): the model's uploaded
sample inputs, else one batch of the one input generator's values (:mod:`app.runners.inputs`) for its
inspected inputs, as the JSON that ``POST /v1/deployments/{name}/predict`` takes back."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from app.errors import Unprocessable
from app.storage import blob_key

MAX_VALUES = 1 << 18  # numbers in one answer: what a page can show and send back as JSON


def example_inputs(store, settings, model) -> dict[str, Any]:
    """``{"model_id", "source": "samples" | "generated", "inputs": {name: nested lists}, "specs":
    {name: {"dtype", "shape"}}}``. Uploaded samples with a free batch dim give their first row. 422
    when the inputs cannot be described (dtype or shape unknown, and no samples) or are too many to
    show. Blocking (reads the samples from the object store)."""
    import numpy as np

    declared = (model.inspection or {}).get("inputs") or []
    if model.samples_sha256:
        arrays, source = _samples(store, settings, model.samples_sha256, declared), "samples"
    else:
        arrays, source = _generated(declared), "generated"
    total = sum(int(a.size) for a in arrays.values())
    if total > MAX_VALUES:
        raise Unprocessable(f"these inputs hold {total} values, more than {MAX_VALUES} to show as JSON; send your "
                            "own .npz to the predict route instead", code="inputs_too_large",
                            detail={"values": total, "limit": MAX_VALUES})
    bad = [n for n, a in arrays.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
    if bad:
        raise Unprocessable(f"sample input(s) {', '.join(bad)} hold NaN or infinity, which JSON cannot carry",
                            code="inputs_not_finite", detail={"inputs": bad})
    try:
        inputs = {n: a.tolist() for n, a in arrays.items()}
    except (TypeError, ValueError) as e:  # dtypes plain Python has no numbers for (bfloat16)
        raise Unprocessable(f"these inputs cannot be written as JSON: {e}", code="inputs_not_json") from None
    return {"model_id": model.id, "source": source, "inputs": inputs,
            "specs": {n: {"dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()}}


def _generated(declared: list[dict[str, Any]]) -> dict[str, Any]:
    from app.runners.base import IOSpec
    from app.runners.inputs import default_inputs

    unknown = [i.get("name", "?") for i in declared if i.get("shape") is None or not i.get("dtype")]
    if not declared or unknown:
        what = f"input(s) {', '.join(unknown)} have no known dtype or shape" if unknown else \
            "the model's inputs are not known from its file"
        raise Unprocessable(f"{what}: upload sample inputs (PUT /v1/models/{{id}}/samples, an .npz) to try it",
                            code="inputs_unknown", detail={"inputs": unknown})
    specs = [IOSpec(i["name"], i["dtype"], list(i["shape"])) for i in declared]
    try:
        return default_inputs(specs, 1)
    except ValueError as e:  # a dtype the generator cannot make values of
        raise Unprocessable(f"cannot make example values: {e}", code="inputs_unknown") from None


def _samples(store, settings, sha: str, declared: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from app.runners.inputs import is_dynamic

    batch_free = {i["name"] for i in declared if i.get("shape") and is_dynamic(i["shape"][0])}
    names = {i["name"] for i in declared}
    Path(settings.tmp_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.tmp_dir) as tmp:
        path = Path(tmp) / "samples.npz"
        store.get_to_path(blob_key(sha), path)
        with np.load(path, allow_pickle=False) as z:  # checked at upload (ingest.samples.check_npz)
            return {k: (z[k][:1] if k in batch_free and z[k].ndim and z[k].shape[0] > 1 else z[k])
                    for k in z.files if not names or k in names}  # the model's inputs, not extra arrays
