"""torch.export programs and TorchScript to ONNX, and torch.export programs to TorchScript."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any

from app.conversion.edges._common import (
    fail,
    onnx_opsets,
    onnx_signature,
    parse_options,
    save_onnx,
    tool_version,
    versions,
)
from app.sandbox.io import ConversionError, Result, Source

_UNSUPPORTED_HINT = ("the exporter has no ONNX translation for this operator: rewrite that part of the model "
                     "with supported operators, register a custom_translation_table, or convert to another "
                     "target (OpenVINO reads the .pt2 directly)")


# ----------------------------------------------------------------------------- helpers


def load_program(src: Source):
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(src.primary_path))
    except Exception as e:
        raise ConversionError(f"could not load the torch.export archive {src.primary}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:1500],
                              tool="torch", tool_version=torch.__version__,
                              hint="the .pt2 must be written by torch.export.save; a newer torch than "
                                   f"{torch.__version__} or a custom operator library may be needed") from None


def user_inputs(ep) -> list[tuple[str, Any]]:
    """(name, example value meta) of the program's user inputs, in call order."""
    names = list(ep.graph_signature.user_inputs)
    metas = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    return [(n, metas.get(n)) for n in names]


def symbolic_shape(val) -> list[int | str]:
    """Shape of a FakeTensor with symbolic dims as their expression strings."""
    import torch

    out: list[int | str] = []
    for d in val.shape:
        if isinstance(d, torch.SymInt):
            out.append(str(d.node.expr))
        else:
            out.append(int(d))
    return out


def _example_inputs(ep, *, symbolic_size: int = 2) -> tuple[tuple, dict[str, list[int]]]:
    """Example tensors at the program's input shapes; each symbol gets ``symbolic_size`` clipped to its
    range constraint."""
    import sympy
    import torch

    ranges = {}
    for sym, vr in ep.range_constraints.items():
        ranges[str(sym)] = (vr.lower, vr.upper)

    def value_for(sym) -> int:
        lo, hi = ranges.get(str(sym), (None, None))
        v = symbolic_size
        try:
            if lo is not None and v < int(lo):
                v = int(lo)
            if hi is not None and hi.is_finite and v > int(hi):
                v = int(hi)
        except (TypeError, AttributeError):
            pass
        return v

    gen = torch.Generator().manual_seed(0)
    args, shapes = [], {}
    for name, val in user_inputs(ep):
        if not isinstance(val, torch.Tensor):
            raise ConversionError(f"input '{name}' of the program is not a tensor ({type(val).__name__}); "
                                  "only tensor inputs can be traced", tool="torch", tool_version=torch.__version__)
        shape = []
        for d in val.shape:
            if isinstance(d, torch.SymInt):
                expr = d.node.expr
                shape.append(int(expr.subs({s: value_for(s) for s in expr.free_symbols})) if isinstance(
                    expr, sympy.Expr) else value_for(expr))
            else:
                shape.append(int(d))
        shapes[name] = shape
        args.append(_random(shape, val.dtype, gen))
    return tuple(args), shapes


def _random(shape: list[int], dtype, gen):
    import torch

    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.randint(0, 2, shape, generator=gen).to(dtype)


def _finalize_onnx(tmp: Path, out_dir: Path, details: dict[str, Any]) -> str:
    """Move an exported ONNX (maybe with external data) to ``out_dir/model.onnx``: one
    self-contained file below 2 GiB, else with ``model.onnx.data`` beside it."""
    import onnx

    model = onnx.load(str(tmp), load_external_data=True)
    target = out_dir / "model.onnx"
    save_onnx(model, target, details=details)
    return target.name


