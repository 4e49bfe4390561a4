"""ONNX -> TensorRT engine with the TensorRT Python API, on the GPU that will run it (``gpu`` queue).

The build, as NVIDIA documents it (TensorRT 8.6 to 11):

1. ``trt.Builder`` -> ``create_network`` (``EXPLICIT_BATCH`` before TensorRT 10, where it became the
   only mode; ``STRONGLY_TYPED`` where the precision comes from the graph: int8 Q/DQ, or fp16 on
   TensorRT 11, which removed the precision flags) -> ``trt.OnnxParser.parse_from_file`` (external
   data is found next to the file). A parse failure names the node, its operator and the TensorRT
   version (``IParserError.node_name()/node_operator()``; by node index on older parsers).
2. ``create_builder_config``: fp32 with TF32 cleared (TF32 rounds to 10 mantissa bits and fails an
   fp32 validation), or ``BuilderFlag.FP16``; workspace limit, builder optimisation level,
   optionally ``HardwareCompatibilityLevel.AMPERE_PLUS``.
3. One optimisation profile for the dynamic inputs: a dynamic dim 0 is the batch
   (``min_batch``/``opt_batch``/``max_batch``); every other dynamic dim is tuned (opt) for the size
   the model was found to run on (:mod:`app.runners.search`, the sizes validation uses), with
   min = opt/2 and max = 2 x opt, multiples of the graph's stride product; ``shapes`` overrides.
4. INT8 is *explicit* quantization: the implicit calibrator API (``IInt8EntropyCalibrator2``) is
   deprecated since TensorRT 10.1 and removed in 11. The ONNX is quantized to symmetric INT8 Q/DQ
   (TensorRT accepts zero points of 0 only) with onnxruntime's ``quantize_static``, calibrated on
   the same input sets as the ONNX static INT8 edge (the model's samples, or found runnable inputs
   with a warning); an ONNX that already has Q/DQ nodes is checked (int8, zero points 0) and used.
5. This host's timing cache (``MODELPORT_TENSORRT_CACHE_DIR``, one file per GPU model, compute
   capability and TensorRT version) is loaded before and saved after ``build_serialized_network``.
6. The plan is deserialized once to prove it loads and to read its I/O; ``model.engine.json``
   beside it records the GPU name, compute capability, TensorRT version, flags and profile, which
   the runner checks against the host it is asked to run on.

Nothing here has run against a real TensorRT (it cannot be installed on the development hosts):
the flow is unit-tested against a fake ``tensorrt`` module; ``scripts/gpu-check`` runs it for real
on a host with TensorRT."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.conversion.edges._common import parse_options, versions
from app.formats.tensorrt import RECORD_KIND, record_name
from app.sandbox.io import ConversionError, Result, Source

ENGINE = "model.engine"
RECORD = record_name(ENGINE)  # model.engine.json
CACHE_ENV = "MODELPORT_TENSORRT_CACHE_DIR"
QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # where INT8 kernels pay; the rest stays float
NO_DEVICE = ("no CUDA device on this host (nvidia-smi finds none): TensorRT builds an engine on the GPU model "
             "that will run it")


# ----------------------------------------------------------------------------- pure logic


def trt_major(version: str) -> int:
    m = re.match(r"(\d+)", version or "")
    return int(m.group(1)) if m else 0


@dataclass
class BuildFlags:
    """What the builder is told: network creation flags, builder flags set and cleared, and whether
    the ONNX is made float16 first (fp16 on a TensorRT without ``BuilderFlag.FP16``)."""

    network: list[str] = field(default_factory=list)
    set: list[str] = field(default_factory=list)
    clear: list[str] = field(default_factory=list)
    fp16_onnx: bool = False
    typing: str = "weakly typed"

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "set": self.set, "clear": self.clear, "fp16_onnx": self.fp16_onnx,
                "typing": self.typing}


def choose_flags(version: str, network_flags: set[str], builder_flags: set[str], precision: str, *,
                 tf32: bool = False) -> BuildFlags:
    """The flags for ``precision`` on the TensorRT whose enums hold ``network_flags`` and
    ``builder_flags`` (member names): what each version documents, not what it tolerates."""
    out = BuildFlags()
    major = trt_major(version)
    if major < 10 and "EXPLICIT_BATCH" in network_flags:
        out.network.append("EXPLICIT_BATCH")  # ignored (always on) from TensorRT 10
    strong = "STRONGLY_TYPED" in network_flags or major >= 11  # 11: always strongly typed
    if precision == "fp16":
        if "FP16" in builder_flags:
            out.set.append("FP16")
        else:
            out.fp16_onnx = True  # TensorRT 11: precision comes from the graph's types
    elif precision == "int8" and not strong and "INT8" in builder_flags:
        # explicit quantization: the Q/DQ nodes say where INT8 runs. NVIDIA: "use explicit quantization with
        # strong typing; precision-control build flags are not required and should not be specified" -- only
        # a TensorRT without strong typing (8.6) needs the INT8 flag for a Q/DQ network
        out.set.append("INT8")
    if (precision == "int8" or out.fp16_onnx) and "STRONGLY_TYPED" in network_flags:
        out.network.append("STRONGLY_TYPED")
    if (precision == "int8" or out.fp16_onnx) and strong:
        out.typing = "strongly typed"
    if not tf32 and "TF32" in builder_flags:
        out.clear.append("TF32")  # on by default in TensorRT: fp32 must mean fp32
    return out


@dataclass
class InputInfo:
    """One network input: its name, TensorRT's shape (-1 = dynamic), and the ONNX shape (symbols)
    with the input's index among the model's inputs (how the runnable-input search keys its dims)."""

    name: str
    shape: list[int]
    onnx_shape: list[Any] | None = None
    index: int = 0


def _ceil_to(v: int, step: int) -> int:
    return max(step, -(-v // step) * step)


def profile_shapes(inputs: list[InputInfo], opts, sizes: dict[str, int], multiple: int = 1
                   ) -> tuple[dict[str, tuple[list[int], list[int], list[int]]], list[str]]:
    """(min, opt, max) per input with a dynamic dim, and notes on where each size came from."""
    from app.runners.inputs import OTHER_DIM, dim_key

    out: dict[str, tuple[list[int], list[int], list[int]]] = {}
    notes: list[str] = []
    unknown = sorted(set(opts.shapes) - {i.name for i in inputs})
    if unknown:
        raise ConversionError(f"shapes names input(s) {', '.join(unknown)}, which the model does not take; its "
                              f"inputs are {', '.join(i.name for i in inputs)}")
    for inp in inputs:
        given = opts.shapes.get(inp.name)
        if given is not None:
            mn, op, mx = list(given.min), list(given.opt), list(given.max)
            if len(mn) != len(inp.shape):
                raise ConversionError(f"shapes[{inp.name!r}] has rank {len(mn)}; the input has rank {len(inp.shape)} "
                                      f"({inp.shape})")
            fixed = [j for j, d in enumerate(inp.shape) if d >= 0 and not mn[j] == op[j] == mx[j] == d]
            if fixed:
                raise ConversionError(f"shapes[{inp.name!r}] changes dim {fixed[0]}, which the model fixes at "
                                      f"{inp.shape[fixed[0]]}")
            if any(d < 0 for d in inp.shape):
                out[inp.name] = (mn, op, mx)
                notes.append(f"{inp.name}: as given")
            continue
        if all(d >= 0 for d in inp.shape):
            continue
        dims: list[tuple[int, int, int]] = []
        for j, d in enumerate(inp.shape):
            if d >= 0:
                dims.append((d, d, d))
            elif j == 0:
                dims.append((opts.min_batch, opts.opt_batch, opts.max_batch))
            else:
                sym = inp.onnx_shape[j] if inp.onnx_shape and j < len(inp.onnx_shape) else None
                label = sym if isinstance(sym, str) and sym else f"{inp.name}[{j}]"
                o = sizes.get(dim_key(inp.index, j, sym))
                if o is None:
                    o = OTHER_DIM
                    notes.append(f"{label}: opt {o} (the input generator's default: no runnable size was found; "
                                 "pass shapes to choose)")
                else:
                    notes.append(f"{label}: opt {o} (the size the model was found to run on)")
                step = multiple if multiple > 1 and o % multiple == 0 else 1
                dims.append((_ceil_to(o // 2, step), o, 2 * o))
        mn, op, mx = ([t[k] for t in dims] for k in range(3))
        out[inp.name] = (mn, op, mx)
    return out, notes


def dims_needing_search(inputs: list[InputInfo], opts) -> bool:
    return any(d < 0 and j > 0 for i in inputs if i.name not in opts.shapes for j, d in enumerate(i.shape))


def qdq_report(model) -> dict[str, Any]:
    """The Q/DQ nodes of an ONNX ModelProto and what TensorRT would refuse in them: zero points
    other than 0 (TensorRT quantizes symmetrically) and types other than int8 (or fp8)."""
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None:
                consts[n.output[0]] = t
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    problems: list[str] = []
    for n in q + dq:
        if len(n.input) < 3 or not n.input[2]:
            continue  # no zero point: 0, and (QuantizeLinear) uint8 by the ONNX default
        zp = consts.get(n.input[2])
        if zp is None:
            problems.append(f"{n.op_type} {n.name!r}: its zero point {n.input[2]!r} is computed, not a constant")
            continue
        a = numpy_helper.to_array(zp)
        kind = a.dtype.name
        if kind not in ("int8", "float8_e4m3fn") and not kind.startswith("float8"):
            problems.append(f"{n.op_type} {n.name!r}: {kind} (TensorRT takes int8 Q/DQ)")
        elif a.size and (a.astype("float64") != 0).any():
            problems.append(f"{n.op_type} {n.name!r}: zero point {a.ravel()[:4].tolist()} (TensorRT needs 0: "
                            "symmetric quantization)")
    for n in q:
        if len(n.input) < 3 or not n.input[2]:
            problems.append(f"QuantizeLinear {n.name!r}: no zero point, so uint8 (TensorRT takes int8 Q/DQ)")
    return {"quantize": len(q), "dequantize": len(dq), "problems": problems}


def describe_parser_errors(errors: list[dict[str, Any]], nodes: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Parser errors with the failing node's name and operator: from the error itself (TensorRT 10+),
    else looked up by the node index in the ONNX graph (``nodes``: (name, op_type) in graph order)."""
    out = []
    for e in errors:
        d = dict(e)
        idx = d.get("node")
        if isinstance(idx, int) and 0 <= idx < len(nodes):
            d["node_name"] = d.get("node_name") or nodes[idx][0]
            d["node_operator"] = d.get("node_operator") or nodes[idx][1]
        out.append(d)
    return out


