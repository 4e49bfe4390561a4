"""Dynamic batcher: merged results equal single calls, batch limits, grouping by signature,
errors, cancellation, draining, and the per-request overhead of the no-contention path."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.serving.batcher import BatchAlignmentError, Batcher, BatchStats

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def executor():
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher-test")
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


_W = np.arange(12, dtype=np.int64).reshape(3, 4) - 5


def numpy_model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deterministic and row-independent; exact (elementwise float, integer matmul)."""
    a, b = feeds["a"], feeds["b"]
    return {"s": a * np.float32(2.5) + b[:, :1].astype(np.float32), "p": b @ _W}


def make_request(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "a": rng.standard_normal((n, 4)).astype(np.float32),
        "b": rng.integers(-100, 100, size=(n, 3), dtype=np.int64),
    }


class Recorder:
    def __init__(self) -> None:
        self.stats: list[BatchStats] = []

    def __call__(self, s: BatchStats) -> None:
        self.stats.append(s)


async def test_concurrent_numpy_matches_single_calls(executor):
    rng = np.random.default_rng(0)
    reqs = [make_request(rng, int(n)) for n in rng.integers(1, 4, size=40)]
    expected = [numpy_model(r) for r in reqs]
    rec = Recorder()
    b = Batcher(numpy_model, max_batch_size=8, max_queue_delay_ms=5, executor=executor, on_batch=rec)
    results = await asyncio.gather(*(b.submit(r) for r in reqs))
    await b.close()
    for req, got, want in zip(reqs, results, expected, strict=True):
        assert set(got) == {"s", "p"}
        for k in want:
            assert got[k].shape == want[k].shape == (req["a"].shape[0],) + want[k].shape[1:]
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k])
    assert sum(s.requests for s in rec.stats) == len(reqs)
    assert sum(s.size for s in rec.stats) == sum(r["a"].shape[0] for r in reqs)
    assert max(s.requests for s in rec.stats) > 1
    assert all(s.size <= 8 for s in rec.stats)


def _mlp_session():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 5)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5]),
        ],
        initializer=[w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, feeds), strict=True))

    return run


async def test_concurrent_onnxruntime_mlp_matches_single_calls(executor):
    run = _mlp_session()
    rng = np.random.default_rng(2)
    reqs = [{"x": rng.standard_normal((int(n), 16)).astype(np.float32)} for n in rng.integers(1, 4, size=30)]
    expected = [run(r) for r in reqs]
    rec = Recorder()
    b = Batcher(run, max_batch_size=16, max_queue_delay_ms=5, executor=executor, on_batch=rec)
    results = await asyncio.gather(*(b.submit(r) for r in reqs))
    await b.close()
    for got, want in zip(results, expected, strict=True):
        for k in ("logits", "probs"):
            assert got[k].shape == want[k].shape
            # GEMM kernels may round differently for different batch sizes: tight, not bitwise
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert max(s.requests for s in rec.stats) > 1
    assert all(s.size <= 16 for s in rec.stats)


async def test_batches_respect_max_size_and_merge_with_delay(executor):
    sizes_seen: list[int] = []

    def run(feeds):
        sizes_seen.append(feeds["a"].shape[0])
        return numpy_model(feeds)

    rng = np.random.default_rng(3)
    reqs = [make_request(rng, int(n)) for n in rng.integers(1, 4, size=60)]
    rec = Recorder()
    b = Batcher(run, max_batch_size=5, max_queue_delay_ms=20, executor=executor, on_batch=rec)
    results = await asyncio.gather(*(b.submit(r) for r in reqs))
    await b.close()
    assert all(r["p"].shape[0] == q["a"].shape[0] for r, q in zip(results, reqs, strict=True))
    assert max(sizes_seen) <= 5
    assert [s.size for s in rec.stats] == sizes_seen
    assert all(s.size <= 5 for s in rec.stats)
    # FIFO cuts: a batch stops at the first request that would not fit, so sizes are 3..5 mostly
    assert sum(s.size for s in rec.stats) / len(rec.stats) >= 3
    assert max(s.requests for s in rec.stats) > 1
    assert all(s.queue_ms >= 0 and s.compute_ms >= 0 for s in rec.stats)


