"""Runnable-input search: inputs the *source* model runs on, found from evidence before guessing.

Random inputs at the generator's defaults (batch 1 and 3, other dynamic dims 16, integers in
``[0, 16)``) are a guess, and real models refuse many guesses: a stride-32 detector cannot take
16×16, a MaxPool chain runs out of pixels, a BERT ``token_type_ids`` table has 2 rows, an audio
front end pads by more than 16 samples. Blaming the artifact for the reference's crash, or skipping
it, says nothing about the conversion. So, before validating (and benchmarking), find sizes and
value ranges the model itself runs on and gives finite answers for:

1. **Evidence** (:func:`evidence`, from the file; ONNX today): the stride product of Conv/Pool
   chains (spatial sizes must be multiples of it), the table an integer input indexes through its
   first Gather (the valid id range).
2. **Names and layout**: dims called ``height``/``width``/``seq``/``samples``…, and the NCHW/NHWC
   shape of an image input, pick a ladder of typical sizes (224/320/256/640 for images,
   16/128/512 for sequences, 16000/512/… for audio); masks are all ones.
3. **The ladder**: one attempt per rung (batch 1), until the reference runs with finite outputs,
   within a time budget; every attempt and why the found one was chosen is recorded
   (``"height=224, width=224: multiple of 32 from 5 stride-2 Conv/Pool ops"``).

The user's samples and input_specs still win: samples are their own input set, and specs fix dims
before any of this runs. Pure numpy on the runner interface, so it runs under either toolchain."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.runners.base import IOSpec
from app.runners.inputs import INT_RANGE, OTHER_DIM, default_inputs, dim_key, is_dynamic, np_dtype

LADDERS = {
    "spatial": (224, 320, 256, 640, 128, 64, 32),
    "sequence": (16, 128, 64, 512, 32, 8),
    "audio": (16000, 512, 1024, 4096, 8000, 32000),
    "other": (OTHER_DIM, 32, 64, 128, 224, 512, 8),
}
MAX_ATTEMPTS = 8

_SPATIAL = re.compile(r"(^|_)(h|w|height|width|img_?h|img_?w|rows|cols)($|_)|height|width", re.I)
_SEQUENCE = re.compile(r"seq|token|sentence|text|len(gth)?($|_)|^l$|^t$|^s$", re.I)
_AUDIO = re.compile(r"sample|audio|wav|pcm|waveform|signal|num_samples", re.I)


@dataclass
class Evidence:
    """What the file says about valid inputs."""

    multiple: int = 1  # spatial sizes must be multiples of this (stride product)
    stride_ops: int = 0  # how many stride>1 ops make it up
    int_ranges: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # input -> [lo, hi), why
    min_length: dict[str, tuple[int, str]] = field(default_factory=dict)  # input -> its last dynamic dim >= n, why
    dim_ranges: dict[str, tuple[int | None, int | None, str]] = field(default_factory=dict)  # symbol -> [lo, hi], why

    def to_dict(self) -> dict[str, Any]:
        return {"multiple": self.multiple, "stride_ops": self.stride_ops,
                "int_ranges": {k: [lo, hi, why] for k, (lo, hi, why) in self.int_ranges.items()},
                "min_length": {k: [n, why] for k, (n, why) in self.min_length.items()},
                "dim_ranges": {k: [lo, hi, why] for k, (lo, hi, why) in self.dim_ranges.items()}}

    def merged(self, other: Evidence) -> Evidence:
        """This evidence, completed by ``other``'s (e.g. the artifact's graph, where the reference's
        file says nothing: a TorchScript reference and the ONNX made from it); this one wins."""
        return Evidence(max(self.multiple, other.multiple), max(self.stride_ops, other.stride_ops),
                        {**other.int_ranges, **self.int_ranges}, {**other.min_length, **self.min_length},
                        {**other.dim_ranges, **self.dim_ranges})


@dataclass
class Plan:
    """Sizes for dynamic non-batch dims (by :func:`dim_key`), value ranges for integer inputs and
    constant fills (masks), with the reasons; ``found`` when the reference ran on them."""

    sizes: dict[str, int] = field(default_factory=dict)
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    fills: dict[str, int] = field(default_factory=dict)
    why: list[str] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    found: bool = False
    searched: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"found": self.found, "searched": self.searched, "sizes": dict(self.sizes),
                "int_ranges": {k: list(v) for k, v in self.int_ranges.items()}, "fills": dict(self.fills),
                "why": list(self.why), "tried": list(self.tried)}

    def failure(self) -> str:
        """Why nothing was found, for a "skipped" verdict."""
        shown = "; ".join(f"{t['label']}: {t['error']}" for t in self.tried[:3])
        more = f" (+{len(self.tried) - 3} more)" if len(self.tried) > 3 else ""
        return f"the uploaded model ran on none of the {len(self.tried)} generated input(s) tried ({shown}{more})"


# ------------------------------------------------------------------------------------ evidence


def evidence(fmt: str, root: Path, primary: str) -> Evidence:
    """What ``fmt``'s file says about valid inputs (empty when it says nothing readable)."""
    readers = {"onnx": onnx_evidence, "torch_export": torch_export_evidence}
    if fmt in readers:
        try:
            return readers[fmt](Path(root) / primary)
        except Exception:  # evidence is a hint: an unreadable file only means guessing
            return Evidence()
    return Evidence()


