"""The regression gate's logic (app/gate.py) on hand-made format reports: no server."""

from __future__ import annotations

import math

import pytest

from app import gate
from app.gate import FAIL, PASS, SKIP, Thresholds, compare_reports


def row(fmt="onnx", precision="fp32", *, p50=1.0, size=1000, err=1e-6, validation="passed", aid=None, **kw):
    return {"artifact_id": aid or f"{fmt}-{precision}-0000", "format": fmt, "precision": precision,
            "size_bytes": size, "p50_ms": p50, "max_abs_err": err, "validation": validation, **kw}


def report(*rows, name="m", mid="cand0000"):
    return {"model": {"id": mid, "name": name, "format": "torch_export", "size_bytes": 1},
            "rows": list(rows), "recommendations": []}


def verdicts(result) -> dict[tuple[str, str, str], str]:
    return {(c.format, c.precision, c.metric): c.verdict for c in result.comparisons}


def test_identical_reports_pass():
    r = report(row(), row("openvino", "fp16", p50=0.5, size=600, err=1e-3))
    res = compare_reports(r, r)
    assert res.passed and res.failures == []
    assert {c.change for c in res.comparisons if c.change is not None} == {0.0}
    assert len(res.comparisons) == 8  # 4 metrics x 2 rows


def test_latency_regression_over_the_allowance_fails():
    res = compare_reports(report(row(p50=1.2)), report(row(p50=1.0)), Thresholds(max_latency_regression=0.10))
    v = verdicts(res)
    assert v[("onnx", "fp32", "p50_ms")] == FAIL and not res.passed
    assert math.isclose(res.failures[0].change, 0.2)
    # within the allowance, and an improvement, pass
    assert compare_reports(report(row(p50=1.05)), report(row(p50=1.0))).passed
    assert compare_reports(report(row(p50=0.5)), report(row(p50=1.0))).passed


def test_latency_floor_ignores_small_absolute_changes():
    cand, base = report(row(p50=0.06)), report(row(p50=0.04))  # +50%, but 0.02 ms
    assert not compare_reports(cand, base).passed
    assert compare_reports(cand, base, Thresholds(latency_floor_ms=0.05)).passed
    assert not compare_reports(report(row(p50=0.2)), base, Thresholds(latency_floor_ms=0.05)).passed


def test_size_growth_over_the_allowance_fails():
    res = compare_reports(report(row(size=1100)), report(row(size=1000)), Thresholds(max_size_growth=0.05))
    assert [(c.metric, c.verdict) for c in res.failures] == [("size_bytes", FAIL)]
    assert compare_reports(report(row(size=1040)), report(row(size=1000))).passed


def test_zero_and_negative_allowances():
    same = report(row(size=1000))
    assert compare_reports(same, same, Thresholds(max_size_growth=0.0)).passed  # no growth at all: fine
    assert not compare_reports(report(row(size=1001)), same, Thresholds(max_size_growth=0.0)).passed
    # a negative allowance demands an improvement: -100% can never be met, even by the same report
    res = compare_reports(same, same, Thresholds(max_size_growth=-1.0))
    assert not res.passed and res.failures[0].metric == "size_bytes"
    assert compare_reports(report(row(size=400)), same, Thresholds(max_size_growth=-0.5)).passed


def test_max_error_cap_global_and_per_precision():
    cand = report(row(err=5e-4), row("onnx", "fp16", err=5e-3))
    base = report(row(err=1e-6), row("onnx", "fp16", err=1e-3))
    assert compare_reports(cand, base).passed  # no cap by default
    res = compare_reports(cand, base, Thresholds(max_error=1e-4))
    assert {(c.precision, c.metric) for c in res.failures} == {("fp32", "max_abs_err"), ("fp16", "max_abs_err")}
    res = compare_reports(cand, base, Thresholds(max_error={"fp32": 1e-3, "fp16": 1e-2}))
    assert res.passed
    res = compare_reports(cand, base, Thresholds(max_error={"fp32": 1e-4}))  # fp16 not capped
    v = verdicts(res)
    assert v[("onnx", "fp32", "max_abs_err")] == FAIL and v[("onnx", "fp16", "max_abs_err")] == SKIP


def test_validation_failed_where_the_baseline_passed_fails():
    res = compare_reports(report(row(validation="failed")), report(row(validation="passed")))
    assert [(c.metric, c.verdict) for c in res.failures] == [("validation", FAIL)]
    # failed on both sides is not a regression; the candidate passing where the baseline failed is fine
    assert compare_reports(report(row(validation="failed")), report(row(validation="failed"))).passed
    v = verdicts(compare_reports(report(row(validation="passed")), report(row(validation="failed"))))
    assert v[("onnx", "fp32", "validation")] == PASS


def test_rows_in_one_report_only_are_listed_not_failed():
    cand = report(row(), row("openvino", "int8", aid="ov-new"))
    base = report(row(), row("tflite", "fp32", aid="tfl-old"))
    res = compare_reports(cand, base)
    assert res.passed
    assert res.only_candidate == [{"format": "openvino", "precision": "int8", "artifact_id": "ov-new"}]
    assert res.only_baseline == [{"format": "tflite", "precision": "fp32", "artifact_id": "tfl-old"}]
    md = gate.markdown(res)
    assert "| openvino | int8 | — | — | present | — | only in candidate |" in md
    assert "| tflite | fp32 | — | present | — | — | only in baseline |" in md


