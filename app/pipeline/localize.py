"""Where did a failed conversion go wrong? The first diverging tensor of the artifact.

``first_divergence(reference, candidate, feeds, profile=...)`` runs the source model and the artifact
on the failing input set with their intermediate tensors exposed, walks the reference graph in
topological order and reports the first tensor that is outside the tolerance of ``profile``, with
the op that produced it, its error, and the last matching tensor upstream of it::

    {"status": "found" | "not_found" | "unsupported", "reason": str, "compared": int,
     "first": {"tensor", "op_type", "node", "max_abs_err", "min_atol_to_pass", "reference_range",
               "candidate_range", "cosine_similarity", "shape", "elements_outside", "why"} | None,
     "last_matching": {"tensor", "op_type", "node"} | None, "transient": [str], "notes": [str],
     "seconds": float}

(ranges are ``[min, max]``, non-finite ends as the strings "inf" / "-inf" / "nan"; everything is
JSON-safe.)

Supported pairs
===============

* ONNX reference, ONNX candidate (fp16, int8 QDQ / dynamic quantisation, offline-optimised graphs):
  a temporary copy of each graph lists every chosen node output as a graph output and runs on
  ONNX Runtime's CPU provider with graph optimisations *disabled*, so the intermediate names exist.
  Models with external data are loaded without it and run from memory with
  ``session.model_external_initializers_file_folder_path`` pointing at the original directory:
  nothing is copied or written next to the model.
* ONNX reference, TFLite candidate (onnx2tf): LiteRT with every tensor kept; onnx2tf keeps no
  intermediate names and writes NHWC, so tensors are paired by value (:class:`_TFLiteSide`).
* ONNX reference, OpenVINO IR candidate: the IR keeps the ONNX tensor names on its ops' outputs
  (``output.get_names()``); outputs whose names are reference tensor names are added as model
  outputs (``model.add_outputs``) and the model is compiled on CPU with ``INFERENCE_PRECISION_HINT``
  f32 (also for fp16-compressed IRs: their weights are decompressed).

Anything else is ``"unsupported"`` with the reason.

Names and fusion
================

Only tensors present *by the same name* in both graphs are compared: those are the boundaries that
survived the conversion (a fused or renamed tensor, the Cast/QuantizeLinear tensors a converter
adds, exist in one graph only and are skipped). Reference tensors that are not floating point
(shapes, indices, masks) are skipped too. At most ``max_tensors`` tensors are exposed per run; a
bigger graph is sampled evenly and the gap between the last matching and the first diverging sample
is searched again with a further run (while ``budget_s`` allows), so the answer is exact whenever
the budget suffices.

Criterion
=========

Per tensor, the profile's numbers (:func:`app.pipeline.validation.resolve_tolerance`, per-output
overrides keyed by tensor name apply): elementwise ``|c - r| <= max(atol, atol_scale*max|r|) +
rtol*|r|``; for profiles with ``min_cosine`` (int8) cosine similarity ``>= min_cosine`` instead (a
tensor that also passes elementwise passes). A non-finite candidate value where the reference is
finite (fp16 overflow to inf) diverges, as does a shape change.

A divergence counts only if it *propagates*: the nearest compared tensors downstream of it (through
the reference graph's consumers) diverge too, for ``_CONFIRM_DEPTH`` levels or until nothing
downstream can be compared. One whose downstream tensors match again is listed in ``transient`` and
not reported: that is what a name moved by a fusion looks like (OpenVINO folds BatchNormalization's
scale into a depthwise convolution and leaves the convolution's ONNX name on the scaled result), and
what a difference that does not matter looks like (an fp16 rounding that a Relu or a pooling erases).
The first propagating divergence in topological order has all its compared ancestors matching;
``last_matching`` is the latest matching compared tensor before it that is also its ancestor
(producer edges of the reference graph).

The instrumented runs are not the runs that failed validation: graph optimisations are off (ONNX)
and exposing a tensor stops the runtime fusing across it, so a failure that only comes from an
optimised kernel gives ``"not_found"``, which the reason says. Note that ONNX Runtime's CPU provider
on x86 has few float16 kernels: it runs islands of fp16 nodes in float32 and casts at their borders,
so an exposed fp16 tensor holds the float32 value rounded to fp16 (inf past 65504) while the run
itself may not overflow there; the propagation check keeps such local differences out."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

_FLOAT_ELEM_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_ONNX_NP = {1: "float32", 10: "float16", 11: "float64", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16",
            6: "int32", 7: "int64", 9: "bool", 12: "uint32", 13: "uint64"}
_EXT_DIR_KEY = "session.model_external_initializers_file_folder_path"
# a divergence counts once it carries on through this many levels of compared tensors downstream
# (or reaches the end of what can be compared): a tensor whose name moved onto another value in a
# fusion differs alone, and its consumer matches again
_CONFIRM_DEPTH = 3


class _Unsupported(Exception):
    pass


# ------------------------------------------------------------------------------ reference graph


class _Graph:
    """An ONNX graph's top-level nodes in (topological) file order, its tensors' producers and types."""

    def __init__(self, model):
        g = model.graph
        self.nodes = [(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input)) for i, n in enumerate(g.node)]
        self.order: list[str] = []  # node outputs in topological order
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        self.node_outputs: list[list[str]] = []
        for i, n in enumerate(g.node):
            for o in n.output:
                if o and o not in self.producer:
                    self.producer[o] = i
                    self.order.append(o)
            for t in set(n.input):
                if t:
                    self.consumers.setdefault(t, []).append(i)
            self.node_outputs.append([o for o in n.output if o])
        self.inputs = [(i.name, i.type.tensor_type.elem_type) for i in g.input
                       if i.name not in {t.name for t in g.initializer}]
        self.outputs = [o.name for o in g.output]
        self.elem_type: dict[str, int | None] = {}
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.elem_type[vi.name] = vi.type.tensor_type.elem_type
            elif vi.type.WhichOneof("value") is not None:
                self.elem_type[vi.name] = -1  # a sequence / map / optional: not a tensor

    def maybe_float(self, name: str) -> bool:
        t = self.elem_type.get(name)
        return t is None or t in _FLOAT_ELEM_TYPES

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            i = self.producer.get(stack.pop())
            if i is None:
                continue
            for t in self.nodes[i][2]:
                if t and t not in seen:
                    seen.add(t)
                    stack.append(t)
        return seen

    def frontier(self, name: str, comparable: set[str]) -> set[str]:
        """The nearest comparable tensors downstream of ``name`` (through consumers, stopping at each
        comparable tensor reached)."""
        out: set[str] = set()
        seen = {name}
        stack = [name]
        while stack:
            for i in self.consumers.get(stack.pop(), ()):
                for o in self.node_outputs[i]:
                    if o in seen:
                        continue
                    seen.add(o)
                    if o in comparable:
                        out.add(o)
                    else:
                        stack.append(o)
        return out

    def describe(self, name: str) -> dict[str, Any]:
        op_type, node, _ = self.nodes[self.producer[name]]
        return {"tensor": name, "op_type": op_type, "node": node}


def _tensors(graph):
    """Every TensorProto of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _inline_small_external(model, base_dir: Path) -> None:
    """Read the external data of non-float and tiny tensors into the proto: ONNX Runtime, loading a
    model from memory, reads external data only for the weights themselves and needs the values of
    shape-like constants (axes, shapes) in the proto. Big float weights stay in their files."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor

    for t in _tensors(model.graph):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        length = int(info["length"]) if info.get("length", "").isdigit() else None
        if t.data_type not in _FLOAT_ELEM_TYPES or (length is not None and length <= 1024):
            load_external_data_for_tensor(t, str(base_dir))


def _load_onnx(path: Path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:  # value types of intermediates (shapes are not needed): best effort
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    return model, inferred


# ------------------------------------------------------------------------------------- sides


def _cast_feeds(feeds: dict[str, np.ndarray], specs: list[tuple[str, str | None]],
                ref_names: list[str]) -> dict[str, np.ndarray]:
    """The reference's feeds by name (by position when the names differ), cast to ``specs``' dtypes."""
    names = [n for n, _ in specs]
    if set(names) <= set(feeds):
        picked = {n: feeds[n] for n in names}
    elif len(names) == len(ref_names) and set(ref_names) <= set(feeds):
        picked = {n: feeds[r] for n, r in zip(names, ref_names, strict=True)}
    else:
        raise _Unsupported(f"the feeds {sorted(feeds)} do not give the model's inputs {names}")
    out = {}
    for n, dtype in specs:
        a = np.asarray(picked[n])
        if dtype and dtype != "bfloat16" and a.dtype.name != dtype:
            a = a.astype(dtype)
        out[n] = np.ascontiguousarray(a)
    return out


class _OnnxSide:
    """An ONNX model on ONNX Runtime (CPU, graph optimisations off) with chosen tensors exposed."""

    def __init__(self, path: Path):
        self.path = path
        self.model, inferred = _load_onnx(path)
        self.graph = _Graph(inferred)
        self.names = set(self.graph.order)
        self.input_specs = [(n, _ONNX_NP.get(t)) for n, t in self.graph.inputs]
        _inline_small_external(self.model, path.parent)

    def run(self, names: list[str], feeds: dict[str, np.ndarray], ref_inputs: list[str]) -> dict[str, np.ndarray]:
        import onnx
        import onnxruntime as ort

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        have = {o.name for o in m.graph.output}
        for n in names:
            if n not in have:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
                have.add(n)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        # from memory: external data is read from the model's own directory, nothing is copied
        so.add_session_config_entry(_EXT_DIR_KEY, str(self.path.parent.resolve()))
        sess = ort.InferenceSession(m.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        want = list(names)
        res = sess.run(want, _cast_feeds(feeds, self.input_specs, ref_inputs))
        return dict(zip(want, res, strict=True))


def _ov_bin(root: Path, paths: list[str], primary: str) -> Path | None:
    stem = primary[:-4] if primary.lower().endswith(".xml") else primary
    bins = [p for p in paths if p.lower().endswith(".bin")]
    same = [p for p in bins if p[:-4] == stem]
    pick = same or (bins if len(bins) == 1 else [])
    return root / pick[0] if pick else None


class _OpenVinoSide:
    """An OpenVINO IR on the CPU plugin in f32 with the ops carrying chosen tensor names as outputs."""

    def __init__(self, root: Path, paths: list[str], primary: str):
        import openvino as ov

        self.core = ov.Core()
        self.xml = root / primary
        self.bin = _ov_bin(root, paths, primary)
        model = self._read()
        self.names: set[str] = set()
        for op in model.get_ops():
            if op.get_type_name() in ("Parameter", "Result"):
                continue
            for out in op.outputs():
                self.names.update(out.get_names())
        self.input_specs = []
        for i, p in enumerate(model.inputs):
            names = sorted(p.get_names())
            name = p.get_any_name() if names else f"input_{i}"
            t = p.get_element_type()
            try:
                dtype = np.dtype(t.to_dtype()).name
            except Exception:
                dtype = None
            self.input_specs.append((name, dtype))

    def _read(self):
        return self.core.read_model(str(self.xml), str(self.bin)) if self.bin else self.core.read_model(str(self.xml))

    def run(self, names: list[str], feeds: dict[str, np.ndarray], ref_inputs: list[str]) -> dict[str, np.ndarray]:
        model = self._read()
        wanted = set(names)
        ports: dict[str, Any] = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Parameter", "Result"):
                continue
            for out in op.outputs():
                for n in out.get_names() & wanted:
                    ports.setdefault(n, out)
        unique = list({(p.get_node().get_friendly_name(), p.get_index()): p for p in ports.values()}.values())
        if unique:
            model.add_outputs(unique)
        compiled = self.core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        args = _cast_feeds(feeds, self.input_specs, ref_inputs)
        res = request.infer([args[n] for n, _ in self.input_specs], share_inputs=False, share_outputs=False)
        by_name: dict[str, np.ndarray] = {}
        for port in compiled.outputs:
            value = None
            for n in port.get_names():
                if n in wanted and n not in by_name:
                    value = np.array(res[port]) if value is None else value
                    by_name[n] = value
        return by_name


class _TFLiteSide:
    """A TFLite artifact on LiteRT with every tensor kept (``experimental_preserve_all_tensors``).
    onnx2tf keeps no intermediate ONNX names (its tensors are named after TensorFlow ops, e.g.
    ``model/tf.nn.convolution/convolution``) and rewrites NCHW as NHWC, so tensors are matched by
    *value*: each float reference tensor is paired with the candidate tensor of the same element
    count, in the same or the channels-last layout, that is closest to it (among the
    ``_TFL_NEAR`` nearest in graph position). A tensor fused away pairs with nothing close; the
    propagation rule then keeps it out of the answer, as it does for names moved by a fusion."""

    def __init__(self, root: Path, primary: str):
        from app.runners.tflite_runner import _interpreter_class

        cls, _, _ = _interpreter_class()
        self.it = cls(model_path=str(root / primary), experimental_preserve_all_tensors=True)
        self.it.allocate_tensors()
        from app.runners.tflite_runner import signature_names

        details = self.it.get_input_details()
        named = signature_names(self.it, details, self.it.get_output_details())
        self.by_name = {(named[0].get(d["index"]) if named else None) or d["name"]: d["index"] for d in details}
        self.input_specs = [(n, np.dtype(d["dtype"]).name) for n, d in zip(self.by_name, details, strict=True)]
        self.names: set[str] = set()
        self.pairs: dict[str, tuple[int, tuple[int, ...] | None]] = {}
        self.values: dict[int, np.ndarray] = {}
        self.tensor_names: dict[int, str] = {}

    def _run_all(self, feeds: dict[str, np.ndarray], ref_inputs: list[str]) -> None:
        from app.runners.tflite_runner import _quant

        it = self.it
        args = _cast_feeds(feeds, self.input_specs, ref_inputs)
        shapes = {d["index"]: tuple(d["shape"]) for d in it.get_input_details()}
        for n, i in self.by_name.items():
            if shapes[i] != args[n].shape:
                it.resize_tensor_input(i, args[n].shape)
        it.allocate_tensors()
        for n, i in self.by_name.items():
            it.set_tensor(i, args[n])
        it.invoke()
        try:
            produced = {int(i) for op in it._get_ops_details() for i in op["outputs"]}
        except Exception:  # private API gone: every non-constant-looking tensor
            produced = None
        for t in it.get_tensor_details():
            if produced is not None and t["index"] not in produced:
                continue
            try:
                v = np.array(it.get_tensor(t["index"]))
            except ValueError:  # freed or never computed
                continue
            q = _quant(t)
            if q and v.dtype.kind in "iu":
                v = (v.astype(np.float32) - q[1]) * q[0]
            if v.dtype.kind == "f":
                self.values[t["index"]] = v
                self.tensor_names[t["index"]] = t["name"]

    def bind(self, ref, graph, feeds: dict[str, np.ndarray], ref_inputs: list[str], tol) -> None:
        """Run both once on ``feeds`` and pair reference tensors with candidate tensors by value."""
        self._run_all(feeds, ref_inputs)
        cands = sorted(self.values)
        by_size: dict[int, list[int]] = {}
        for i in cands:
            by_size.setdefault(self.values[i].size, []).append(i)
        rank = {i: k / max(1, len(cands) - 1) for k, i in enumerate(cands)}
        order = [t for t in graph.order if graph.maybe_float(t)]
        for start in range(0, len(order), 2000):
            chunk = order[start:start + 2000]
            ref_vals = ref.run(chunk, feeds, ref_inputs)
            for t in chunk:
                r = ref_vals.get(t)
                if r is None or np.asarray(r).dtype.kind != "f" or not np.asarray(r).size:
                    continue
                r = np.asarray(r, dtype=np.float64)
                pos = graph.order.index(t) / max(1, len(graph.order) - 1)
                near = sorted(by_size.get(r.size, []), key=lambda i, p=pos: abs(rank[i] - p))[:_TFL_NEAR]
                best = None
                for i in near:
                    c = self.values[i]
                    for perm in _layouts(r.shape, c.shape):
                        err = float(np.max(np.abs((r if perm is None else r.transpose(perm)) - c)))
                        if not np.isfinite(err):
                            err = float("inf")
                        if best is None or err < best[0]:
                            best = (err, i, perm)
                if best is not None:
                    self.pairs[t] = (best[1], best[2])
            del ref_vals
        self.names = set(self.pairs)

    def matched_name(self, t: str) -> str | None:
        return self.tensor_names.get(self.pairs[t][0]) if t in self.pairs else None

    def run(self, names: list[str], feeds: dict[str, np.ndarray], ref_inputs: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for n in names:
            if n in self.pairs:
                i, perm = self.pairs[n]
                v = self.values[i]
                out[n] = v if perm is None else v.transpose(np.argsort(perm))
        return out


_TFL_NEAR = 24


def _layouts(ref_shape: tuple[int, ...], cand_shape: tuple[int, ...]) -> list[tuple[int, ...] | None]:
    """The layouts that turn a reference tensor into the candidate's shape: as it is, or channels
    moved last (NCW/NCHW/NCDHW -> NWC/NHWC/NDHWC, onnx2tf's rewrite)."""
    out: list[tuple[int, ...] | None] = []
    if tuple(ref_shape) == tuple(cand_shape):
        out.append(None)
    if len(ref_shape) >= 3:
        perm = (0, *range(2, len(ref_shape)), 1)
        if tuple(ref_shape[k] for k in perm) == tuple(cand_shape) and tuple(ref_shape) != tuple(cand_shape):
            out.append(perm)
    return out


# --------------------------------------------------------------------------------- criterion


def _num(x: float) -> float | str:
    """A JSON-safe number: non-finite values as the strings "inf" / "-inf" / "nan"."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _range(a: np.ndarray) -> list[float | str] | None:
    if a.size == 0:
        return None
    if np.isnan(a).all():
        return ["nan", "nan"]
    return [_num(np.nanmin(a)), _num(np.nanmax(a))]


def _cosine(av: np.ndarray, bv: np.ndarray) -> float | None:
    na, nb = float(np.sqrt(np.dot(av, av))), float(np.sqrt(np.dot(bv, bv)))
    cos = 1.0 if na == nb == 0.0 else (0.0 if na == 0.0 or nb == 0.0 else float(np.dot(av, bv)) / (na * nb))
    return cos if math.isfinite(cos) else None


def _judge(ref: np.ndarray, cand: np.ndarray, crit: dict[str, Any]) -> dict[str, Any]:
    """Does ``cand`` match ``ref`` under ``crit``? ``passed``, ``why`` and the error numbers (value
    ranges and cosine only where they are needed: a failure, or a cosine criterion)."""
    r: dict[str, Any] = {"max_abs_err": None, "min_atol_to_pass": None, "cosine_similarity": None,
                         "reference_range": None, "candidate_range": None, "shape": list(ref.shape),
                         "outside": None}
    a = ref.astype(np.float64).ravel()

    def fail(why: str, **extra) -> dict[str, Any]:
        return {**r, "reference_range": _range(a), "candidate_range": _range(b) if b is not None else None,
                **extra, "passed": False, "why": why}

    b = None
    if ref.shape != cand.shape:
        return fail(f"shape changed: reference {list(ref.shape)} vs candidate {list(cand.shape)}")
    b = cand.astype(np.float64).ravel()
    fa, fb = np.isfinite(a), np.isfinite(b)
    finite = bool(fa.all() and fb.all())
    if finite:
        av, bv = a, b
    else:
        both = fa & fb
        av, bv = a[both], b[both]
    d = np.abs(av - bv)
    aref = np.abs(av)
    if d.size:
        r["max_abs_err"] = float(d.max())
        r["min_atol_to_pass"] = float(max(0.0, float(np.max(d - crit["rtol"] * aref))))
    if not finite:
        bad = fa & ~fb
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return fail(f"candidate is non-finite in {int(bad.sum())} of {a.size} elements where the reference is "
                        f"finite (first at flat index {i}: reference {a[i]:.6g} vs candidate {b[i]})",
                        min_atol_to_pass=None, outside=int(bad.sum()))
        odd = ~fa & ~((np.isnan(a) & np.isnan(b)) | (a == b))
        if odd.any():
            return fail(f"the reference's NaN/Inf are not matched in {int(odd.sum())} element(s)",
                        min_atol_to_pass=None, outside=int(odd.sum()))
    if not d.size:
        return {**r, "passed": True, "why": "no finite elements to compare"}
    atol_eff = max(crit["atol"], crit["atol_scale"] * float(aref.max()))
    viol = d > atol_eff + crit["rtol"] * aref
    r["outside"] = int(np.count_nonzero(viol))
    elementwise_ok = r["outside"] == 0
    if crit.get("min_cosine") is not None:
        cos = r["cosine_similarity"] = _cosine(av, bv)
        ok = elementwise_ok or (cos is not None and cos >= crit["min_cosine"])
        why = (f"cosine similarity {cos if cos is not None else float('nan'):.6f} {'>=' if ok else '<'} "
               f"{crit['min_cosine']} (max_abs_err {r['max_abs_err']:.3g})")
        return {**r, "passed": True, "why": why} if ok else fail(why)
    if elementwise_ok:
        return {**r, "passed": True, "why": f"max_abs_err {r['max_abs_err']:.3g} within atol {atol_eff:.3g} + "
                                            f"rtol {crit['rtol']:.3g}*|ref|"}
    r["cosine_similarity"] = _cosine(av, bv)
    return fail(f"{r['outside']} of {d.size} elements outside atol {atol_eff:.3g} + rtol {crit['rtol']:.3g}*|ref| "
                f"(max_abs_err {r['max_abs_err']:.3g}, min_atol_to_pass {r['min_atol_to_pass']:.3g})")


# ------------------------------------------------------------------------------------- search


def _sample(items: list[str], k: int) -> list[str]:
    """At most ``k`` of ``items``, evenly spread, keeping order; the last is always kept."""
    if len(items) <= k:
        return list(items)
    if k <= 1:
        return items[-1:]
    idx = sorted({int(round(x)) for x in np.linspace(0, len(items) - 1, k)})
    return [items[i] for i in idx]


def _side(spec: dict, role: str):
    fmt = str(spec.get("format", "")).lower()
    root = Path(spec["root"])
    primary = spec["primary"]
    paths = list(spec.get("paths") or [primary])
    if fmt == "onnx":
        return _OnnxSide(root / primary)
    if fmt == "openvino" and role == "candidate":
        return _OpenVinoSide(root, paths, primary)
    if fmt == "tflite" and role == "candidate":
        return _TFLiteSide(root, primary)
    raise _Unsupported(fmt)


def first_divergence(reference: dict, candidate: dict, feeds: dict[str, np.ndarray], *, profile: str,
                     overrides: dict | None = None, max_tensors: int = 2000, budget_s: float = 60.0) -> dict:
    """The first tensor, in the reference graph's topological order, where ``candidate`` leaves the
    tolerance of ``profile`` on ``feeds`` (see the module doc). ``reference`` / ``candidate``:
    ``{"format", "root", "paths", "primary"}``. Bad ``profile`` / ``overrides``: ``ValueError``;
    anything else that goes wrong is reported, not raised."""
    from app.pipeline.validation import resolve_tolerance

    t0 = time.perf_counter()
    tol = resolve_tolerance(profile, overrides)
    notes: list[str] = []
    state: dict[str, Any] = {"compared": 0}

    def done(status: str, reason: str, first=None, last=None, transient=()) -> dict:
        return {"status": status, "reason": reason, "compared": state["compared"], "first": first,
                "last_matching": last, "transient": list(transient)[:50], "notes": notes,
                "seconds": round(time.perf_counter() - t0, 4)}

    rf, cf = str(reference.get("format", "")).lower(), str(candidate.get("format", "")).lower()
    if rf != "onnx" or cf not in ("onnx", "openvino", "tflite"):
        return done("unsupported", f"localizing a divergence needs an ONNX reference and an ONNX, OpenVINO or "
                                   f"TFLite candidate; got {rf or '?'} -> {cf or '?'}")
    try:
        ref = _side(reference, "reference")
        cand = _side(candidate, "candidate")
    except ImportError as e:
        return done("unsupported", f"a runtime needed to localize {rf} -> {cf} is not installed here ({e})")
    except _Unsupported as e:
        return done("unsupported", f"unsupported format {e}")
    except Exception as e:
        return done("unsupported", f"cannot read the models: {type(e).__name__}: {e}")
    graph: _Graph = ref.graph
    ref_inputs = [n for n, _ in graph.inputs]
    if isinstance(cand, _TFLiteSide):
        try:
            cand.bind(ref, graph, feeds, ref_inputs, tol)
        except Exception as e:
            return done("unsupported", f"the instrumented candidate failed to run: {type(e).__name__}: {e}")
        notes.append("TFLite tensors are paired with reference tensors by value (onnx2tf keeps no intermediate "
                     "ONNX names), in the same or the channels-last layout")

    common = [t for t in graph.order if t in cand.names]
    comparable = [t for t in common if graph.maybe_float(t)]
    if not comparable:
        return done("not_found", f"no floating-point tensor of the reference ({len(graph.order)} node outputs) "
                                 f"exists by name in the candidate: nothing to compare")
    how = "paired with a candidate tensor" if isinstance(cand, _TFLiteSide) else "present by name in the candidate"
    notes.append(f"{len(comparable)} of {len(graph.order)} reference node outputs are float tensors {how} "
                 f"({len(graph.order) - len(common)} absent: fused, renamed or removed)")
    position = {t: i for i, t in enumerate(comparable)}
    comparable_set = set(comparable)
    verdicts: dict[str, dict[str, Any]] = {}  # tensor -> judgement ({"passed": None}: not comparable after all)
    frontiers: dict[str, set[str]] = {}
    max_tensors = max(1, int(max_tensors))
    last_pass_s, passes, skipped = 0.0, 0, 0

    def front(t: str) -> set[str]:
        if t not in frontiers:
            frontiers[t] = graph.frontier(t, comparable_set)
        return frontiers[t]

    def diverged() -> list[str]:
        return [t for t, v in verdicts.items() if v.get("passed") is False]

    def classify() -> dict[str, str]:
        """Each diverged tensor: "confirmed" (the divergence carries on through the next
        ``_CONFIRM_DEPTH`` levels of compared tensors downstream, or to where nothing downstream can
        tell), "transient" (the compared tensors downstream match again: a name that moved in a
        fusion, or a harmless difference) or "pending" (downstream not compared yet)."""
        memo: dict[tuple[str, int], str] = {}

        def state(t: str, depth: int) -> str:
            if depth == 0:
                return "confirmed"
            if (t, depth) in memo:
                return memo[t, depth]
            subs = set()
            for u in front(t):
                v = verdicts.get(u)
                if v is None:
                    subs.add("pending")
                elif v.get("passed") is False:
                    subs.add(state(u, depth - 1))
                elif v.get("passed"):
                    subs.add("match")
            memo[t, depth] = ("confirmed" if "confirmed" in subs or not subs else
                              "pending" if "pending" in subs else "transient")
            return memo[t, depth]

        return {t: state(t, _CONFIRM_DEPTH) for t in diverged()}

    def unresolved(t: str, states: dict[str, str]) -> list[str]:
        """The uncompared tensors that would settle a pending divergence at ``t``."""
        out, stack, seen = [], [t], set()
        while stack:
            for u in front(stack.pop()):
                if u in seen:
                    continue
                seen.add(u)
                if u not in verdicts:
                    out.append(u)
                elif states.get(u) == "pending":
                    stack.append(u)
        return out

    states: dict[str, str] = {}
    while True:
        states = classify()
        confirmed = [position[t] for t, st in states.items() if st == "confirmed"]
        hi = min(confirmed) if confirmed else len(comparable)
        settle = sorted({u for t, st in states.items() if st == "pending" and position[t] < hi
                         for u in unresolved(t, states)}, key=position.__getitem__)
        window = [t for t in comparable[:hi] if t not in verdicts and t not in settle]
        if not settle and not window:
            break
        if passes and time.perf_counter() - t0 + last_pass_s > budget_s:
            notes.append(f"time budget {budget_s:g}s spent after {passes} run(s): {len(window) + len(settle)} "
                         f"tensor(s) {'before the first divergence ' if confirmed else ''}were not compared")
            break
        chosen = settle[:max_tensors]
        room = max_tensors - len(chosen)
        if len(window) <= room:
            chosen += window
        elif room:  # the gap right before the divergence first, then the earlier gaps, each sampled evenly
            lo = max((position[t] for t, v in verdicts.items() if v.get("passed") and position[t] < hi), default=-1)
            near = _sample([t for t in window if position[t] > lo], room)
            chosen += near + _sample([t for t in window if position[t] <= lo], room - len(near))
        pending = [position[t] for t, st in states.items() if st == "pending" and position[t] < hi]
        room = max_tensors - len(chosen)
        if room > 0 and pending:  # whatever room is left: what follows the pending divergences, in order
            taken = set(chosen)
            chosen += [t for t in comparable[min(pending) + 1:] if t not in verdicts and t not in taken][:room]
        chosen.sort(key=position.__getitem__)
        ts = time.perf_counter()
        outs = []
        for who, side in (("reference", ref), ("candidate", cand)):
            try:
                outs.append(side.run(chosen, feeds, ref_inputs))
            except _Unsupported as e:
                return done("unsupported", f"{who}: {e}")
            except Exception as e:
                return done("unsupported", f"the instrumented {who} failed to run: {type(e).__name__}: {e}")
        ref_out, cand_out = outs
        passes += 1
        watched: set[str] = {u for t in diverged() for u in front(t)}
        for k, t in enumerate(chosen):
            r, c = ref_out.get(t), cand_out.get(t)
            if r is None or c is None:
                skipped += 1
                verdicts[t] = {"passed": None}
                continue
            r, c = np.asarray(r), np.asarray(c)
            if r.dtype.kind != "f" or c.dtype.kind != "f":
                verdicts[t] = {"passed": None}  # not float on one side (or a dtype numpy cannot hold)
                continue
            verdicts[t] = _judge(r, c, tol.for_output(t))
            state["compared"] += 1
            if verdicts[t]["passed"]:
                if t not in watched:
                    continue
            else:
                watched |= front(t)
            # stop once a confirmed divergence makes the rest of this run's tensors irrelevant
            now = classify()
            first_confirmed = min((position[u] for u, st in now.items() if st == "confirmed"), default=None)
            if first_confirmed is None:
                continue
            needed = {u for d, st in now.items() if st == "pending" and position[d] < first_confirmed
                      for u in unresolved(d, now)}
            if all(position[u] >= first_confirmed and u not in needed for u in chosen[k + 1:]):
                break
        del ref_out, cand_out, outs
        last_pass_s = time.perf_counter() - ts
    states = classify()
    if passes > 1:
        notes.append(f"{passes} instrumented runs (at most {max_tensors} tensors exposed per run)")
    if skipped:
        notes.append(f"{skipped} tensor(s) came back from only one side and were skipped")
    order = {t: i for i, t in enumerate(graph.order)}
    transient = sorted((t for t, st in states.items() if st == "transient"), key=order.__getitem__)
    if transient:
        notes.append(f"{len(transient)} tensor(s) diverged but every compared tensor downstream matches again "
                     f"(a name that moved in a fusion, or a difference that does not propagate); not reported: "
                     f"{transient[:10]}{' ...' if len(transient) > 10 else ''}")
    picks = [t for t, st in states.items() if st in ("confirmed", "pending")]
    if not picks:
        outs_ok = [o for o in graph.outputs if o in verdicts and verdicts[o].get("passed")]
        tail = (f"; the graph output(s) {outs_ok} match in this run too: the failure may come from optimized "
                f"kernels or fusions (graph optimizations are off here) or from another input set"
                if outs_ok else "")
        head = (f"all {state['compared']} compared tensor(s) are within profile {tol.profile}" if not transient else
                f"no divergence propagates: of {state['compared']} compared tensor(s), {len(transient)} are outside "
                f"profile {tol.profile} but the tensors downstream of them match again")
        return done("not_found", head + tail, transient=transient)
    first_t = min(picks, key=order.__getitem__)
    if states[first_t] == "pending":
        notes.append(f"{first_t!r} diverges but the time budget ran out before the tensors downstream of it "
                     f"showed whether the divergence propagates")
    v = verdicts[first_t]
    first = {**graph.describe(first_t), "max_abs_err": v["max_abs_err"], "min_atol_to_pass": v["min_atol_to_pass"],
             "reference_range": v["reference_range"], "candidate_range": v["candidate_range"],
             "cosine_similarity": v["cosine_similarity"], "shape": v["shape"],
             "elements_outside": v.get("outside"), "why": v["why"]}
    if isinstance(cand, _TFLiteSide):
        first["candidate_tensor"] = cand.matched_name(first_t)
    anc = graph.ancestors(first_t)
    matched_up = [t for t, w in verdicts.items() if w.get("passed") and t in anc and order[t] < order[first_t]]
    last = graph.describe(max(matched_up, key=order.__getitem__)) if matched_up else None
    reason = (f"first diverging tensor {first_t!r} (output of {first['op_type']} node {first['node']!r}): "
              f"{v['why']}; " + (f"last matching upstream: {last['tensor']!r} ({last['op_type']})" if last else
                                 "no compared tensor upstream of it matched"))
    return done("found", reason, first, last, transient=transient)


__all__ = ["first_divergence"]
