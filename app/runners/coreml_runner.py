"""Core ML models (``.mlpackage`` directories, ``.mlmodel`` files) with coremltools' ``MLModel.predict``.

Prediction needs Apple's Core ML framework, i.e. macOS; elsewhere loading raises
:class:`RunnerUnavailable`. Precision is pinned through the compute units: fp32 -> CPU_ONLY
(the CPU computes float32), fp16 -> CPU_AND_NE (the Neural Engine computes float16; Core ML
may still place ops on the CPU). This path cannot be exercised on the Linux test hosts."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from app.runners.base import IOSpec, Runner, RunnerInfo, RunnerUnavailable, Runtime

RUNTIME = Runtime("coreml", module="coremltools", hardware="apple", packages=("coremltools",),
                  also_in=("coreml-tf",))  # TensorFlow 2.12 + coremltools: a Mac validates TF -> Core ML there

# Core ML ArrayFeatureType.ArrayDataType
_ARRAY_TYPES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}
_UNITS = {"fp32": "CPU_ONLY", "fp16": "CPU_AND_NE"}


def _model_path(root: Path, paths: list[str], primary: str) -> Path:
    """The .mlmodel file, or the .mlpackage directory holding ``primary``."""
    if primary.lower().endswith(".mlmodel") and "Manifest.json" not in {PurePosixPath(p).name for p in paths}:
        return root / primary
    manifests = {str(PurePosixPath(p).parent) for p in paths if PurePosixPath(p).name == "Manifest.json"}
    for parent in [PurePosixPath(primary), *PurePosixPath(primary).parents]:
        if str(parent) in manifests:
            return root / str(parent)
    return root / primary


def _spec(feature) -> IOSpec:
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        t = feature.type.multiArrayType
        return IOSpec(feature.name, _ARRAY_TYPES.get(t.dataType, str(t.dataType)), [int(d) for d in t.shape])
    if kind == "imageType":
        t = feature.type.imageType
        return IOSpec(feature.name, "image", [int(t.height), int(t.width)])
    return IOSpec(feature.name, {"int64Type": "int64", "doubleType": "float64", "stringType": "object"}
                  .get(kind, str(kind)), [])


class CoreMLRunner(Runner):
    def __init__(self, path: Path, precision: str, threads: int | None):
        try:
            import coremltools as ct
        except ImportError as e:
            raise RunnerUnavailable(f"coremltools is not installed here ({e})") from None
        if precision not in _UNITS:
            raise ValueError(f"Core ML precision must be one of {sorted(_UNITS)}, not {precision!r}")
        self._tmp = None
        if path.is_dir() and path.suffix != ".mlpackage":  # coremltools wants the .mlpackage name
            self._tmp = tempfile.TemporaryDirectory()
            link = Path(self._tmp.name) / "model.mlpackage"
            link.symlink_to(path.resolve(), target_is_directory=True)
            path = link
        units = getattr(ct.ComputeUnit, _UNITS[precision])
        self._model = ct.models.MLModel(str(path), compute_units=units)
        desc = self._model.get_spec().description
        self._inputs = [_spec(f) for f in desc.input]
        self._outputs = [_spec(f) for f in desc.output]
        self.info = RunnerInfo(runtime="coreml", version=ct.__version__, precision=precision, threads=None,
                               details={"compute_units": _UNITS[precision], "requested_threads": threads,
                                        "threads_note": "Core ML chooses its own threads (not settable)"})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self._model.predict({s.name: feeds[s.name] for s in self._inputs})
        return {k: np.asarray(v) for k, v in res.items()}

    def close(self) -> None:
        self._model = None
        if self._tmp is not None:
            self._tmp.cleanup()


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    if sys.platform != "darwin":
        raise RunnerUnavailable(f"Core ML prediction needs macOS (this host is {_host()})")
    return CoreMLRunner(_model_path(Path(root), paths, primary), precision, threads)


def _host() -> str:
    return {"linux": "Linux", "win32": "Windows"}.get(sys.platform, sys.platform)
