"""Core ML: a bare ``.mlmodel`` (a ``CoreML.Specification.Model`` protobuf) or an ``.mlpackage``
directory (``Manifest.json`` + ``Data/com.apple.CoreML/model.mlmodel`` + ``weights/``).

Detection decodes the protobuf's top-level fields by hand (tags and lengths only, seeking past
bodies): a Core ML spec has field 1 ``specificationVersion`` (varint), field 2 ``description``
(message) and one model-type field numbered 200 or more. ONNX (fields 1–25) and a TensorFlow
``saved_model.pb`` (fields 1 and 2) have no such field. A package is recognised by the structure
of its manifest. Inspection parses the spec with ``coremltools.proto``; nothing is compiled or
run, and prediction needs the Core ML framework (macOS), which is reported, not attempted.
"""

from __future__ import annotations

import json
import sys
from pathlib import PurePosixPath
from typing import Any

from app.formats import protowire
from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    missing_library,
    prod,
)

FORMAT = FormatInfo(
    name="coreml",
    title="Core ML",
    extensions=(".mlmodel", ".mlpackage"),
    directory=True,
    reader="coremltools",
    notes="prediction needs macOS; metadata is read anywhere",
    code_on_load=False,
    runner="coreml_runner",
    packages=("coremltools",),
)

# Top-level ``Model`` fields (CoreML/Specification/Model.proto): 1, 2, 10 and the ``Type`` oneof.
MODEL_TYPES: dict[int, str] = {
    200: "pipelineClassifier",
    201: "pipelineRegressor",
    202: "pipeline",
    300: "glmRegressor",
    301: "supportVectorRegressor",
    302: "treeEnsembleRegressor",
    303: "neuralNetworkRegressor",
    304: "bayesianProbitRegressor",
    400: "glmClassifier",
    401: "supportVectorClassifier",
    402: "treeEnsembleClassifier",
    403: "neuralNetworkClassifier",
    404: "kNearestNeighborsClassifier",
    500: "neuralNetwork",
    501: "itemSimilarityRecommender",
    502: "mlProgram",
    555: "customModel",
    556: "linkedModel",
    560: "classConfidenceThresholding",
    600: "oneHotEncoder",
    601: "imputer",
    602: "featureVectorizer",
    603: "dictVectorizer",
    604: "scaler",
    606: "categoricalMapping",
    607: "normalizer",
    609: "arrayFeatureExtractor",
    610: "nonMaximumSuppression",
    900: "identity",
    2000: "textClassifier",
    2001: "wordTagger",
    2002: "visionFeaturePrint",
    2003: "soundAnalysisPreprocessing",
    2004: "gazetteer",
    2005: "wordEmbedding",
    2006: "audioFeaturePrint",
    3000: "serializedModel",
}
_KNOWN_TOP = {1, 2, 10, *MODEL_TYPES}
# coremltools' _SPECIFICATION_VERSION_IOS_* constants.
_SPEC_MIN_TARGET = {
    1: "iOS11",
    2: "iOS11.2",
    3: "iOS12",
    4: "iOS13",
    5: "iOS14",
    6: "iOS15",
    7: "iOS16",
    8: "iOS17",
    9: "iOS18",
    10: "iOS26",
}
_ARRAY_DTYPES = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "DOUBLE": "float64",
    "INT32": "int32",
    "INT8": "int8",
}
# MIL tensor data types (MIL.proto DataType), for mlProgram function signatures.
_MIL_DTYPES = {
    "BOOL": "bool",
    "STRING": "str",
    "FLOAT8E4M3FN": "float8_e4m3fn",
    "FLOAT8E5M2": "float8_e5m2",
    "FLOAT16": "float16",
    "FLOAT32": "float32",
    "FLOAT64": "float64",
    "BFLOAT16": "bfloat16",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "INT4": "int4",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "UINT4": "uint4",
    "UINT2": "uint2",
    "UINT1": "uint1",
    "UINT6": "uint6",
    "UINT3": "uint3",
}
_MANIFEST_MAX = 1 << 20
_MAX_TOP_FIELDS = 64
_NOT_RUNNABLE = "Core ML prediction needs Apple's Core ML framework (macOS); this host can only read the spec"


# --- detection --------------------------------------------------------------------------------


def spec_model_type(files: ModelFiles, rel: str) -> tuple[int, str] | None:
    """(field number, name) of the model type when ``rel`` is a Core ML spec by its top-level fields."""
    try:
        size = files.size(rel)
        if size < 4:
            return None
        with open(files.abs(rel), "rb") as f:
            if f.read(1) != b"\x08":  # field 1, varint: specificationVersion comes first
                return None
        fields = protowire.top_level_fields(files.abs(rel), max_fields=_MAX_TOP_FIELDS)
    except OSError:
        return None
    if not fields:
        return None
    wires = dict(fields)
    if wires.get(1) != 0 or wires.get(2) != 2:
        return None
    if any(n not in _KNOWN_TOP for n, _ in fields):
        return None
    types = [n for n, w in fields if n >= 200 and w == 2]
    if len(types) != 1 or len([n for n, _ in fields if n >= 200]) != 1:
        return None
    return types[0], MODEL_TYPES[types[0]]


