"""Prove that a converted artifact gives the same answers as its source.

``validate(reference, candidate, profile=...)`` feeds both :class:`~app.runners.base.Runner` s the
same seeded input sets (:func:`make_inputs`), compares every output (:func:`compare`) and returns a
JSON-safe report whose ``status`` is ``"passed"``, ``"failed"`` or ``"skipped"`` — never a silent
pass: zero comparable outputs, a candidate that raises, a shape change, NaN/Inf where the reference
is finite are all failures, with the output and input set named. ``validate_tensors`` does the same
for weights-only artifacts (state dict <-> SafeTensors): bit-identical or failed.

Tolerance profiles
==================

Like Polygraphy, every output is checked elementwise with an absolute and a relative tolerance::

    |candidate - reference| <= atol_eff + rtol * |reference|        (numpy.allclose form)
    atol_eff = max(atol, atol_scale * max|reference|)               (per output, per input set)

``atol_scale`` makes the absolute tolerance *scale-aware*: rounding error in a reduced-precision
network is proportional to the magnitude of the values that were summed, not to the (possibly
near-zero, after cancellation) element itself, so an element-relative ``rtol`` alone fails good
conversions spuriously at near-zero elements, and a fixed ``atol`` is meaningless across outputs
whose magnitudes are 1e-3 or 1e3. Where elementwise error is the wrong test (int8), the profile adds
distribution-level criteria: cosine similarity of the whole output and top-1 agreement of
classifier-shaped outputs (``[N, C]`` or ``[N, T, C]``, classes on the last dim, ``C >= 2``).

=========  ======  ======  ==========  ==========  ========  ==============================================
profile    atol    rtol    atol_scale  min_cosine  min_top1  why
=========  ======  ======  ==========  ==========  ========  ==============================================
exact      0       0       0           -           -         same dtype, shape and bytes (NaNs equal if
                                                             bit-equal): re-serialisations, weights.
fp32       1e-5    1e-4    1e-4        -           -         float32 eps is 1.2e-7; two fp32 runtimes differ
                                                             only by summation order / kernel choice, which
                                                             we expect to stay well under 1e-5 of the output
                                                             scale even for deep nets: 1e-4 leaves margin yet
                                                             still catches a bf16 round trip (up to 3.9e-3
                                                             relative), TF32 matmuls (~1e-3) and any wrong
                                                             weight, op or layout.
fp16       1e-3    1e-2    5e-3        -           -         float16 unit roundoff is 4.9e-4 (2^-11); a
                                                             whole network accumulates ~10x that relative
                                                             to the output scale. Overflow (Inf where fp32
                                                             is finite) fails on its own.
bf16       1e-2    4e-2    4e-2        -           -         bfloat16 keeps 8 mantissa bits: unit roundoff
                                                             3.9e-3 (2^-8), 8x fp16's, so 8x the scale term.
int8       1e-3    0       0.25        0.99        0.9       quantisation error is a few % of the range per
                                                             layer, so elementwise tolerance cannot tell a
                                                             good int8 model from a broken one; instead the
                                                             output must point the same way (cosine >= 0.99)
                                                             and classifiers pick the same class on >= 90%
                                                             of rows; the loose 25%-of-scale atol still
                                                             catches a single wild element.
=========  ======  ======  ==========  ==========  ========  ==============================================

Every profile also needs: equal shapes; integer/bool outputs exactly equal; finite candidate values
wherever the reference is finite (and the same NaN/Inf where it is not). The report gives, per
output, ``min_atol_to_pass`` (the smallest effective atol that passes at the profile's rtol) and
``min_rtol_to_pass`` (at the profile's atol), and overall ``min_tolerance``, so a failure says by how
much it failed. ``top1_agreement`` is the fraction of rows with the same argmax; ``top5_agreement``
(only when ``C > 5``) the mean overlap of the two top-5 sets. With one row (batch 1) a single top-1
flip fails int8: pass a larger samples set or override ``min_top1``.

Overrides: ``{"atol": .., "rtol": .., "atol_scale": .., "min_cosine": .., "min_top1": ..,
"outputs": {"<name>": {same keys but "outputs"}}}`` merged onto the profile (``None`` disables
``min_cosine`` / ``min_top1``); unknown keys raise ``ValueError`` naming them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerUnavailable
from app.runners.inputs import (  # noqa: F401 - make_inputs is part of this module's API
    INT_RANGE,
    OTHER_DIM,
    _is_exact_kind,
    _is_float,
    is_dynamic,
    make_inputs,
    np_dtype,
)

_CRITERIA = ("atol", "rtol", "atol_scale", "min_cosine", "min_top1")

PROFILES: dict[str, dict[str, Any]] = {
    "exact": {"atol": 0.0, "rtol": 0.0, "atol_scale": 0.0, "min_cosine": None, "min_top1": None},
    "fp32": {"atol": 1e-5, "rtol": 1e-4, "atol_scale": 1e-4, "min_cosine": None, "min_top1": None},
    "fp16": {"atol": 1e-3, "rtol": 1e-2, "atol_scale": 5e-3, "min_cosine": None, "min_top1": None},
    "bf16": {"atol": 1e-2, "rtol": 4e-2, "atol_scale": 4e-2, "min_cosine": None, "min_top1": None},
    "int8": {"atol": 1e-3, "rtol": 0.0, "atol_scale": 0.25, "min_cosine": 0.99, "min_top1": 0.9},
}



# ------------------------------------------------------------------------------ tolerances


@dataclass
class Tolerance:
    """A profile with overrides applied; ``for_output(name)`` gives that output's criteria."""

    profile: str
    atol: float
    rtol: float
    atol_scale: float
    min_cosine: float | None
    min_top1: float | None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.profile == "exact"

    def for_output(self, name: str) -> dict[str, Any]:
        base = {k: getattr(self, k) for k in _CRITERIA}
        return {**base, **self.outputs.get(name, {})}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"profile": self.profile, **{k: getattr(self, k) for k in _CRITERIA}}
        if self.outputs:
            d["outputs"] = {k: dict(v) for k, v in self.outputs.items()}
        return d


