"""ONNX -> ONNX with onnxruntime's tools: graph optimisation, float16, dynamic INT8 quantisation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from app.conversion.edges._common import (
    ONNX_INLINE_LIMIT,
    fail,
    onnx_opsets,
    onnx_signature,
    onnx_tensor_bytes,
    parse_options,
    prune_opset_imports,
    save_onnx,
    versions,
)
from app.sandbox.io import ConversionError, Result, Source

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}


def _session(path: Path, level: str = "ORT_DISABLE_ALL", optimized_to: Path | None = None, *, large: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if optimized_to is not None:
        so.optimized_model_filepath = str(optimized_to)
        if large:  # a > 2 GiB model cannot be written as one protobuf
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        optimized_to.name + ".data")
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _copy_external(src: Source, work: Path) -> None:
    base = Path(src.primary).parent
    for rel in src.paths:
        if rel == src.primary:
            continue
        try:
            inner = Path(rel).relative_to(base)
        except ValueError:
            continue
        link = work / inner
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():  # onnx refuses symlinked and hard-linked data files
            shutil.copyfile(src.root / rel, link)


def transform(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    import onnx
    import onnxruntime as ort
    from onnx.external_data_helper import uses_external_data

    from app.conversion.compat import check_onnx_file_for
    from app.conversion.registry import OnnxToOnnxOptions

    opts = parse_options(OnnxToOnnxOptions, options)
    warns, info = check_onnx_file_for("onnxruntime", src.primary_path)
    work = out_dir / ".work"
    work.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"source_onnx": info, "optimize": opts.optimize, "precision": opts.precision,
                               "steps": []}
    extra_versions: dict[str, str] = {}
    try:
        current = src.primary_path
        header = onnx.load(str(current), load_external_data=False)
        large = onnx_tensor_bytes(header) >= ONNX_INLINE_LIMIT
        if any(uses_external_data(t) for t in header.graph.initializer):
            if large:  # onnxruntime's optimised model keeps pointing at the source's data files
                _copy_external(src, work)
            else:  # inline: onnxruntime's shape inference cannot read small external tensors (Reshape shapes)
                current = work / "inline.onnx"
                onnx.save_model(onnx.load(str(src.primary_path), load_external_data=True), str(current))
                details["steps"].append("external data read inline")
        # 1. graph optimisation, by onnxruntime itself on the fp32 graph
        if opts.optimize != "none":
            optimized = work / "optimized.onnx"
            try:
                _session(current, _LEVELS[opts.optimize], optimized, large=large)
            except Exception as e:
                raise fail(e, doing=f"onnxruntime graph optimisation ({opts.optimize})", tool="onnxruntime") from None
            current = optimized
            details["steps"].append(f"onnxruntime {_LEVELS[opts.optimize]}")
            if opts.optimize == "extended":
                warns.append("extended optimisation fuses nodes into onnxruntime's com.microsoft operators: the "
                             "model runs on onnxruntime, not on other ONNX runtimes")
        # 2. precision
        if opts.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = onnx.load(str(current), load_external_data=True)
            unknown = sorted(set(opts.keep_fp32) - {n.name for n in model.graph.node})
            if unknown:
                raise ConversionError(f"keep_fp32 names node(s) the graph does not have: {', '.join(unknown[:5])}",
                                      hint="name nodes of the (optimised) graph, as a validation report gives them")
            try:
                model = convert_float_to_float16(model, keep_io_types=opts.keep_io_types,
                                                 disable_shape_infer=large, node_block_list=opts.keep_fp32 or None)
            except Exception as e:
                raise fail(e, doing="float16 conversion", tool="onnxruntime") from None
            details["steps"].append(f"onnxruntime.transformers.float16 (keep_io_types={opts.keep_io_types}"
                                    + (f", {len(opts.keep_fp32)} node(s) kept in fp32" if opts.keep_fp32 else "") + ")")
            if opts.keep_fp32:
                details["kept_fp32"] = list(opts.keep_fp32)
                details["dropped_round_trip_casts"] = _drop_round_trip_casts(model)
            current = work / "fp16.onnx"
            save_onnx(model, current, details={})
        elif opts.precision == "int8" and opts.calibration != "none":
            current = _quantize_static(src, current, work, opts, options.get("samples"), details, warns, large)
        elif opts.precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = work / "int8.onnx"
            rr = _reduce_range(opts, details, warns)
            try:
                quantize_dynamic(str(current), str(quantized), per_channel=opts.per_channel, reduce_range=rr,
                                 weight_type=QuantType.QInt8, use_external_data_format=large)
            except Exception as e:
                raise fail(e, doing="dynamic INT8 quantisation", tool="onnxruntime") from None
            details["steps"].append(f"onnxruntime.quantization.quantize_dynamic (QInt8, per_channel={opts.per_channel}, "
                                    f"reduce_range={rr})")
            current = quantized
        if not [s for s in details["steps"] if "external" not in s]:
            warns.append("optimize=none and precision=fp32: the model is only re-saved")
        # 3. one clean file (or .onnx + .data above 2 GiB), only the opset imports it uses
        model = onnx.load(str(current), load_external_data=True)
        dropped = prune_opset_imports(model)
        if dropped:
            details["dropped_unused_opset_imports"] = dropped
        target = out_dir / "model.onnx"
        save_onnx(model, target, details=details)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # 4. the artifact must load in onnxruntime
    try:
        _session(target)
    except Exception as e:
        raise ConversionError(f"the transformed model does not load in onnxruntime: {e}"[:1500], tool="onnxruntime",
                              tool_version=ort.__version__) from None
    header = onnx.load(str(target), load_external_data=False)
    _check_same_inputs(src.primary_path, header)
    details.update(onnx_signature(header))
    details["opsets"] = onnx_opsets(header)
    details["ir_version"] = int(header.ir_version)
    details["ops"] = sorted({(n.domain + "::" if n.domain else "") + n.op_type for n in header.graph.node})
    extra_versions.update(versions("onnx", "onnxruntime"))
    return Result(primary=target.name, details=details, warnings=warns, versions=extra_versions)


def _graph_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _check_same_inputs(source: Path, made) -> None:
    """The edge refuses its own broken output: a transform must not add graph inputs (an fp16
    pass once turned constant-filled weights into hundreds of them) nor lose any."""
    import onnx

    before = _graph_inputs(onnx.load(str(source), load_external_data=False))
    after = _graph_inputs(made)
    added, lost = [n for n in after if n not in before], [n for n in before if n not in after]
    if added or lost:
        parts = ([f"{len(added)} new input(s) ({', '.join(added[:5])}{', …' if len(added) > 5 else ''})"] if added
                 else []) + ([f"lost input(s) {', '.join(lost[:5])}"] if lost else [])
        raise ConversionError("the transformed model's inputs are not the source's: " + "; ".join(parts)
                              + " — weights became inputs (or inputs vanished), so it is not stored",
                              tool="onnxruntime", hint="try optimize=none, or another precision")


def _drop_round_trip_casts(model) -> int:
    """The float16 converter puts a float32 -> float16 -> float32 Cast pair between two nodes it
    keeps in float32, so the value still passes through float16 (and overflows there). Wire the
    consumers of such a pair to the float32 value; returns how many pairs went."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    producers = {o: n for n in graph.node for o in n.output}
    drop, rename, pairs = [], {}, 0
    for n in list(graph.node):
        if to(n) != 1 or n.input[0] not in producers:
            continue
        first = producers[n.input[0]]
        src = first.input[0] if to(first) == 10 else None
        if src is None or src not in producers or len(consumers.get(first.output[0], [])) != 1:
            continue
        if n.output[0] in outputs:  # a graph output: the float32 producer writes it itself
            if consumers.get(src) != [first]:
                continue
            up = producers[src]
            up.output[list(up.output).index(src)] = n.output[0]
        else:
            rename[n.output[0]] = src
        drop += [n, first]
        pairs += 1
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    for n in drop:
        graph.node.remove(n)
    return pairs


