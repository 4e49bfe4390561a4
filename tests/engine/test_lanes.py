"""The embedded executor's lanes: a validation or benchmark queued after a long conversion finishes
while that conversion still runs. Ordered with events (a step that blocks until released), never
with sleeps: the scheduler's own state says what waits."""

from __future__ import annotations

import threading

import pytest

from app.pipeline.lanes import LaneScheduler, capacity

WAIT_S = 60  # bound on every wait: a scheduling bug fails the test instead of hanging it


class Steps:
    """A ``run`` for the scheduler: records starts and ends; items in ``hold`` block until released."""

    def __init__(self, *hold: str):
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.hold = {h: threading.Event() for h in hold}
        self.begun = {h: threading.Event() for h in hold}
        self.done: dict[str, threading.Event] = {}

    def event(self, item: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(item, threading.Event())

    def __call__(self, item: str) -> None:
        with self.lock:
            self.started.append(item)
        if item in self.hold:
            self.begun[item].set()
            assert self.hold[item].wait(WAIT_S), f"{item} was never released"
        with self.lock:
            self.finished.append(item)
        self.event(item).set()

    def wait(self, item: str) -> None:
        assert self.event(item).wait(WAIT_S), f"{item} did not finish; started {self.started}"


def caps(slots: int, lanes: bool = True):
    return capacity(slots, lanes=lanes, cores=2, memory_mib=None, step_memory_mb=4096)


def test_a_check_queued_after_a_long_conversion_finishes_first():
    steps = Steps("convert-tflite")
    sched = LaneScheduler(steps, caps(2))
    try:
        sched.submit("convert-tflite", "convert", "cpu.tf")
        assert steps.begun["convert-tflite"].wait(WAIT_S)
        sched.submit("convert-onnx-int8", "convert", "cpu")  # waits: one conversion at a time on 2 slots
        sched.submit("validate-openvino", "validate", "intel")
        sched.submit("benchmark-onnx", "benchmark", "cpu")
        steps.wait("validate-openvino")
        steps.wait("benchmark-onnx")
        assert "convert-tflite" not in steps.finished  # both checks done while it still runs
        assert sched.pending() == {("convert", "cpu"): ["convert-onnx-int8"]}
        steps.hold["convert-tflite"].set()
        steps.wait("convert-onnx-int8")
        assert steps.finished.index("convert-tflite") < steps.finished.index("convert-onnx-int8")
    finally:
        steps.hold["convert-tflite"].set()
        sched.stop()


def test_one_fifo_lane_is_the_old_head_of_line_blocking():
    """The executor before lanes (MODELPORT_EMBEDDED_LANES=false, concurrency 1): the validation
    waits behind the conversion. The one slot is inside the blocked conversion, so the
    validation is necessarily still waiting."""
    steps = Steps("convert-tflite")
    sched = LaneScheduler(steps, caps(1, lanes=False))
    try:
        sched.submit("convert-tflite", "convert", "cpu.tf")
        assert steps.begun["convert-tflite"].wait(WAIT_S)
        sched.submit("validate-openvino", "validate", "intel")
        assert sched.pending() == {("fifo", ""): ["validate-openvino"]}
        assert steps.started == ["convert-tflite"]
        steps.hold["convert-tflite"].set()
        steps.wait("validate-openvino")
        assert steps.finished == ["convert-tflite", "validate-openvino"]
    finally:
        steps.hold["convert-tflite"].set()
        sched.stop()


def test_benchmarks_never_run_beside_each_other():
    steps = Steps("benchmark-a")
    sched = LaneScheduler(steps, caps(3))
    try:
        sched.submit("benchmark-a", "benchmark", "cpu")
        assert steps.begun["benchmark-a"].wait(WAIT_S)
        sched.submit("benchmark-b", "benchmark", "intel")
        sched.submit("validate-c", "validate", "cpu")
        steps.wait("validate-c")  # a slot was free, and it took the validation, not the second benchmark
        assert sched.pending() == {("benchmark", "intel"): ["benchmark-b"]}
        assert sched.running()["benchmark"] == 1
        steps.hold["benchmark-a"].set()
        steps.wait("benchmark-b")
    finally:
        steps.hold["benchmark-a"].set()
        sched.stop()


def test_queues_take_turns_within_a_kind():
    """A backlog of cpu conversions does not hold up the intel one submitted after it."""
    steps = Steps("cpu-1")
    sched = LaneScheduler(steps, caps(2))
    try:
        sched.submit("cpu-1", "convert", "cpu")
        assert steps.begun["cpu-1"].wait(WAIT_S)
        for item, queue in [("cpu-2", "cpu"), ("cpu-3", "cpu"), ("intel-1", "intel")]:
            sched.submit(item, "convert", queue)
        steps.hold["cpu-1"].set()
        steps.wait("cpu-3")
        steps.wait("intel-1")
        assert steps.started == ["cpu-1", "intel-1", "cpu-2", "cpu-3"]
    finally:
        steps.hold["cpu-1"].set()
        sched.stop()


def test_stop_lets_the_running_step_finish_and_drops_what_waits():
    steps = Steps("convert-a")
    sched = LaneScheduler(steps, caps(2))
    sched.submit("convert-a", "convert", "cpu")
    assert steps.begun["convert-a"].wait(WAIT_S)
    sched.submit("convert-b", "convert", "cpu")
    stopper = threading.Thread(target=sched.stop)
    stopper.start()
    steps.hold["convert-a"].set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert steps.finished == ["convert-a"] and sched.pending() == {}
    sched.submit("convert-c", "convert", "cpu")  # after stop: ignored
    assert sched.pending() == {}


@pytest.mark.parametrize(("concurrency", "lanes", "cores", "memory", "want"), [
    (0, True, 2, 24_000, (2, 1)),  # this box: one conversion and one check at a time
    (0, True, 16, 65_536, (16, 15)),
    (0, True, 16, 16_384, (4, 3)),  # memory binds: 4 steps of 4096 MiB
    (0, True, 1, 8_192, (2, 1)),  # one core: still a slot kept for checks
    (0, True, 4, None, (4, 3)),  # memory unknown: cores decide
    (1, False, 8, 65_536, (1, 1)),  # the old executor
    (6, True, 2, 4_096, (6, 5)),  # set by hand: as given
])
def test_capacity_defaults_from_cores_and_memory(concurrency, lanes, cores, memory, want):
    cap = capacity(concurrency, lanes=lanes, cores=cores, memory_mib=memory, step_memory_mb=4096)
    assert (cap.slots, cap.convert_slots) == want
    assert cap.benchmark_slots == (1 if lanes else cap.slots)
    assert str(cap.slots) in cap.describe()


def test_the_executor_runs_a_validation_while_another_jobs_conversion_blocks(tmp_path, monkeypatch):
    """Real steps through the real executor and catalog: job A (ONNX -> ONNX) converts, then job B's
    conversion (ONNX -> OpenVINO) starts and blocks on a test hook around the converter, while A's
    validation waits to run; A's verdict comes while B still converts. B then finishes normally."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.sandbox import parent
    from tests import models
    from tests.helpers import make_settings, upload

    real_run_edge = parent.run_edge
    release, b_started = threading.Event(), threading.Event()

    def run_edge(edge, *args, **kwargs):  # inside the claimed, heartbeating step: it is `running`
        if edge.name == "onnx->openvino":
            b_started.set()
            assert release.wait(WAIT_S * 5), "never released"
        return real_run_edge(edge, *args, **kwargs)

    monkeypatch.setattr(parent, "run_edge", run_edge)
    settings = make_settings(tmp_path, embedded_concurrency=0)  # the default: lanes, from cores and memory
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        try:
            m = upload(c, models.onnx_model(tmp_path)[0])
            a = c.post(f"/v1/models/{m['id']}/conversions",
                       json={"target": "onnx", "options": {"optimize": "basic"}, "benchmark": False}).json()
            b = c.post(f"/v1/models/{m['id']}/conversions", json={"target": "openvino", "benchmark": False}).json()
            assert b_started.wait(WAIT_S * 5)
            job_a = c.get(f"/v1/jobs/{a['id']}", params={"wait": 300}).json()
            assert job_a["status"] == "succeeded", job_a
            assert [s["kind"] for s in job_a["steps"]] == ["convert", "validate"]
            assert not release.is_set()
            job_b = c.get(f"/v1/jobs/{b['id']}").json()
            assert job_b["status"] == "running" and job_b["steps"][0]["status"] == "running", job_b
            art = c.get(f"/v1/artifacts/{job_a['artifact_id']}").json()
            assert art["validation"]["status"] == "passed"
        finally:
            release.set()
        job_b = c.get(f"/v1/jobs/{b['id']}", params={"wait": 300}).json()
        assert job_b["status"] == "succeeded", job_b
