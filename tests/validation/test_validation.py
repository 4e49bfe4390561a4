"""app.pipeline.validation: tolerance profiles, input generation, output comparison and the verdicts of
``validate`` / ``validate_tensors``, on small numpy-backed fake runners (and one real pair:
torch.export vs its ONNX export, when those runners are there)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.pipeline.validation import (
    PROFILES,
    compare,
    make_inputs,
    resolve_tolerance,
    skipped,
    topk_agreement,
    validate,
    validate_tensors,
)
from app.runners.base import IOSpec, Runner, RunnerInfo

# ----------------------------------------------------------------------------- fake runners


class FnRunner(Runner):
    """A Runner backed by a numpy function of the feeds."""

    def __init__(self, fn: Callable[[dict], dict], inputs: list[IOSpec], outputs: list[IOSpec] | None = None,
                 runtime: str = "numpy", precision: str = "fp32"):
        self.fn, self._inputs, self._outputs = fn, inputs, outputs or []
        self.info = RunnerInfo(runtime=runtime, version=np.__version__, precision=precision, threads=1)
        self.calls: list[dict] = []

    def inputs(self) -> list[IOSpec]:
        return list(self._inputs)

    def outputs(self) -> list[IOSpec]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: v.shape for k, v in feeds.items()})
        return self.fn(feeds)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((8, 16)).astype(np.float32), "b1": rng.standard_normal(16).astype(np.float32),
            "w2": rng.standard_normal((16, 10)).astype(np.float32) * 0.5, "b2": np.zeros(10, np.float32)}


def mlp(w: dict[str, np.ndarray], *, out_names=("hidden", "logits"), post=None):
    """x [batch, 8] -> hidden [batch, 16] (relu features), logits [batch, 10]."""

    def fn(feeds):
        x = feeds["x"].astype(np.float32)
        h = np.maximum(x @ w["w1"] + w["b1"], 0).astype(np.float32)
        y = (h @ w["w2"] + w["b2"]).astype(np.float32)
        outs = {out_names[0]: h, out_names[1]: y}
        return {k: post(v) for k, v in outs.items()} if post else outs

    return fn


X = [IOSpec("x", "float32", ["batch", 8])]
OUTS = [IOSpec("hidden", "float32", ["batch", 16]), IOSpec("logits", "float32", ["batch", 10])]


def runner(fn, inputs=X, outputs=OUTS, **kw) -> FnRunner:
    return FnRunner(fn, inputs, outputs, **kw)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) -> float32, by bit manipulation."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def fake_quant(w: np.ndarray) -> np.ndarray:
    """Symmetric per-tensor int8 quantize -> dequantize."""
    s = float(np.abs(w).max()) / 127.0
    return (np.clip(np.round(w / s), -127, 127) * s).astype(np.float32)


def by(report: dict, output: str, input_set: str | None = None) -> list[dict]:
    return [e for e in report["outputs"] if e["output"] == output and input_set in (None, e["input_set"])]


def assert_json(report: dict) -> None:
    json.dumps(report, allow_nan=False)  # reports are stored as JSON: no NaN/Inf, no numpy scalars


# -------------------------------------------------------------------------------- verdicts


def test_identical_runners_pass_with_zero_error():
    w = _weights()
    rep = validate(runner(mlp(w)), runner(mlp(w)), profile="fp32")
    assert rep["status"] == "passed", rep["reason"]
    assert [s["label"] for s in rep["input_sets"]] == ["batch=1", "batch=3"]
    assert [s["shapes"]["x"] for s in rep["input_sets"]] == [[1, 8], [3, 8]]
    assert len(rep["outputs"]) == 4  # 2 sets x 2 outputs
    for e in rep["outputs"]:
        assert e["passed"] and e["max_abs_err"] == 0.0 and e["cosine_similarity"] == pytest.approx(1.0)
        assert e["min_atol_to_pass"] == 0.0 and e["matched_by"] == "name"
    assert rep["worst"]["max_abs_err"] == 0.0
    assert rep["min_tolerance"]["atol"] == 0.0 and rep["min_tolerance"]["rtol"] == 0.0
    assert rep["reference"] == {"runtime": "numpy", "version": np.__version__, "precision": "fp32", "device": "cpu"}
    assert rep["tolerance"]["atol"] == PROFILES["fp32"]["atol"] and rep["seconds"] >= 0
    assert_json(rep)


def test_perturbed_weights_fail_fp32_naming_the_output():
    w = _weights()
    noise = np.random.default_rng(1).standard_normal((16, 10)).astype(np.float32) * 1e-2
    ref, cand = runner(mlp(w)), runner(mlp({**w, "w2": w["w2"] + noise}))
    rep = validate(ref, cand, profile="fp32")
    assert rep["status"] == "failed"
    assert "'logits'" in rep["reason"] and "batch=1" in rep["reason"]
    assert all(e["passed"] for e in by(rep, "hidden"))  # only w2 was touched
    for e in by(rep, "logits"):
        assert not e["passed"] and "elements outside atol" in e["reason"]
        # the injected error, measured directly
        x = make_inputs(X, seed=0)[["batch=1", "batch=3"].index(e["input_set"])][1]
        injected = float(np.abs(mlp(w)(x)["logits"].astype(np.float64) - cand.fn(x)["logits"]).max())
        assert e["max_abs_err"] == pytest.approx(injected)
        assert injected > 1e-3
        rtol = PROFILES["fp32"]["rtol"]
        assert e["min_atol_to_pass"] >= injected - rtol * e["output_scale"]
        assert e["min_atol_to_pass"] >= 1e-3
        i = tuple(e["where"]["index"])
        assert abs(e["where"]["reference"] - e["where"]["candidate"]) == pytest.approx(injected, rel=1e-6)
        assert len(i) == 2
    assert rep["worst"]["output"] == "logits"
    # min_tolerance is what passes: that absolute atol (no scale term) at the profile's rtol
    atol = rep["min_tolerance"]["atol"]
    again = validate(ref, cand, profile="fp32", overrides={"atol": atol * (1 + 1e-9), "atol_scale": 0})
    assert again["status"] == "passed", again["reason"]
    tighter = validate(ref, cand, profile="fp32", overrides={"atol": atol * 0.99, "atol_scale": 0})
    assert tighter["status"] == "failed"
    assert_json(rep)


def test_batch_specialised_candidate_fails_at_the_batch_3_set():
    w = _weights()

    def batch1_only(feeds):
        if feeds["x"].shape[0] != 1:
            raise RuntimeError(f"Got invalid dimensions for input: x, index 0: got {feeds['x'].shape[0]}, expected 1")
        return mlp(w)(feeds)

    cand = runner(batch1_only, inputs=[IOSpec("x", "float32", [1, 8])])
    rep = validate(runner(mlp(w)), cand, profile="fp32")
    assert rep["status"] == "failed"
    assert "candidate failed at input set 'batch=3'" in rep["reason"] and "expected 1" in rep["reason"]
    assert all(e["passed"] for e in rep["outputs"] if e["input_set"] == "batch=1")
    failed = [e for e in rep["outputs"] if not e["passed"]]
    assert len(failed) == 1 and failed[0]["input_set"] == "batch=3" and failed[0]["output"] is None
    assert_json(rep)


def test_bf16_rounded_candidate_fails_fp32_passes_bf16():
    w = _weights()
    cand = runner(mlp(w, post=bf16_round), precision="bf16")
    ref = runner(mlp(w))
    strict = validate(ref, cand, profile="fp32")
    assert strict["status"] == "failed"
    rel = max(e["max_rel_err"] for e in strict["outputs"])
    assert 1e-3 < rel <= 2.0 ** -8 + 1e-9  # round-to-nearest bf16: at most half an ulp, 2^-8 relative
    loose = validate(ref, cand, profile="bf16")
    assert loose["status"] == "passed", loose["reason"]
    assert "candidate computes in bf16 but is checked with profile fp32" in strict["notes"]
    assert loose["notes"] == []


def test_int8_like_candidate_passes_int8_fails_fp32():
    w = _weights()
    q = {k: fake_quant(v) if k.startswith("w") else v for k, v in w.items()}
    cand = runner(mlp(q), precision="int8")
    ref = runner(mlp(w))
    rep = validate(ref, cand, profile="int8", samples={"x": np.random.default_rng(5).standard_normal((64, 8))})
    assert rep["status"] == "passed", rep["reason"]
    for e in rep["outputs"]:
        assert e["cosine_similarity"] >= 0.99
    logits = by(rep, "logits")
    assert all(e["top1_agreement"] >= 0.9 for e in logits)
    assert all(e["top5_agreement"] is not None for e in logits)  # C = 10 > 5
    assert "cosine" in logits[0]["reason"] and "top-1" in logits[0]["reason"]
    assert rep["min_tolerance"]["min_cosine"] >= 0.99
    assert validate(ref, cand, profile="fp32")["status"] == "failed"
    # and int8 is not a rubber stamp: a wrong model fails it on cosine / top-1
    wrong = runner(mlp(_weights(seed=7)))
    bad = validate(ref, wrong, profile="int8")
    assert bad["status"] == "failed" and "cosine similarity" in bad["reason"]


def test_top1_and_top5_agreement_on_a_known_example():
    ref = np.array([[1, 2, 3], [3, 2, 1], [0, 5, 1], [2, 1, 0]], np.float32)
    cand = np.array([[1, 2, 3], [1, 2, 3], [0, 5, 1], [0, 1, 2]], np.float32)
    assert topk_agreement(ref, cand, 1) == 0.5
    [e] = compare({"p": ref}, {"p": cand}, "fp32")
    assert e["top1_agreement"] == 0.5 and e["top5_agreement"] is None  # C = 3: top-5 meaningless
    r = np.arange(8, dtype=np.float32)[None, :]  # top-5 {7,6,5,4,3}
    c = r.copy()
    c[0, [7, 0]] = c[0, [0, 7]]  # swap the best and the worst: top-5 {0,6,5,4,3}
    assert topk_agreement(r, c, 1) == 0.0
    assert topk_agreement(r, c, 5) == pytest.approx(4 / 5)
    # [N, T, C]: classes on the last dim, rows are N*T
    seq = np.zeros((2, 3, 4))
    seq[..., 1] = 1
    cs = seq.copy()
    cs[0, 0, 2] = 5
    assert topk_agreement(seq, cs, 1) == pytest.approx(5 / 6)
    # not classifier-shaped: 1-D and 4-D outputs have no top-k
    [v] = compare({"v": np.ones(5)}, {"v": np.ones(5)}, "fp32")
    assert v["top1_agreement"] is None


# ---------------------------------------------------------------------------------- inputs


def test_integer_bool_and_float_inputs_are_valid():
    specs = [IOSpec("ids", "int64", ["batch", "seq"]), IOSpec("mask", "bool", ["batch", "seq"]),
             IOSpec("pix", "uint8", ["batch", 4, 4, 3]), IOSpec("t", "float16", []),
             IOSpec("type_ids", "int32", ["batch", "seq"])]
    sets = make_inputs(specs, seed=3)
    assert [label for label, _ in sets] == ["batch=1", "batch=3"]
    for (_, feeds), b in zip(sets, (1, 3), strict=True):
        ids = feeds["ids"]
        assert ids.dtype == np.int64 and ids.shape == (b, 16)  # seq: the fixed moderate size
        assert ids.min() >= 0 and ids.max() < 16
        assert feeds["type_ids"].dtype == np.int32 and feeds["type_ids"].max() < 16
        assert feeds["mask"].dtype == np.bool_ and feeds["mask"].shape == (b, 16)
        assert feeds["pix"].dtype == np.uint8 and feeds["pix"].shape == (b, 4, 4, 3)
        assert feeds["t"].dtype == np.float16 and feeds["t"].shape == ()
    big = make_inputs([IOSpec("pix", "uint8", [4096])], seed=0)[0][1]["pix"]
    assert big.min() == 0 and big.max() == 255
    # seeded, and the sets differ from each other
    again = make_inputs(specs, seed=3)
    assert all(np.array_equal(a[1][k], b[1][k]) for a, b in zip(sets, again, strict=True) for k in a[1])
    assert not np.array_equal(make_inputs(specs, seed=4)[0][1]["ids"], sets[0][1]["ids"])


def test_dynamic_dim0_varies_others_fixed_and_named_consistently():
    specs = [IOSpec("a", "float32", [None, "seq", 2]), IOSpec("b", "float32", ["seq"]),
             IOSpec("c", "float32", [5, None, "k"])]
    sets = make_inputs(specs, dim_values=(1, 3, 3))
    assert len(sets) == 2  # duplicates dropped
    for _, f in sets:
        # "seq" is b's dim 0, so it varies as the batch - in a as well; only a dynamic dim 0 is a batch
        assert f["a"].shape[1] == f["b"].shape[0] == f["a"].shape[0]
        assert f["c"].shape == (5, 16, 16)  # c's batch is fixed: its other dynamic dims get a moderate size
    assert [f["b"].shape[0] for _, f in sets] == [1, 3]
    static = make_inputs([IOSpec("x", "float32", [2, 3])])
    assert [s[0] for s in static] == ["static"] and static[0][1]["x"].shape == (2, 3)
    assert static[0][1]["x"].dtype == np.float32
    assert abs(float(make_inputs([IOSpec("x", "float32", [4096])])[0][1]["x"].std()) - 1) < 0.1  # N(0, 1)
    bf = make_inputs([IOSpec("x", "bfloat16", [4])])[0][1]["x"]
    assert bf.dtype.name == "bfloat16"
    with pytest.raises(ValueError, match="'s'.*dtype"):
        make_inputs([IOSpec("s", "object", [1])])


def test_samples_come_first_and_are_validated():
    specs = [IOSpec("x", "float32", ["batch", 8]), IOSpec("ids", "int64", ["batch"])]
    x = np.arange(16, dtype=np.float64).reshape(2, 8)
    sets = make_inputs(specs, samples={"x": x, "ids": np.array([1, 2])})
    assert [s[0] for s in sets] == ["samples", "batch=1", "batch=3"]
    assert sets[0][1]["x"].dtype == np.float32 and np.array_equal(sets[0][1]["x"], x)
    with pytest.raises(ValueError, match=r"missing input\(s\) \['ids'\]"):
        make_inputs(specs, samples={"x": x})
    with pytest.raises(ValueError, match="unknown name.*'y'"):
        make_inputs(specs, samples={"x": x, "ids": np.array([1, 2]), "y": x})
    with pytest.raises(ValueError, match="sample 'x' has shape \\[2, 7\\]"):
        make_inputs(specs, samples={"x": x[:, :7], "ids": np.array([1, 2])})
    with pytest.raises(ValueError, match="sample 'ids' has dtype float64"):
        make_inputs(specs, samples={"x": x, "ids": np.array([1.5, 2.0])})
    w = _weights()
    rep = validate(runner(mlp(w)), runner(mlp(w)), profile="fp32", samples={"x": x})
    assert [s["label"] for s in rep["input_sets"]] == ["samples", "batch=1", "batch=3"]
    assert rep["input_sets"][0]["shapes"] == {"x": [2, 8]} and rep["status"] == "passed"


# ------------------------------------------------------------------------------- matching


def test_outputs_in_swapped_order_are_matched_by_name():
    w = _weights()

    def swapped(feeds):
        o = mlp(w)(feeds)
        return {"logits": o["logits"], "hidden": o["hidden"]}

    rep = validate(runner(mlp(w)), runner(swapped, outputs=OUTS[::-1]), profile="exact")
    assert rep["status"] == "passed", rep["reason"]
    assert all(e["matched_by"] == "name" and e["candidate_output"] == e["output"] for e in rep["outputs"])
    # no shared names: by position, said so
    renamed = runner(mlp(w, out_names=("output_0", "output_1")))
    rep = validate(runner(mlp(w)), renamed, profile="fp32")
    assert rep["status"] == "passed"
    assert [(e["output"], e["candidate_output"], e["matched_by"]) for e in rep["outputs"][:2]] == \
        [("hidden", "output_0", "position"), ("logits", "output_1", "position")]
    assert "matched by position" in rep["outputs"][0]["reason"]


def test_candidate_input_names_mapped_by_position():
    w = _weights()
    cand = runner(lambda f: mlp(w)({"x": f["input_0"]}), inputs=[IOSpec("input_0", "float32", [None, 8])])
    rep = validate(runner(mlp(w)), cand, profile="fp32")
    assert rep["status"] == "passed"
    assert any("mapped by position x->input_0" in n for n in rep["notes"])
    assert cand.calls == [{"input_0": (1, 8)}, {"input_0": (3, 8)}]


def test_shape_nan_missing_and_integer_outputs():
    ref = {"y": np.ones((2, 3), np.float32), "idx": np.array([1, 2], np.int64)}
    [s, i] = compare(ref, {"y": np.ones((3, 2), np.float32), "idx": np.array([1, 2], np.int64)}, "fp32")
    assert not s["passed"] and "shape mismatch: reference [2, 3] vs candidate [3, 2]" in s["reason"]
    assert i["passed"] and i["reason"] == "integer/bool values equal"
    nan = np.ones((2, 3), np.float32)
    nan[1, 2] = np.nan
    [n, i2] = compare(ref, {"y": nan, "idx": np.array([1, 3], np.int64)}, "int8")
    assert not n["passed"] and "NaN/Inf" in n["reason"] and n["where"]["index"] == (1, 2)
    assert n["where"]["candidate"] == "nan"
    assert not i2["passed"] and "exactly" in i2["reason"] and i2["max_abs_err"] == 1.0  # even under int8
    [m, _] = compare(ref, {"idx": np.array([1, 2])}, "fp32")
    assert not m["passed"] and m["matched_by"] == "missing" and "missing from the candidate" in m["reason"]
    # fp16 overflow: Inf where the reference is finite
    big = {"y": np.array([70000.0, 1.0], np.float32)}
    with np.errstate(over="ignore"):
        half = big["y"].astype(np.float16)
    [o] = compare(big, {"y": half}, "fp16")
    assert not o["passed"] and "where the reference is finite" in o["reason"]
    # NaN in both at the same place is agreement
    [b] = compare({"y": nan}, {"y": nan.copy()}, "fp32")
    assert b["passed"]


def test_zero_comparable_outputs_is_a_failure():
    rep = validate(runner(lambda f: {}, outputs=[]), runner(lambda f: {}, outputs=[]), profile="fp32")
    assert rep["status"] == "failed" and "no outputs" in rep["reason"]
    rep = validate(runner(lambda f: {"y": f["x"]}), runner(lambda f: {"z": f["x"]}, outputs=[]), profile="fp32")
    assert rep["status"] == "passed" and rep["outputs"][0]["matched_by"] == "position"
    rep = validate(runner(lambda f: {"y": f["x"]}), runner(lambda f: {}), profile="fp32")
    assert rep["status"] == "failed" and "missing from the candidate" in rep["reason"]


# ----------------------------------------------------------------------------- tolerances


def test_overrides_per_output_and_unknown_keys():
    w = _weights()
    noise = np.random.default_rng(1).standard_normal((16, 10)).astype(np.float32) * 1e-2
    ref, cand = runner(mlp(w)), runner(mlp({**w, "w2": w["w2"] + noise}))
    assert validate(ref, cand, profile="fp32")["status"] == "failed"
    ok = validate(ref, cand, profile="fp32", overrides={"outputs": {"logits": {"atol": 0.5}}})
    assert ok["status"] == "passed", ok["reason"]
    assert ok["tolerance"]["outputs"] == {"logits": {"atol": 0.5}}
    assert all(e["atol_effective"] == 0.5 for e in by(ok, "logits"))
    assert all(e["atol_effective"] < 0.01 for e in by(ok, "hidden"))  # the others keep the profile's
    # the override goes to that output only: loosening "hidden" does not pass "logits"
    assert validate(ref, cand, profile="fp32", overrides={"outputs": {"hidden": {"atol": 0.5}}})["status"] == "failed"
    tol = resolve_tolerance("int8", {"min_cosine": 0.5, "min_top1": None, "outputs": {"a": {"rtol": 0.1}}})
    assert tol.for_output("a") == {**PROFILES["int8"], "min_cosine": 0.5, "min_top1": None, "rtol": 0.1}
    with pytest.raises(ValueError, match=r"unknown tolerance key\(s\) \['atoll', 'cos'\]"):
        resolve_tolerance("fp32", {"atoll": 1, "cos": 0.9})
    with pytest.raises(ValueError, match="output 'logits'.*'max_err'"):
        resolve_tolerance("fp32", {"outputs": {"logits": {"max_err": 1}}})
    with pytest.raises(ValueError, match="atol must be >= 0"):
        resolve_tolerance("fp32", {"atol": -1})
    with pytest.raises(ValueError, match="unknown tolerance profile 'fp8'"):
        resolve_tolerance("fp8")
    with pytest.raises(ValueError, match=r"unknown output\(s\) \['logit'\]"):
        validate(ref, cand, profile="fp32", overrides={"outputs": {"logit": {"atol": 1}}})


def test_profiles_have_the_documented_numbers():
    assert set(PROFILES) == {"fp32", "fp16", "bf16", "int8", "exact"}
    assert PROFILES["exact"]["atol"] == PROFILES["exact"]["rtol"] == 0
    # ordered loosest-last: fp32 < fp16 < bf16 on every elementwise number
    for k in ("atol", "rtol", "atol_scale"):
        assert PROFILES["fp32"][k] < PROFILES["fp16"][k] < PROFILES["bf16"][k]
    assert PROFILES["int8"]["min_cosine"] == 0.99 and PROFILES["int8"]["min_top1"] == 0.9
    # scale-aware atol: a 1e3-scale output with a 1e-3 error passes fp16 though 1e-3 > atol
    big = np.linspace(-1000, 1000, 101).astype(np.float32)
    [e] = compare({"y": big}, {"y": big + np.float32(0.5)}, "fp16")
    assert e["passed"] and e["atol_effective"] == pytest.approx(5.0)
    # ... and the exact profile is bit-exact
    [x] = compare({"y": big}, {"y": np.nextafter(big, np.inf)}, "exact")
    assert not x["passed"] and "differ bitwise" in x["reason"]


# ---------------------------------------------------------------------------- weights only


def test_validate_tensors_bits_and_names():
    rng = np.random.default_rng(0)
    ref = {"fc.weight": rng.standard_normal((4, 3)).astype(np.float32), "fc.bias": np.zeros(4, np.float32),
           "n": np.array(7, np.int64), "nan": np.array([np.nan, 1.0], np.float32)}
    same = {k: v.copy() for k, v in ref.items()}
    ok = validate_tensors(ref, same)
    assert ok["status"] == "passed" and ok["profile"] == "exact" and len(ok["outputs"]) == 4
    assert_json(ok)
    flipped = {k: v.copy() for k, v in ref.items()}
    flipped["fc.weight"].view(np.uint32)[2, 1] ^= 1  # lowest mantissa bit
    bad = validate_tensors(ref, flipped)
    assert bad["status"] == "failed" and "'fc.weight'" in bad["reason"] and "1 of 12 elements" in bad["reason"]
    [e] = [e for e in bad["outputs"] if not e["passed"]]
    assert e["where"]["index"] == (2, 1) and 0 < e["max_abs_err"] < 1e-6
    assert_json(bad)
    missing = {k: v for k, v in same.items() if k != "fc.bias"}
    missing["extra.weight"] = np.ones(1, np.float32)
    m = validate_tensors(ref, missing)
    assert m["status"] == "failed" and m["missing"] == ["fc.bias"] and m["extra"] == ["extra.weight"]
    assert "missing from the candidate: ['fc.bias']" in m["reason"]
    other_nan = {**same, "nan": np.array([np.float32(np.nan)], np.float32).view(np.uint32) | np.uint32(1)}
    other_nan["nan"] = np.concatenate([other_nan["nan"].view(np.float32), np.ones(1, np.float32)])
    assert validate_tensors(ref, other_nan)["status"] == "failed"  # a different NaN payload is a different file
    dt = validate_tensors(ref, {**same, "fc.bias": same["fc.bias"].astype(np.float16)})
    assert dt["status"] == "failed" and "dtype mismatch" in dt["reason"]
    assert validate_tensors({}, {})["status"] == "failed"


def test_skipped_report():
    rep = skipped("Core ML prediction needs macOS: waiting for an apple worker", profile="fp32",
                  candidate={"runtime": "coreml", "version": None, "precision": "fp16"})
    assert rep["status"] == "skipped" and rep["reason"].startswith("Core ML prediction needs macOS")
    assert rep["outputs"] == [] and rep["candidate"]["runtime"] == "coreml"
    assert_json(rep)


# ------------------------------------------------------------------------------- end to end


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(f"app.runners.{m}") is not None for m in modules)


def test_torch_export_vs_its_onnx_export_passes_fp32(tmp_path: Path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from app.runners import open_runner
    from tests import models

    ep = torch.export.export(models.tiny_module(), (torch.randn(2, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(ep, tmp_path / "tiny.pt2")
    torch.onnx.export(ep, (torch.randn(2, 8),), str(tmp_path / "tiny.onnx"), dynamo=True, verbose=False)
    ref = open_runner("torch_export", tmp_path, ["tiny.pt2"], "tiny.pt2")
    cand = open_runner("onnx", tmp_path, ["tiny.onnx"], "tiny.onnx")
    rep = validate(ref, cand, profile="fp32")
    assert rep["status"] == "passed", rep["reason"]
    assert rep["reference"]["runtime"] == "torch" and rep["candidate"]["runtime"] == "onnxruntime"
    assert rep["outputs"] and all(e["max_abs_err"] < 1e-5 for e in rep["outputs"])
    # the same pair with the ONNX model's weights broken fails, naming the output
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(tmp_path / "tiny.onnx"))
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(1e-2), init.name))
    onnx.save(m, str(tmp_path / "broken.onnx"))
    broken = validate(ref, open_runner("onnx", tmp_path, ["broken.onnx"], "broken.onnx"), profile="fp32")
    assert broken["status"] == "failed" and rep["outputs"][0]["output"] in broken["reason"]
    assert_json(rep)


def test_candidate_extra_outputs_noted_and_unavailable_runner_skips():
    from app.runners.base import RunnerUnavailable

    w = _weights()

    def more(feeds):
        return {**mlp(w)(feeds), "aux": np.zeros(1, np.float32)}

    rep = validate(runner(mlp(w)), runner(more), profile="fp32")
    assert rep["status"] == "passed" and rep["notes"] == ["candidate has extra output(s) not compared: ['aux']"]

    def unavailable(feeds):
        raise RunnerUnavailable("TensorRT needs an NVIDIA GPU")

    rep = validate(runner(mlp(w)), runner(unavailable), profile="fp16")
    assert rep["status"] == "skipped" and "TensorRT needs an NVIDIA GPU" in rep["reason"]


def test_reference_that_rejects_generated_inputs_is_skipped_not_passed():
    """Random inputs are only a guess: when the model itself rejects them the verdict is
    'skipped' with what to do, and the sets it did accept still decide."""
    from app.pipeline.validation import validate

    def picky(feeds):
        if feeds["x"].shape[0] != 1:
            raise ValueError("this model only takes batch 1")
        return mlp(_weights())(feeds)

    every = validate(runner(lambda f: (_ for _ in ()).throw(ValueError("bad input"))), runner(mlp(_weights())),
                     profile="fp32")
    assert every["status"] == "skipped" and "upload sample inputs" in every["reason"]
    partial = validate(runner(picky), runner(mlp(_weights())), profile="fp32")
    assert partial["status"] == "passed" and "over 1 input set(s)" in partial["reason"]
    assert any("invalid for the model itself" in n for n in partial["notes"])
    wrong = validate(runner(picky), runner(mlp(_weights(seed=1))), profile="fp32")
    assert wrong["status"] == "failed"