async def test_delay_waits_for_company_then_times_out(executor):
    rec = Recorder()
    rng = np.random.default_rng(4)
    b = Batcher(numpy_model, max_batch_size=64, max_queue_delay_ms=30, executor=executor, on_batch=rec)
    t0 = time.perf_counter()
    first = asyncio.ensure_future(b.submit(make_request(rng, 1)))
    await asyncio.sleep(0.005)
    second = asyncio.ensure_future(b.submit(make_request(rng, 2)))
    await asyncio.gather(first, second)
    elapsed = time.perf_counter() - t0
    await b.close()
    assert [(s.requests, s.size) for s in rec.stats] == [(2, 3)]
    # the window is measured from the first request, not the last
    assert 0.025 <= elapsed < 0.5
    assert rec.stats[0].queue_ms >= 25


async def test_zero_delay_batches_what_queued_while_executor_busy(executor):
    rec = Recorder()
    gate = threading.Event()
    started = threading.Event()

    def blocker():
        started.set()
        gate.wait(5)

    loop = asyncio.get_running_loop()
    busy = loop.run_in_executor(executor, blocker)
    await asyncio.to_thread(started.wait, 5)
    rng = np.random.default_rng(5)
    reqs = [make_request(rng, 1) for _ in range(7)]
    b = Batcher(numpy_model, max_batch_size=32, max_queue_delay_ms=0, executor=executor, on_batch=rec)
    tasks = [asyncio.ensure_future(b.submit(r)) for r in reqs]
    await asyncio.sleep(0.02)
    assert not any(t.done() for t in tasks)
    gate.set()
    await busy
    results = await asyncio.gather(*tasks)
    await b.close()
    for r, q in zip(results, reqs, strict=True):
        np.testing.assert_array_equal(r["p"], numpy_model(q)["p"])
    # the first request went straight to the (busy) executor; the rest queued and ran as one batch
    assert [s.requests for s in rec.stats] == [1, 6]


async def test_zero_delay_single_request_is_not_delayed(executor):
    rec = Recorder()
    b = Batcher(numpy_model, max_batch_size=32, max_queue_delay_ms=0, executor=executor, on_batch=rec)
    out = await b.submit(make_request(np.random.default_rng(6), 2))
    await b.close()
    assert out["p"].shape == (2, 4)
    assert rec.stats[0].queue_ms < 5


async def test_incompatible_signatures_are_not_merged(executor):
    seen: list[tuple] = []

    def run(feeds):
        x = feeds["x"]
        seen.append((x.shape, x.dtype.str))
        return {"y": x * 2, "n": np.full((x.shape[0],), x.shape[1], dtype=np.int64)}

    rng = np.random.default_rng(7)
    reqs = []
    for i in range(24):
        width = 4 if i % 3 else 5
        dtype = np.float32 if i % 2 else np.float64
        reqs.append({"x": rng.standard_normal((1 + i % 3, width)).astype(dtype)})
    rec = Recorder()
    b = Batcher(run, max_batch_size=64, max_queue_delay_ms=10, executor=executor, on_batch=rec)
    results = await asyncio.gather(*(b.submit(r) for r in reqs))
    await b.close()
    for r, q in zip(results, reqs, strict=True):
        assert r["y"].dtype == q["x"].dtype
        np.testing.assert_array_equal(r["y"], q["x"] * 2)
        assert (r["n"] == q["x"].shape[1]).all()
    signatures = {(q["x"].shape[1], q["x"].dtype.str) for q in reqs}
    assert len(signatures) == 4
    assert {(shape[1], dt) for shape, dt in seen} == signatures
    assert len(rec.stats) == 4  # one batch per signature: all arrived within the window