def _check_criteria(d: dict, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a dict, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_CRITERIA))
    if unknown:
        raise ValueError(f"{where}: unknown tolerance key(s) {unknown}; allowed: {list(_CRITERIA)}")
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None and k in ("min_cosine", "min_top1"):
            out[k] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{where}: {k} must be a finite number, got {v!r}")
        v = float(v)
        if k in ("atol", "rtol", "atol_scale") and v < 0:
            raise ValueError(f"{where}: {k} must be >= 0, got {v}")
        if k == "min_cosine" and not -1.0 <= v <= 1.0:
            raise ValueError(f"{where}: min_cosine must be in [-1, 1], got {v}")
        if k == "min_top1" and not 0.0 <= v <= 1.0:
            raise ValueError(f"{where}: min_top1 must be in [0, 1], got {v}")
        out[k] = v
    return out


def resolve_tolerance(profile: str | Tolerance, overrides: dict | None = None) -> Tolerance:
    """The profile's numbers with ``overrides`` merged on (validated)."""
    if isinstance(profile, Tolerance):
        if not overrides:
            return profile
        base, outputs, name = ({k: getattr(profile, k) for k in _CRITERIA}, dict(profile.outputs),
                               profile.profile)
    else:
        if profile not in PROFILES:
            raise ValueError(f"unknown tolerance profile {profile!r}; known: {sorted(PROFILES)}")
        base, outputs, name = dict(PROFILES[profile]), {}, profile
    overrides = dict(overrides or {})
    per_output = overrides.pop("outputs", None) or {}
    base.update(_check_criteria(overrides, "tolerance overrides"))
    if not isinstance(per_output, dict):
        raise ValueError("tolerance overrides: 'outputs' must map output names to dicts")
    for out_name, crit in per_output.items():
        outputs[str(out_name)] = {**outputs.get(str(out_name), {}),
                                  **_check_criteria(crit, f"tolerance overrides for output {out_name!r}")}
    return Tolerance(profile=name, outputs=outputs, **base)


# ---------------------------------------------------------------------------------- compare


