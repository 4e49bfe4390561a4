"""Small real models written by the real libraries, for tests. Each builder writes into ``out``
and returns the path(s) it wrote."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path


def _torch():
    import torch

    torch.manual_seed(0)
    return torch


def _tiny_class():
    import torch

    global Tiny
    if "Tiny" not in globals():

        class Tiny(torch.nn.Module):  # module level, so a full-model torch.save can pickle it
            def __init__(self):
                super().__init__()
                self.fc1 = torch.nn.Linear(8, 16)
                self.fc2 = torch.nn.Linear(16, 3)

            def forward(self, x):
                return self.fc2(torch.relu(self.fc1(x)))

        Tiny.__qualname__ = "Tiny"
    return Tiny


def tiny_module():
    _torch()
    return _tiny_class()().eval()


def onnx_model(out: Path, *, external: bool = False, name: str = "tiny.onnx", seed: int = 0) -> list[Path]:
    """A dynamic-batch ONNX model [batch, 8] -> [batch, 3] (its weights drawn from ``seed``); with
    ``external`` its weights live in ``<name>.data``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport-tests")
    model.ir_version = 8
    path = out / name
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=0)
        return [path, out / (name + ".data")]
    onnx.save_model(model, str(path))
    return [path]


def onnx_classifier(out: Path, name: str = "classifier.onnx") -> Path:
    """A dynamic-batch MLP classifier [batch, 32] -> 64 -> 10 with fan-in scaled weights (logits spread
    like a trained classifier's, so top-1 means something): the size
    where INT8 accuracy means something (a 3-wide output makes any rounding a big cosine change)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 64)) / np.sqrt(32)).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((64, 10)) * 4 / np.sqrt(64)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelport-tests")
    model.ir_version = 8
    onnx.save_model(model, str(out / name))
    return out / name


def state_dict(out: Path, *, legacy: bool = False, name: str = "tiny.pt") -> Path:
    torch = _torch()
    path = out / name
    torch.save(tiny_module().state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return path


def checkpoint(out: Path, name: str = "ckpt.pth") -> Path:
    torch = _torch()
    m = tiny_module()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 8)).sum().backward()
    opt.step()
    path = out / name
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, path)
    return path


def full_model_pickle(out: Path, name: str = "full.pt") -> Path:
    torch = _torch()
    path = out / name
    torch.save(tiny_module(), path)
    return path


def torchscript(out: Path, name: str = "tiny_ts.pt") -> Path:
    torch = _torch()
    path = out / name
    torch.jit.save(torch.jit.trace(tiny_module(), torch.randn(2, 8)), path)
    return path


def exported_program(out: Path, name: str = "tiny.pt2") -> Path:
    torch = _torch()
    ep = torch.export.export(tiny_module(), (torch.randn(2, 8),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = out / name
    torch.export.save(ep, path)
    return path


def safetensors_file(out: Path, name: str = "tiny.safetensors") -> Path:
    from safetensors.torch import save_file

    path = out / name
    save_file(tiny_module().state_dict(), path, metadata={"source": "modelport-tests"})
    return path


# ------------------------------------------------------------------------------- hostile files


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def evil_pickle(payload: str = "echo pwned > /tmp/modelport-pwned") -> bytes:
    import os

    return pickle.dumps({"weight": _Evil(os.system, payload)}, protocol=2)


def evil_eval_pickle() -> bytes:
    import builtins

    return pickle.dumps(_Evil(builtins.eval, "__import__('os').system('true')"), protocol=4)


def evil_torch_zip(out: Path, name: str = "evil.pt") -> Path:
    """A torch.save zip whose data.pkl runs os.system on load."""
    torch = _torch()
    good = out / "_good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    path = out / name
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = evil_pickle()
            zout.writestr(info.filename.replace("_good/", "evil/"), data)
    good.unlink()
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()