def torch_export_evidence(path: Path) -> Evidence:
    """The ranges torch.export recorded for its symbolic dims (``Dim("seq", min=16, max=4096)``),
    read from the archive's model JSON, as the inspection reads it: nothing is loaded into torch."""
    import json

    from app.formats import torchzip

    ev = Evidence()
    members = torchzip.names(path) or []
    model = next((m for m in members if m.endswith("/models/model.json")), None)
    if model is None:
        return ev
    doc = json.loads(torchzip.read_member(path, model, "torch_export", 256 * 1024**2))
    for sym, r in (doc.get("range_constraints") or {}).items():
        lo, hi = r.get("min_val"), r.get("max_val")
        lo = int(lo) if isinstance(lo, int) and lo > 1 else None
        hi = int(hi) if isinstance(hi, int) and hi < 2**31 else None
        if lo or hi:
            ev.dim_ranges[sym] = (lo, hi, f"torch.export range [{lo or 0}, {hi if hi else 'inf'}]")
    return ev


_PASS = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Clip"}
_DOWN = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}


def onnx_evidence(path: Path) -> Evidence:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    producer = {o: n for n in g.node for o in n.output}
    inputs = [i for i in g.input if i.name not in inits]
    ev = Evidence()

    # stride: how much each tensor is downsampled from the image inputs (max over the graph)
    stride: dict[str, tuple[int, int]] = {}
    for i in inputs:
        tt = i.type.tensor_type
        if tt.elem_type in (1, 10, 11, 16) and len(tt.shape.dim) >= 3:
            stride[i.name] = (1, 0)
    for n in g.node:
        ins = [stride[t] for t in n.input if t in stride]
        if not ins:
            continue
        s, k = max(ins)
        if n.op_type in _DOWN:
            st = next((list(a.ints) for a in n.attribute if a.name == "strides"), [])
            f = max(st) if st else 1
            if f > 1:
                s, k = s * f, k + 1
        elif n.op_type in ("Resize", "Upsample"):
            f = _scale(n, inits, consts)
            if f:
                s = max(1, int(round(s / f)))
        for o in n.output:
            stride[o] = (s, k)
    if stride:
        ev.multiple, ev.stride_ops = max(stride.values())
        ev.multiple = min(ev.multiple, 64)

    # integer inputs that index a table: their first Gather's rows bound the ids
    int_inputs = {i.name for i in inputs if i.type.tensor_type.elem_type in (2, 3, 4, 5, 6, 7, 12, 13)}

    def source_input(t: str) -> str | None:
        for _ in range(8):
            if t in int_inputs:
                return t
            n = producer.get(t)
            if n is None or n.op_type not in _PASS or not n.input:
                return None
            t = n.input[0]
        return None

    def table_rows(t: str) -> tuple[int, str] | None:
        for _ in range(4):
            if t in inits and inits[t].dims:
                return int(inits[t].dims[0]), t
            n = producer.get(t)
            if n is None or n.op_type not in ("Cast", "Identity", "DequantizeLinear") or not n.input:
                return None
            t = n.input[0]
        return None

    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        src = source_input(n.input[1])
        rows = table_rows(n.input[0]) if axis == 0 else None
        if src and rows and src not in ev.int_ranges:
            ev.int_ranges[src] = (0, rows[0], f"ids < {rows[0]}: the Gather table '{rows[1]}' has {rows[0]} rows")
    _min_lengths(g, inputs, inits, consts, ev)
    return ev