async def test_input_names_order_does_not_matter_but_names_do(executor):
    rec = Recorder()
    b = Batcher(numpy_model, max_batch_size=64, max_queue_delay_ms=10, executor=executor, on_batch=rec)
    rng = np.random.default_rng(8)
    r1 = make_request(rng, 1)
    r2 = make_request(rng, 2)
    r2 = {"b": r2["b"], "a": r2["a"]}
    o1, o2 = await asyncio.gather(b.submit(r1), b.submit(r2))
    await b.close()
    np.testing.assert_array_equal(o2["p"], numpy_model(r2)["p"])
    assert [s.requests for s in rec.stats] == [2]


async def test_oversize_request_runs_alone_unsplit(executor):
    rec = Recorder()
    sizes: list[int] = []

    def run(feeds):
        sizes.append(feeds["a"].shape[0])
        return numpy_model(feeds)

    rng = np.random.default_rng(9)
    small = [make_request(rng, 2) for _ in range(6)]
    big = make_request(rng, 11)
    b = Batcher(run, max_batch_size=4, max_queue_delay_ms=10, executor=executor, on_batch=rec)
    tasks = [b.submit(r) for r in small[:3]] + [b.submit(big)] + [b.submit(r) for r in small[3:]]
    results = await asyncio.gather(*tasks)
    await b.close()
    np.testing.assert_array_equal(results[3]["p"], numpy_model(big)["p"])
    assert results[3]["p"].shape[0] == 11
    assert 11 in sizes
    assert [s.requests for s in rec.stats if s.size == 11] == [1]
    assert all(s.size <= 4 for s in rec.stats if s.size != 11)
    # an oversize request alone, nothing queued, goes without waiting for the window
    rec.stats.clear()
    b2 = Batcher(run, max_batch_size=4, max_queue_delay_ms=10_000, executor=executor, on_batch=rec)
    with anyio_fail_after(2):
        await b2.submit(make_request(rng, 5))
    await b2.close()


def anyio_fail_after(seconds: float):
    import anyio

    return anyio.fail_after(seconds)


class Boom(Exception):
    pass


async def test_exception_goes_to_every_request_in_the_batch_and_later_batches_run(executor):
    rec = Recorder()

    def run(feeds):
        if (feeds["b"] == 999).any():
            raise Boom("poisoned row")
        return numpy_model(feeds)

    rng = np.random.default_rng(10)
    reqs = [make_request(rng, 2) for _ in range(5)]
    reqs[2]["b"][1, 0] = 999
    b = Batcher(run, max_batch_size=10, max_queue_delay_ms=50, executor=executor, on_batch=rec)
    results = await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results), results
    assert [s.requests for s in rec.stats] == [5]
    assert np.isnan(rec.stats[0].compute_ms)
    # the batcher keeps working
    good = [make_request(rng, 1) for _ in range(3)]
    results = await asyncio.gather(*(b.submit(r) for r in good))
    for r, q in zip(results, good, strict=True):
        np.testing.assert_array_equal(r["s"], numpy_model(q)["s"])
    await b.close()


async def test_output_not_batch_aligned_is_an_error_for_all(executor):
    def run(feeds):
        x = feeds["x"]
        return {"y": x * 2, "pooled": x.mean(axis=0, keepdims=True)}  # (1, d): not per-row

    b = Batcher(run, max_batch_size=10, max_queue_delay_ms=20, executor=executor)
    reqs = [{"x": np.ones((n, 3), np.float32)} for n in (1, 2, 3)]
    results = await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)
    assert all(isinstance(r, BatchAlignmentError) for r in results), results
    assert "not batch-aligned" in str(results[0]) and "'pooled'" in str(results[0])
    # the same for a single request whose output is short (consistent with or without company)
    with pytest.raises(BatchAlignmentError):
        await b.submit({"x": np.ones((2, 3), np.float32)})
    # and a scalar output
    b2 = Batcher(lambda f: {"y": np.float32(1.0)}, max_batch_size=4, max_queue_delay_ms=0, executor=executor)
    with pytest.raises(BatchAlignmentError):
        await b2.submit({"x": np.ones((1, 3), np.float32)})
    await b.close()
    await b2.close()


