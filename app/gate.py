"""The regression gate: a candidate model's format report against a baseline's, row by row.

Pure functions over the JSON of ``GET /v1/models/{id}/report`` (``app.pipeline.report.build``):
no HTTP, no catalog, no numpy, so CI can run it on saved reports too. Rows are matched by
``(format, precision)``; when a report holds several artifacts with the same key, the newest one
(the last row: the report lists artifacts oldest first) stands for it.

A candidate row fails the gate when

- its p50 latency (batch 1) grew by more than ``max_latency_regression`` (a fraction: 0.10 = 10%)
  of the baseline row's, and by more than ``latency_floor_ms`` in absolute terms (sub-millisecond
  latencies jitter by more than 10% between runs);
- its size grew by more than ``max_size_growth`` of the baseline row's;
- its validation's max abs error exceeds ``max_error`` (a number for every precision, or a cap per
  precision: ``{"fp32": 1e-4, "fp16": 1e-2}``; precisions not named are not capped);
- its validation failed while the baseline row's passed.

The allowances are upper bounds on the change: ``change > allowance`` fails, so an allowance of 0
fails on any growth and a negative one demands an improvement (``-100%`` can never be met: a way to
check that a gate really runs). A metric either side did not measure is shown and never fails.
Rows in only one report are listed as such, not failures."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP = "pass", "FAIL", "n/a"


@dataclass(frozen=True)
class Thresholds:
    max_latency_regression: float | None = 0.10  # fraction of the baseline p50; None: not checked
    max_size_growth: float | None = 0.05  # fraction of the baseline size; None: not checked
    max_error: float | dict[str, float] | None = None  # max abs error cap (per precision when a dict)
    latency_floor_ms: float = 0.0  # a latency change smaller than this never fails

    def error_cap(self, precision: str) -> float | None:
        if isinstance(self.max_error, dict):
            return self.max_error.get(precision)
        return self.max_error


@dataclass
class Comparison:
    format: str
    precision: str
    metric: str  # "p50_ms", "size_bytes", "max_abs_err", "validation"
    baseline: Any
    candidate: Any
    change: float | None  # relative change (candidate / baseline - 1) where it means something
    verdict: str  # PASS, FAIL or SKIP
    reason: str = ""


@dataclass
class GateResult:
    candidate: dict[str, Any]  # the report's "model" block
    baseline: dict[str, Any]
    thresholds: dict[str, Any]
    comparisons: list[Comparison] = field(default_factory=list)
    only_candidate: list[dict[str, Any]] = field(default_factory=list)  # rows: format, precision, artifact_id
    only_baseline: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == FAIL]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["failures"] = [asdict(c) for c in self.failures]
        return out


def parse_percent(text: str | float | None) -> float | None:
    """``"10%"``, ``"10"`` or ``10`` -> 0.10 (percent, the sign optional); ``"-100%"`` -> -1.0;
    ``None``/``"off"``/``"none"`` -> None (not checked)."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text) / 100
    s = str(text).strip().lower()
    if s in ("off", "none", ""):
        return None
    value = float(s[:-1] if s.endswith("%") else s)
    if not math.isfinite(value):
        raise ValueError(f"not a finite percentage: {text!r}")
    return value / 100


