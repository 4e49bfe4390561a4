"""app.pipeline.benchmark: measuring method, stop rules, per-sample throughput, memory, host fingerprint.

Fake runners (numpy matmuls, sleeps) check the method; the ONNX Runtime runner, where its module
exists, checks it end to end. Windows are kept small so the whole file runs in seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import app.pipeline.benchmark as bm
from app import host
from app.pipeline.benchmark import benchmark, default_inputs, fingerprint, input_shape
from app.runners.base import IOSpec, Runner, RunnerInfo

FAST = {"warmup": 2, "window": 5, "min_windows": 3, "max_windows": 8, "max_seconds": 10}


class MatmulRunner(Runner):
    """x[batch, n] @ w[n, n]; optionally pinned to a batch, sleeping per call, or holding memory."""

    def __init__(self, n: int, *, fixed_batch: int | None = None, sleep_s: float = 0.0, alloc_mib: int = 0):
        self.n, self.fixed, self.sleep_s = n, fixed_batch, sleep_s
        self.w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        self.ballast = np.ones(alloc_mib * 1024 * 1024 // 8) if alloc_mib else None  # touched pages
        self.info = RunnerInfo(runtime="fake", version="0", precision="fp32", threads=1)
        self.calls = 0
        self.closed = False

    def inputs(self) -> list[IOSpec]:
        return [IOSpec("x", "float32", [self.fixed if self.fixed else "batch", self.n])]

    def outputs(self) -> list[IOSpec]:
        return [IOSpec("y", "float32", [self.fixed if self.fixed else "batch", self.n])]

    def run(self, feeds):
        self.calls += 1
        x = feeds["x"]
        if self.fixed and x.shape[0] != self.fixed:
            raise ValueError(f"batch must be {self.fixed}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"y": x @ self.w}

    def close(self):
        self.closed = True


class AlternatingRunner(MatmulRunner):
    """Every other call is 100x slower: with an odd window, consecutive window medians alternate
    between the fast and the slow latency, whatever the offset, so it never settles."""

    def run(self, feeds):
        self.calls += 1
        time.sleep(0.0002 if self.calls % 2 else 0.02)
        return {"y": feeds["x"]}


class FakeClock:
    """Stands in for app.pipeline.benchmark's clock: time moves only when a ClockedRunner runs."""

    def __init__(self):
        self.t = 10**12

    def __call__(self) -> int:
        return self.t


class ClockedRunner(MatmulRunner):
    """Each call 'takes' latencies_ms[call % len] on the fake clock, exactly."""

    def __init__(self, clock: FakeClock, latencies_ms, **kw):
        super().__init__(4, **kw)
        self.clock, self.latencies = clock, list(latencies_ms)

    def run(self, feeds):
        self.clock.t += int(self.latencies[self.calls % len(self.latencies)] * 1e6)
        self.calls += 1
        return {"y": feeds["x"]}


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(bm, "_clock", c)
    return c


def test_exact_method_on_a_fake_clock(clock):
    runner = ClockedRunner(clock, [2.0])
    rep = benchmark(lambda: runner, batch_sizes=(1, 8), warmup=4, window=10, min_windows=3, max_windows=30)
    for bs in (1, 8):
        r = rep["batch_sizes"][str(bs)]
        assert (r["stop"], r["windows"], r["iterations"]) == ("stable", 3, 30)
        assert r["latency_ms"] == {"p50": 2.0, "p90": 2.0, "p99": 2.0, "mean": 2.0, "min": 2.0, "max": 2.0,
                                   "std": 0.0}
        assert r["throughput_samples_per_s"] == bs * 500.0  # per sample: batch / latency
    assert rep["first_inference_ms"] == 2.0
    # first inference + (warm-up + 30 timed) at batch 1 + (probe + warm-up + 30 timed) at batch 8
    assert runner.calls == 1 + 34 + 35