async def test_outputs_are_views_of_the_batch_output(executor):
    outs = []

    def run(feeds):
        y = feeds["x"] + 1
        outs.append(y)
        return {"y": y}

    b = Batcher(run, max_batch_size=10, max_queue_delay_ms=20, executor=executor)
    x1, x2 = np.zeros((2, 3), np.float32), np.ones((1, 3), np.float32)
    r1, r2 = await asyncio.gather(b.submit({"x": x1}), b.submit({"x": x2}))
    assert len(outs) == 1
    assert np.shares_memory(r1["y"], outs[0]) and np.shares_memory(r2["y"], outs[0])
    # a batch of one passes the feeds through without a copy
    seen = []
    b2 = Batcher(lambda f: (seen.append(f["x"]), {"y": f["x"]})[1], max_batch_size=4, max_queue_delay_ms=0,
                 executor=executor)
    await b2.submit({"x": x1})
    assert seen[0] is x1
    await b.close()
    await b2.close()


async def test_cancelled_waiter_does_not_break_the_others(executor):
    rec = Recorder()
    gate = threading.Event()
    entered = threading.Event()

    def run(feeds):
        entered.set()
        gate.wait(5)
        return numpy_model(feeds)

    rng = np.random.default_rng(11)
    reqs = [make_request(rng, 1) for _ in range(4)]
    b = Batcher(run, max_batch_size=10, max_queue_delay_ms=10, executor=executor, on_batch=rec)
    tasks = [asyncio.ensure_future(b.submit(r)) for r in reqs]
    await asyncio.to_thread(entered.wait, 5)
    # cancelled while its batch computes
    tasks[1].cancel()
    # a request cancelled while still queued never runs
    queued = [make_request(rng, 1), make_request(rng, 1)]
    late = [asyncio.ensure_future(b.submit(r)) for r in queued]
    await asyncio.sleep(0)
    late[0].cancel()
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, *late, return_exceptions=True)
    await b.close()
    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[4], asyncio.CancelledError)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(results[i]["p"], numpy_model(reqs[i])["p"])
    np.testing.assert_array_equal(results[5]["p"], numpy_model(queued[1])["p"])
    assert [(s.requests, s.size) for s in rec.stats] == [(4, 4), (1, 1)]


async def test_close_drains_queued_work_then_rejects(executor):
    rec = Recorder()
    rng = np.random.default_rng(12)
    reqs = [make_request(rng, int(n)) for n in rng.integers(1, 4, size=12)]
    b = Batcher(numpy_model, max_batch_size=64, max_queue_delay_ms=60_000, executor=executor, on_batch=rec)
    tasks = [asyncio.ensure_future(b.submit(r)) for r in reqs]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks)  # waiting for company (the window is a minute)
    t0 = time.perf_counter()
    await b.close()
    assert time.perf_counter() - t0 < 2
    assert len(rec.stats) == 1  # ran before close() returned
    with anyio_fail_after(0.5):  # the callers' tasks only need their next turn of the loop
        results = await asyncio.gather(*tasks)
    for r, q in zip(results, reqs, strict=True):
        np.testing.assert_array_equal(r["p"], numpy_model(q)["p"])
    assert [s.requests for s in rec.stats] == [12]
    with pytest.raises(RuntimeError, match="closed"):
        await b.submit(reqs[0])
    await b.close()  # idempotent