def parse_error_cap(text: str | float | None) -> float | dict[str, float] | None:
    """``"1e-4"`` (every precision) or ``"fp32=1e-4,fp16=1e-2"`` (per precision); ``"off"`` -> None."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip()
    if s.lower() in ("off", "none", ""):
        return None
    if "=" not in s:
        return float(s)
    caps = {}
    for part in s.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected PRECISION=NUMBER, got {part!r}")
        caps[key.strip()] = float(value)
    return caps


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row.get("format")), str(row.get("precision"))


def _index(report: dict[str, Any], side: str, notes: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in report.get("rows") or []:
        k = _key(row)
        out[k] = row  # the newest artifact with this key wins (rows are oldest first)
        counts[k] = counts.get(k, 0) + 1
    for k, n in sorted(counts.items()):
        if n > 1:
            notes.append(f"the {side} has {n} {k[0]} {k[1]} artifacts; compared the newest "
                         f"({str(out[k].get('artifact_id', '?'))[:8]})")
    return out


def _change(base: float, cand: float) -> float:
    if base == 0:
        return 0.0 if cand == 0 else math.inf
    return cand / base - 1


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _growth(fmt: str, prec: str, metric: str, base: Any, cand: Any, allowance: float | None,
            floor: float = 0.0) -> Comparison:
    b, c = _number(base), _number(cand)
    if b is None or c is None:
        missing = "baseline" if b is None else "candidate"
        return Comparison(fmt, prec, metric, base, cand, None, SKIP, f"not measured in the {missing}")
    change = _change(b, c)
    if allowance is None:
        return Comparison(fmt, prec, metric, base, cand, change, SKIP, "not checked")
    if change > allowance and (floor <= 0 or c - b > floor):
        return Comparison(fmt, prec, metric, base, cand, change, FAIL,
                          f"{_pct(change)} exceeds the allowed {_pct(allowance)}")
    return Comparison(fmt, prec, metric, base, cand, change, PASS, f"within {_pct(allowance)}")


def compare_reports(candidate: dict[str, Any], baseline: dict[str, Any],
                    thresholds: Thresholds | None = None) -> GateResult:
    """Compare two format reports row by row (see the module docstring for the rules)."""
    t = thresholds or Thresholds()
    result = GateResult(candidate=dict(candidate.get("model") or {}), baseline=dict(baseline.get("model") or {}),
                        thresholds=asdict(t))
    cand_rows = _index(candidate, "candidate", result.notes)
    base_rows = _index(baseline, "baseline", result.notes)
    for k in sorted(cand_rows.keys() | base_rows.keys()):
        fmt, prec = k
        if k not in base_rows:
            result.only_candidate.append({"format": fmt, "precision": prec,
                                          "artifact_id": cand_rows[k].get("artifact_id")})
            continue
        if k not in cand_rows:
            result.only_baseline.append({"format": fmt, "precision": prec,
                                         "artifact_id": base_rows[k].get("artifact_id")})
            continue
        c, b = cand_rows[k], base_rows[k]
        result.comparisons.append(_growth(fmt, prec, "p50_ms", b.get("p50_ms"), c.get("p50_ms"),
                                          t.max_latency_regression, t.latency_floor_ms))
        result.comparisons.append(_growth(fmt, prec, "size_bytes", b.get("size_bytes"), c.get("size_bytes"),
                                          t.max_size_growth))
        result.comparisons.append(_error(fmt, prec, b.get("max_abs_err"), c.get("max_abs_err"), t.error_cap(prec)))
        result.comparisons.append(_validation(fmt, prec, b.get("validation"), c.get("validation")))
    return result


def _error(fmt: str, prec: str, base: Any, cand: Any, cap: float | None) -> Comparison:
    b, c = _number(base), _number(cand)
    change = None if b is None or c is None else _change(b, c)
    if c is None:
        return Comparison(fmt, prec, "max_abs_err", base, cand, change, SKIP, "not validated in the candidate")
    if cap is None:
        return Comparison(fmt, prec, "max_abs_err", base, cand, change, SKIP, "no --max-error for this precision")
    if c > cap:
        return Comparison(fmt, prec, "max_abs_err", base, cand, change, FAIL, f"{c:.3g} exceeds --max-error {cap:.3g}")
    return Comparison(fmt, prec, "max_abs_err", base, cand, change, PASS, f"within {cap:.3g}")


def _validation(fmt: str, prec: str, base: Any, cand: Any) -> Comparison:
    if cand == "failed" and base == "passed":
        return Comparison(fmt, prec, "validation", base, cand, None, FAIL, "the baseline passed validation")
    if cand == "passed":
        return Comparison(fmt, prec, "validation", base, cand, None, PASS, "")
    why = "failed in the baseline too" if cand == "failed" else f"candidate: {cand}"
    return Comparison(fmt, prec, "validation", base, cand, None, SKIP, why)


# ------------------------------------------------------------------------------------ Markdown

_METRIC = {"p50_ms": "p50 latency", "size_bytes": "size", "max_abs_err": "max abs error", "validation": "validation"}


def _pct(x: float | None) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "+inf%"
    return f"{x * 100:+.1f}%"


def _value(metric: str, v: Any) -> str:
    if v is None:
        return "—"
    if metric == "p50_ms" and _number(v) is not None:
        return f"{v:.3f} ms"
    if metric == "size_bytes" and _number(v) is not None:
        n = float(v)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if n < 1024 or unit == "GiB":
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
    if metric == "max_abs_err" and _number(v) is not None:
        return f"{v:.2e}"
    return str(v)


def _name(model: dict[str, Any]) -> str:
    mid = str(model.get("id") or "?")
    return f"{model.get('name') or mid} (`{mid[:8]}`)"


def markdown(result: GateResult) -> str:
    """The verdict and one table row per compared metric, for ``$GITHUB_STEP_SUMMARY``."""
    t = result.thresholds
    verdict = "✅ passed" if result.passed else f"❌ failed ({len(result.failures)} regression(s))"
    lines = [f"## modelport gate: {verdict}", "",
             f"Candidate {_name(result.candidate)} against baseline {_name(result.baseline)}.", "",
             "Allowed: p50 latency " + ("not checked" if t["max_latency_regression"] is None
                                        else _pct(t["max_latency_regression"]))
             + (f" (and > {t['latency_floor_ms']} ms)" if t["latency_floor_ms"] else "")
             + ", size " + ("not checked" if t["max_size_growth"] is None else _pct(t["max_size_growth"]))
             + ", max abs error " + _caps(t["max_error"]) + ".", ""]
    lines += ["| format | precision | metric | baseline | candidate | change | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in result.comparisons:
        verdict_cell = f"**{c.verdict}**" if c.verdict == FAIL else c.verdict
        if c.reason and c.verdict != PASS:
            verdict_cell += f": {c.reason}"
        lines.append(f"| {c.format} | {c.precision} | {_METRIC.get(c.metric, c.metric)} | "
                     f"{_value(c.metric, c.baseline)} | {_value(c.metric, c.candidate)} | {_pct(c.change)} | "
                     f"{verdict_cell} |")
    for row in result.only_candidate:
        lines.append(f"| {row['format']} | {row['precision']} | — | — | present | — | only in candidate |")
    for row in result.only_baseline:
        lines.append(f"| {row['format']} | {row['precision']} | — | present | — | — | only in baseline |")
    if not (result.comparisons or result.only_candidate or result.only_baseline):
        lines.append("| — | — | — | — | — | — | neither report has rows |")
    if result.notes:
        lines += [""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _caps(cap: Any) -> str:
    if cap is None:
        return "not checked"
    if isinstance(cap, dict):
        return ", ".join(f"{k} {v:.3g}" for k, v in sorted(cap.items())) or "not checked"
    return f"{cap:.3g}"