_CARRY = _PASS | {"Mul", "Div", "Add", "Sub", "Neg", "Abs", "Transpose", "Concat", "Slice", "Pad"}


def _min_lengths(g, inputs, inits, consts, ev: Evidence) -> None:
    """Minimum lengths of 1-D signal inputs: an STFT needs a frame, a reflect Pad needs more
    samples than it pads, a 1-D Conv needs its kernel (the first of each an input reaches)."""
    from onnx import numpy_helper

    def const(name: str):
        t = inits.get(name)
        if t is None and name in consts:
            t = next((a.t for a in consts[name].attribute if a.name == "value"), None)
        return numpy_helper.to_array(t) if t is not None else None

    origin = {i.name: i.name for i in inputs if i.type.tensor_type.elem_type in (1, 10, 11, 16)}
    for n in g.node:
        src = next((origin[t] for t in n.input[:1] if t in origin), None)
        if src is None:
            continue
        need, why = 0, ""
        if n.op_type == "STFT":
            fl = const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
            win = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            size = int(fl.reshape(-1)[0]) if fl is not None and fl.size else (int(win.shape[0]) if win is not None else 0)
            need, why = size, f"an STFT frame of {size} samples"
        elif n.op_type == "Pad":
            mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
            pads = const(n.input[1]) if len(n.input) > 1 else None
            if mode == "reflect" and pads is not None and pads.size:
                need, why = int(np.max(pads)) + 1, f"a reflect Pad of {int(np.max(pads))}"
        elif n.op_type == "Slice" and len(n.input) > 2:
            ends = const(n.input[2])
            if ends is not None and ends.size == 1 and 1 < int(ends.reshape(-1)[0]) < 2**31:
                need, why = int(ends.reshape(-1)[0]), f"a Slice that keeps the first {int(ends.reshape(-1)[0])}"
        elif n.op_type == "Conv":
            k = next((list(a.ints) for a in n.attribute if a.name == "kernel_shape"), [])
            if len(k) == 1:
                need, why = int(k[0]), f"a 1-D Conv kernel of {k[0]}"
        if need > 1 and src not in ev.min_length:
            ev.min_length[src] = (need, f"at least {need} samples: {why} ('{n.name or n.op_type}')")
        if n.op_type in _CARRY:
            for o in n.output:
                origin.setdefault(o, src)


def _scale(node, inits, consts) -> float | None:
    """The largest spatial scale of a Resize/Upsample, where it is a constant."""
    from onnx import numpy_helper

    names = node.input[2:3] if node.op_type == "Resize" else node.input[1:2]
    for name in names:
        t = inits.get(name)
        if t is None and name in consts:
            t = next((a.t for a in consts[name].attribute if a.name == "value"), None)
        if t is not None:
            v = numpy_helper.to_array(t)
            if v.size:
                return float(np.max(v))
    return None