def test_exact_unstable_and_time_budget_on_a_fake_clock(clock):
    rep = benchmark(lambda: ClockedRunner(clock, [1.0, 10.0]), batch_sizes=(1,), warmup=0, window=5,
                    min_windows=3, max_windows=7)
    r = rep["batch_sizes"]["1"]
    assert (r["stop"], r["windows"], r["iterations"]) == ("unstable: hit max windows", 7, 35)
    assert set(r["window_p50_ms"]) == {1.0, 10.0}

    # 1 s shared by two batch sizes: ~0.5 s each at 10 ms a call -> ~50 calls each, then out of time
    rep = benchmark(lambda: ClockedRunner(clock, [10.0]), batch_sizes=(1, 8), warmup=0, window=1000,
                    max_windows=100, max_seconds=1.0)
    for bs in ("1", "8"):
        r = rep["batch_sizes"][bs]
        assert r["stop"] == "unstable: hit max time" and 45 <= r["iterations"] <= 55 and r["windows"] == 0
    # stability=0 never stops early
    r = benchmark(lambda: ClockedRunner(clock, [3.0]), batch_sizes=(1,), warmup=0, window=2, min_windows=1,
                  max_windows=9, stability=0)["batch_sizes"]["1"]
    assert (r["stop"], r["windows"]) == ("unstable: hit max windows", 9)


def test_bigger_matmul_is_slower():
    small = benchmark(lambda: MatmulRunner(16), batch_sizes=(8,), **FAST)
    big = benchmark(lambda: MatmulRunner(768), batch_sizes=(8,), **FAST)
    assert small["batch_sizes"]["8"]["status"] == "ok" and big["batch_sizes"]["8"]["status"] == "ok"
    assert big["batch_sizes"]["8"]["latency_ms"]["p50"] > 2 * small["batch_sizes"]["8"]["latency_ms"]["p50"]
    assert big["batch_sizes"]["8"]["input_shapes"] == {"x": [8, 768]}


def test_throughput_is_per_sample():
    rep = benchmark(lambda: MatmulRunner(8, sleep_s=0.004), batch_sizes=(1, 8), **FAST)
    for bs in (1, 8):
        r = rep["batch_sizes"][str(bs)]
        mean_s = r["latency_ms"]["mean"] / 1000
        assert r["throughput_samples_per_s"] == pytest.approx(bs / mean_s, rel=1e-3)
    # ~the same call time at both sizes -> batch 8 moves ~8x the samples per second
    t1, t8 = rep["batch_sizes"]["1"]["throughput_samples_per_s"], rep["batch_sizes"]["8"]["throughput_samples_per_s"]
    assert 2 * t1 < t8 < 32 * t1  # loose: a busy host stretches sleeps (exact: fake-clock test)
    assert t8 < 8 / 0.004  # a call can't beat its 4 ms sleep


def test_fixed_batch_skips_other_sizes():
    runner = MatmulRunner(8, fixed_batch=1)
    rep = benchmark(lambda: runner, batch_sizes=(1, 8), **FAST)
    assert rep["fixed_batch"] == 1
    assert rep["batch_sizes"]["1"]["possible"] is True and rep["batch_sizes"]["1"]["status"] == "ok"
    b8 = rep["batch_sizes"]["8"]
    assert b8["possible"] is False and b8["status"] == "skipped: input batch dim is fixed at 1"
    assert "latency_ms" not in b8
    assert runner.closed


def test_model_pinned_to_batch_4_runs_its_first_inference_at_4():
    rep = benchmark(lambda: MatmulRunner(8, fixed_batch=4), batch_sizes=(1, 4), **FAST)
    assert rep["first_inference_batch"] == 4
    assert rep["batch_sizes"]["1"]["status"] == "skipped: input batch dim is fixed at 4"
    assert rep["batch_sizes"]["4"]["status"] == "ok"


def test_batch_the_runner_rejects_is_failed_not_fatal():
    class Picky(MatmulRunner):
        def run(self, feeds):
            if feeds["x"].shape[0] > 4:
                raise RuntimeError("Reshape: cannot reshape\nmore detail")
            return super().run(feeds)

    rep = benchmark(lambda: Picky(8), batch_sizes=(1, 8, 2), **FAST)
    assert rep["batch_sizes"]["8"] == {"batch_size": 8, "input_shapes": {"x": [8, 8]}, "possible": False,
                                       "status": "failed: RuntimeError: Reshape: cannot reshape"}
    assert rep["batch_sizes"]["1"]["status"] == rep["batch_sizes"]["2"]["status"] == "ok"