def _read_manifest(files: ModelFiles, rel: str) -> dict | None:
    try:
        if files.size(rel) > _MANIFEST_MAX:
            return None
        data = json.loads(files.abs(rel).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    entries = data.get("itemInfoEntries")
    if not isinstance(entries, dict) or not entries:
        return None
    if not all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries.values()):
        return None
    return data


def _package_root_model(manifest: dict) -> tuple[str | None, str]:
    """(path inside Data/ of the root model, how it was chosen)."""
    entries = manifest["itemInfoEntries"]
    root_id = manifest.get("rootModelIdentifier")
    if isinstance(root_id, str) and root_id in entries:
        return entries[root_id]["path"], "rootModelIdentifier"
    for e in entries.values():
        if e["path"].endswith(".mlmodel"):
            return e["path"], "the manifest's .mlmodel entry"
    return None, "no root model entry"


def _detect_package(files: ModelFiles) -> Detection | None:
    for manifest_rel in sorted(files.by_basename("Manifest.json"), key=lambda p: p.count("/")):
        manifest = _read_manifest(files, manifest_rel)
        if manifest is None:
            continue
        inner, how = _package_root_model(manifest)
        base = PurePosixPath(manifest_rel).parent
        package = "" if str(base) == "." else str(base)
        model_rel = str(base / "Data" / inner) if inner else None
        if model_rel is not None and model_rel.startswith("./"):
            model_rel = model_rel[2:]
        looks_coreml = any(
            str(e.get("author", "")).startswith("com.apple.CoreML")
            for e in manifest["itemInfoEntries"].values()
        ) or (inner or "").endswith(".mlmodel")
        if not looks_coreml:
            continue
        present = model_rel in files.paths if model_rel else False
        return Detection(
            format="coreml",
            primary=model_rel if present else manifest_rel,
            reason=f"mlpackage Manifest.json with itemInfoEntries (root model by {how})",
            extra={
                "kind": "mlpackage",
                "package": package,
                "manifest": manifest_rel,
                "model": model_rel,
                "model_present": present,
            },
        )
    return None


def detect(files: ModelFiles) -> Detection | None:
    det = _detect_package(files)
    if det is not None:
        return det
    ordered = files.by_suffix(".mlmodel") + [p for p in files.paths if not p.lower().endswith(".mlmodel")]
    for rel in ordered:
        found = spec_model_type(files, rel)
        if found is not None:
            number, name = found
            return Detection(
                format="coreml",
                primary=rel,
                reason=f"protobuf with specificationVersion, description and model type field {number} ({name})",
                extra={"kind": "mlmodel", "model": rel, "model_type": name},
            )
    return None


# --- inspection -------------------------------------------------------------------------------


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


def _array_spec(name: str, arr, details: dict[str, Any]) -> TensorSpec:
    from coremltools.proto import FeatureTypes_pb2 as ft

    dtype = _ARRAY_DTYPES.get(_enum_name(ft.ArrayFeatureType.ArrayDataType, arr.dataType))
    shape: list[int | str | None] | None = [int(d) for d in arr.shape] if len(arr.shape) else None
    flex = arr.WhichOneof("ShapeFlexibility")
    if flex == "shapeRange":
        ranges = [
            [int(r.lowerBound), int(r.upperBound) if r.upperBound >= 0 else None]
            for r in arr.shapeRange.sizeRanges
        ]
        shape = [lo if lo == hi else None for lo, hi in ranges]
        details.setdefault("shape_ranges", {})[name] = ranges
    elif flex == "enumeratedShapes":
        options = [[int(d) for d in s.shape] for s in arr.enumeratedShapes.shapes]
        if options and all(len(o) == len(options[0]) for o in options):
            shape = [dims[0] if len(set(dims)) == 1 else None for dims in zip(*options, strict=True)]
        elif options:
            shape = None
        details.setdefault("enumerated_shapes", {})[name] = options
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def _image_spec(name: str, img, details: dict[str, Any]) -> TensorSpec:
    from coremltools.proto import FeatureTypes_pb2 as ft

    color = _enum_name(ft.ImageFeatureType.ColorSpace, img.colorSpace)
    channels = 1 if color.startswith("GRAYSCALE") else 3
    width: int | None = int(img.width) or None
    height: int | None = int(img.height) or None
    info: dict[str, Any] = {"width": width, "height": height, "color_space": color}
    flex = img.WhichOneof("SizeFlexibility")
    if flex == "imageSizeRange":
        w, h = img.imageSizeRange.widthRange, img.imageSizeRange.heightRange
        info["width_range"] = [int(w.lowerBound), int(w.upperBound) if w.upperBound >= 0 else None]
        info["height_range"] = [int(h.lowerBound), int(h.upperBound) if h.upperBound >= 0 else None]
        if w.lowerBound != w.upperBound:
            width = None
        if h.lowerBound != h.upperBound:
            height = None
    elif flex == "enumeratedSizes":
        sizes = [[int(s.width), int(s.height)] for s in img.enumeratedSizes.sizes]
        info["enumerated_sizes"] = sizes
        if len({s[0] for s in sizes}) > 1:
            width = None
        if len({s[1] for s in sizes}) > 1:
            height = None
    details.setdefault("images", {})[name] = info
    dtype = "float16" if color == "GRAYSCALE_FLOAT16" else "uint8"
    return TensorSpec(name=name, dtype=dtype, shape=[1, channels, height, width])


