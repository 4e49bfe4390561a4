"""Shared types for format modules.

A format module (``app/formats/<name>.py``) declares ``FORMAT`` (a :class:`FormatInfo`) and two
functions:

- ``detect(files: ModelFiles) -> Detection | None`` decides from the bytes (magic numbers,
  structure) whether the file set is this format. Cheap: reads headers, never loads a model.
- ``inspect(files: ModelFiles, det: Detection) -> Inspection`` reads the metadata with the
  format's own library where one exists, never by running a model. A library missing on this
  host makes that part report ``unavailable``; it does not fail. Malformed content raises
  :class:`MalformedModel`; unsafe content raises :class:`UnsafeModel`.

Modules import heavy libraries inside functions only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.errors import ModelportError


@dataclass(frozen=True)
class TritonModel:
    """How Triton Inference Server serves a format, read by ``app/serving/export.py`` (the Triton
    model repository and the KServe InferenceService on KServe's ``kserve-tritonserver`` runtime)."""

    backend: str  # config.pbtxt ``backend``: onnxruntime, openvino, pytorch, tensorflow, tensorrt
    filename: str  # what the version directory holds (``default_model_filename``): model.onnx, model.xml, …
    platform: str = ""  # config.pbtxt ``platform`` where the backend has one: onnxruntime_onnx, pytorch_libtorch, …
    # "file": the one file as ``filename``; "directory": a folder ``filename`` holding the files as they lie
    # beside the primary file (which is renamed to ``directory_primary`` when given); "file_or_directory":
    # "file" for one file, else "directory"; "stem": every file with the primary's stem renamed to ``model``
    layout: Literal["file", "directory", "file_or_directory", "stem"] = "file"
    directory_primary: str | None = None
    output_names: Literal["model", "indexed"] = "model"  # "indexed": OUTPUT__<i> (LibTorch matches by index)
    threads_parameter: str | None = None  # the backend's intra-op threads parameter, for the deployment's threads
    kserve_format: tuple[str, str] = ("triton", "2")  # modelFormat (name, version) kserve-tritonserver lists
    notes: tuple[str, ...] = ()  # said with every export of this format


@dataclass(frozen=True)
class FormatInfo:
    """Everything modelport knows about a format, declared once in its module. The planner, the
    router, ``/v1/formats``, the report, the ingest path, the worker capability check and the
    benchmark's host record read it; no other file names a format in a table."""

    name: str  # stable id used in the API and catalog, e.g. "onnx"
    title: str  # human name, e.g. "ONNX"
    extensions: tuple[str, ...]  # hints only
    code_on_load: bool  # loading it runs code from the file (pickles, TorchScript, Keras Lambdas): not "secure"
    directory: bool = False  # arrives as an archive of a directory (SavedModel, .mlpackage)
    multi_file: bool = False  # may need several files (OpenVINO .xml + .bin, ONNX + external data)
    reader: str | None = None  # python module whose presence enables full inspection
    runner: str | None = None  # module under app.runners (or a dotted path) that runs it; it declares RUNTIME
    # runner modules of the same format on other hardware (e.g. CUDA): validations and benchmarks asked
    # to run on that hardware use them; ``runner`` stays the default
    other_runners: tuple[str, ...] = ()
    weights_only: bool = False  # tensors without an architecture: compared tensor for tensor, measured on load
    # zip members that make a .zip upload this format, not an archive of files: a name anywhere in
    # the zip, or a tuple of top-level names that must all be there
    zip_markers: tuple[str | tuple[str, ...], ...] = ()
    packages: tuple[str, ...] = ()  # distributions whose versions matter for reading or converting it
    notes: str = ""
    triton: TritonModel | None = None  # how Triton serves it (None: no Triton backend runs it; export refuses)


@dataclass
class ModelFiles:
    """The files of one upload, on local disk: ``root / path`` for each relative ``path``."""

    root: Path
    paths: list[str]
    hint_name: str | None = None  # the name the user gave (extension hint)

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def size(self, rel: str) -> int:
        return self.abs(rel).stat().st_size

    def head(self, rel: str, n: int = 64) -> bytes:
        with open(self.abs(rel), "rb") as f:
            return f.read(n)

    def by_suffix(self, *suffixes: str) -> list[str]:
        return [p for p in self.paths if p.lower().endswith(tuple(s.lower() for s in suffixes))]

    def by_basename(self, name: str) -> list[str]:
        return [p for p in self.paths if p.rsplit("/", 1)[-1] == name]

    @property
    def total_size(self) -> int:
        return sum(self.size(p) for p in self.paths)


@dataclass
class Detection:
    format: str
    primary: str  # relative path of the file that defines the model
    reason: str  # what in the bytes decided it
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TensorSpec:
    name: str
    dtype: str | None  # numpy-style name: float32, int64, uint8, bfloat16, …
    shape: list[int | str | None] | None  # int = fixed, str = symbolic, None = unknown dim; None = unknown rank

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}


@dataclass
class Inspection:
    format: str
    primary_file: str
    inputs: list[TensorSpec] | None = None  # None: not knowable from the file
    outputs: list[TensorSpec] | None = None
    params: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    safety: dict[str, Any] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)  # parts this host cannot read, and why
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = None if self.inputs is None else [t.to_dict() for t in self.inputs]
        d["outputs"] = None if self.outputs is None else [t.to_dict() for t in self.outputs]
        d["signature_complete"] = signature_complete(self.inputs, self.outputs)
        return d


def signature_complete(inputs: list[TensorSpec] | None, outputs: list[TensorSpec] | None) -> bool:
    """Names, dtypes and ranks known for every input and output."""
    if not inputs or outputs is None or not outputs:
        return False
    return all(t.name and t.dtype and t.shape is not None for t in (*inputs, *outputs))


class FormatError(ModelportError):
    """A format reader's refusal: the format it concerns is part of the detail."""

    status_code = 422
    code = "malformed_model"

    def __init__(self, format: str | None, message: str, **detail: Any):
        super().__init__(message, detail={"format": format, **detail})
        self.format = format


class MalformedModel(FormatError):
    """The bytes claim a format but do not hold a valid model of it."""

    code = "malformed_model"


class UnsafeModel(FormatError):
    """Loading it would execute code that is not on the allow-list."""

    code = "unsafe_model"


class NeedsCode(FormatError):
    """A model that can only be loaded by running its own Python code (full-model pickles,
    torch.package): recognised, reported, never loaded."""

    code = "model_needs_code"


NOT_INSTALLED = "not available here"
"""In an ``unavailable`` entry: a reader this interpreter lacks (another toolchain may have it)."""


def missing_library(inspection: Inspection, module: str, part: str) -> None:
    inspection.unavailable.append(f"{part}: {NOT_INSTALLED} (Python module '{module}' is not installed)")


def prod(shape: list[int] | tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
