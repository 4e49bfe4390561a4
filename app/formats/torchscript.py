"""TorchScript archives (``torch.jit.save``): a zip with ``code/`` (TorchScript source),
``data.pkl`` and ``constants.pkl``. The forward signature is read from the serialized source;
tensors from the pickles through the inert unpickler. Nothing is loaded into torch."""

from __future__ import annotations

import re

from app.formats import pickles, torchzip
from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    TritonModel,
)

FORMAT = FormatInfo(
    name="torchscript",
    title="TorchScript",
    extensions=(".torchscript", ".jit", ".ptl"),
    notes="torch.jit is deprecated in torch 2.13; torch.export (.pt2) is the graph format to prefer",
    code_on_load=True,
    runner="torchscript_runner",
    other_runners=("torch_cuda_runner",),
    packages=("torch",),
    triton=TritonModel(backend="pytorch", platform="pytorch_libtorch", filename="model.pt", output_names="indexed",
                       threads_parameter="INTRA_OP_THREAD_COUNT", kserve_format=("pytorch", "1"),
                       notes=("LibTorch matches inputs by forward() argument name and outputs by position: "
                              "they are named OUTPUT__0, OUTPUT__1, …",)),
)

_SIG = re.compile(r"def forward\(\s*\w+(?:\s*:\s*[\w.]+)?\s*(?:,(?P<args>.*?))?\)\s*(?:->\s*(?P<ret>[^:]+))?:", re.S)


def detect(files: ModelFiles) -> Detection | None:
    if len(files.paths) != 1:
        return None
    p = files.paths[0]
    if files.head(p, 4) != torchzip.ZIP_MAGIC:
        return None
    members = torchzip.names(files.abs(p)) or []
    pkl = torchzip.member_ending(members, "data.pkl")
    if pkl is None:
        return None
    top = pkl[: -len("data.pkl")]
    if any(m.startswith(top + "code/") for m in members) and top + "constants.pkl" in members:
        return Detection("torchscript", p, "zip archive with code/ and constants.pkl (TorchScript layout)",
                         {"top": top})
    return None


def _torch_globals_ok(globals_: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # TorchScript pickles name their own classes under __torch__; those are TorchScript, not Python.
    return [(m, n) for m, n in globals_ if not (m == "__torch__" or m.startswith("__torch__."))]


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    path = files.abs(det.primary)
    top = det.extra["top"]
    insp = Inspection(format="torchscript", primary_file=det.primary)
    members = torchzip.names(path) or []
    data = torchzip.read_member(path, top + "data.pkl", "torchscript")
    globals_ = pickles.scan(data, fmt="torchscript")
    pickles.check(_torch_globals_ok(globals_), fmt="torchscript")
    insp.safety = {"status": "safe", "method": "static opcode scan + allow-list; inert unpickler",
                   "globals": sorted({f"{m}.{n}" for m, n in globals_})}
    root_class = next(((m, n) for m, n in globals_ if m.startswith("__torch__")), None)
    obj = _InertTS(data).load_obj()
    tensors = pickles.flatten_tensors(obj)
    if top + "constants.pkl" in members:
        cdata = torchzip.read_member(path, top + "constants.pkl", "torchscript")
        pickles.check(_torch_globals_ok(pickles.scan(cdata, fmt="torchscript")), fmt="torchscript")
        consts = pickles.flatten_tensors(_InertTS(cdata).load_obj(), "constants")
        insp.details["constants"] = len(consts)
    insp.params = sum(t.numel for t in tensors.values())
    insp.details["tensor_count"] = len(tensors)
    insp.details["devices"] = sorted({t.device for t in tensors.values()})
    if top + "version" in members:
        insp.versions["file_format_version"] = torchzip.read_member(path, top + "version", "torchscript", 64).decode(
            "ascii", "replace").strip()
    if root_class:
        insp.details["root_class"] = f"{root_class[0]}.{root_class[1]}"
        code_path = top + "code/" + root_class[0].replace(".", "/") + ".py"
        if code_path in members:
            src = torchzip.read_member(path, code_path, "torchscript", 16 * 1024**2).decode("utf-8", "replace")
            _signature(src, root_class[1], insp)
    if insp.inputs is None:
        insp.unavailable.append("inputs: the forward signature could not be read from the archive")
    return insp


def _signature(src: str, cls: str, insp: Inspection) -> None:
    m = re.search(rf"^class {re.escape(cls)}\(.*?(?=^class |\Z)", src, re.S | re.M)
    body = m.group(0) if m else src
    sig = _SIG.search(body)
    if not sig:
        return
    args = [a.strip() for a in _split_top(sig.group("args") or "") if a.strip()]
    inputs = []
    for a in args:
        name, _, typ = a.partition(":")
        name, typ = name.strip(), typ.split("=")[0].strip()
        inputs.append(TensorSpec(name=name, dtype=None, shape=None))
        insp.details.setdefault("forward_types", {})[name] = typ or "Tensor"
    insp.inputs = inputs
    ret = (sig.group("ret") or "").strip()
    insp.details["forward_returns"] = ret
    n_out = 1
    if ret.startswith("Tuple["):
        n_out = len(_split_top(ret[len("Tuple["):-1]))
    insp.outputs = [TensorSpec(name=f"output_{i}", dtype=None, shape=None) for i in range(n_out)]
    insp.unavailable.append("input/output dtypes and shapes: TorchScript does not record them; "
                            "give input_specs when converting")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return parts


class _InertTS:
    """TorchScript pickles name __torch__ classes; map them to stubs, everything else as usual."""

    def __init__(self, data: bytes):
        self.data = data

    def load_obj(self):
        import io

        class U(pickles.InertUnpickler):
            def find_class(self, module, name):
                if module == "__torch__" or module.startswith("__torch__."):
                    return pickles._Stub
                return super().find_class(module, name)

            def persistent_load(self, pid):
                # TorchScript uses ('storage', type, key, location, numel) like torch.save.
                return super().persistent_load(pid)

        try:
            return U(io.BytesIO(self.data), fmt="torchscript").load()
        except MalformedModel:
            raise
        except Exception as e:
            raise MalformedModel("torchscript", f"could not read data.pkl: {e}") from None