def _feature_spec(feature, details: dict[str, Any]) -> TensorSpec:
    t = feature.type
    kind = t.WhichOneof("Type")
    name = feature.name
    if kind == "multiArrayType":
        return _array_spec(name, t.multiArrayType, details)
    if kind == "imageType":
        return _image_spec(name, t.imageType, details)
    if kind == "int64Type":
        return TensorSpec(name=name, dtype="int64", shape=[])
    if kind == "doubleType":
        return TensorSpec(name=name, dtype="float64", shape=[])
    if kind == "stringType":
        return TensorSpec(name=name, dtype="str", shape=[])
    if kind == "stateType":
        inner = t.stateType.WhichOneof("Type")
        if inner == "arrayType":
            return _array_spec(name, t.stateType.arrayType, details)
    details.setdefault("feature_kinds", {})[name] = kind
    return TensorSpec(name=name, dtype=kind, shape=None)


def _mil_tensor(vtype) -> TensorSpec | None:
    from coremltools.proto import MIL_pb2

    if vtype.WhichOneof("type") != "tensorType":
        return None
    tt = vtype.tensorType
    dtype = _MIL_DTYPES.get(_enum_name(MIL_pb2.DataType, tt.dataType))
    if tt.rank < 0:
        return TensorSpec(name="", dtype=dtype, shape=None)
    shape: list[int | str | None] = []
    for d in tt.dimensions:
        which = d.WhichOneof("dimension")
        shape.append(int(d.constant.size) if which == "constant" else None)
    return TensorSpec(name="", dtype=dtype, shape=shape)


def _program_info(spec, insp: Inspection, model_dir: str | None, files: ModelFiles) -> dict[str, TensorSpec]:
    """Functions, opsets, const-weight element counts and the typed outputs of an mlProgram."""
    prog = spec.mlProgram
    insp.versions["mil_program_version"] = int(prog.version)
    functions: dict[str, Any] = {}
    typed: dict[str, TensorSpec] = {}
    params = 0
    blobs: set[str] = set()
    for fname, fn in prog.functions.items():
        block = fn.block_specializations.get(fn.opset)
        ops = list(block.operations) if block is not None else []
        functions[fname] = {"opset": fn.opset, "inputs": [i.name for i in fn.inputs], "ops": len(ops)}
        if block is None:
            continue
        for op in ops:
            for out in op.outputs:
                t = _mil_tensor(out.type)
                if t is not None:
                    typed.setdefault(out.name, t)
            if op.type == "const":
                for out in op.outputs:
                    t = _mil_tensor(out.type)
                    if t is None or t.dtype in (None, "str") or t.shape is None:
                        continue
                    if all(isinstance(d, int) for d in t.shape):
                        params += prod(t.shape)  # type: ignore[arg-type]
                for val in op.attributes.values():
                    if val.WhichOneof("value") == "blobFileValue":
                        blobs.add(val.blobFileValue.fileName)
    insp.details["functions"] = functions
    insp.params = params
    if blobs:
        insp.details["weight_files"] = sorted(blobs)
        _check_blobs(blobs, insp, model_dir, files)
    return typed


def _check_blobs(blobs: set[str], insp: Inspection, model_dir: str | None, files: ModelFiles) -> None:
    if model_dir is None:  # a bare .mlmodel: its weights live in the package it came from
        insp.warnings.append(
            "this mlProgram references external weights (" + ", ".join(sorted(blobs)) + ") that a bare "
            ".mlmodel does not carry; upload the whole .mlpackage to convert or run it"
        )
        return
    missing = []
    for name in sorted(blobs):
        rel = None
        if name.startswith("@model_path/"):
            rel = str(PurePosixPath(model_dir) / name[len("@model_path/") :])
        if rel is None or rel not in files.paths:
            missing.append(name)
    if missing:
        raise MalformedModel(
            "coreml",
            "the package's model references weight files that are not in the upload: " + ", ".join(missing),
            missing=missing,
        )


