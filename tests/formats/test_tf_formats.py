"""TensorFlow-family formats: SavedModel, Keras (.keras / .h5), TFLite.

Two kinds of fixtures:

- real models written by TensorFlow itself (``tests/formats/tf_make_models.py``) under the TF
  toolchain interpreter (``MODELPORT_TF_PYTHON`` or ``.venv-tf/bin/python``, made by
  ``scripts/setup-tf-toolchain``); generated once per content of that script into
  ``~/.cache/modelport-tests`` and skipped with an explicit reason when the toolchain is absent;
- hand-built files (protobufs via tensorboard's classes, HDF5 via h5py, raw bytes) that need no
  TensorFlow, including the hostile and malformed cases.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import pytest

from app.formats import keras as keras_fmt
from app.formats import savedmodel, tflite
from app.formats.base import MalformedModel, ModelFiles


@pytest.fixture(scope="session")
def facts(tf_models: Path) -> dict:
    return json.loads((tf_models / "facts.json").read_text())


def files_in(root: Path, sub: str | None = None, hint: str | None = None) -> ModelFiles:
    base = root / sub if sub else root
    paths = sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())
    return ModelFiles(root=root, paths=paths, hint_name=hint)


def one(root: Path, name: str, hint: str | None = None) -> ModelFiles:
    return ModelFiles(root=root, paths=[name], hint_name=hint if hint is not None else name)


def specs(ts) -> list[tuple]:
    return [(t.name, t.dtype, t.shape) for t in ts]


# =============================================================================================
# SavedModel
# =============================================================================================


def test_savedmodel_real(tf_models: Path, facts: dict, tmp_path: Path):
    # Under a top folder, as an extracted archive arrives.
    shutil.copytree(tf_models / "savedmodel", tmp_path / "mymodel")
    files = files_in(tmp_path, hint="mymodel.savedmodel")
    det = savedmodel.detect(files)
    assert det is not None and det.format == "savedmodel"
    assert det.primary == "mymodel/saved_model.pb"
    insp = savedmodel.inspect(files, det)
    # serving_default is primary; names are the signature keys, sorted.
    assert specs(insp.inputs) == [("ids", "int64", [None]), ("x", "float32", [None, 8])]
    assert specs(insp.outputs) == [("count", "int64", []), ("scores", "float32", [None, 4])]
    assert insp.params == facts["savedmodel_params"] == 36
    assert insp.versions["tensorflow"] == facts["tensorflow"]
    assert insp.versions["saved_model_schema"] == 1
    assert insp.details["tags"] == ["serve"]
    assert insp.details["primary_signature"] == "serving_default"
    assert {"serving_default", "embed"} <= set(insp.details["signatures"])
    sig = insp.details["meta_graphs"][0]["signatures"]
    assert sig["embed"]["method_name"] == "tensorflow/serving/predict"
    assert [(o["name"], o["shape"]) for o in sig["embed"]["outputs"]] == [("emb", [None, 4])]
    assert sig["serving_default"]["inputs"][1]["tensor"] == "serving_default_x:0"
    assert insp.details["variables"]["index"] is True and insp.details["variables"]["shards"] == 1
    assert insp.warnings == [] and insp.safety == {}
    assert insp.to_dict()["signature_complete"] is True


def test_savedmodel_text_format(tf_models: Path):
    files = files_in(tf_models, "savedmodel_text")
    det = savedmodel.detect(files)
    assert det is not None and det.extra["text_format"] is True
    insp = savedmodel.inspect(files, det)
    assert specs(insp.inputs) == [("ids", "int64", [None]), ("x", "float32", [None, 8])]
    assert insp.params == 36
    # no variables/ directory next to it: reported
    assert any("variables.index is missing" in w for w in insp.warnings)


def _write_saved_model(path: Path, metas: list, version: int = 1) -> None:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    data = b"\x08" + varint(version)
    for mg in metas:
        raw = mg.SerializeToString()
        data += b"\x12" + varint(len(raw)) + raw
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _meta_graph(sigs: dict, tags=("serve",), tf_version="2.15.0", py_func=False):
    from tensorboard.compat.proto import meta_graph_pb2

    mg = meta_graph_pb2.MetaGraphDef()
    mg.meta_info_def.tags.extend(tags)
    mg.meta_info_def.tensorflow_version = tf_version
    for key, (ins, outs) in sigs.items():
        sd = mg.signature_def[key]
        sd.method_name = "tensorflow/serving/predict"
        for target, entries in ((sd.inputs, ins), (sd.outputs, outs)):
            for name, dtype, shape in entries:
                ti = target[name]
                ti.name = f"{key}_{name}:0"
                ti.dtype = dtype
                if shape is None:
                    ti.tensor_shape.unknown_rank = True
                else:
                    for d in shape:
                        ti.tensor_shape.dim.add(size=d)
    # one TF1-style variable
    node = mg.graph_def.node.add(name="w", op="VariableV2")
    for d in (3, 5):
        node.attr["shape"].shape.dim.add(size=d)
    if py_func:
        mg.graph_def.node.add(name="cb", op="EagerPyFunc")
    return mg


def test_savedmodel_synthetic_no_tf(tmp_path: Path):
    """A hand-built SavedModel (no TensorFlow needed): dtype mapping, -1 -> None, unknown rank,
    first signature when there is no serving_default, TF1 variable params."""
    mg = _meta_graph(
        {
            "predict": (
                [("images", 19, [-1, 224, 224, 3]), ("mask", 10, None)],  # DT_HALF, DT_BOOL
                [("probs", 14, [-1, 1000])],  # DT_BFLOAT16
            ),
            "__saved_model_init_op": ([], [("__saved_model_init_op", 0, None)]),
        },
        tf_version="1.15.5",
    )
    _write_saved_model(tmp_path / "m" / "saved_model.pb", [mg])
    (tmp_path / "m" / "variables").mkdir()
    (tmp_path / "m" / "variables" / "variables.index").write_bytes(b"")
    files = files_in(tmp_path)
    det = savedmodel.detect(files)
    assert det is not None
    insp = savedmodel.inspect(files, det)
    assert specs(insp.inputs) == [("images", "float16", [None, 224, 224, 3]), ("mask", "bool", None)]
    assert specs(insp.outputs) == [("probs", "bfloat16", [None, 1000])]
    assert insp.details["primary_signature"] == "predict"
    assert insp.versions["tensorflow"] == "1.15.5"
    assert insp.params == 15
    assert insp.to_dict()["signature_complete"] is False  # unknown rank for "mask"


def test_savedmodel_py_func_is_flagged(tmp_path: Path):
    mg = _meta_graph({"serving_default": ([("x", 1, [1])], [("y", 1, [1])])}, py_func=True)
    _write_saved_model(tmp_path / "saved_model.pb", [mg])
    files = files_in(tmp_path)
    insp = savedmodel.inspect(files, savedmodel.detect(files))
    assert insp.safety["status"] == "contains_code"
    assert insp.safety["ops"] == ["EagerPyFunc"]


def test_savedmodel_detect_needs_name_and_header(tmp_path: Path):
    (tmp_path / "model.pb").write_bytes(b"\x08\x01\x12\x00")
    assert savedmodel.detect(files_in(tmp_path)) is None  # wrong basename
    (tmp_path / "saved_model.pb").write_bytes(b"PK\x03\x04 this is a zip, not a protobuf")
    assert savedmodel.detect(files_in(tmp_path)) is None  # right name, wrong bytes
    assert savedmodel.detect(files_in(tmp_path, hint="model.zip")) is None
    # ... unless the upload is named like a SavedModel: then it is a malformed one
    files = files_in(tmp_path, hint="model.savedmodel")
    det = savedmodel.detect(files)
    assert det is not None and det.primary == "saved_model.pb"
    with pytest.raises(MalformedModel) as ei:
        savedmodel.inspect(files, det)
    assert ei.value.format == "savedmodel"
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert savedmodel.detect(files_in(tmp_path)) is None


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"\x08\x01\x12\xff\xff\x03" + b"\x00" * 10, "past the end"),  # meta graph longer than file
        (b"\x08\x01\x1a\x02ab", "unexpected top-level field 3"),  # field 3: not in SavedModel
        (b"\x08\x01", "no meta graphs"),
        (b"\x08\x01\x12\x04\xff\xff\xff\xff", "does not parse"),  # meta graph bytes are garbage
    ],
)
def test_savedmodel_garbage_is_malformed(tmp_path: Path, payload: bytes, why: str):
    (tmp_path / "saved_model.pb").write_bytes(payload)
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(b"\0" * 16)
    files = files_in(tmp_path)
    det = savedmodel.detect(files)
    assert det is not None  # the header or the directory layout says SavedModel ...
    with pytest.raises(MalformedModel) as ei:  # ... but the body is not a SavedModel
        savedmodel.inspect(files, det)
    assert ei.value.format == "savedmodel"
    assert ei.value.code == "malformed_model"
    assert "TensorFlow SavedModel" in ei.value.message and why in ei.value.message


def test_savedmodel_truncated_real(tf_models: Path, tmp_path: Path):
    data = (tf_models / "savedmodel" / "saved_model.pb").read_bytes()
    (tmp_path / "saved_model.pb").write_bytes(data[: len(data) // 2])
    files = files_in(tmp_path)
    with pytest.raises(MalformedModel) as ei:
        savedmodel.inspect(files, savedmodel.detect(files))
    assert ei.value.format == "savedmodel"


# =============================================================================================
# Keras
# =============================================================================================

TWO_HEADS_IN = [("image", "float32", [None, 8, 8, 3]), ("meta", "float32", [None, 5])]
TWO_HEADS_OUT = [("logits", "float32", [None, 10]), ("aux", "float32", [None, 1])]
TWO_HEADS_CLASSES = {"Concatenate": 1, "Conv2D": 1, "Dense": 3, "GlobalAveragePooling2D": 1, "InputLayer": 2}


def test_keras_v3_archive(tf_models: Path, facts: dict):
    files = one(tf_models, "functional.keras")
    det = keras_fmt.detect(files)
    assert det is not None and det.format == "keras" and det.extra["container"] == "keras_zip"
    insp = keras_fmt.inspect(files, det)
    assert insp.details["kind"] == "full_model"
    assert specs(insp.inputs) == TWO_HEADS_IN
    assert specs(insp.outputs) == TWO_HEADS_OUT
    assert insp.params == facts["keras_params"] == 459
    assert insp.versions["keras"] == facts["keras_version"]
    assert insp.details["layers"] == {"count": facts["keras_layers"], "classes": TWO_HEADS_CLASSES}
    assert insp.details["model_name"] == "two_heads"
    assert insp.safety == {} and insp.warnings == []


def test_keras_v3_archive_not_named_keras(tf_models: Path, tmp_path: Path):
    """Content wins: a .keras archive renamed .zip is still Keras."""
    shutil.copy(tf_models / "functional.keras", tmp_path / "upload.zip")
    det = keras_fmt.detect(one(tmp_path, "upload.zip"))
    assert det is not None and det.format == "keras"


def test_keras_h5_full_model(tf_models: Path, facts: dict):
    files = one(tf_models, "functional.h5")
    det = keras_fmt.detect(files)
    assert det is not None and det.extra["kind"] == "full_model"
    insp = keras_fmt.inspect(files, det)
    assert insp.details["kind"] == "full_model"
    assert specs(insp.inputs) == TWO_HEADS_IN
    assert specs(insp.outputs) == TWO_HEADS_OUT
    assert insp.params == facts["h5_params"] == 459
    assert insp.versions["keras"] == facts["tf_keras_version"]
    assert insp.details["backend"] == "tensorflow"
    assert insp.details["layers"]["classes"] == TWO_HEADS_CLASSES
    assert insp.to_dict()["signature_complete"] is True


def test_keras_h5_sequential(tf_models: Path, facts: dict):
    files = one(tf_models, "sequential.h5")
    insp = keras_fmt.inspect(files, keras_fmt.detect(files))
    assert specs(insp.inputs) == [("tokens", "int32", [None, 12])]
    assert specs(insp.outputs) == [("cls", "float32", [None, 2])]
    assert insp.params == facts["seq_params"] == 50 * 6 + 4 * (6 + 7 + 1) * 7 + 7 * 2 + 2


@pytest.mark.parametrize(
    "name, layout, versioned",
    [("weights_only.h5", "legacy_h5", True), ("keras3.weights.h5", "keras3", False)],
)
def test_keras_weights_only(tf_models: Path, name: str, layout: str, versioned: bool):
    files = one(tf_models, name)
    det = keras_fmt.detect(files)
    assert det is not None and det.extra["kind"] == "weights_only"
    insp = keras_fmt.inspect(files, det)
    assert insp.details["kind"] == "weights_only"
    assert insp.details["layout"] == layout
    assert insp.params == 459
    assert insp.details["weight_tensors"] == 8
    assert insp.inputs is None and insp.outputs is None
    assert any("weights only" in w for w in insp.warnings)
    assert ("keras" in insp.versions) is versioned
    if layout == "legacy_h5":
        assert insp.details["layers"]["names"] == [
            "image",
            "conv",
            "gap",
            "meta",
            "cat",
            "hidden",
            "logits",
            "aux",
        ]


@pytest.mark.parametrize(
    "name, layout, versioned, params, tensors",
    [
        # Keras 3 subclassed model: top-level groups named after its layer attributes, no
        # "layers" group (refused as "not a Keras model" before the layout was read generally).
        ("keras3_subclassed.weights.h5", "keras3", False, "keras3_sub_params", "keras3_sub_tensors"),
        # KerasFileEditor.save: no root "vars" group (the model's own variable under vars/vars).
        ("keras3_subclassed_edited.weights.h5", "keras3", False, "keras3_sub_params", "keras3_sub_tensors"),
        ("keras3_edited.weights.h5", "keras3", False, "keras_params", 8),
        # Legacy layout of a subclassed model: its own variable in top_level_model_weights.
        ("tf_keras_subclassed.h5", "legacy_h5", True, "tf_keras_sub_params", 5),
    ],
)
def test_keras_weights_only_other_layouts(
    tf_models: Path, facts: dict, name: str, layout: str, versioned: bool, params: str, tensors
):
    files = one(tf_models, name)
    det = keras_fmt.detect(files)
    assert det is not None and det.format == "keras" and det.extra["kind"] == "weights_only"
    insp = keras_fmt.inspect(files, det)
    assert insp.details["kind"] == "weights_only"
    assert insp.details["layout"] == layout
    assert insp.params == facts[params]  # model.count_params(): optimizer state not counted
    assert insp.details["weight_tensors"] == (facts[tensors] if isinstance(tensors, str) else tensors)
    assert insp.inputs is None and insp.outputs is None
    assert any("weights only" in w for w in insp.warnings)
    assert ("keras" in insp.versions) is versioned
    # Not named like Keras: the layout alone claims it.
    assert keras_fmt.detect(one(tf_models, name, hint="")) is not None


def test_keras3_subclassed_weights_layout_is_the_reported_one(tf_models: Path, facts: dict):
    """The fixture really has the layout of the bug: layer-named top-level groups, no "layers"."""
    import h5py

    with h5py.File(tf_models / "keras3_subclassed.weights.h5", "r") as f:
        keys = set(f)
        assert {"conv2d", "dense", "dense_1", "blocks", "optimizer", "vars"} <= keys
        assert "layers" not in keys and not f.attrs.keys()
        assert sorted(f["dense_1/vars"]) == ["0", "1"]
    with h5py.File(tf_models / "keras3_subclassed_edited.weights.h5", "r") as f:
        assert "layers" not in f and "vars/vars/0" in f
    with h5py.File(tf_models / "keras3_edited.weights.h5", "r") as f:
        assert set(f) == {"layers"}  # no root "vars"
    assert facts["keras3_sub_params"] == 3 * 3 * 3 * 4 + 4 + (4 * 6 + 6) + 2 * (6 * 6 + 6) + (6 * 2 + 2) + 2


@pytest.mark.parametrize(
    "name",
    ["weights_only.h5", "keras3.weights.h5", "keras3_subclassed.weights.h5", "tf_keras_subclassed.h5"],
)
def test_keras_weights_only_in_stored_inspection(tf_models: Path, name: str):
    """What the catalog stores as model.inspection says weights only at details.kind."""
    from app.formats import detect_and_inspect

    out = detect_and_inspect(one(tf_models, name))
    assert out["format"] == "keras"
    assert out["details"]["kind"] == "weights_only"
    assert out["details"]["container"] == "hdf5"
    assert out["inputs"] is None and out["signature_complete"] is False
    json.dumps(out)  # stored as JSON


@pytest.mark.parametrize("name", ["functional.keras", "functional.h5"])
def test_keras_full_model_in_stored_inspection(tf_models: Path, name: str):
    from app.formats import detect_and_inspect

    assert detect_and_inspect(one(tf_models, name))["details"]["kind"] == "full_model"


def _h5_tree(path: Path, datasets: dict[str, tuple], groups: tuple[str, ...] = ()) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for g in groups:
            f.create_group(g)
        for name, shape in datasets.items():
            f.create_dataset(name, shape=shape, dtype="f4")
    return path


# tf.keras 2.12/2.13 .weights.h5 (keras v2.13.1 keras/saving/saving_lib.py: ATTR_SKIPLIST lacks
# "_layer_checkpoint_dependencies", which dir() lists before "layers", so the layers are saved
# under it; Keras 3 H5IOStore.get loads it by its "Fix for 2.13 compatibility"). Not writable by
# the installed toolchain (tf_keras 2.19 skips that attribute), so built here with h5py.
KERAS213_WEIGHTS = {
    "_layer_checkpoint_dependencies/dense/vars/0": (4, 3),
    "_layer_checkpoint_dependencies/dense/vars/1": (3,),
    "_layer_checkpoint_dependencies/dense_1/vars/0": (3, 2),
    "_layer_checkpoint_dependencies/dense_1/vars/1": (2,),
    "optimizer/vars/0": (),
    "optimizer/vars/1": (4, 3),
}
# Keras 3 saving_lib.save_weights_only of a layer (or a model holding only its own variables):
# nothing but the root "vars".
KERAS3_ROOT_ONLY = {"vars/0": (4, 3), "vars/1": (3,)}


@pytest.mark.parametrize(
    "datasets, groups, params, tensors",
    [
        (KERAS213_WEIGHTS, ("vars",), 4 * 3 + 3 + 3 * 2 + 2, 4),
        (KERAS3_ROOT_ONLY, (), 4 * 3 + 3, 2),
        # Layer-named top-level groups, optimizer, no "layers" and no root "vars".
        ({"dense/vars/0": (4, 3), "dense/vars/1": (3,), "conv2d/vars/0": (3, 3, 1, 2),
          "optimizer/vars/0": (100,)}, ("gap/vars",), 4 * 3 + 3 + 3 * 3 * 2, 3),
    ],
)  # fmt: skip
def test_keras3_weights_layouts_synthetic(tmp_path: Path, datasets, groups, params: int, tensors: int):
    _h5_tree(tmp_path / "w.weights.h5", datasets, groups)
    files = one(tmp_path, "w.weights.h5")
    det = keras_fmt.detect(files)
    assert det is not None and det.extra["kind"] == "weights_only"
    insp = keras_fmt.inspect(files, det)
    assert (insp.details["kind"], insp.details["layout"]) == ("weights_only", "keras3")
    assert (insp.params, insp.details["weight_tensors"]) == (params, tensors)


@pytest.mark.parametrize(
    "datasets, groups",
    [
        ({"dense/0": (4, 3), "dense/1": (3,)}, ()),  # groups of datasets, no "vars" groups
        ({"dense/vars/0": (4, 3), "table": (10,)}, ()),  # a dataset outside any "vars" group
        ({"layers/dense/kernel": (4, 3)}, ("vars",)),  # "vars" present, datasets elsewhere
        ({}, ("layers", "group")),  # groups only
    ],
)
def test_hdf5_not_keras3_weights_is_refused(tmp_path: Path, datasets, groups):
    _h5_tree(tmp_path / "x.h5", datasets, groups)
    files = one(tmp_path, "x.h5")
    det = keras_fmt.detect(files)
    assert det is not None and det.extra["kind"] is None  # claimed for its name only
    with pytest.raises(MalformedModel) as ei:
        keras_fmt.inspect(files, det)
    assert ei.value.status_code == 422 and ei.value.format == "keras"
    assert "is an HDF5 file but not a Keras model" in ei.value.message
    assert "vars" in ei.value.message  # says which layout was looked for
    assert keras_fmt.detect(one(tmp_path, "x.h5", hint="")) is None


@pytest.mark.parametrize("name", ["lambda.h5", "lambda.keras"])
def test_keras_lambda_bytecode_flagged_not_loaded(tf_models: Path, name: str, monkeypatch):
    import marshal

    def refuse(*a, **k):
        raise AssertionError("Lambda bytecode must never be unmarshalled")

    monkeypatch.setattr(marshal, "loads", refuse)
    files = one(tf_models, name)
    insp = keras_fmt.inspect(files, keras_fmt.detect(files))
    assert insp.safety["status"] == "contains_code"
    assert insp.safety["kind"] == "keras_lambda_bytecode"
    assert len(insp.safety["layers"]) == 1
    assert any("bytecode" in w for w in insp.warnings)
    assert specs(insp.inputs) == [("v", "float32", [None, 4])]
    assert insp.params == 4 * 2 + 2
    out = insp.outputs[0]
    assert (out.name, out.dtype) == ("head", "float32")
    # Keras 3 records the Dense input shape; Keras 2 cannot know a Lambda's output shape.
    assert out.shape == ([None, 2] if name.endswith(".keras") else None)


def _h5(path: Path, **attrs) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.create_dataset("data", data=[1.0, 2.0, 3.0])
    return path


def test_keras_synthetic_config_no_tf(tmp_path: Path):
    """Hand-written legacy config: mixed precision dtypes, Conv/pool shape inference, channels."""
    import h5py

    layers = [
        {"class_name": "InputLayer", "name": "px", "config": {"batch_input_shape": [None, 32, 32, 3], "dtype": "uint8", "name": "px"}, "inbound_nodes": []},
        {"class_name": "Conv2D", "name": "c", "config": {"name": "c", "dtype": {"class_name": "Policy", "config": {"name": "mixed_float16"}}, "filters": 8, "kernel_size": [3, 3], "strides": [2, 2], "padding": "same"}, "inbound_nodes": [[["px", 0, 0, {}]]]},
        {"class_name": "MaxPooling2D", "name": "p", "config": {"name": "p", "dtype": {"class_name": "Policy", "config": {"name": "mixed_float16"}}, "pool_size": [2, 2], "padding": "valid"}, "inbound_nodes": [[["c", 0, 0, {}]]]},
        {"class_name": "Flatten", "name": "f", "config": {"name": "f", "dtype": "float32"}, "inbound_nodes": [[["p", 0, 0, {}]]]},
        {"class_name": "Dense", "name": "out", "config": {"name": "out", "dtype": "float32", "units": 3}, "inbound_nodes": [[["f", 0, 0, {}]]]},
        {"class_name": "Mystery", "registered_name": "my_pkg>Mystery", "name": "odd", "config": {"name": "odd"}, "inbound_nodes": [[["p", 0, 0, {}]]]},
    ]  # fmt: skip
    cfg = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": layers,
            "input_layers": [["px", 0, 0]],
            "output_layers": [["out", 0, 0], ["p", 0, 0], ["odd", 0, 0]],
        },
    }
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights/c/c")
        g.create_dataset("kernel:0", shape=(3, 3, 3, 8), dtype="f4")
        g.create_dataset("bias:0", shape=(8,), dtype="f4")
        f.create_group("optimizer_weights").create_dataset("m", shape=(1000,), dtype="f4")  # not params
    files = one(tmp_path, "m.h5")
    insp = keras_fmt.inspect(files, keras_fmt.detect(files))
    assert specs(insp.inputs) == [("px", "uint8", [None, 32, 32, 3])]
    assert specs(insp.outputs) == [
        ("out", "float32", [None, 3]),
        ("p", "float16", [None, 8, 8, 8]),
        ("odd", None, None),  # unknown layer class: neither shape nor dtype is guessed
    ]
    assert insp.params == 3 * 3 * 3 * 8 + 8
    assert insp.details["has_optimizer_state"] is True
    assert insp.details["custom_objects"] == ["my_pkg>Mystery"]
    assert any("custom (non-Keras) classes" in w for w in insp.warnings)
    assert insp.safety == {}  # custom classes need code to load, but none is embedded in the file


def test_hdf5_without_keras_markers(tmp_path: Path):
    _h5(tmp_path / "data.h5")
    # Named like Keras: claimed, then rejected with what the file holds.
    files = one(tmp_path, "data.h5")
    det = keras_fmt.detect(files)
    assert det is not None
    with pytest.raises(MalformedModel) as ei:
        keras_fmt.inspect(files, det)
    assert (
        ei.value.format == "keras" and "not a Keras model" in ei.value.message and "data" in ei.value.message
    )
    # Not named like Keras: an HDF5 data set is not claimed.
    shutil.copy(tmp_path / "data.h5", tmp_path / "blob.bin")
    assert keras_fmt.detect(one(tmp_path, "blob.bin")) is None
    assert keras_fmt.detect(one(tmp_path, "data.h5", hint="")) is None


@pytest.mark.parametrize("cut", [100, 2000, -200])
def test_keras_h5_truncated(tf_models: Path, tmp_path: Path, cut: int):
    data = (tf_models / "functional.h5").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:cut])
    files = one(tmp_path, "t.bin", hint="")  # no name hint: the HDF5 signature alone claims it
    det = keras_fmt.detect(files)
    assert det is not None and det.format == "keras"
    with pytest.raises(MalformedModel) as ei:
        keras_fmt.inspect(files, det)
    assert ei.value.format == "keras"
    assert "Keras file" in ei.value.message and "HDF5" in ei.value.message


def test_keras_zip_with_bad_config(tmp_path: Path):
    path = tmp_path / "bad.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{not json")
        z.writestr("metadata.json", '{"keras_version": "3.1.0"}')
    files = one(tmp_path, "bad.keras")
    det = keras_fmt.detect(files)
    assert det is not None
    with pytest.raises(MalformedModel) as ei:
        keras_fmt.inspect(files, det)
    assert ei.value.format == "keras" and "config.json" in ei.value.message


def test_keras_zip_deflated_weights(tf_models: Path, tmp_path: Path):
    """A recompressed .keras (deflated members) still yields params."""
    src = zipfile.ZipFile(tf_models / "functional.keras")
    path = tmp_path / "deflated.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    files = one(tmp_path, "deflated.keras")
    insp = keras_fmt.inspect(files, keras_fmt.detect(files))
    assert insp.params == 459


def test_plain_zip_is_not_keras(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "x.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    assert keras_fmt.detect(one(tmp_path, "x.keras")) is None


# =============================================================================================
# TFLite
# =============================================================================================


def test_tflite_float(tf_models: Path, facts: dict):
    files = one(tf_models, "dense.tflite")
    det = tflite.detect(files)
    assert det is not None and det.format == "tflite"
    insp = tflite.inspect(files, det)
    # named by the (only) signature, as the TFLite runner names them; TF's tensor names kept aside
    sig_io = facts["float_io"]["signatures"]["serving_default"]
    assert specs(insp.inputs) == [(sig_io["inputs"][0], "float32", [None, 8])]
    assert specs(insp.outputs) == [(sig_io["outputs"][0], "float32", [None, 3])]
    assert insp.details["tensor_names"] == {"inputs": facts["float_io"]["inputs"],
                                            "outputs": facts["float_io"]["outputs"]}
    assert insp.params == facts["mlp_params"] == 195
    assert insp.versions["tflite_schema"] == 3
    assert insp.versions["min_runtime_version"]
    assert insp.details["builtin_ops"] == ["FULLY_CONNECTED", "SOFTMAX"]
    assert insp.details["op_counts"] == {"FULLY_CONNECTED": 2, "SOFTMAX": 1}
    assert insp.details["custom_ops"] == []
    assert insp.details["quantized"] is False
    [sig] = insp.details["signature_defs"]
    assert sig["key"] == "serving_default"
    assert [m["name"] for m in sig["inputs"]] == facts["float_io"]["signatures"]["serving_default"]["inputs"]
    assert [m["name"] for m in sig["outputs"]] == facts["float_io"]["signatures"]["serving_default"][
        "outputs"
    ]
    assert len(insp.details["subgraphs"]) == 1
    assert insp.to_dict()["signature_complete"] is True


def test_tflite_int8(tf_models: Path, facts: dict):
    files = one(tf_models, "dense_int8.tflite")
    insp = tflite.inspect(files, tflite.detect(files))
    truth_in, truth_out = facts["int8_io"]["inputs"][0], facts["int8_io"]["outputs"][0]
    assert insp.details["tensor_names"] == {"inputs": [truth_in["name"]], "outputs": [truth_out["name"]]}
    assert [t.dtype for t in insp.inputs] == ["int8"] and [t.shape for t in insp.inputs] == [[None, 8]]
    assert [t.dtype for t in insp.outputs] == ["int8"] and [t.shape for t in insp.outputs] == [[None, 3]]
    q_in = insp.details["quantization"]["inputs"][0]["quantization"]
    q_out = insp.details["quantization"]["outputs"][0]["quantization"]
    assert q_in["scale"] == pytest.approx(truth_in["scale"]) and q_in["zero_point"] == truth_in["zero_point"]
    assert (
        q_out["scale"] == pytest.approx(truth_out["scale"]) and q_out["zero_point"] == truth_out["zero_point"]
    )
    assert insp.details["quantized"] is True
    assert insp.params == 195


def test_tflite_detect_by_bytes_not_name(tf_models: Path, tmp_path: Path):
    shutil.copy(tf_models / "dense.tflite", tmp_path / "model.bin")
    det = tflite.detect(one(tmp_path, "model.bin"))
    assert det is not None and det.format == "tflite"
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    assert tflite.detect(one(tmp_path, "fake.tflite")) is None


def _tflite_malformed(tmp_path: Path, data: bytes) -> MalformedModel:
    (tmp_path / "m.tflite").write_bytes(data)
    files = one(tmp_path, "m.tflite")
    det = tflite.detect(files)
    assert det is not None
    with pytest.raises(MalformedModel) as ei:
        tflite.inspect(files, det)
    assert ei.value.format == "tflite" and ei.value.code == "malformed_model"
    assert "TFLite" in ei.value.message
    return ei.value


def test_tflite_zero_byte(tmp_path: Path):
    (tmp_path / "m.tflite").write_bytes(b"")
    # not claimed; the registry then raises MalformedModel("tflite") from the name hint
    assert tflite.detect(one(tmp_path, "m.tflite")) is None


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_tflite_truncated(tf_models: Path, tmp_path: Path, frac: float):
    data = (tf_models / "dense.tflite").read_bytes()
    _tflite_malformed(tmp_path, data[: int(len(data) * frac)])


def test_tflite_tiny_header_only(tmp_path: Path):
    err = _tflite_malformed(tmp_path, b"\x10\x00\x00\x00TFL3")
    assert "truncated" in err.message


@pytest.mark.parametrize("seed", range(6))
def test_tflite_garbage_after_magic(tmp_path: Path, seed: int):
    import random

    rng = random.Random(seed)
    body = bytes(rng.getrandbits(8) for _ in range(4096))
    _tflite_malformed(tmp_path, struct.pack("<I", 8 + seed * 16) + b"TFL3" + body)


def test_tflite_huge_vector_length_is_rejected_fast(tmp_path: Path):
    """A root table whose operator_codes vector claims 2**31 entries must not be iterated."""
    # root offset -> table at 16; vtable at 8: [vtable size 8, table size 8, field0 (version) absent,
    # field1 (operator_codes) at table+4]; that field's uoffset (at 20) points 4 ahead, to 24.
    vtable = struct.pack("<HHHH", 8, 8, 0, 4)
    table = struct.pack("<i", 16 - 8) + struct.pack("<I", 4)  # soffset to vtable; uoffset to vector
    vector = struct.pack("<I", 2**31)
    data = struct.pack("<I", 16) + b"TFL3" + vtable + table + vector + b"\x00" * 16
    err = _tflite_malformed(tmp_path, data)
    assert "more than the file can hold" in err.message


def test_tflite_bitflips(tf_models: Path, tmp_path: Path):
    """Corrupt single bytes across the real model: either inspect still succeeds or it raises
    MalformedModel naming TFLite; never another exception."""
    data = bytearray((tf_models / "dense.tflite").read_bytes())
    for pos in range(8, len(data), max(1, len(data) // 60)):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        (tmp_path / "m.tflite").write_bytes(bad)
        files = one(tmp_path, "m.tflite")
        try:
            tflite.inspect(files, tflite.detect(files))
        except MalformedModel as exc:
            assert exc.format == "tflite"


# =============================================================================================
# Through the registry (all format modules are written by different people)
# =============================================================================================


def test_registry_end_to_end(tf_models: Path, tmp_path: Path):
    from app import formats

    assert all(importlib.util.find_spec(f"app.formats.{n}") for n in formats.FORMAT_MODULES)
    from app.formats import detect_and_inspect

    out = detect_and_inspect(one(tf_models, "dense.tflite", hint="model.h5"))
    assert out["format"] == "tflite" and out["extension_hint"] == "keras"
    assert "suggests Keras" in out["warnings"][0]
    out = detect_and_inspect(one(tf_models, "functional.keras"))
    assert out["format"] == "keras" and out["signature_complete"] is True
    shutil.copytree(tf_models / "savedmodel", tmp_path / "sm")
    out = detect_and_inspect(files_in(tmp_path, hint="sm.savedmodel"))
    assert out["format"] == "savedmodel" and [i["name"] for i in out["inputs"]] == ["ids", "x"]
    (tmp_path / "z.tflite").write_bytes(b"")
    with pytest.raises(MalformedModel) as ei:
        detect_and_inspect(one(tmp_path, "z.tflite"))
    assert ei.value.format == "tflite"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