_NO_IMPORTER = re.compile(r"No importer registered for op: ?(\w+)")


def parser_failure(errors: list[dict[str, Any]], version: str) -> ConversionError:
    """One ConversionError naming the first failing node, its operator and the TensorRT version."""
    if not errors:
        return ConversionError(f"TensorRT {version}'s ONNX parser refused the model without saying why",
                               tool="tensorrt", tool_version=version)
    first = errors[0]
    op = first.get("node_operator") or None
    m = _NO_IMPORTER.search(str(first.get("desc", "")))
    unsupported = op if ("UNSUPPORTED" in str(first.get("code", "")) or m) else None
    if m and not op:
        op = unsupported = m.group(1)
    where = ""
    if first.get("node_name") or op:
        where = f" at node {first.get('node_name') or '?'!r}" + (f" ({op})" if op else "")
    more = f" (+{len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    msg = f"TensorRT {version}'s ONNX parser failed{where}: {first.get('desc') or first.get('code')}{more}"
    hint = (f"TensorRT {version} cannot import {op}: rewrite that part of the model, add a TensorRT plugin for it, "
            "or target ONNX Runtime / OpenVINO instead") if unsupported else None
    return ConversionError(msg[:1500], tool="tensorrt", tool_version=version, unsupported_operator=unsupported,
                           hint=hint)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def cache_path(gpu: dict[str, Any], version: str, base: Path | None = None) -> Path:
    """This host's timing cache for one GPU model, compute capability and TensorRT version (a
    cache is only valid for those: TensorRT refuses a mismatched one)."""
    if base is None:
        env = os.environ.get(CACHE_ENV)
        base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
            "modelport" / "tensorrt"
    cc = str(gpu.get("compute_capability") or "unknown").replace(".", "")
    return base / f"timing-{_slug(gpu.get('name', 'gpu'))}-sm{cc}-trt{_slug(version)}.cache"