async def test_max_inflight_bounds_concurrent_batches():
    active = 0
    peak = 0
    lock = threading.Lock()

    def run(feeds):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return numpy_model(feeds)

    rng = np.random.default_rng(13)
    with ThreadPoolExecutor(max_workers=4) as ex:
        for max_inflight in (1, 2):
            peak = 0
            b = Batcher(run, max_batch_size=2, max_queue_delay_ms=0, executor=ex, max_inflight=max_inflight)
            reqs = [make_request(rng, 1) for _ in range(16)]
            results = await asyncio.gather(*(b.submit(r) for r in reqs))
            await b.close()
            assert len(results) == 16
            assert peak == max_inflight


async def test_pipelining_collects_the_next_batch_while_one_computes(executor):
    """One compute thread, a steady stream of single-row requests: while a batch computes the
    collector gathers the next one, so batches grow and no request waits for more than about
    two batch times."""
    rec = Recorder()

    def run(feeds):
        time.sleep(0.01)
        return numpy_model(feeds)

    rng = np.random.default_rng(14)
    b = Batcher(run, max_batch_size=64, max_queue_delay_ms=1, executor=executor, on_batch=rec)

    async def client(i):
        await asyncio.sleep(i * 0.001)  # 1 request per ms, 10 ms per batch
        t0 = time.perf_counter()
        await b.submit(make_request(rng, 1))
        return time.perf_counter() - t0

    latencies = await asyncio.gather(*(client(i) for i in range(100)))
    await b.close()
    assert sum(s.requests for s in rec.stats) == 100
    assert len(rec.stats) < 30  # unbatched would be 100 runs (1 s of compute)
    assert max(latencies) < 0.2


async def test_invalid_requests_are_rejected(executor):
    b = Batcher(numpy_model, max_batch_size=4, max_queue_delay_ms=0, executor=executor)
    with pytest.raises(ValueError, match="batch dimension"):
        await b.submit({"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 3), np.int64)})
    with pytest.raises(ValueError, match=">= 1"):
        await b.submit({"a": np.zeros((0, 4), np.float32), "b": np.zeros((0, 3), np.int64)})
    with pytest.raises(ValueError, match="scalar"):
        await b.submit({"a": np.array(1.0, np.float32)})
    with pytest.raises(ValueError, match="non-empty"):
        await b.submit({})
    with pytest.raises(ValueError):
        Batcher(numpy_model, max_batch_size=0, max_queue_delay_ms=0, executor=executor)
    await b.close()


async def test_overhead_of_the_single_request_path(executor, capsys):
    """Sequential requests, no contention, delay 0: submit() vs run_in_executor(run) directly.
    Printed for the record; asserted only loosely (shared CI machines are noisy)."""
    x = {"x": np.zeros((1, 8), np.float32)}

    def run(feeds):
        return {"y": feeds["x"]}

    loop = asyncio.get_running_loop()
    b = Batcher(run, max_batch_size=32, max_queue_delay_ms=0, executor=executor)

    async def direct():
        return await loop.run_in_executor(executor, run, x)

    async def batched():
        return await b.submit(x)

    samples: dict[str, list[float]] = {"direct": [], "batcher": []}
    for _ in range(200):
        await direct()
        await batched()
    for _ in range(6):
        for name, fn in (("direct", direct), ("batcher", batched)):
            times = []
            for _ in range(300):
                t0 = time.perf_counter()
                await fn()
                times.append(time.perf_counter() - t0)
            samples[name].extend(times)
    await b.close()
    med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] * 1e6 for k, v in samples.items()}
    overhead = med["batcher"] - med["direct"]
    with capsys.disabled():
        print(
            f"\n[batcher overhead] direct run_in_executor: median {med['direct']:.1f} us, p90 {p90['direct']:.1f} us; "
            f"batcher.submit: median {med['batcher']:.1f} us, p90 {p90['batcher']:.1f} us; "
            f"overhead median {overhead:.1f} us"
        )
    assert overhead < 1000