# -------------------------------------------------------------------------------------- search


def _kind(spec: IOSpec, j: int, d: Any) -> str:
    if isinstance(d, str) and d:
        if _SPATIAL.search(d):
            return "spatial"
        if _AUDIO.search(d):
            return "audio"
        if _SEQUENCE.search(d):
            return "sequence"
    shape, dt = spec.shape or [], np_dtype(spec.dtype) if spec.dtype else None
    if dt is not None and dt.kind in "iu":
        return "sequence"
    if len(shape) == 4:
        fixed_c = [k for k in (1, 3) if not is_dynamic(shape[k]) and int(shape[k]) in (1, 2, 3, 4)]
        if fixed_c and j in ((2, 3) if fixed_c[0] == 1 else (1, 2)):
            return "spatial"
        if all(is_dynamic(x) for x in shape[1:]) and j in (2, 3):
            return "spatial"
    if len(shape) == 2 and j == 1 and (_AUDIO.search(spec.name) or spec.name.lower() in ("input", "x")):
        return "audio"
    if len(shape) == 3 and j == 2:
        return "sequence"
    return "other"


def _round_up(v: int, m: int) -> int:
    return max(m, -(-v // m) * m) if m > 1 else v


def find(reference, specs: list[IOSpec], ev: Evidence | None = None, *, seed: int = 0,
         budget_s: float = 60.0) -> Plan:
    """Sizes and value ranges ``reference`` runs on with finite outputs (batch 1)."""
    ev = ev or Evidence()
    plan = Plan(searched=True)
    dims: dict[str, tuple[str, str]] = {}  # key -> (kind, label)
    for i, s in enumerate(specs):
        if s.shape is None or not s.dtype:
            return plan  # only samples can feed an input of unknown rank/dtype
        for j, d in enumerate(s.shape):
            if j == 0 or not is_dynamic(d):
                continue
            key = dim_key(i, j, d)
            if key not in dims:
                dims[key] = (_kind(s, j, d), d if isinstance(d, str) and d else f"{s.name}[{j}]")
    for s in specs:
        dt = np_dtype(s.dtype)
        if dt.kind not in "iu" or dt == np.uint8:
            continue
        low = s.name.lower()
        if s.name in ev.int_ranges:
            lo, hi, why = ev.int_ranges[s.name]
            plan.int_ranges[s.name] = (lo, hi)
            plan.why.append(f"{s.name}: {why}")
        elif "mask" in low:
            plan.fills[s.name] = 1
            plan.why.append(f"{s.name}: all ones (an attention mask, by its name)")
        elif "token_type" in low or "segment" in low:
            plan.int_ranges[s.name] = (0, 2)
            plan.why.append(f"{s.name}: ids in [0, 2) (segment ids, by its name)")

    bounds: dict[str, tuple[int | None, int | None, str]] = {k: v for k, v in ev.dim_ranges.items() if k in dims}
    for i, s in enumerate(specs):
        if s.name in ev.min_length:
            last = [j for j, d in enumerate(s.shape) if j > 0 and is_dynamic(d)]
            if last:
                n, why = ev.min_length[s.name]
                bounds.setdefault(dim_key(i, last[-1], s.shape[last[-1]]), (n, None, why))

    def rung(k: int) -> dict[str, int]:
        out = {}
        for key, (kind, _) in dims.items():
            ladder = LADDERS[kind]
            v = ladder[min(k, len(ladder) - 1)]
            v = _round_up(v, ev.multiple) if kind == "spatial" else v
            lo, hi, _why = bounds.get(key, (None, None, ""))
            if lo and v < lo:
                v = _round_up(lo, ev.multiple) if kind == "spatial" else lo
            if hi and v > hi:
                v = hi
            out[key] = v
        return out

    attempts: list[tuple[dict[str, int], dict[str, tuple[int, int]], str]] = []
    n = max((len(LADDERS[k]) for k, _ in dims.values()), default=1)
    for k in range(min(n, MAX_ATTEMPTS)):
        attempts.append((rung(k), dict(plan.int_ranges), ""))
    if any(np_dtype(s.dtype).kind in "iu" and s.name not in plan.int_ranges and s.name not in plan.fills
           for s in specs):  # ids that NaN a model at [0, 16): the smallest range next
        attempts.insert(1, (rung(0), {**{s.name: (0, 2) for s in specs if np_dtype(s.dtype).kind in "iu"
                                         and np_dtype(s.dtype) != np.uint8}, **plan.int_ranges}, "ids in [0, 2)"))
    seen: set[str] = set()
    t0 = time.monotonic()
    for sizes, ranges, note in attempts:
        label = ", ".join(f"{dims[k][1]}={v}" for k, v in sizes.items()) or "the model's fixed shapes"
        if note:
            label += f"; {note}"
        if label in seen:
            continue
        seen.add(label)
        if plan.tried and time.monotonic() - t0 > budget_s:
            plan.tried.append({"label": label, "error": f"not tried: the search's {budget_s:.0f} s budget ran out"})
            break
        feeds = default_inputs(specs, 1, seed, Plan(sizes=sizes, int_ranges=ranges, fills=plan.fills))
        error = _try(reference, feeds)
        plan.tried.append({"label": label, "error": error})
        if error is None:
            plan.sizes, plan.int_ranges, plan.found = sizes, ranges, True
            plan.why[:0] = _why(dims, sizes, ev, first=len(plan.tried) == 1, bounds=bounds)
            if note:
                plan.why.append(f"{note}: the default range [0, {INT_RANGE[1]}) gave {plan.tried[0]['error']}")
            return plan
    return plan


def _why(dims, sizes, ev: Evidence, *, first: bool, bounds=None) -> list[str]:
    out = []
    for key, v in sizes.items():
        kind, label = dims[key]
        text = f"{label}={v}: "
        if kind == "spatial" and ev.multiple > 1:
            text += f"multiple of {ev.multiple} from {ev.stride_ops} stride>1 Conv/Pool op(s); "
        if bounds and key in bounds:
            text += f"{bounds[key][2]}; "
        text += f"{kind} size" + (" (first on its ladder)" if first else " (the first size the model ran on)")
        out.append(text)
    return out


def _try(reference, feeds: dict[str, np.ndarray]) -> str | None:
    try:
        out = reference.run(feeds)
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:300]}"
    if not out:
        return "no outputs"
    for name, v in out.items():
        a = np.asarray(v)
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            return f"output {name!r} has NaN/Inf"
    return None