def engine_record(*, version: str, gpu: dict[str, Any], opts, flags: BuildFlags,
                  profile: dict[str, tuple[list[int], list[int], list[int]]], io: dict[str, Any],
                  calibration: dict[str, Any] | None, timing_cache: dict[str, Any]) -> dict[str, Any]:
    """What the engine is bound to and how it was built: the runner checks a host against it."""
    return {
        "kind": RECORD_KIND,
        "tensorrt_version": version,
        "gpu": {k: gpu[k] for k in ("name", "compute_capability", "driver", "memory_mib") if k in gpu},
        "hardware_compatibility": opts.hardware_compatibility,
        "precision": opts.precision,
        "flags": flags.to_dict(),
        "builder_optimization_level": opts.builder_optimization_level,
        "workspace_mib": opts.workspace_mib,
        "profile": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in profile.items()},
        "io": io,
        "calibration": calibration,
        "timing_cache": timing_cache,
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- TensorRT calls


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConversionError(f"TensorRT is not installed here ({e})", tool="tensorrt",
                              hint="run this step on a gpu worker built from Dockerfile.gpu") from None
    return trt


def _logger(trt):
    """A TensorRT logger that prints to the job log and keeps the errors for the failure message."""

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            rank = int(severity)
            if rank <= int(trt.ILogger.Severity.WARNING):
                print(f"[tensorrt] {str(severity).rsplit('.', 1)[-1]}: {msg}", flush=True)
            if rank <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return Log()