def _weight_count(msg) -> int:
    """Elements in every ``WeightParams`` of a neural network (and of nested models)."""
    total = 0
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = [value] if hasattr(value, "ListFields") else value
        if field.message_type.full_name == "CoreML.Specification.WeightParams":
            for w in items:
                if len(w.floatValue):
                    total += len(w.floatValue)
                elif w.float16Value:
                    total += len(w.float16Value) // 2
                elif w.int8RawValue:
                    total += len(w.int8RawValue)
                elif w.rawValue:
                    total += len(w.rawValue) // 4
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        for item in items:
            total += _weight_count(item)
    return total


def _metadata(spec) -> dict[str, Any]:
    md = spec.description.metadata
    out: dict[str, Any] = {}
    for key in ("author", "shortDescription", "license", "versionString"):
        if getattr(md, key):
            out[key] = getattr(md, key)
    if md.userDefined:
        out["userDefined"] = dict(md.userDefined)
    return out


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    kind = det.extra.get("kind", "mlmodel")
    model_rel = det.extra.get("model") or det.primary
    insp = Inspection(format="coreml", primary_file=det.primary)
    insp.details["container"] = kind
    insp.details["runnable"] = sys.platform == "darwin"
    if sys.platform != "darwin":
        insp.details["runnable_reason"] = _NOT_RUNNABLE
    if kind == "mlpackage":
        insp.details["package"] = det.extra.get("package")
        if not det.extra.get("model_present"):
            raise MalformedModel(
                "coreml",
                f"the package manifest '{det.extra.get('manifest')}' names its model as '{model_rel}', "
                "which is not in the upload",
                missing=model_rel,
            )
    size = files.size(model_rel)
    if size == 0:
        raise MalformedModel("coreml", f"'{model_rel}' is empty (0 bytes)")
    if kind == "mlpackage" and spec_model_type(files, model_rel) is None:
        raise MalformedModel("coreml", f"'{model_rel}' in the package is not a Core ML model specification")

    try:
        from coremltools.proto import Model_pb2
    except ImportError:
        missing_library(insp, "coremltools", "inputs, outputs and metadata")
        found = spec_model_type(files, model_rel)
        if found:
            insp.details["model_type"] = found[1]
        return insp

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(files.abs(model_rel).read_bytes())
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise MalformedModel("coreml", f"'{model_rel}' is not a valid Core ML specification: {e}") from None
    model_type = spec.WhichOneof("Type")
    if model_type is None:
        raise MalformedModel("coreml", f"'{model_rel}' has no model type")
    insp.details["model_type"] = model_type
    insp.versions["specification_version"] = int(spec.specificationVersion)
    target = _SPEC_MIN_TARGET.get(int(spec.specificationVersion))
    if target:
        insp.versions["minimum_deployment_target"] = target
    md = _metadata(spec)
    if md:
        insp.details["metadata"] = md
        ctv = md.get("userDefined", {}).get("com.github.apple.coremltools.version")
        if ctv:
            insp.versions["coremltools_writer"] = ctv
    if spec.isUpdatable:
        insp.details["updatable"] = True

    desc = spec.description
    in_features, out_features = list(desc.input), list(desc.output)
    if not in_features and len(desc.functions):
        default = desc.defaultFunctionName or desc.functions[0].name
        fn = next((f for f in desc.functions if f.name == default), desc.functions[0])
        in_features, out_features = list(fn.input), list(fn.output)
        insp.details["default_function"] = fn.name
    insp.inputs = [_feature_spec(f, insp.details) for f in in_features]
    insp.outputs = [_feature_spec(f, insp.details) for f in out_features]
    if len(desc.state):
        insp.details["states"] = [_feature_spec(f, {}).to_dict() for f in desc.state]
    for key in ("predictedFeatureName", "predictedProbabilitiesName"):
        if getattr(desc, key):
            insp.details[key] = getattr(desc, key)

    if model_type == "mlProgram":
        model_dir = str(PurePosixPath(model_rel).parent) if kind == "mlpackage" else None
        typed = _program_info(spec, insp, model_dir, files)
        for t in insp.outputs:  # mlProgram descriptions often leave output shapes out
            if t.shape is None and t.name in typed:
                t.shape = typed[t.name].shape
                insp.details.setdefault("shapes_from_program", []).append(t.name)
    else:
        insp.params = _weight_count(getattr(spec, model_type))
    if model_type in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        pipe = getattr(spec, model_type)
        pipe = pipe.pipeline if model_type != "pipeline" else pipe
        insp.details["pipeline_models"] = [m.WhichOneof("Type") for m in pipe.models]
    return insp