def make_array(rng: np.random.Generator, spec: IOSpec, shape: tuple[int, ...], plan: Plan | None) -> np.ndarray:
    from app.runners.inputs import random_array

    dt = np_dtype(spec.dtype)
    if plan is not None and spec.name in plan.fills:
        return np.full(shape, plan.fills[spec.name], dtype=dt)
    if plan is not None and spec.name in plan.int_ranges and dt.kind in "iu":
        lo, hi = plan.int_ranges[spec.name]
        return np.asarray(rng.integers(lo, max(hi, lo + 1), size=shape)).astype(dt)
    return random_array(rng, dt, shape, spec.name)


# --------------------------------------------------------------------- TorchScript: the forward graph

_TS_PASS = {"aten::to", "aten::contiguous", "aten::float", "aten::type_as", "aten::clone", "aten::detach",
            "aten::unsqueeze", "aten::squeeze", "aten::mul", "aten::add", "aten::sub", "aten::div"}
_TS_CONV = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::conv_transpose1d",
            "aten::conv_transpose2d"}


@dataclass
class TorchScriptGuess:
    """What a TorchScript forward graph says one input looks like."""

    kind: str  # "image" | "features" | "ids" | "like"
    rank: int
    channels: int = 0  # conv: C_in; linear: in_features
    rows: int = 0  # embedding: the table's rows (ids < rows)
    like: str = ""  # an input shaped like another (a mask multiplied into an embedding)
    dtype: str = ""
    why: str = ""