def _members(enum) -> set[str]:
    """The member names of a TensorRT enum (pybind11 enums have ``__members__``, like Python's)."""
    members = getattr(enum, "__members__", None)
    return set(members) if members is not None else {k for k in dir(enum) if k.isupper() and not k.startswith("_")}


def _error_dict(err) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key in ("code", "desc", "node", "node_name", "node_operator", "file", "line", "func"):
        fn = getattr(err, key, None)
        if fn is None:
            continue
        try:
            v = fn()
        except Exception:  # noqa: BLE001 - an accessor this TensorRT lacks
            continue
        d[key] = v if isinstance(v, int | str) else str(v)
    return d


def _onnx_nodes(path: Path) -> list[tuple[str, str]]:
    import onnx

    return [(n.name, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node]


def _search_sizes(path: Path) -> tuple[dict[str, int], int, list[str]]:
    """Sizes of the dynamic non-batch dims the ONNX model runs on (the search validation uses)."""
    from app.runners import search
    from app.runners.onnxruntime_runner import OnnxRuntimeRunner

    ev = search.evidence("onnx", path.parent, path.name)
    runner = OnnxRuntimeRunner(path, "fp32", None)
    try:
        plan = search.find(runner, runner.inputs(), ev)
    finally:
        runner.close()
    warns = [] if plan.found else ["no runnable size was found for the dynamic dims (" + plan.failure() + ")"]
    return plan.sizes, ev.multiple, warns


def _onnx_specs(path: Path) -> list[dict[str, Any]]:
    import onnx

    from app.conversion.edges._common import onnx_signature

    return onnx_signature(onnx.load(str(path), load_external_data=False))["inputs"]


def _quantize(src: Source, path: Path, work: Path, opts, samples: str | None, warns: list[str]) -> tuple[Path, dict]:
    """Symmetric INT8 Q/DQ for TensorRT, calibrated on the input sets the ONNX static INT8 edge uses."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from app.conversion.edges import _calibration
    from app.conversion.edges._common import ONNX_INLINE_LIMIT, onnx_tensor_bytes

    feeds, where = _calibration.feeds("onnx", path.parent, path.name, opts.calibration, samples)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    import onnx

    large = onnx_tensor_bytes(onnx.load(str(path), load_external_data=False)) >= ONNX_INLINE_LIMIT
    out = work / "qdq.onnx"
    try:
        quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
                        reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANT_OPS), use_external_data_format=large,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "AddQDQPairToWeight": True, "DedicatedQDQPair": True,
                                       "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
    except ConversionError:
        raise
    except Exception as e:
        from app.conversion.edges._common import fail

        raise fail(e, doing="INT8 Q/DQ quantisation for TensorRT (calibration)", tool="onnxruntime") from None
    if opts.calibration == "synthetic":
        warns.append("calibrated on synthetic inputs, not real data: activation ranges may not match what the model "
                     "sees in use, so int8 accuracy can be worse than the validation here shows; upload samples and "
                     "use calibration=samples")
    return out, {"kind": opts.calibration, "sets": len(feeds), "source": where,
                 "method": "onnxruntime quantize_static, MinMax, symmetric int8 activations and weights, "
                           f"ops {', '.join(QUANT_OPS)}, per_channel={opts.per_channel}"}


def _prepare(src: Source, opts, flags: BuildFlags, work: Path, samples: str | None, warns: list[str],
             steps: list[str]) -> tuple[Path, dict | None]:
    """The ONNX file TensorRT parses: the source, its Q/DQ version (int8) or its float16 version."""
    import onnx

    path = src.primary_path
    calibration = None
    if opts.precision == "int8":
        report = qdq_report(onnx.load(str(path), load_external_data=False))
        if report["quantize"] or report["dequantize"]:
            if report["problems"]:
                raise ConversionError("the ONNX is quantized in a way TensorRT refuses: " + "; ".join(report["problems"][:3])
                                      + (f" (+{len(report['problems']) - 3} more)" if len(report["problems"]) > 3 else ""),
                                      tool="tensorrt", hint="quantize the fp32 model here instead (target tensorrt with "
                                      "precision=int8 and calibration=samples or synthetic from the fp32 ONNX)")
            if opts.calibration != "none":
                warns.append("the ONNX already has Q/DQ nodes: built with its own scales; calibration was not run")
            steps.append(f"explicit quantization from the source's {report['quantize']} QuantizeLinear / "
                         f"{report['dequantize']} DequantizeLinear nodes")
            return path, {"kind": "source Q/DQ", **report}
        if opts.calibration == "none":
            raise ConversionError("precision=int8 needs calibration=samples or calibration=synthetic (this ONNX has no "
                                  "Q/DQ nodes to take scales from)", tool="tensorrt",
                                  hint="upload samples (PUT /v1/models/{id}/samples) and pass calibration=samples")
        path, calibration = _quantize(src, path, work, opts, samples, warns)
        steps.append(f"Q/DQ INT8 with onnxruntime quantize_static, calibrated on {calibration['source']}")
    elif flags.fp16_onnx:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(path), load_external_data=True)
        model = convert_float_to_float16(model, keep_io_types=True)
        path = work / "fp16.onnx"
        from app.conversion.edges._common import save_onnx

        save_onnx(model, path, details={})
        steps.append("float16 ONNX (onnxruntime.transformers.float16, float32 inputs/outputs kept): this TensorRT "
                     "has no FP16 builder flag")
    return path, calibration


def _load_cache(trt, config, path: Path | None, warns: list[str]) -> tuple[Any, dict[str, Any]]:
    info: dict[str, Any] = {"path": str(path) if path else None, "loaded_bytes": 0}
    if path is None:
        return None, {"used": False}
    data = b""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError as e:
        warns.append(f"timing cache {path} unreadable ({e}): starting an empty one")
    cache = config.create_timing_cache(data)
    if cache is None and data:
        warns.append(f"timing cache {path} was refused by TensorRT: starting an empty one")
        data, cache = b"", config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        warns.append("TensorRT did not take a timing cache: building without one")
        return None, {**info, "used": False}
    info["loaded_bytes"] = len(data)
    return cache, {**info, "used": True}


def _save_cache(config, path: Path, info: dict[str, Any], warns: list[str]) -> None:
    try:
        blob = memoryview(config.get_timing_cache().serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)  # atomic: a concurrent build reads the old or the new cache, never half
        info["saved_bytes"] = len(blob)
    except Exception as e:  # noqa: BLE001 - the engine is built; the cache is an optimisation
        warns.append(f"timing cache not saved to {path}: {type(e).__name__}: {e}")


def _io_of(trt, engine) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        spec = {"name": name, "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                "shape": [int(d) if d >= 0 else None for d in engine.get_tensor_shape(name)]}
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            out["inputs"].append(spec)
        else:
            out["outputs"].append(spec)
    return out


def from_onnx(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    from app import host
    from app.conversion.registry import ToTensorRTOptions

    opts = parse_options(ToTensorRTOptions, options)
    trt = _import_trt()
    version = str(trt.__version__)
    gpu = host.cuda_device()
    if gpu is None:
        raise ConversionError(NO_DEVICE, tool="tensorrt", tool_version=version,
                              hint="run this step on a worker of the gpu queue")
    warns: list[str] = []
    steps: list[str] = []
    flags = choose_flags(version, _members(trt.NetworkDefinitionCreationFlag), _members(trt.BuilderFlag),
                         opts.precision, tf32=opts.tf32)
    work = out_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        onnx_path, calibration = _prepare(src, opts, flags, work, options.get("samples"), warns, steps)
        log = _logger(trt)
        builder = trt.Builder(log)
        mask = 0
        for name in flags.network:
            mask |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = builder.create_network(mask)
        parser = trt.OnnxParser(network, log)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [_error_dict(parser.get_error(i)) for i in range(parser.num_errors)]
            raise parser_failure(describe_parser_errors(errors, _onnx_nodes(onnx_path)), version)
        steps.append(f"TensorRT {version} ONNX parser ({flags.typing}"
                     + (f", network flags {', '.join(flags.network)}" if flags.network else "") + ")")
        specs = {s["name"]: (k, s["shape"]) for k, s in enumerate(_onnx_specs(src.primary_path))}
        inputs = []
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if getattr(t, "is_shape_tensor", False):
                raise ConversionError(f"input {t.name!r} is a shape tensor (its values set shapes): not supported here",
                                      tool="tensorrt", tool_version=version)
            k, onnx_shape = specs.get(t.name, (i, None))
            inputs.append(InputInfo(t.name, [int(d) for d in t.shape], onnx_shape, k))
        sizes, multiple = {}, 1
        if dims_needing_search(inputs, opts):
            sizes, multiple, more = _search_sizes(src.primary_path)
            warns += more
        profile, notes = profile_shapes(inputs, opts, sizes, multiple)

        config = builder.create_builder_config()
        for name in flags.set:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in flags.clear:
            config.clear_flag(getattr(trt.BuilderFlag, name))
        if opts.workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
        config.builder_optimization_level = opts.builder_optimization_level
        if opts.hardware_compatibility == "ampere_plus":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
            warns.append("hardware_compatibility=ampere_plus: the engine runs on any Ampere or later GPU, a little "
                         "slower than one built for this GPU alone")
        if profile:
            prof = builder.create_optimization_profile()
            for name, (mn, op, mx) in profile.items():
                prof.set_shape(name, tuple(mn), tuple(op), tuple(mx))
            config.add_optimization_profile(prof)
            steps.append("optimisation profile: " + "; ".join(f"{k} min {v[0]} opt {v[1]} max {v[2]}"
                                                              for k, v in profile.items()))
        cache_file = cache_path(gpu, version) if opts.timing_cache else None
        cache, cache_info = _load_cache(trt, config, cache_file, warns)  # held until the build ends
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            said = "; ".join(log.errors[-3:]) or "see the job log"
            raise ConversionError(f"TensorRT {version} could not build the engine on {gpu.get('name')}: {said}"[:1500],
                                  tool="tensorrt", tool_version=version,
                                  hint="a larger workspace_mib, a narrower profile (shapes, max_batch), or another "
                                       "precision")
        if cache_info.get("used"):
            _save_cache(config, cache_file, cache_info, warns)
        plan = memoryview(serialized)
        engine = trt.Runtime(log).deserialize_cuda_engine(plan)
        if engine is None:
            raise ConversionError(f"TensorRT {version} built a plan it cannot load back: {'; '.join(log.errors[-3:])}",
                                  tool="tensorrt", tool_version=version)
        io = _io_of(trt, engine)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out_dir / ENGINE).write_bytes(plan)
    record = engine_record(version=version, gpu=gpu, opts=opts, flags=flags, profile=profile, io=io,
                           calibration=calibration, timing_cache=cache_info)
    (out_dir / RECORD).write_text(json.dumps(record, indent=1))
    if opts.precision == "fp16":
        warns.append("fp16: TensorRT runs layers in float16 where it is faster, so outputs differ from fp32 at the "
                      "fp16 tolerance")
    details = {"precision": opts.precision, "steps": steps, "profile_notes": notes, "engine_record": RECORD,
               "built_for": record["gpu"], "tensorrt_version": version, **io}
    return Result(primary=ENGINE, details=details, warnings=warns,
                  versions={"tensorrt": version, **versions("onnx", "onnxruntime", "onnxruntime-gpu")})
