"""Every capability is declared once: each format module's FORMAT, each runner module's RUNTIME,
each edge in the registry. These tests walk all of them and fail on a missing or contradictory
field; then a throw-away format + runner + edge is plugged in and the planner, /v1/formats,
routing, detection, the report and the host probe pick it up with no other file touched."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from app import formats, host, runners
from app.conversion import planner, registry
from app.conversion.base import Edge
from app.formats.base import FormatInfo
from app.runners.base import HARDWARE_NEEDS, Runtime

APP = Path(__file__).resolve().parents[1] / "app"
PRECISIONS = {"fp32", "fp16", "bf16", "int8", "exact"}


def format_problems() -> list[str]:
    """Every missing or contradictory field of every declared format."""
    out = []
    for f in formats.all_formats():
        m = formats.module(f.name)
        if not (isinstance(f, FormatInfo) and callable(m.detect) and callable(m.inspect)):
            out.append(f"{f.name}: FORMAT, detect() and inspect() are needed")
        if not f.title or not isinstance(f.code_on_load, bool) or not isinstance(f.weights_only, bool):
            out.append(f"{f.name}: title, code_on_load and weights_only are needed")
        if not all(ext.startswith(".") for ext in f.extensions):
            out.append(f"{f.name}: extensions start with a dot")
        if f.weights_only and f.runner is not None:
            out.append(f"{f.name}: weights hold no architecture, so no runner can run them")
        if f.runner is not None and not isinstance(runners.runtime_of(f.name), Runtime):
            out.append(f"{f.name}: runner module {f.runner} declares no RUNTIME")
        if f.runner is not None and not callable(getattr(runners.runner_module(f.name), "load", None)):
            out.append(f"{f.name}: runner module {f.runner} has no load()")
        default = runners.runtime_of(f.name) if f.runner else None
        hardware = [default.hardware] if isinstance(default, Runtime) else []
        for entry in f.other_runners:  # another runtime of the format must be for other hardware (CUDA, …)
            rt = getattr(runners._import(entry), "RUNTIME", None)
            if not f.runner or not isinstance(rt, Runtime) or rt.hardware in hardware:
                out.append(f"{f.name}: other runner {entry} needs a RUNTIME for hardware its other runners lack")
            else:
                hardware.append(rt.hardware)
        for mk in f.zip_markers:
            if not (isinstance(mk, str) or (isinstance(mk, tuple) and all(isinstance(x, str) for x in mk))):
                out.append(f"{f.name}: zip marker {mk!r} is a name or a tuple of names")
    return out


def test_every_format_module_declares_a_complete_format():
    modules = sorted(p.stem for p in (APP / "formats").glob("*.py")
                     if p.stem not in ("__init__", "base") and "FORMAT = FormatInfo(" in p.read_text())
    assert sorted(formats.FORMAT_MODULES) == modules, "a format module is missing from FORMAT_MODULES (or listed twice)"
    names = [f.name for f in formats.all_formats()]
    assert len(names) == len(set(names)) == len(modules)
    assert format_problems() == []


def test_zip_markers_belong_to_one_format_each():
    markers = [m for _, m in formats.zip_markers()]
    assert len(markers) == len(set(markers))
    # what tells a model zip from an archive of files: the torch zips and Keras 3 archives
    owners = {fmt for fmt, _ in formats.zip_markers()}
    assert {"pytorch", "torch_export", "torch_package", "keras"} <= owners


def test_every_runner_module_is_declared_and_used():
    modules = sorted(p.stem for p in (APP / "runners").glob("*_runner.py"))
    declared = runners.runtimes()
    assert sorted(declared) == modules, "a runner module that no format names (or a format naming a missing one)"
    for name, rt in declared.items():
        assert rt.hardware in HARDWARE_NEEDS, name
        assert rt.precision in PRECISIONS, name
        assert rt.packages and rt.module, name
        assert rt.queue == (rt.hardware if rt.toolchain == "main" else f"{rt.hardware}.{rt.toolchain}")
        # the heavy library is never imported at module level: only the declaration and numpy
        src = (APP / "runners" / f"{name}.py").read_text()
        top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
        assert not any(rt.module.split(".")[0] in ln.split() for ln in top), f"{name} imports {rt.module} at top level"


def test_every_edge_is_declared_completely_and_consistently():
    names = [e.name for e in registry.edges()]
    assert len(names) == len(set(names))
    known = {f.name for f in formats.all_formats()}
    for e in registry.edges():
        assert e.source in known and e.target in known, e.name
        assert e.hardware in HARDWARE_NEEDS, e.name
        assert e.tolerance in PRECISIONS, e.name
        module, _, func = e.implementation.partition(":")
        assert func and importlib.util.find_spec(module) is not None, f"{e.name}: {e.implementation}"
        assert func in (APP.parent / (module.replace(".", "/") + ".py")).read_text(), e.name
        # what it makes can be proven: a runner runs it, or it is compared tensor for tensor
        assert runners.runnable(e.target) or formats.by_name(e.target).weights_only, e.name
        # an exact tolerance only between weights-only formats
        if e.tolerance == "exact":
            assert formats.by_name(e.source).weights_only and formats.by_name(e.target).weights_only, e.name


def test_routing_reads_the_declarations():
    # validation and benchmarks of an artifact go where its runtime runs
    assert runners.queue_for("openvino") == "intel"
    assert runners.queue_for("coreml") == "apple"
    assert runners.queue_for("tensorrt") == "gpu"
    assert runners.queue_for("safetensors") == runners.DEFAULT_QUEUE  # measured on load, in the main toolchain
    # a TensorFlow reference runs only under its toolchain: its artifacts are validated there
    assert runners.check_placement("tflite", "keras") == ("cpu.tf", "tf")
    assert runners.check_placement("openvino", "onnx") == ("intel", "main")
    # every queue a step can be routed to is one Celery declares
    assert {"cpu", "intel", "gpu", "apple", "cpu.tf"} <= set(host.queues())
    assert set(host.queues()) >= {e.queue for e in registry.edges()} | {rt.queue for rt in runners.runtimes().values()}


def test_core_ml_says_where_it_runs():
    """The format used to say it had no runtime while a Core ML runner existed."""
    from app.pipeline.formats import describe

    row = next(f for f in describe()["formats"] if f["name"] == "coreml")
    assert row["runtime"] == "coreml" and row["queue"] == "apple" and row["hardware"] == "apple"
    assert row["run_here"] is (sys.platform == "darwin" and importlib.util.find_spec("coremltools") is not None)


# ----------------------------------------------------------------------------- a plug-in


TOY_FORMAT = '''
from app.formats.base import Detection, FormatInfo, Inspection, TensorSpec

FORMAT = FormatInfo(name="toy", title="Toy", extensions=(".toy",), code_on_load=False,
                    runner="toyplug.runner", zip_markers=("toy.manifest",), packages=("toy-format",))


def detect(files):
    for p in files.paths:
        if files.head(p, 4) == b"TOY1":
            return Detection("toy", p, "TOY1 magic")
    return None


def inspect(files, det):
    return Inspection(format="toy", primary_file=det.primary, inputs=[TensorSpec("x", "float32", ["batch", 4])],
                      outputs=[TensorSpec("y", "float32", ["batch", 4])], params=4)
'''

TOY_RUNNER = '''
import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, Runtime

RUNTIME = Runtime("toyruntime", module="numpy", hardware="gpu", packages=("toy-runtime",))


class ToyRunner(Runner):
    def __init__(self):
        self.info = RunnerInfo(runtime="toyruntime", version="1", precision="fp32", threads=1)
        self._inputs = [IOSpec("x", "float32", [None, 4])]
        self._outputs = [IOSpec("y", "float32", [None, 4])]

    def run(self, feeds):
        return {"y": np.asarray(feeds["x"]) * 2}


def load(root, paths, primary, *, precision="fp32", threads=None, fmt=None, **kw):
    return ToyRunner()
'''

TOY_EDGE = '''
from app.sandbox.io import Result


def from_onnx(src, out_dir, options):
    (out_dir / "model.toy").write_bytes(b"TOY1")
    return Result(primary="model.toy")
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "toyplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fmt.py").write_text(textwrap.dedent(TOY_FORMAT))
    (pkg / "runner.py").write_text(textwrap.dedent(TOY_RUNNER))
    (pkg / "edge.py").write_text(textwrap.dedent(TOY_EDGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(formats, "FORMAT_MODULES", (*formats.FORMAT_MODULES, "toyplug.fmt"))
    edge = Edge("onnx", "toy", "gpu", "main", registry.NoOptions, "toyplug.edge:from_onnx", "fp32",
                description="throw-away")
    monkeypatch.setattr(registry, "EDGES", (*registry.EDGES, edge))
    yield edge
    for m in [m for m in sys.modules if m.startswith("toyplug")]:
        del sys.modules[m]
    formats._import.cache_clear()
    runners._import.cache_clear()


def test_a_plugged_in_format_runner_and_edge_are_picked_up_everywhere(toy, tmp_path):
    from app.formats.base import ModelFiles
    from app.ingest.uploads import _is_model_zip
    from app.pipeline import jobs, report
    from app.pipeline.formats import describe

    # the planner routes to it, through the declared edge, on the edge's queue
    plan = planner.plan("onnx", "toy", {}, None)
    assert [e.name for e in plan.edges] == ["onnx->toy"] and plan.edges[0].queue == "gpu"
    assert planner.plan("torch_export", "toy", {}, None).edges[-1] is toy  # and through ONNX from a .pt2

    # validation and benchmarks of its artifacts go where its runtime runs
    steps = jobs.pipeline_steps(plan, validate=True, benchmark={}, tolerance=None)
    assert [(kind, queue) for kind, _, queue, _ in steps] == [("convert", "gpu"), ("validate", "gpu"),
                                                               ("benchmark", "gpu")]

    # /v1/formats (and `modelport formats`) list it, with where it runs
    listing = describe()
    row = next(f for f in listing["formats"] if f["name"] == "toy")
    assert row["runtime"] == "toyruntime" and row["queue"] == "gpu" and row["convert_from"] == ["onnx"]
    assert row["code_on_load"] is False and row["weights_only"] is False
    assert "toy" in next(f for f in listing["formats"] if f["name"] == "onnx")["convert_to"]
    assert any(e["name"] == "onnx->toy" for e in listing["edges"])

    # ingest detects it by content, and its zip marker tells its zips from archives
    (tmp_path / "m.bin").write_bytes(b"TOY1")
    insp = formats.detect_and_inspect(ModelFiles(tmp_path, ["m.bin"], "m.bin"))
    assert insp["format"] == "toy" and insp["format_title"] == "Toy"
    import zipfile

    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        z.writestr("pkg/toy.manifest", "{}")
    assert _is_model_zip(tmp_path / "t.zip")

    # a runner opens it
    r = runners.open_runner("toy", tmp_path, ["m.bin"], "m.bin")
    assert r.run({"x": [[1.0, 2.0, 3.0, 4.0]]})["y"].tolist() == [[2.0, 4.0, 6.0, 8.0]]

    # the report counts it as secure (no code on load) and the host records its packages
    row = {"artifact_id": "a" * 32, "format": "toy", "precision": "fp32", "deployable": True, "p50_ms": None,
           "load_ms": None, "size_bytes": 4, "max_abs_err": 0.0, "validation": "passed"}
    model = type("M", (), {"size_bytes": 8})()
    security = next(r for r in report.recommend(model, [row]) if r["key"] == "security")
    assert security["choice"]["format"] == "toy"
    assert {"toy-format", "toy-runtime"} <= set(host.packages())


def test_a_contradictory_declaration_is_refused(toy, monkeypatch):
    """A weights-only format that names a runner contradicts itself: the walk finds it."""
    assert format_problems() == []
    mod = importlib.import_module("toyplug.fmt")
    monkeypatch.setattr(mod, "FORMAT", dataclasses.replace(mod.FORMAT, weights_only=True))
    assert format_problems() == ["toy: weights hold no architecture, so no runner can run them"]
    # a second runtime for the hardware the first already serves says nothing new: refused
    monkeypatch.setattr(mod, "FORMAT", dataclasses.replace(mod.FORMAT, weights_only=False,
                                                           other_runners=("toyplug.runner",)))
    assert format_problems() == ["toy: other runner toyplug.runner needs a RUNTIME for hardware its other runners lack"]
    monkeypatch.setattr(mod, "FORMAT", dataclasses.replace(mod.FORMAT, weights_only=False, runner="toyplug.edge",
                                                           other_runners=()))
    assert format_problems() == ["toy: runner module toyplug.edge declares no RUNTIME",
                                 "toy: runner module toyplug.edge has no load()"]
