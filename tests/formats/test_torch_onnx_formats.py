"""Detection and inspection of the PyTorch family, ONNX and SafeTensors, and the pickle
allow-list: models written by the real libraries, hostile and malformed files."""

from __future__ import annotations

import contextlib
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from app.formats import FormatError, detect_and_inspect, pickles
from app.formats.base import ModelFiles, NeedsCode, UnsafeModel
from tests import models


def inspect_path(path: Path, hint: str | None = None, extra: list[Path] = ()) -> dict:
    paths = [path.name] + [p.name for p in extra]
    return detect_and_inspect(ModelFiles(path.parent, paths, hint or path.name))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("torchfmt")


def tiny_params() -> int:
    return sum(p.numel() for p in models.tiny_module().state_dict().values())


def test_state_dict_zip_and_legacy_agree(out):
    zipped = inspect_path(models.state_dict(out))
    legacy = inspect_path(models.state_dict(out, legacy=True, name="legacy.pth"))
    sd = models.tiny_module().state_dict()
    expected = [{"name": k, "dtype": "float32", "shape": list(v.shape), "device": "cpu"} for k, v in sd.items()]
    for insp, layout in ((zipped, "zip"), (legacy, "legacy")):
        assert insp["format"] == "pytorch"
        assert insp["details"]["layout"] == layout
        assert insp["details"]["kind"] == "state_dict"
        assert insp["details"]["tensors"] == expected
        assert insp["params"] == tiny_params()
        assert insp["safety"]["status"] == "safe"
        assert insp["inputs"] is None and not insp["signature_complete"]


def test_checkpoint_is_flattened_with_dotted_keys(out):
    insp = inspect_path(models.checkpoint(out))
    d = insp["details"]
    assert d["kind"] == "checkpoint" and d["weights_key"] == "model"
    assert d["checkpoint_keys"]["epoch"] == "7"
    names = [t["name"] for t in d["tensors"]]
    assert "model.fc1.weight" in names and "optimizer.state.0.momentum_buffer" in names


def test_cuda_saved_tensors_are_reported(out):
    # A real CUDA save needs a GPU; rewrite the storage location the way torch records it.
    path = models.state_dict(out, name="cuda.pt")
    patched = out / "cuda_patched.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(patched, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename.replace("cuda/", "cuda_patched/"), data)
    insp = inspect_path(patched)
    assert insp["details"]["devices"] == ["cuda:0"]
    assert any("cuda:0" in w for w in insp["warnings"])


def test_torchscript_signature_and_params(out):
    insp = inspect_path(models.torchscript(out))
    assert insp["format"] == "torchscript"
    assert [i["name"] for i in insp["inputs"]] == ["x"]
    assert insp["params"] == tiny_params()
    assert len(insp["outputs"]) == 1


def test_exported_program_signature_with_dynamic_batch(out):
    insp = inspect_path(models.exported_program(out))
    assert insp["format"] == "torch_export"
    (x,) = insp["inputs"]
    assert x["name"] == "x" and x["dtype"] == "float32"
    assert isinstance(x["shape"][0], str) and x["shape"][1] == 8  # symbolic batch
    assert insp["outputs"][0]["shape"][1] == 3
    assert insp["params"] == tiny_params()
    assert insp["signature_complete"]
    assert insp["versions"]["archive_format"] == "pt2"


def test_onnx_inputs_outputs_opsets(out):
    insp = inspect_path(models.onnx_model(out)[0])
    assert insp["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert insp["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]
    assert insp["versions"]["opsets"] == {"ai.onnx": 17} and insp["versions"]["ir_version"] == 8
    assert insp["details"]["op_types"] == {"MatMul": 2, "Add": 1, "Relu": 1}
    assert insp["params"] == 8 * 16 + 16 + 16 * 3