def _f(x: Any) -> float | None:
    """A JSON-safe float (None for NaN/Inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _idx(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()


def _val(a: np.ndarray, idx: tuple[int, ...]) -> Any:
    v = a[idx] if a.ndim else a[()]
    if isinstance(v, np.bool_ | bool):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    f = float(v)
    return f if math.isfinite(f) else str(f)


def _classifier_shaped(shape: tuple[int, ...]) -> bool:
    return len(shape) in (2, 3) and shape[-1] >= 2 and math.prod(shape) > 0


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 1) -> float:
    """Classes on the last dim. k=1: fraction of rows with the same argmax; k>1: mean overlap of
    the two top-k class sets (|ref_topk ∩ cand_topk| / k)."""
    r = np.asarray(reference, dtype=np.float64).reshape(-1, reference.shape[-1])
    c = np.asarray(candidate, dtype=np.float64).reshape(-1, candidate.shape[-1])
    if k == 1:
        return float(np.mean(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))
    rk = np.argsort(-r, axis=-1, kind="stable")[:, :k]
    ck = np.argsort(-c, axis=-1, kind="stable")[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rk.tolist(), ck.tolist(), strict=True)]))


def _match(ref_names: list[str], cand_names: list[str]) -> dict[str, tuple[str | None, str]]:
    """ref name -> (candidate name, "name"|"position"|"missing")."""
    out: dict[str, tuple[str | None, str]] = {}
    used = {n for n in ref_names if n in cand_names}
    leftovers = [n for n in cand_names if n not in used]
    for n in ref_names:
        if n in cand_names:
            out[n] = (n, "name")
        elif leftovers:
            out[n] = (leftovers.pop(0), "position")
        else:
            out[n] = (None, "missing")
    return out


def _compare_one(name: str, ref: np.ndarray, cand: np.ndarray, crit: dict, exact: bool) -> dict[str, Any]:
    r: dict[str, Any] = {
        "shapes": {"reference": list(ref.shape), "candidate": list(cand.shape)},
        "dtypes": {"reference": ref.dtype.name, "candidate": cand.dtype.name},
        "max_abs_err": None, "max_rel_err": None, "mean_abs_err": None, "cosine_similarity": None,
        "top1_agreement": None, "top5_agreement": None, "where": None,
        "min_atol_to_pass": None, "min_rtol_to_pass": None, "atol_effective": None,
    }

    def fail(reason: str) -> dict[str, Any]:
        return {**r, "passed": False, "reason": reason}

    if ref.shape != cand.shape:
        same = " (same number of elements, different layout)" if ref.size == cand.size else ""
        return fail(f"shape mismatch: reference {list(ref.shape)} vs candidate {list(cand.shape)}{same}")
    for a, who in ((ref, "reference"), (cand, "candidate")):
        if not (_is_float(a.dtype) or _is_exact_kind(a.dtype)):
            return fail(f"cannot compare {who} dtype {a.dtype.name}")
    n = ref.size

    if exact:
        if ref.dtype != cand.dtype:
            return fail(f"dtype mismatch: reference {ref.dtype.name} vs candidate {cand.dtype.name} (exact profile)")
        diff = _byte_diff(ref, cand)
        r.update(_abs_stats(ref, cand) if _is_float(ref.dtype) or ref.dtype.kind in "iu" else {})
        r["min_atol_to_pass"] = r["max_abs_err"]
        r["min_rtol_to_pass"] = None if diff.any() else 0.0
        if diff.any():
            i = _idx(int(np.flatnonzero(diff)[0]), ref.shape)
            r["where"] = {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}
            return fail(f"{int(diff.sum())} of {n} elements differ bitwise (first at {list(i)}: "
                        f"reference {_val(ref, i)} vs candidate {_val(cand, i)})")
        return {**r, "passed": True, "reason": "bit-identical"}

    if _is_exact_kind(ref.dtype) or _is_exact_kind(cand.dtype):
        r.update(_abs_stats(ref, cand))
        neq = np.asarray(ref != cand)
        r["min_atol_to_pass"] = r["max_abs_err"]
        r["min_rtol_to_pass"] = None if neq.any() else 0.0
        if neq.any():
            i = _idx(int(np.flatnonzero(neq)[0]), ref.shape)
            r["where"] = {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}
            return fail(f"integer/bool output must match exactly: {int(neq.sum())} of {n} elements differ "
                        f"(first at {list(i)}: reference {_val(ref, i)} vs candidate {_val(cand, i)})")
        return {**r, "passed": True, "reason": "integer/bool values equal"}

    a = ref.astype(np.float64)
    b = cand.astype(np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    bad = fa & ~fb
    if bad.any():
        i = _idx(int(np.flatnonzero(bad)[0]), ref.shape)
        r.update(_abs_stats(a, b, fa & fb))
        r["where"] = {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}
        return fail(f"candidate has NaN/Inf in {int(bad.sum())} of {n} elements where the reference is finite "
                    f"(first at {list(i)}: reference {_val(ref, i)} vs candidate {_val(cand, i)})")
    nonfin_mismatch = ~fa & ~((np.isnan(a) & np.isnan(b)) | (a == b))
    if nonfin_mismatch.any():
        i = _idx(int(np.flatnonzero(nonfin_mismatch)[0]), ref.shape)
        r["where"] = {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}
        return fail(f"reference has NaN/Inf at {int(nonfin_mismatch.sum())} element(s) the candidate does not "
                    f"match (first at {list(i)}: reference {_val(ref, i)} vs candidate {_val(cand, i)})")

    both = fa & fb
    av, bv = a[both], b[both]
    d = np.abs(av - bv)
    aref = np.abs(av)
    scale = float(aref.max()) if aref.size else 0.0
    atol_eff = max(crit["atol"], crit["atol_scale"] * scale)
    rtol = crit["rtol"]
    r.update(_abs_stats(a, b, both))
    r["atol_effective"] = _f(atol_eff)
    r["output_scale"] = _f(scale)
    if d.size:
        r["min_atol_to_pass"] = _f(max(0.0, float(np.max(d - rtol * aref))))
        over = d > atol_eff
        if not over.any():
            r["min_rtol_to_pass"] = 0.0
        elif np.any(over & (aref == 0)):
            r["min_rtol_to_pass"] = None  # an error where the reference is 0: no rtol alone passes
        else:
            r["min_rtol_to_pass"] = _f(float(np.max((d[over] - atol_eff) / aref[over])))
        na, nb = float(np.linalg.norm(av)), float(np.linalg.norm(bv))
        if na == 0.0 and nb == 0.0:
            r["cosine_similarity"] = 1.0
        elif na == 0.0 or nb == 0.0:
            r["cosine_similarity"] = 0.0
        else:
            r["cosine_similarity"] = _f(float(np.dot(av, bv)) / (na * nb))
    else:
        r["min_atol_to_pass"] = 0.0
        r["min_rtol_to_pass"] = 0.0
    classifier = _classifier_shaped(ref.shape) and bool(both.all())
    if classifier:
        r["top1_agreement"] = topk_agreement(a, b, 1)
        if ref.shape[-1] > 5:
            r["top5_agreement"] = topk_agreement(a, b, 5)

    problems = []
    viol = d > atol_eff + rtol * aref
    if viol.any():
        problems.append(f"{int(viol.sum())} of {n} elements outside atol {atol_eff:.3g} + rtol {rtol:.3g}*|ref| "
                        f"(max_abs_err {r['max_abs_err']:.3g} at {list(r['where']['index'])}; "
                        f"min_atol_to_pass {r['min_atol_to_pass']:.3g})")
    if crit["min_cosine"] is not None and d.size and r["cosine_similarity"] is not None \
            and r["cosine_similarity"] < crit["min_cosine"]:
        problems.append(f"cosine similarity {r['cosine_similarity']:.6f} < {crit['min_cosine']}")
    if crit["min_top1"] is not None and r["top1_agreement"] is not None and r["top1_agreement"] < crit["min_top1"]:
        problems.append(f"top-1 agreement {r['top1_agreement']:.3f} < {crit['min_top1']}")
    if problems:
        return fail("; ".join(problems))
    msg = (f"max_abs_err {r['max_abs_err']:.3g} within atol {atol_eff:.3g} + rtol {rtol:.3g}*|ref|"
           if d.size else "empty output (shapes equal)")
    if crit["min_cosine"] is not None and r["cosine_similarity"] is not None:
        msg += f"; cosine {r['cosine_similarity']:.6f} >= {crit['min_cosine']}"
    if crit["min_top1"] is not None and r["top1_agreement"] is not None:
        msg += f"; top-1 agreement {r['top1_agreement']:.3f} >= {crit['min_top1']}"
    return {**r, "passed": True, "reason": msg}


def _abs_stats(ref: np.ndarray, cand: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(cand, dtype=np.float64)
    if mask is None:
        mask = np.ones(a.shape, dtype=bool)
    if not mask.any():
        return {"max_abs_err": 0.0 if a.size == 0 else None, "max_rel_err": 0.0 if a.size == 0 else None,
                "mean_abs_err": 0.0 if a.size == 0 else None}
    d = np.where(mask, np.abs(a - b), -1.0)
    flat = int(np.argmax(d))
    i = _idx(flat, a.shape)
    dm = d[mask]
    aref = np.abs(a[mask])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(dm == 0, 0.0, dm / aref)
    return {"max_abs_err": _f(dm.max()), "mean_abs_err": _f(dm.mean()),
            "max_rel_err": _f(rel.max()) if np.isfinite(rel).all() else None,
            "where": {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            tol: str | Tolerance | dict = "fp32") -> list[dict[str, Any]]:
    """One dict per reference output: matched candidate output (by name, else by position),
    shapes, dtypes, errors (float64), cosine, top-k agreement (classifier-shaped), worst element,
    ``min_atol_to_pass`` and ``passed`` with ``reason``. ``tol``: a profile name, a
    :class:`Tolerance`, or ``{"profile": .., **overrides}``."""
    if isinstance(tol, dict):
        tol = dict(tol)
        tol = resolve_tolerance(tol.pop("profile", "fp32"), tol)
    tol = resolve_tolerance(tol)
    ref_names, cand_names = list(reference), list(candidate)
    results = []
    for name, (cname, how) in _match(ref_names, cand_names).items():
        ref = np.asarray(reference[name])
        entry: dict[str, Any] = {"output": name, "candidate_output": cname, "matched_by": how}
        if cname is None:
            entry.update({"shapes": {"reference": list(ref.shape), "candidate": None},
                          "dtypes": {"reference": ref.dtype.name, "candidate": None},
                          "passed": False, "reason": f"output {name!r} is missing from the candidate "
                                                     f"(candidate outputs: {cand_names})"})
            results.append(entry)
            continue
        entry.update(_compare_one(name, ref, np.asarray(candidate[cname]), tol.for_output(name), tol.exact))
        if how == "position":
            entry["reason"] = f"matched by position to candidate output {cname!r}; " + entry["reason"]
        results.append(entry)
    return results


# --------------------------------------------------------------------------------- reports


def _runner_info(r: Runner | None) -> dict[str, Any]:
    info = getattr(r, "info", None)
    return {"runtime": getattr(info, "runtime", None), "version": getattr(info, "version", None),
            "precision": getattr(info, "precision", None), "device": getattr(info, "device", None)}


def _report(status: str, reason: str, *, profile: str | None, tolerance: dict | None = None,
            reference: dict | None = None, candidate: dict | None = None, t0: float | None = None,
            **extra) -> dict[str, Any]:
    rep = {"status": status, "reason": reason, "profile": profile, "tolerance": tolerance,
           "reference": reference or _runner_info(None), "candidate": candidate or _runner_info(None),
           "input_sets": [], "outputs": [], "worst": None, "min_tolerance": None, "notes": [],
           "seconds": round(time.perf_counter() - t0, 4) if t0 is not None else 0.0}
    rep.update(extra)
    return rep


def skipped(reason: str, *, profile: str | None = None, reference: Runner | dict | None = None,
            candidate: Runner | dict | None = None, tolerance: dict | None = None, **extra) -> dict[str, Any]:
    """A "skipped" report, e.g. ``skipped("Core ML prediction needs macOS: waiting for an apple worker")``."""
    ref = reference if isinstance(reference, dict) else _runner_info(reference)
    cand = candidate if isinstance(candidate, dict) else _runner_info(candidate)
    return _report("skipped", reason, profile=profile, tolerance=tolerance, reference=ref, candidate=cand, **extra)


def _summarise(entries: list[dict[str, Any]]) -> tuple[dict | None, dict | None]:
    numeric = [e for e in entries if e.get("max_abs_err") is not None]
    worst = None
    if numeric:
        w = max(numeric, key=lambda e: (not e["passed"], e["max_abs_err"]))
        worst = {"output": w["output"], "input_set": w.get("input_set"), "max_abs_err": w["max_abs_err"],
                 "where": w.get("where"), "passed": w["passed"]}
    if not entries:
        return worst, None
    atols = [e.get("min_atol_to_pass") for e in entries]
    rtols = [e.get("min_rtol_to_pass") for e in entries]
    # None: no atol (shape change, missing output, NaN) / no rtol alone (error where the reference is 0)
    mt: dict[str, Any] = {"atol": None if None in atols else max(atols),
                          "rtol": None if None in rtols else max(rtols)}
    cos = [e["cosine_similarity"] for e in entries if e.get("cosine_similarity") is not None]
    if cos:
        mt["min_cosine"] = min(cos)
    top1 = [e["top1_agreement"] for e in entries if e.get("top1_agreement") is not None]
    if top1:
        mt["min_top1"] = min(top1)
    return worst, mt


def _merge_specs(ref: list[IOSpec], cand: list[IOSpec] | None) -> list[IOSpec]:
    if not cand:
        return ref
    by_name = {s.name: s for s in cand}
    out = []
    for i, s in enumerate(ref):
        c = by_name.get(s.name) or (cand[i] if i < len(cand) else None)
        shape = list(s.shape) if s.shape is not None else (list(c.shape) if c and c.shape is not None else None)
        dtype = s.dtype or (c.dtype if c else None)
        if c is not None and c.shape is not None and shape is not None and len(c.shape) == len(shape):
            # a candidate with static shapes (onnx2tf, TensorRT profiles) runs only at its own sizes; not
            # the batch, though: a candidate that fixed the batch the reference leaves free is batch-specialised
            shape = [cd if j > 0 and is_dynamic(d) and not is_dynamic(cd) else d
                     for j, (d, cd) in enumerate(zip(shape, c.shape, strict=True))]
        out.append(IOSpec(s.name, dtype, shape))
    return out


def _cast(a: np.ndarray, dtype: str | None) -> np.ndarray:
    if not dtype or dtype == "object":
        return a
    dt = np_dtype(dtype)
    return a if a.dtype == dt else a.astype(dt)


def validate(reference: Runner, candidate: Runner, *, profile: str, overrides: dict | None = None,
             samples: dict[str, np.ndarray] | None = None, seed: int = 0,
             dim_values: tuple = (1, 3), evidence: Any = None, search: bool = True,
             failing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run both runners on the same input sets and compare every output under ``profile``.

    Input specs are the reference's (unknown dims/dtypes filled from the candidate's); a
    candidate with other input names gets them by position, cast to its own input dtypes. A
    runner raising while running is a "failed" verdict naming the input set ("skipped" for
    :class:`RunnerUnavailable`). Bad ``overrides`` / ``samples`` are the caller's error:
    ``ValueError``.

    Generated inputs are ones the reference runs on: with ``search``, a runnable-input search
    (:func:`app.runners.search.find`, helped by the file's ``evidence``) picks the sizes of dynamic
    dims and the ranges of integer inputs first; the report's ``inputs`` says which and why. An
    input set on which the reference itself fails or returns NaN/Inf counts against no one.
    ``failing`` (a dict) receives the reference's feeds of the first input set that failed, under
    ``"feeds"`` (and its label), for localising the divergence."""
    t0 = time.perf_counter()
    tol = resolve_tolerance(profile, overrides)
    ref_info, cand_info = _runner_info(reference), _runner_info(candidate)
    base = {"profile": tol.profile, "tolerance": tol.to_dict(), "reference": ref_info, "candidate": cand_info}
    notes: list[str] = []

    def done(status: str, reason: str, **extra) -> dict[str, Any]:
        return _report(status, reason, t0=t0, notes=notes, **base, **extra)

    try:
        ref_specs = list(reference.inputs())
    except RunnerUnavailable as e:
        return done("skipped", f"reference cannot run here: {e}")
    except Exception as e:
        return done("failed", f"reference inputs() raised {type(e).__name__}: {e}")
    try:
        cand_specs = list(candidate.inputs())
    except RunnerUnavailable as e:
        return done("skipped", f"candidate cannot run here: {e}")
    except Exception as e:
        return done("failed", f"candidate inputs() raised {type(e).__name__}: {e}")

    ref_names = [s.name for s in ref_specs]
    cand_names = [s.name for s in cand_specs]
    if len(cand_names) != len(ref_names):
        return done("failed", f"the candidate has {len(cand_names)} input(s) {cand_names}; "
                              f"the reference has {len(ref_names)} {ref_names}")
    if set(cand_names) == set(ref_names):
        cand_by_ref = {n: n for n in ref_names}
    else:
        cand_by_ref = dict(zip(ref_names, cand_names, strict=True))
        notes.append("candidate input names differ from the reference's: mapped by position "
                     + ", ".join(f"{r}->{c}" for r, c in cand_by_ref.items()))
    cand_spec_by_name = {s.name: s for s in cand_specs}
    ordered_cand = [cand_spec_by_name[cand_by_ref[n]] for n in ref_names]
    specs = _merge_specs(ref_specs, ordered_cand)
    for r, s in zip(ref_specs, specs, strict=True):
        if r.shape is not None and s.shape is not None and len(r.shape) == len(s.shape):
            pinned = {j: d for j, (rd, d) in enumerate(zip(r.shape, s.shape, strict=True))
                      if is_dynamic(rd) and not is_dynamic(d)}
            if pinned:
                notes.append(f"input {s.name!r}: the candidate has static dim(s) "
                             f"{', '.join(f'{j}={d}' for j, d in pinned.items())} where the reference is dynamic: "
                             "validated at the candidate's sizes")
    for s, c in zip(specs, ordered_cand, strict=True):
        if s.shape is not None and c.shape is not None and len(s.shape) == len(c.shape):
            loose = [j for j, (d, cd) in enumerate(zip(s.shape, c.shape, strict=True))
                     if not is_dynamic(d) and is_dynamic(cd)]
            if loose:
                notes.append(f"input {s.name!r}: dim(s) {loose} are dynamic in the candidate but fixed in the "
                             f"reference {s.shape}: only the reference's sizes are tested")
        if c.dtype and c.dtype != s.dtype:
            notes.append(f"input {s.name!r}: cast {s.dtype} -> {c.dtype} for the candidate")
    cand_prec, ref_prec = cand_info.get("precision"), ref_info.get("precision")
    if cand_prec and tol.profile not in ("exact", cand_prec):
        notes.append(f"candidate computes in {cand_prec} but is checked with profile {tol.profile}")
    if ref_prec and ref_prec != "fp32" and tol.profile != "exact":
        notes.append(f"the reference computes in {ref_prec}, not fp32")

    plan = None
    if search:
        from app.runners import search as input_search

        plan = input_search.find(reference, specs, evidence, seed=seed)
        if plan.found and plan.why:
            notes.append("generated inputs: " + "; ".join(plan.why))
    sets = make_inputs(specs, seed=seed, samples=samples, dim_values=dim_values, plan=plan)
    input_sets = [{"label": label, "shapes": {k: list(v.shape) for k, v in feeds.items()}} for label, feeds in sets]
    entries: list[dict[str, Any]] = []
    failures: list[str] = []
    ref_failures: list[str] = []
    checked_override_names = False
    for label, feeds in sets:
        try:
            ref_out = {k: np.asarray(v) for k, v in reference.run(feeds).items()}
        except RunnerUnavailable as e:
            return done("skipped", f"reference cannot run here: {e}", input_sets=input_sets, outputs=entries)
        except Exception as e:
            # Not the artifact's fault: these inputs are invalid for the model itself (random inputs
            # are only a guess at what a model accepts). Recorded; the verdict rests on the other sets.
            ref_failures.append(f"the reference itself failed at input set {label!r}: {type(e).__name__}: {e}")
            entries.append({"input_set": label, "output": None, "passed": None, "reason": ref_failures[-1]})
            continue
        bad = [k for k, v in ref_out.items() if v.dtype.kind == "f" and v.size and not np.isfinite(v).all()]
        if bad and label != "samples":  # generated inputs the model has no answer for: not the artifact's fault
            ref_failures.append(f"the reference itself returned NaN/Inf in {bad} at input set {label!r}")
            entries.append({"input_set": label, "output": None, "passed": None, "reason": ref_failures[-1]})
            continue
        if not checked_override_names:
            checked_override_names = True
            try:
                spec_out = [s.name for s in reference.outputs()]
            except Exception:
                spec_out = []
            unknown = sorted(set(tol.outputs) - set(ref_out) - set(spec_out))
            if unknown:
                raise ValueError(f"tolerance overrides name unknown output(s) {unknown}; "
                                 f"the reference's outputs are {list(ref_out)}")
        cand_feeds = {cand_by_ref[s.name]: _cast(feeds[s.name], c.dtype) for s, c in zip(specs, ordered_cand, strict=True)}
        try:
            cand_out = {k: np.asarray(v) for k, v in candidate.run(cand_feeds).items()}
        except RunnerUnavailable as e:
            return done("skipped", f"candidate cannot run here: {e}", input_sets=input_sets, outputs=entries)
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in cand_feeds.items()}
            failures.append(f"the candidate failed at input set {label!r} (input shapes {shapes}): "
                            f"{type(e).__name__}: {e}")
            entries.append({"input_set": label, "output": None, "passed": False, "reason": failures[-1]})
            continue
        if not ref_out:
            failures.append(f"the reference returned no outputs at input set {label!r}")
        results = compare(ref_out, cand_out, tol)
        for e in results:
            e = {"input_set": label, **e}
            entries.append(e)
            if not e["passed"]:
                failures.append(f"output {e['output']!r} at input set {label!r}: {e['reason']}")
                if failing is not None and "feeds" not in failing:
                    failing.update(feeds=feeds, label=label)
        extra = sorted(set(cand_out) - {e["candidate_output"] for e in results})
        if extra:
            note = f"candidate has extra output(s) not compared: {extra}"
            if note not in notes:
                notes.append(note)

    worst, min_tol = _summarise([e for e in entries if e.get("output") is not None])
    compared = [e for e in entries if e.get("output") is not None and e.get("candidate_output") is not None]
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        status, reason = "failed", failures[0] + more
    elif not compared and ref_failures:
        why = plan.failure() if plan is not None and plan.searched and not plan.found else ref_failures[0]
        status, reason = "skipped", (
            f"the uploaded model cannot run on generated inputs ({why}); upload sample inputs "
            "(PUT /v1/models/{id}/samples, an .npz) so its artifacts can be proven")
    elif not compared:
        status, reason = "failed", "no comparable outputs: nothing was checked"
    else:
        status = "passed"
        ran = len(sets) - len({e["input_set"] for e in entries if e.get("passed") is None})
        if ref_failures:
            notes.append(f"{len(ref_failures)} generated input set(s) were invalid for the model itself and were "
                         f"not compared: {ref_failures[0]}")
        reason = (f"{len(compared)} output comparison(s) over {ran} input set(s) within profile {tol.profile}"
                  + (f"; worst max_abs_err {worst['max_abs_err']:.3g} ({worst['output']!r} at {worst['input_set']!r})"
                     if worst else ""))
    return done(status, reason, input_sets=input_sets, outputs=entries, worst=worst, min_tolerance=min_tol,
                inputs=plan.to_dict() if plan is not None else None)