def torchscript_guesses(module, names: list[str]) -> dict[str, TorchScriptGuess]:
    """For each forward() input, the first op that tells its shape: a convolution's weight
    ``[O, C, k...]`` -> ``[1, C, S...]``, a linear's ``[O, I]`` -> ``[1, I]``, an embedding's table
    ``[V, D]`` -> int64 ids ``[1, L]`` below ``V``; a value only multiplied into another input's path is
    shaped like that input. Reads ``module.inlined_graph``; runs nothing."""
    graph = module.inlined_graph
    params = list(graph.inputs())[1:]  # [0] is self
    by_value = {p.debugName(): n for p, n in zip(params, names, strict=False)}

    def attr_path(v) -> list[str] | None:
        path = []
        for _ in range(32):
            node = v.node()
            if node.kind() == "prim::Param":
                return list(reversed(path))
            if node.kind() != "prim::GetAttr":
                return None
            path.append(node.s("name"))
            v = node.input()
        return None

    def tensor_of(v):
        path = attr_path(v)
        obj = module
        if path is None:
            return None
        for p in path:
            obj = getattr(obj, p, None)
            if obj is None:
                return None
        return obj if hasattr(obj, "shape") else None

    origin: dict[str, str] = {}  # value debugName -> the input it is derived from (through _TS_PASS ops)
    for p in params:
        if p.debugName() in by_value:
            origin[p.debugName()] = by_value[p.debugName()]
    def walk(nodes):  # into if/loop blocks too (a forward that dispatches on an argument)
        for node in nodes:
            yield node
            for block in node.blocks():
                yield from walk(block.nodes())

    out: dict[str, TorchScriptGuess] = {}
    for node in walk(graph.nodes()):
        kind = node.kind()
        ins = list(node.inputs())
        srcs = [origin.get(v.debugName()) for v in ins]
        if kind in _TS_CONV and srcs and srcs[0] and srcs[0] not in out:
            w = tensor_of(ins[1]) if len(ins) > 1 else None
            if w is not None and w.dim() >= 3:
                groups = ins[-1].toIValue() if kind != "aten::_convolution" else ins[8].toIValue()
                c = int(w.shape[1]) * int(groups if isinstance(groups, int) else 1)
                if "transpose" in kind:
                    c = int(w.shape[0])
                out[srcs[0]] = TorchScriptGuess("image", w.dim(), channels=c,
                                                why=f"{kind} weight {list(w.shape)}: {c} channel(s), rank {w.dim()}")
        elif kind in ("aten::linear", "aten::matmul") and srcs and srcs[0] and srcs[0] not in out:
            w = tensor_of(ins[1]) if len(ins) > 1 else None
            if w is not None and w.dim() == 2:
                i = int(w.shape[1] if kind == "aten::linear" else w.shape[0])
                out[srcs[0]] = TorchScriptGuess("features", 2, channels=i,
                                                why=f"{kind} weight {list(w.shape)}: {i} input feature(s)")
        elif kind == "aten::embedding" and len(ins) > 1 and srcs[1] and srcs[1] not in out:
            w = tensor_of(ins[0])
            if w is not None and w.dim() == 2:
                out[srcs[1]] = TorchScriptGuess("ids", 2, rows=int(w.shape[0]),
                                                why=f"aten::embedding table {list(w.shape)}: ids < {int(w.shape[0])}")
        elif kind in ("aten::mul", "aten::add") and len(ins) == 2 and all(srcs) and srcs[0] != srcs[1]:
            for a, b in ((srcs[0], srcs[1]), (srcs[1], srcs[0])):
                if a not in out and b in out:
                    out[a] = TorchScriptGuess("like", 0, like=b, dtype="float32", why=f"combined with {b} by {kind}")
        if kind in _TS_PASS or kind in ("aten::mul", "aten::add"):
            src = next((s for s in srcs if s), None)
            if src:
                for o in node.outputs():
                    origin.setdefault(o.debugName(), src)
        if kind == "aten::embedding" and len(ins) > 1 and srcs[1]:
            for o in node.outputs():
                origin.setdefault(o.debugName(), srcs[1])
    ids = next((n for n in names if n in out and out[n].kind == "ids"), None)
    for n in names:  # masks and segment ids that reach no telling op: shaped like the token ids, by name
        low = n.lower()
        if n not in out and ids and ("mask" in low or "token_type" in low or "segment" in low or "position" in low):
            out[n] = TorchScriptGuess("like", 0, like=ids, dtype="int64", why=f"shaped like {ids} (by its name)")
    return out