def test_constant_sleep_runner_stops_stable_after_min_windows():
    runner = MatmulRunner(8, sleep_s=0.002)
    rep = benchmark(lambda: runner, batch_sizes=(1,), warmup=2, window=9, min_windows=3, max_windows=20,
                    stability=0.1)
    r = rep["batch_sizes"]["1"]
    assert r["stop"] == "stable"
    assert 3 <= r["windows"] < 20, r["window_p50_ms"]  # 3 unless the host is busy (exactly 3: fake-clock test)
    assert r["iterations"] == 9 * r["windows"] and len(r["window_p50_ms"]) == r["windows"]
    assert runner.calls == 1 + 2 + r["iterations"]  # first inference, warm-up, timed
    assert r["latency_ms"]["min"] >= 2 and rep["first_inference_ms"] >= 2 and rep["load_ms"] >= 0


def test_alternating_sleep_runner_hits_max_windows_unstable():
    rep = benchmark(lambda: AlternatingRunner(4), batch_sizes=(1,), warmup=1, window=5, min_windows=2,
                    max_windows=6, stability=0.05)
    r = rep["batch_sizes"]["1"]
    assert r["stop"] == "unstable: hit max windows"
    assert r["windows"] == 6 and r["iterations"] == 30
    fast, slow = min(r["window_p50_ms"]), max(r["window_p50_ms"])
    assert slow > 3 * fast


def test_time_budget_stops_unstable():
    rep = benchmark(lambda: AlternatingRunner(4), batch_sizes=(1, 8), warmup=0, window=5, min_windows=2,
                    max_windows=1000, stability=0, max_seconds=0.3)
    for bs in ("1", "8"):
        assert rep["batch_sizes"][bs]["stop"] == "unstable: hit max time"
        assert rep["batch_sizes"][bs]["iterations"] >= 1
    assert rep["total_s"] < 3


def test_repeated_runs_agree():
    def once():
        return benchmark(lambda: MatmulRunner(256, sleep_s=0.002), batch_sizes=(4,), warmup=3, window=15,
                         min_windows=3, max_windows=10)["batch_sizes"]["4"]["latency_ms"]

    a, b = once(), once()
    assert a["min"] <= b["p50"] <= a["p99"] or b["p50"] == pytest.approx(a["p50"], rel=0.2), (a, b)


def test_rss_growth_of_a_200mib_load():
    rep = benchmark(lambda: MatmulRunner(8, alloc_mib=200), batch_sizes=(1,), **FAST)
    mem = rep["memory"]
    assert mem["load_peak_rss_growth_mib"] >= 150, mem
    assert mem["peak_rss_growth_mib"] >= mem["load_peak_rss_growth_mib"]
    assert "upper bound" in mem["note"] or mem["hwm_reset"] is True
    small = benchmark(lambda: MatmulRunner(8), batch_sizes=(1,), **FAST)["memory"]
    if small["hwm_reset"]:  # with the reset, the 200 MiB above doesn't leak into the next reading
        assert small["load_peak_rss_growth_mib"] < 50, small


def test_rss_without_hwm_reset_is_an_upper_bound(monkeypatch):
    monkeypatch.setattr(bm, "_reset_hwm", lambda: False)
    mem = benchmark(lambda: MatmulRunner(8), batch_sizes=(1,), **FAST)["memory"]
    assert mem["hwm_reset"] is False and "upper bound" in mem["note"]
    assert mem["peak_rss_growth_mib"] >= 0


