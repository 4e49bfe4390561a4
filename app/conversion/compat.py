"""Is an ONNX model's IR version and opset within what a target runtime supports? Checked before a
step runs, so that the job fails with both versions named instead of deep inside a converter.

Where the limits come from (the installed runtime, never a guess):

- **onnxruntime** states its limits itself. Loading a model stamped with an absurd opset fails
  with "Current official support for domain ai.onnx is till opset N", and one with an absurd IR
  version with "max supported IR version: N"; :func:`limits` provokes both errors on a one-node
  model (a few milliseconds) and reads the numbers. If the wording changes, the opset falls back to
  the newest ``since_version`` in onnxruntime's own operator-schema registry
  (``get_all_operator_schema``) and the IR version to :data:`KNOWN`.
- **OpenVINO** does not refuse newer opsets: its ONNX frontend silently converts each node with
  the newest translator not above the model's opset ("falling back", a warning compiled out of
  release builds), so an operator whose semantics changed in a newer opset would be converted with
  the old meaning. The frontend's highest opset (its ``LATEST_SUPPORTED_ONNX_OPSET_VERSION`` =
  the ``ONNX_OPSET_VERSION`` of the ONNX it was built with) is read from the frontend library: it
  carries that ONNX's operator-set registrations (``OpSet_Onnx_ver<N>``, ``OpSet_OnnxML_ver<N>``).
  Its IR version is the one ONNX released with that opset (``onnx.helper.VERSION_TABLE``). The
  frontend does not check IR versions, so a newer IR version is reported as a warning only.

:data:`KNOWN` holds the limits measured on released runtimes, used only when reading them fails;
``tests/conversion/test_edges.py`` checks that the entry for the installed runtime matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from app.sandbox.io import ConversionError

DEFAULT_DOMAIN = "ai.onnx"

# runtime -> "major.minor" -> (max ai.onnx opset, max IR version); measured with :func:`limits`.
KNOWN: dict[str, dict[str, tuple[int, int]]] = {
    "onnxruntime": {"1.32": (28, 14)},
    "openvino": {"2026.4": (27, 13)},
}


@dataclass(frozen=True)
class RuntimeLimits:
    runtime: str
    version: str
    max_ir_version: int | None  # None: unknown
    max_opsets: dict[str, int] = field(default_factory=dict)  # domain ("ai.onnx", "ai.onnx.ml", …) -> max
    ir_enforced: bool = True  # the runtime refuses newer IR versions (else: a warning)
    source: str = ""


def _domain(d: str) -> str:
    return DEFAULT_DOMAIN if d in ("", DEFAULT_DOMAIN) else d


def _minor(version: str) -> str:
    return ".".join(version.split("-")[0].split(".")[:2])


def _probe_model(opsets: dict[str, int], ir_version: int) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    m.ir_version = ir_version
    return m.SerializeToString()


def _ort_error(model: bytes) -> str | None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        return str(e)
    return None


def _onnxruntime_limits() -> RuntimeLimits:
    import onnxruntime as ort

    version = ort.__version__
    sources = []
    max_opsets: dict[str, int] = {}
    for dom in (DEFAULT_DOMAIN, "ai.onnx.ml"):
        probe = {"": 1} if dom == DEFAULT_DOMAIN else {"": 13}
        probe[dom if dom != DEFAULT_DOMAIN else ""] = 1_000_000
        err = _ort_error(_probe_model(probe, 8)) or ""
        m = re.search(r"official support for domain ([\w.]+) is till opset (\d+)", err)
        if m:
            max_opsets[dom] = int(m.group(2))
    if max_opsets:
        sources.append("onnxruntime's own opset error")
    if DEFAULT_DOMAIN not in max_opsets:
        from onnxruntime.capi import onnxruntime_pybind11_state as C

        for s in C.get_all_operator_schema():
            d = _domain(s.domain)
            if d in (DEFAULT_DOMAIN, "ai.onnx.ml"):
                max_opsets[d] = max(max_opsets.get(d, 0), int(s.since_version))
        sources.append("onnxruntime operator-schema registry")
    err = _ort_error(_probe_model({"": 13}, 1 << 40)) or ""
    m = re.search(r"max supported IR version: (\d+)", err)
    max_ir = int(m.group(1)) if m else None
    if m:
        sources.append("onnxruntime's own IR-version error")
    if max_ir is None and _minor(version) in KNOWN["onnxruntime"]:
        max_ir = KNOWN["onnxruntime"][_minor(version)][1]
        sources.append("modelport's table (IR version)")
    return RuntimeLimits("onnxruntime", version, max_ir, max_opsets, True, "; ".join(sources))


def openvino_frontend_library() -> Path | None:
    import openvino

    base = Path(openvino.__file__).parent
    for pattern in ("libs/*openvino_onnx_frontend*", "*openvino_onnx_frontend*", "../openvino.libs/*onnx_frontend*"):
        found = sorted(base.glob(pattern))
        if found:
            return found[0]
    return None


def _openvino_limits() -> RuntimeLimits:
    import openvino

    version = openvino.__version__.split("-")[0]
    max_opsets: dict[str, int] = {}
    source = ""
    lib = openvino_frontend_library()
    if lib is not None:
        data = lib.read_bytes()
        onnx_sets = [int(x) for x in re.findall(rb"OpSet_Onnx_ver(\d+)E", data)]
        ml_sets = [int(x) for x in re.findall(rb"OpSet_OnnxML_ver(\d+)E", data)]
        if onnx_sets:
            max_opsets[DEFAULT_DOMAIN] = max(onnx_sets)
            source = f"ONNX operator sets registered in {lib.name}"
        if ml_sets:
            max_opsets["ai.onnx.ml"] = max(ml_sets)
    known = KNOWN["openvino"].get(_minor(version))
    if DEFAULT_DOMAIN not in max_opsets and known:
        max_opsets[DEFAULT_DOMAIN] = known[0]
        source = "modelport's table"
    max_ir = None
    if DEFAULT_DOMAIN in max_opsets:
        from onnx import helper

        irs = [ir for _rel, ir, op, *_ in helper.VERSION_TABLE if op == max_opsets[DEFAULT_DOMAIN]]
        max_ir = min(irs) if irs else None
    if max_ir is None and known:
        max_ir = known[1]
    return RuntimeLimits("openvino", version, max_ir, max_opsets, False, source)


@cache
def limits(runtime: str) -> RuntimeLimits:
    """The installed runtime's highest supported ONNX opset per domain and IR version."""
    if runtime == "onnxruntime":
        return _onnxruntime_limits()
    if runtime == "openvino":
        return _openvino_limits()
    raise ValueError(f"unknown runtime {runtime!r}")