def torchscript_specs(module, names: list[str], *, budget_s: float = 60.0) -> tuple[dict[str, dict], list[str], list[str]]:
    """input_specs a TorchScript ``module`` runs on with finite outputs, from its forward graph, then a
    ladder of sizes: ``(specs, why, tried)``; ``specs`` is empty when nothing ran."""
    import torch

    guesses = torchscript_guesses(module, names)
    if any(n not in guesses for n in names):
        missing = [n for n in names if n not in guesses]
        return {}, [], [f"the forward graph says nothing of the shape of {', '.join(missing)}"]
    ladders = {"image": LADDERS["spatial"][:4] + (32,), "ids": LADDERS["sequence"][:4], "features": (0,)}
    rungs = max(len(ladders[g.kind]) for g in guesses.values() if g.kind in ladders)
    tried: list[str] = []
    t0 = time.monotonic()
    gen = torch.Generator().manual_seed(0)
    for k in range(rungs):
        specs: dict[str, dict] = {}
        for n in names:
            g = guesses[n]
            if g.kind == "like":
                continue
            size = ladders[g.kind][min(k, len(ladders[g.kind]) - 1)]
            if g.kind == "image":
                specs[n] = {"shape": [1, g.channels] + [size] * (g.rank - 2), "dtype": "float32"}
            elif g.kind == "features":
                specs[n] = {"shape": [1, g.channels], "dtype": "float32"}
            else:
                specs[n] = {"shape": [1, size], "dtype": "int64", "high": g.rows}
        for n in names:
            g = guesses[n]
            if g.kind == "like":
                base = specs.get(g.like)
                if base is None:
                    return {}, [], [f"{n} is shaped like {g.like}, whose shape is not known"]
                specs[n] = {"shape": list(base["shape"]), "dtype": g.dtype or "float32",
                            "fill": 1 if "mask" in n.lower() else (0 if g.dtype == "int64" else None)}
        label = ", ".join(f"{n}={s['dtype']}{s['shape']}" for n, s in specs.items())
        args = []
        for n in names:
            s = specs[n]
            if s.get("fill") is not None:
                args.append(torch.full(s["shape"], s["fill"], dtype=getattr(torch, s["dtype"])))
            elif s["dtype"] == "int64":
                args.append(torch.randint(0, max(1, min(s.get("high") or 16, 2**31)), s["shape"], generator=gen))
            else:
                args.append(torch.randn(s["shape"], generator=gen))
        try:
            with torch.no_grad():
                result = module(*args)
            flat = result if isinstance(result, list | tuple) else [result]
            if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
                   for t in flat):
                raise ValueError("NaN/Inf in the outputs")
        except Exception as e:
            tried.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            if time.monotonic() - t0 > budget_s:
                break
            continue
        why = [f"{n}: {guesses[n].why}" for n in names]
        return ({n: {"shape": s["shape"], "dtype": s["dtype"], "dynamic": {"0": "batch"}} for n, s in specs.items()},
                why, tried)
    return {}, [], tried