def _quantize_static(src: Source, current: Path, work: Path, opts, samples: str | None, details: dict,
                     warns: list[str], large: bool) -> Path:
    """Static QDQ INT8 (onnxruntime.quantization.quantize_static): activations calibrated (MinMax) on
    the samples or on generated inputs the model runs on."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from app.conversion.edges import _calibration

    feeds, where = _calibration.feeds("onnx", current.parent, current.name, opts.calibration, samples)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = work / "int8_static.onnx"
    rr = _reduce_range(opts, details, warns)
    try:
        quantize_static(str(current), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=opts.per_channel,
                        reduce_range=rr, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        use_external_data_format=large)
    except ConversionError:
        raise
    except Exception as e:
        raise fail(e, doing="static INT8 quantisation (calibration)", tool="onnxruntime") from None
    details["steps"].append(f"onnxruntime.quantization.quantize_static (QDQ, QInt8 activations and weights, "
                            f"per_channel={opts.per_channel}, reduce_range={rr}, MinMax calibration on {where})")
    details["calibration"] = {"kind": opts.calibration, "sets": len(feeds), "source": where}
    if opts.calibration == "synthetic":
        warns.append(_calibration.SYNTHETIC_WARNING)
    return out


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:  # not Linux: assume a modern CPU
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags or not any(f.startswith("avx") for f in flags)


def _reduce_range(opts, details: dict, warns: list[str]) -> bool:
    """7-bit weights where the int8 kernels would otherwise saturate (x86 without VNNI), unless told."""
    if opts.reduce_range is not None:
        return bool(opts.reduce_range)
    rr = not _has_vnni()
    details["reduce_range_auto"] = rr
    if rr:
        warns.append("int8 weights quantised to 7 bits (reduce_range): this host's CPU has no VNNI, where ONNX "
                     "Runtime's int8 products can saturate; pass reduce_range=false for full 8-bit weights on VNNI hosts")
    return rr