def check_onnx_for(runtime: str, ir_version: int | None, opsets: dict[str, int]) -> list[str]:
    """Raise :class:`ConversionError` when ``runtime`` cannot take a model with this IR version and
    these opsets (domain -> version; "" and "ai.onnx" are the default domain). Returns warnings for
    what the runtime takes but does not guarantee. Domains the runtime does not list are not
    checked here (custom operators fail, with their name, in the converter itself)."""
    lim = limits(runtime)
    warnings: list[str] = []
    for dom, ver in opsets.items():
        d = _domain(dom)
        top = lim.max_opsets.get(d)
        if top is not None and int(ver) > top:
            what = "opset" if d == DEFAULT_DOMAIN else f"{d} opset"
            raise ConversionError(
                f"the model uses {what} {ver} but {runtime} {lim.version} supports up to {top}",
                tool=runtime, tool_version=lim.version,
                hint=f"re-export the model with opset <= {top} (e.g. torch.onnx.export(..., opset_version={top})) "
                     f"or convert it with onnx.version_converter.convert_version(model, {top})")
    if ir_version is not None and lim.max_ir_version is not None and int(ir_version) > lim.max_ir_version:
        msg = (f"the model uses ONNX IR version {ir_version} but {runtime} {lim.version} supports up to "
               f"{lim.max_ir_version}")
        if lim.ir_enforced:
            raise ConversionError(msg, tool=runtime, tool_version=lim.version,
                                  hint=f"re-save the model with ir_version <= {lim.max_ir_version} "
                                       "(an older onnx package, or set model.ir_version if no newer "
                                       "IR feature is used)")
        warnings.append(msg + f"; {runtime} does not refuse it, but features of the newer IR may not convert")
    return warnings


def check_onnx_file_for(runtime: str, path: Path) -> tuple[list[str], dict]:
    """:func:`check_onnx_for` on an ONNX file's header (external data is not read). Returns the
    warnings and ``{"ir_version", "opsets"}`` of the model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ConversionError(f"not a readable ONNX model: {type(e).__name__}: {e}"[:1000], tool="onnx",
                              tool_version=onnx.__version__) from None
    opsets = {(o.domain or DEFAULT_DOMAIN): int(o.version) for o in model.opset_import}
    info = {"ir_version": int(model.ir_version), "opsets": opsets}
    return check_onnx_for(runtime, model.ir_version, opsets), info