def test_onnx_from_the_dynamo_exporter(out):
    torch = pytest.importorskip("torch")
    path = out / "dynamo.onnx"
    torch.onnx.export(models.tiny_module(), (torch.randn(2, 8),), str(path), dynamo=True,
                      input_names=["x"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    extra = [out / "dynamo.onnx.data"] if (out / "dynamo.onnx.data").exists() else []
    insp = inspect_path(path, extra=extra)
    assert insp["inputs"][0]["name"] == "x" and insp["inputs"][0]["shape"][1] == 8
    assert isinstance(insp["inputs"][0]["shape"][0], str)
    assert insp["params"] == tiny_params()


def test_safetensors_header(out):
    insp = inspect_path(models.safetensors_file(out))
    assert insp["format"] == "safetensors"
    assert insp["details"]["metadata"] == {"source": "modelport-tests"}
    assert insp["params"] == tiny_params()
    assert {t["name"] for t in insp["details"]["tensors"]} == set(models.tiny_module().state_dict())


# ----------------------------------------------------------------------------------- hostile


def test_os_system_pickle_is_refused_and_not_executed(out, tmp_path):
    marker = tmp_path / "pwned"
    path = out / "evil.pkl"
    path.write_bytes(models.evil_pickle(f"touch {marker}"))
    with pytest.raises(UnsafeModel) as e:
        inspect_path(path)
    assert e.value.status_code == 422
    assert "posix.system" in e.value.message or "os.system" in e.value.message
    assert not marker.exists()


def test_eval_pickle_and_nested_zip_are_refused(out):
    path = out / "eval.pt"
    path.write_bytes(models.evil_eval_pickle())
    with pytest.raises(UnsafeModel, match="builtins.eval"):
        inspect_path(path)
    with pytest.raises(UnsafeModel) as e:
        inspect_path(models.evil_torch_zip(out))
    assert any("system" in g for g in e.value.detail["offending_globals"])


def test_full_model_pickle_needs_its_code(out):
    with pytest.raises(NeedsCode) as e:
        inspect_path(models.full_model_pickle(out))
    assert "full model pickle: needs its code" in e.value.message
    assert "torch.nn.modules.linear.Linear" in e.value.detail["classes"]


def test_unknown_global_is_refused_even_if_harmless_looking():
    data = b"\x80\x02cmylib.helpers\nbuild\nq\x00)\x81q\x01."
    globs = pickles.scan(data)
    assert globs == [("mylib.helpers", "build")]
    with pytest.raises(UnsafeModel, match="mylib.helpers.build"):
        pickles.check(globs)


def test_stack_global_resolved_through_memo():
    data = pickle.dumps(models._Evil(__import__("os").system, "true"), protocol=4)
    names = {f"{m}.{n}" for m, n in pickles.scan(data)}
    assert names & {"posix.system", "os.system"}


@pytest.mark.parametrize("builder,fmt", [
    (lambda out: models.state_dict(out, name="t1.pt"), "pytorch"),
    (lambda out: models.state_dict(out, legacy=True, name="t2.pt"), "pytorch"),
    (lambda out: models.torchscript(out, name="t3.pt"), "torchscript"),
    (lambda out: models.exported_program(out, name="t4.pt2"), "torch_export"),
    (lambda out: models.onnx_model(out, name="t5.onnx")[0], "onnx"),
    (lambda out: models.safetensors_file(out, name="t6.safetensors"), "safetensors"),
])
def test_truncated_files_are_malformed_with_format_named(out, builder, fmt):
    path = builder(out)
    data = path.read_bytes()
    cut = out / ("cut_" + path.name)
    cut.write_bytes(data[: max(16, len(data) * 2 // 3)])
    with pytest.raises(FormatError) as e:
        inspect_path(cut)
    assert e.value.status_code in (415, 422)
    if e.value.status_code == 422:
        assert e.value.detail["format"] in (fmt, "pytorch", "onnx")
    zero = out / ("zero_" + path.name)
    zero.write_bytes(b"")
    with pytest.raises(FormatError) as e:
        inspect_path(zero)
    from app.formats import format_for_extension

    assert e.value.status_code == 422  # named by the extension, the only hint left
    assert e.value.detail["format"] == format_for_extension(zero.name).name


def test_safetensors_header_that_lies_is_refused(out):
    header = b'{"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}'
    path = out / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(FormatError, match="header lies about sizes"):
        inspect_path(path)
    huge = out / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**40) + b"{" + b"\0" * 64)
    with pytest.raises(FormatError, match="over the"):
        inspect_path(huge)


def test_wrong_magic_with_known_extension_names_the_format(out):
    path = out / "garbage.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(FormatError) as e:
        inspect_path(path)
    assert e.value.status_code == 422 and e.value.detail["format"] == "onnx"
    assert "not ONNX" in e.value.message


def test_fuzzed_headers_never_crash_the_readers(out):
    """Random byte flips in the first 256 bytes of each format: every outcome is a clean
    FormatError or a successful inspection, never another exception."""
    import random

    rng = random.Random(1234)
    sources = [models.onnx_model(out, name="fz.onnx")[0], models.safetensors_file(out, name="fz.safetensors"),
               models.state_dict(out, name="fz.pt"), models.state_dict(out, legacy=True, name="fzl.pt")]
    for src in sources:
        data = bytearray(src.read_bytes())
        for i in range(25):
            mutated = bytearray(data)
            for _ in range(4):
                pos = rng.randrange(min(256, len(mutated)))
                mutated[pos] = rng.randrange(256)
            p = out / f"fuzz_{i}_{src.name}"
            p.write_bytes(bytes(mutated))
            with contextlib.suppress(FormatError):
                inspect_path(p)


def test_torch_package_is_recognised_and_refused(out):
    torch = pytest.importorskip("torch")
    path = out / "pkg.pt"
    with torch.package.PackageExporter(str(path)) as exp:
        exp.extern("torch.**")
        exp.save_pickle("model", "state.pkl", {"w": torch.zeros(3)})
    with pytest.raises(NeedsCode) as e:
        inspect_path(path)
    assert e.value.detail["format"] == "torch_package"
    assert "does not run uploaded code" in e.value.message