def test_report_is_json_and_carries_runner_info():
    rep = benchmark(lambda: MatmulRunner(8), batch_sizes=(1,), **FAST)
    assert json.loads(json.dumps(rep)) == rep
    assert rep["runner"] == {"runtime": "fake", "version": "0", "precision": "fp32", "threads": 1, "device": "cpu",
                             "details": {}}
    assert rep["threads"] == 1
    assert rep["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert rep["fingerprint"]["logical_cores"] >= 1
    r = rep["batch_sizes"]["1"]
    lat = r["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_default_inputs_and_inputs_for():
    specs = [IOSpec("ids", "int64", [None, "seq"]), IOSpec("img", "float16", ["n", 3, None]),
             IOSpec("mask", "bool", [None]), IOSpec("pos", "int32", [1, "seq"]), IOSpec("t", "float32", [])]
    feeds = default_inputs(specs, 8)
    assert feeds["ids"].shape == (8, 16) and feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 16
    assert feeds["img"].shape == (8, 3, 16) and feeds["img"].dtype == np.float16
    assert feeds["mask"].dtype == np.bool_ and feeds["mask"].shape == (8,)
    assert feeds["pos"].shape == (1, 16)  # a fixed dim 0 is not the batch; seq is 16
    assert feeds["t"].shape == ()
    assert input_shape(IOSpec("x", "float32", [-1, 4]), 2) == [2, 4]
    np.testing.assert_array_equal(default_inputs(specs, 8, seed=3)["img"], default_inputs(specs, 8, seed=3)["img"])

    seen = []

    def inputs_for(bs):
        seen.append(bs)
        return {"x": np.zeros((bs, 8), np.float32)}

    rep = benchmark(lambda: MatmulRunner(8), batch_sizes=(2, 3), inputs_for=inputs_for, **FAST)
    assert seen == [1, 2, 3]  # first inference, then once per batch size (feeds reused)
    assert rep["settings"]["inputs"] == "caller"
    assert rep["batch_sizes"]["3"]["input_shapes"] == {"x": [3, 8]}


def test_fingerprint_is_cheap_and_has_cpu_and_cores():
    fingerprint()  # warm (the nvidia-smi query, where there is one, is cached)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fp = fingerprint()
        times.append(time.perf_counter() - t0)
    assert sorted(times)[1] < 0.05, times
    assert fp["logical_cores"] >= 1 and fp["affinity_cores"] >= 1
    assert fp["cpu"]["model"]
    assert isinstance(fp["cpu"]["isa"], list) and isinstance(fp["gpus"], list)
    assert fp["packages"]["numpy"] == np.__version__
    assert fp["python"] and fp["kernel"] and fp["memory_total_mib"] > 0
    if Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "avx2" in fp["cpu"]["isa"]
    json.dumps(fp)


# ---- a real runtime ---------------------------------------------------------------------------

def _mlp(path: Path, d_in: int, hidden: int, layers: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev, width = [], [], "x", d_in
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        prev, width = f"h{i}", hidden
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def test_onnxruntime_small_vs_big_mlp(tmp_path):
    from app.runners import open_runner

    _mlp(tmp_path / "small.onnx", 16, 32, 2)
    _mlp(tmp_path / "big.onnx", 256, 1024, 4)

    def run(name):
        def load():
            return open_runner("onnx", tmp_path, [name], name, threads=1)
        return benchmark(load, batch_sizes=(1, 8), warmup=3, window=10, min_windows=3, max_windows=10, max_seconds=10)

    small, big = run("small.onnx"), run("big.onnx")
    for bs in ("1", "8"):
        assert small["batch_sizes"][bs]["status"] == big["batch_sizes"][bs]["status"] == "ok"
        assert big["batch_sizes"][bs]["latency_ms"]["p50"] > 2 * small["batch_sizes"][bs]["latency_ms"]["p50"]
    assert big["runner"]["runtime"] == "onnxruntime" and big["runner"]["threads"] == 1
    assert big["runner"]["precision"] == "fp32"
    assert big["batch_sizes"]["8"]["input_shapes"] == {"x": [8, 256]}
    assert big["load_ms"] > 0 and big["first_inference_ms"] > 0


def test_fingerprint_reads_gpus_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559, 570.86.15'\necho 'NVIDIA H100 80GB HBM3, 81559, 570.86.15'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    host._gpus.cache_clear()
    try:
        fp = fingerprint()
        assert fp["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "driver": "570.86.15"}] * 2
        assert "gpu_error" not in fp
        smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
        host._gpus.cache_clear()
        fp = fingerprint()
        assert fp["gpus"] == [] and fp["gpu_error"].startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")
    finally:
        host._gpus.cache_clear()


def test_many_batch_sizes_stay_within_max_seconds():
    """Sixteen batch sizes of a model whose call takes 50 ms, 0.5 s to measure them all: once the
    budget is spent the rest are skipped, saying so, instead of each still running its probe,
    warm-up and a window (~50 calls, ~2.5 s, before). Counted in calls: a busy host only makes
    each call slower, so fewer fit."""
    runner = MatmulRunner(4, sleep_s=0.05)
    rep = benchmark(lambda: runner, batch_sizes=list(range(1, 17)), warmup=2, window=3, min_windows=1,
                    max_windows=2, max_seconds=0.5)
    skipped = [b for b, e in rep["batch_sizes"].items() if e["status"].startswith("skipped: max_seconds")]
    assert runner.calls <= 20, runner.calls  # 0.5 s of 50 ms calls, and the first size's first inference
    assert skipped and int(skipped[0]) > 1 and rep["batch_sizes"]["1"]["status"] == "ok"