def test_rows_match_on_format_and_precision_and_the_newest_duplicate_stands():
    base = report(row(size=1000))
    cand = report(row(size=5000, aid="old00000"), row(size=1000, aid="new00000"))  # oldest first
    res = compare_reports(cand, base)
    assert res.passed
    assert any("2 onnx fp32 artifacts" in n and "new00000" in n for n in res.notes)
    # fp16 is not compared with fp32
    res = compare_reports(report(row(precision="fp16", size=9999)), base)
    assert res.passed and res.comparisons == [] and res.only_candidate and res.only_baseline


def test_unmeasured_metrics_never_fail():
    cand = report(row(p50=None, err=None, validation="not validated"))
    res = compare_reports(cand, report(row()), Thresholds(max_error=1e-9))
    assert res.passed
    v = verdicts(res)
    assert v[("onnx", "fp32", "p50_ms")] == SKIP and v[("onnx", "fp32", "max_abs_err")] == SKIP
    assert v[("onnx", "fp32", "validation")] == SKIP
    # and a metric the baseline lacks
    assert compare_reports(report(row(p50=99.0)), report(row(p50=None))).passed


def test_checks_can_be_turned_off():
    cand, base = report(row(p50=10.0, size=10_000)), report(row(p50=1.0, size=1000))
    assert not compare_reports(cand, base).passed
    assert compare_reports(cand, base, Thresholds(max_latency_regression=None, max_size_growth=None)).passed


def test_zero_baseline_values():
    assert compare_reports(report(row(p50=0.0)), report(row(p50=0.0))).passed
    res = compare_reports(report(row(p50=0.1)), report(row(p50=0.0)))
    assert res.failures[0].change == math.inf
    assert "+inf%" in gate.markdown(res)


def test_markdown_table_shape():
    res = compare_reports(report(row(p50=2.0, size=2048), name="cand"),
                          report(row(p50=1.0, size=2048), name="base", mid="base0000"))
    md = gate.markdown(res)
    assert md.startswith("## modelport gate: ❌ failed (1 regression(s))")
    assert "| format | precision | metric | baseline | candidate | change | verdict |" in md
    assert "| onnx | fp32 | p50 latency | 1.000 ms | 2.000 ms | +100.0% | **FAIL**: +100.0% exceeds the allowed +10.0% |" \
        in md
    assert "| onnx | fp32 | size | 2.0 KiB | 2.0 KiB | +0.0% | pass |" in md
    assert "cand (`cand0000`) against baseline base (`base0000`)" in md
    ok = gate.markdown(compare_reports(report(row()), report(row())))
    assert ok.startswith("## modelport gate: ✅ passed")
    empty = gate.markdown(compare_reports(report(), report()))
    assert "neither report has rows" in empty


def test_result_serialises():
    import json

    res = compare_reports(report(row(size=2000)), report(row(size=1000)))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["passed"] is False and d["failures"][0]["metric"] == "size_bytes"
    assert d["thresholds"]["max_size_growth"] == 0.05


@pytest.mark.parametrize(("text", "value"), [("10%", 0.10), ("10", 0.10), (" 2.5% ", 0.025), ("-100%", -1.0),
                                             ("0", 0.0), ("off", None), (None, None), (5, 0.05)])
def test_parse_percent(text, value):
    got = gate.parse_percent(text)
    assert got == value if value is None else math.isclose(got, value)


@pytest.mark.parametrize("text", ["ten", "10%%", "nan", "inf%"])
def test_parse_percent_refuses(text):
    with pytest.raises(ValueError):
        gate.parse_percent(text)


def test_parse_error_cap():
    assert gate.parse_error_cap("1e-4") == 1e-4
    assert gate.parse_error_cap("fp32=1e-4, fp16=1e-2") == {"fp32": 1e-4, "fp16": 1e-2}
    assert gate.parse_error_cap("off") is None
    for bad in ("fp32", "fp32=x", "=1"):
        with pytest.raises(ValueError):
            gate.parse_error_cap(bad)


def test_gate_on_a_real_report_shape():
    """The fields app/pipeline/report.build() writes, as they come back from GET /v1/models/{id}/report."""
    real_row = {"artifact_id": "dc6a5172aafe4c7db765933632652065", "format": "onnx", "precision": "fp32",
                "edge": "torch_export->onnx", "size_bytes": 4544, "load_ms": 1.858, "p50_ms": 0.04771,
                "p99_ms": 2.507, "throughput": 6699.1, "batch_throughput": {"batch": 8, "throughput": 37478.1},
                "benchmark_status": "ok", "validation": "passed", "validation_reason": "…",
                "max_abs_err": 3.7e-08, "deployable": True}
    r = {"model": {"id": "645c02b8", "name": "tiny", "format": "torch_export", "size_bytes": 12106},
         "host": {}, "rows": [real_row], "recommendations": []}
    assert compare_reports(r, r, Thresholds(max_error=1e-4)).passed
