"""Every format reader under fuzzed input: real files of each format (ONNX, state dict,
TorchScript, torch.export, SafeTensors, OpenVINO IR, Core ML, TensorRT plan header, and — with the
TF toolchain — SavedModel, Keras .keras and .h5, TFLite), truncated, bit-flipped and with size or
offset fields made to lie, run through detection + inspection in an inspection child under its
memory limit. Each must end as a model (a mutation can leave a file valid) or a 4xx; none may hang
past its limit or take the API down. ``MODELPORT_FUZZ_READER_CASES`` per format (default 90:
~1 200 cases); bench/fuzz.py runs more."""

from __future__ import annotations

import os
from collections import Counter

from tests.fuzzing import make_cases, run_reader_cases, seeds

PER_FORMAT = int(os.environ.get("MODELPORT_FUZZ_READER_CASES", "90"))
PER_CASE_S = 20.0


def test_every_reader_answers_4xx_or_a_model_never_a_crash_or_a_hang(tmp_path, tf_models):
    seed_sets = seeds(tmp_path / "seeds", tf_models)
    assert len(seed_sets) >= 12, sorted(seed_sets)
    cases = make_cases(seed_sets, tmp_path / "cases", PER_FORMAT)
    results = run_reader_cases(cases, per_case_s=PER_CASE_S, memory_mb=4096)
    assert len(results) == len(cases)
    bad = [(cases[r["i"]]["format"], cases[r["i"]]["kind"], r) for r in results
           if not r["ok"] and not (r["status"] and 400 <= r["status"] < 500)]
    by_format = Counter((cases[r["i"]]["format"], r["code"]) for r in results)
    print("reader fuzz:", len(results), "cases;", dict(sorted(by_format.items())))
    slowest = max(results, key=lambda r: r["ms"] or 0)
    print("slowest case:", cases[slowest["i"]]["format"], cases[slowest["i"]]["kind"], slowest["ms"], "ms")
    # a child that died or hung on a case: the API's own path (a fresh child per upload) must turn it into a 4xx
    from pathlib import Path

    from app.errors import ModelportError
    from app.ingest.inspection import inspect_files

    still_bad = []
    for fmt, kind, r in bad:
        c = cases[r["i"]]
        try:
            inspect_files(Path(c["root"]), c["paths"], c["hint_name"], accept_unknown=False, timeout_s=PER_CASE_S,
                          memory_mb=4096)
        except ModelportError as e:
            if 400 <= e.status_code < 500:
                continue
            still_bad.append((fmt, kind, e.status_code, e.code, e.message[:200]))
        else:
            continue
    assert still_bad == [], still_bad
    assert all(r["code"] != "hung" for r in results), [cases[r["i"]]["format"] for r in results if r["code"] == "hung"]
    codes = Counter(r["code"] for r in results)
    assert codes["ok"] < len(results) // 2, codes  # the mutations do break most files


def test_fuzzed_uploads_never_take_the_api_down(tmp_path, tf_models, embedded_client):
    """Two mutated file sets of each format through the API (a fresh inspection child each): a model
    or a 4xx every time, and the service healthy after."""
    seed_sets = seeds(tmp_path / "seeds", tf_models)
    cases = make_cases(seed_sets, tmp_path / "cases", 2, seed=7)
    statuses = Counter()
    for c in cases:
        from pathlib import Path

        root = Path(c["root"])
        parts = [("files", (p, (root / p).read_bytes(), "application/octet-stream")) for p in c["paths"]]
        r = embedded_client.post("/v1/models", files=parts)
        assert r.status_code in (200, 201) or 400 <= r.status_code < 500, (c["format"], c["kind"], r.text[:300])
        statuses[r.status_code] += 1
    assert embedded_client.get("/healthz").status_code == 200 and embedded_client.get("/readyz").status_code == 200
    assert sum(n for s, n in statuses.items() if s >= 400) > 0, statuses