def _check_dynamic(expected: list[tuple[str, list[int | str]]], model, *, strict: bool) -> dict[str, Any]:
    """Compare the source's symbolic input dims with the ONNX graph inputs (by position)."""
    sig = onnx_signature(model)
    report, lost = {}, []
    for (name, dims), onnx_in in zip(expected, sig["inputs"], strict=False):
        got = onnx_in["shape"] or []
        report[onnx_in["name"]] = got
        for i, d in enumerate(dims):
            if isinstance(d, str) and i < len(got) and not isinstance(got[i], str):
                lost.append(f"{name}[{i}] ({d}) became {got[i]}")
    if lost and strict:
        raise ConversionError("the exported ONNX fixed dimensions that are dynamic in the program: " + ", ".join(lost),
                              tool="torch.onnx", tool_version=tool_version("torch"),
                              hint="export with dynamic_shapes covering these dims (torch.export.Dim) and avoid "
                                   "shape-specialising code (e.g. Python ints from tensor sizes)")
    return {"onnx_input_shapes": report, "dynamic_lost": lost}


# ----------------------------------------------------------------------------- edges


def export_program(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """torch.export (.pt2) -> ONNX with the dynamo exporter; dynamic dims kept."""
    import onnx
    import torch

    from app.conversion.registry import ToOnnxOptions

    opts = parse_options(ToOnnxOptions, options)
    ep = load_program(src)
    expected = [(n, symbolic_shape(v)) for n, v in user_inputs(ep) if isinstance(v, torch.Tensor)]
    tmp_dir = out_dir / ".export"  # everything left in out_dir becomes part of the artifact: clean up
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / "model.onnx"
    warns: list[str] = []
    details: dict[str, Any] = {"exporter": "torch.onnx.export(dynamo=True)", "requested_opset": opts.opset}
    try:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                program = torch.onnx.export(ep, (), None, dynamo=True, opset_version=opts.opset,
                                            external_data=True)
                program.save(str(tmp), external_data=True)
        except Exception as e:
            raise fail(e, doing="torch.onnx.export (dynamo)", tool="torch.onnx", dist="torch",
                       unsupported_hint=_UNSUPPORTED_HINT) from None
        warns += _interesting(caught)
        final = _finalize_onnx(tmp, out_dir, details)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    header = onnx.load(str(out_dir / final), load_external_data=False)
    details.update(onnx_signature(header))
    details["opsets"] = onnx_opsets(header)
    details["ir_version"] = int(header.ir_version)
    details.update(_check_dynamic(expected, header, strict=True))
    if details["opsets"].get("ai.onnx") not in (None, opts.opset):
        warns.append(f"requested opset {opts.opset}, the exporter wrote opset {details['opsets'].get('ai.onnx')}")
    return Result(primary=final, details=details, warnings=warns,
                  versions=versions("torch", "onnx", "onnxscript", "onnx-ir"))


def _interesting(caught) -> list[str]:
    out = []
    for w in caught:
        text = str(w.message).splitlines()[0][:300]
        if issubclass(w.category, DeprecationWarning | FutureWarning) or text in out:
            continue
        out.append(text)
    return out[:10]


def _spec_inputs(src: Source) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """Input names in forward order and their validated specs; warnings."""
    from pydantic import ValidationError

    from app.conversion.base import InputSpec

    specs = src.input_specs or {}
    forward = [i.get("name") for i in (src.inspection.get("inputs") or []) if i.get("name")]
    warns = []
    if forward:
        missing = [n for n in forward if n not in specs]
        unknown = [n for n in specs if n not in forward]
        if missing or unknown:
            parts = []
            if missing:
                parts.append("inputs without a spec: " + ", ".join(missing))
            if unknown:
                parts.append("specs for names forward() does not take: " + ", ".join(unknown))
            raise ConversionError(
                "TorchScript records no input shapes, so every forward() input needs an input_spec; "
                + "; ".join(parts),
                hint='give input_specs like {"' + (missing or forward)[0]
                     + '": {"shape": [1, 3, 224, 224], "dtype": "float32", "dynamic": {"0": "batch"}}}')
        names = forward
    else:
        if not specs:
            raise ConversionError("TorchScript records no input shapes and forward()'s signature could not be "
                                  "read: give input_specs for every input, in forward() order",
                                  hint='e.g. {"x": {"shape": [1, 3, 224, 224], "dynamic": {"0": "batch"}}}')
        names = list(specs)
        warns.append("forward()'s signature was not readable; inputs are taken in the order of input_specs")
    validated = {}
    for n in names:
        try:
            validated[n] = InputSpec.model_validate(specs[n]).model_dump()
        except ValidationError as e:
            raise ConversionError(f"input_specs['{n}'] is invalid: {e.errors()[0]['msg']}") from None
    return names, validated, warns


def export_torchscript(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """TorchScript -> ONNX with the TorchScript exporter (dynamo=False), shapes from input_specs."""
    import onnx
    import torch

    from app.conversion.registry import TorchScriptToOnnxOptions

    opts = parse_options(TorchScriptToOnnxOptions, options)
    try:
        module = torch.jit.load(str(src.primary_path), map_location="cpu")
        module.eval()
    except Exception as e:
        raise ConversionError(f"could not load the TorchScript archive: {type(e).__name__}: {e}"[:1500],
                              tool="torch", tool_version=torch.__version__) from None
    searched = []
    forward = [i.get("name") for i in (src.inspection.get("inputs") or []) if i.get("name")]
    if not src.input_specs and forward:  # the file records no shapes: find them in the forward graph
        from app.runners.search import torchscript_specs

        found, why, tried = torchscript_specs(module, forward)
        if not found:
            raise ConversionError(
                "TorchScript records no input shapes, and none were found from the forward graph ("
                + "; ".join(tried[:3]) + "): give input_specs for every forward() input",
                hint='give input_specs like {"' + forward[0]
                     + '": {"shape": [1, 3, 224, 224], "dtype": "float32", "dynamic": {"0": "batch"}}}')
        src = dataclasses.replace(src, input_specs=found)
        searched = ["input_specs found from the forward graph (give input_specs to choose them): "
                    + "; ".join(f"{n} = {s['dtype']}{s['shape']}" for n, s in found.items()) + " — " + "; ".join(why)]
        if tried:
            searched.append("sizes tried first: " + "; ".join(tried[:3]))
    names, specs, warns = _spec_inputs(src)
    warns = searched + warns
    gen = torch.Generator().manual_seed(0)
    args, dynamic_axes, example_shapes = [], {}, {}
    for n in names:
        spec = specs[n]
        shape = list(spec["shape"])
        axes = {int(k): v for k, v in (spec.get("dynamic") or {}).items()}
        for i, d in enumerate(shape):
            if d <= 0 and i not in axes:
                axes[i] = f"{n}_dim{i}"
        bad = [i for i in axes if not 0 <= i < len(shape)]
        if bad:
            raise ConversionError(f"input_specs['{n}'] marks axis {bad[0]} dynamic but the shape has rank {len(shape)}")
        for i in axes:
            shape[i] = max(shape[i], 2)  # a size-1 example dim is specialised by the tracer
        example_shapes[n] = shape
        if axes:
            dynamic_axes[n] = axes
        args.append(_random(shape, getattr(torch, spec["dtype"]), gen))
    try:
        with torch.no_grad():
            sample = module(*args)
    except Exception as e:
        raise ConversionError(f"the model does not run on inputs built from input_specs {example_shapes}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:1500],
                              tool="torch", tool_version=torch.__version__,
                              hint="check the shapes and dtypes in input_specs") from None
    n_out = len(sample) if isinstance(sample, list | tuple) else 1
    output_names = [f"output_{i}" for i in range(n_out)]
    tmp_dir = out_dir / ".export"  # everything left in out_dir becomes part of the artifact: clean up
    tmp_dir.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"exporter": "torch.onnx.export(dynamo=False)", "example_shapes": example_shapes,
                               "dynamic_axes": {k: {str(a): v for a, v in ax.items()} for k, ax in dynamic_axes.items()}}
    try:
        try:
            with warnings.catch_warnings(record=True) as caught, torch.no_grad():
                warnings.simplefilter("always")
                torch.onnx.export(module, tuple(args), str(tmp_dir / "model.onnx"), dynamo=False,
                                  opset_version=opts.opset, input_names=names, output_names=output_names,
                                  dynamic_axes=dynamic_axes or None)
        except Exception as e:
            raise fail(e, doing="torch.onnx.export (TorchScript exporter)", tool="torch.onnx", dist="torch",
                       unsupported_hint=_UNSUPPORTED_HINT) from None
        warns += [w for w in _interesting(caught) if "no signature found" not in w]
        final = _finalize_onnx(tmp_dir / "model.onnx", out_dir, details)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    header = onnx.load(str(out_dir / final), load_external_data=False)
    details.update(onnx_signature(header))
    details["opsets"] = onnx_opsets(header)
    details["ir_version"] = int(header.ir_version)
    expected = [(n, [dynamic_axes.get(n, {}).get(i, d) for i, d in enumerate(example_shapes[n])]) for n in names]
    details.update(_check_dynamic(expected, header, strict=True))
    warns.append("torch.jit (TorchScript) is deprecated in torch 2.13; prefer exporting a torch.export program "
                 "(.pt2)")
    return Result(primary=final, details=details, warnings=warns, versions=versions("torch", "onnx"))


def program_to_torchscript(src: Source, out_dir: Path, options: dict[str, Any]) -> Result:
    """torch.export (.pt2) -> TorchScript by tracing ``ep.module()`` at the exported shapes."""
    import torch

    from app.conversion.registry import NoOptions

    parse_options(NoOptions, options)
    ep = load_program(src)
    args, shapes = _example_inputs(ep, symbolic_size=2)
    module = ep.module()  # its shape guards trace to no-ops (with a TracerWarning each)
    warns = ["torch.jit (TorchScript) is deprecated in torch 2.13: the artifact is for runtimes that still need "
             "it (LibTorch, older mobile); prefer the .pt2 itself"]
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            traced = torch.jit.trace(module, args, check_trace=False, strict=False)
    except Exception as e:
        raise fail(e, doing="torch.jit.trace", tool="torch.jit", dist="torch") from None
    tracer = [w for w in _interesting(caught) if "deprecated" not in w]
    dynamic = {n: [i for i, d in enumerate(symbolic_shape(v)) if isinstance(d, str)] for n, v in user_inputs(ep)
               if isinstance(v, torch.Tensor)}
    details: dict[str, Any] = {"example_shapes": shapes, "dynamic_axes": dynamic,
                               "tracer_warnings": tracer}
    # Tracing records the ops run at the example shapes: check another size of each dynamic dim.
    if any(dynamic.values()):
        alt_args, alt_shapes = _example_inputs(ep, symbolic_size=3)
        details["checked_shapes"] = alt_shapes
        try:
            with torch.no_grad():
                ref, got = module(*alt_args), traced(*alt_args)
            ref_t, got_t = _flat(ref), _flat(got)
            ok = len(ref_t) == len(got_t) and all(
                a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4)
                for a, b in zip(ref_t, got_t, strict=True))
        except Exception as e:
            ok = False
            details["dynamic_check_error"] = f"{type(e).__name__}: {e}"[:500]
        details["dynamic_check"] = "ok" if ok else "failed"
        if not ok:
            warns.append(f"the traced TorchScript does not reproduce the program at shapes {alt_shapes}: it is "
                         f"specialised to the example shapes {shapes}")
    if tracer and details.get("dynamic_check") != "ok":
        warns.append(f"torch.jit.trace reported {len(tracer)} warning(s) (see details.tracer_warnings); "
                     "shape-dependent Python logic is frozen at the example shapes")
    target = out_dir / "model.torchscript"
    torch.jit.save(traced, str(target))
    return Result(primary=target.name, details=details, warnings=warns, versions=versions("torch"))


def _flat(x) -> list:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _flat(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat(v)]
    return []