# ---------------------------------------------------------------------------- weights only


def _byte_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per element: do the bytes differ? (same dtype and shape)"""
    n = a.dtype.itemsize
    av = np.ascontiguousarray(a.reshape(-1)).view(np.uint8).reshape(-1, n)
    bv = np.ascontiguousarray(b.reshape(-1)).view(np.uint8).reshape(-1, n)
    return (av != bv).any(axis=1).reshape(a.shape)


def validate_tensors(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *,
                     reference_info: dict | None = None, candidate_info: dict | None = None) -> dict[str, Any]:
    """Weights-only artifacts: the same names, dtypes, shapes and bytes (profile "exact")."""
    t0 = time.perf_counter()
    tol = resolve_tolerance("exact")
    ref_info = {"runtime": "tensors", "version": None, "precision": None, **(reference_info or {})}
    cand_info = {"runtime": "tensors", "version": None, "precision": None, **(candidate_info or {})}
    missing = [k for k in reference if k not in candidate]
    extra = [k for k in candidate if k not in reference]
    entries: list[dict[str, Any]] = []
    failures: list[str] = []
    if missing:
        failures.append(f"{len(missing)} tensor(s) missing from the candidate: {missing}")
    if extra:
        failures.append(f"{len(extra)} extra tensor(s) in the candidate: {extra}")
    for name in reference:
        if name not in candidate:
            continue
        ref, cand = np.asarray(reference[name]), np.asarray(candidate[name])
        e: dict[str, Any] = {"output": name, "candidate_output": name, "matched_by": "name",
                             "shapes": {"reference": list(ref.shape), "candidate": list(cand.shape)},
                             "dtypes": {"reference": ref.dtype.name, "candidate": cand.dtype.name},
                             "max_abs_err": None, "where": None}
        if ref.dtype != cand.dtype:
            e.update(passed=False, reason=f"dtype mismatch: reference {ref.dtype.name} vs candidate {cand.dtype.name}")
        elif ref.shape != cand.shape:
            e.update(passed=False, reason=f"shape mismatch: reference {list(ref.shape)} vs candidate {list(cand.shape)}")
        else:
            diff = _byte_diff(ref, cand)
            if diff.any():
                i = _idx(int(np.flatnonzero(diff)[0]), ref.shape)
                if _is_float(ref.dtype) or ref.dtype.kind in "iu":
                    e.update({k: v for k, v in _abs_stats(ref, cand, np.isfinite(ref.astype(np.float64))
                                                           & np.isfinite(cand.astype(np.float64))).items()
                              if k != "where"})
                e["where"] = {"index": i, "reference": _val(ref, i), "candidate": _val(cand, i)}
                e.update(passed=False, reason=f"{int(diff.sum())} of {ref.size} elements differ bitwise "
                                              f"(first at {list(i)}: reference {_val(ref, i)} vs "
                                              f"candidate {_val(cand, i)})")
            else:
                e.update(passed=True, reason="bit-identical", max_abs_err=0.0)
        if not e["passed"]:
            failures.append(f"tensor {name!r}: {e['reason']}")
        entries.append(e)
    worst = None
    bad = [e for e in entries if not e["passed"]]
    if bad:
        w = max(bad, key=lambda e: e["max_abs_err"] if e["max_abs_err"] is not None else -1.0)
        worst = {"output": w["output"], "input_set": None, "max_abs_err": w["max_abs_err"], "where": w["where"]}
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        status, reason = "failed", failures[0] + more
    elif not entries:
        status, reason = "failed", "no tensors to compare"
    else:
        status, reason = "passed", f"{len(entries)} tensor(s) bit-identical"
    return _report(status, reason, profile="exact", tolerance=tol.to_dict(), reference=ref_info,
                   candidate=cand_info, t0=t0, outputs=entries, worst=worst, missing=missing, extra=extra,
                   min_tolerance={"atol": 0.0, "rtol": 0.0} if status == "passed" else None)


__all__ = ["PROFILES", "Tolerance", "resolve_tolerance", "make_inputs", "compare", "topk_agreement",
           "validate", "validate_tensors", "skipped"]
