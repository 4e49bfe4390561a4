"""The runner interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Hardware = Literal["cpu", "intel", "gpu", "apple"]
HARDWARE_NEEDS: dict[str, str] = {"cpu": "", "intel": "needs OpenVINO on an x86-64 CPU",
                                  "gpu": "needs an NVIDIA GPU (nvidia-smi finds none)", "apple": "needs macOS"}
"""Every hardware queue, and what a host must have to serve it (said when it has not)."""


@dataclass(frozen=True)
class Runtime:
    """A runner module's declaration (``RUNTIME`` in ``app/runners/<module>.py``): read by the
    queue router, the worker capability check, ``/v1/formats`` and the benchmark's host record."""

    name: str  # what RunnerInfo.runtime says: "onnxruntime", "openvino", "torch", "litert", …
    module: str  # the Python module whose presence means this interpreter can run it
    hardware: Hardware  # the queue whose hosts run it: validation and benchmarks of its formats go there
    toolchain: str = "main"  # the interpreter that has it ("tf": the TensorFlow toolchain)
    precision: str = "fp32"  # what validation pins it to (e.g. OpenVINO INFERENCE_PRECISION_HINT=f32)
    packages: tuple[str, ...] = ()  # distributions whose versions go into benchmark host records
    also_in: tuple[str, ...] = ()  # other toolchains whose interpreter has it too (a reference there can be compared)

    @property
    def toolchains(self) -> frozenset[str]:
        return frozenset((self.toolchain, *self.also_in))

    @property
    def queue(self) -> str:
        return self.hardware if self.toolchain == "main" else f"{self.hardware}.{self.toolchain}"


class RunnerUnavailable(Exception):
    """This runtime cannot run here (not installed, wrong OS, no GPU) or this model needs code."""


@dataclass
class IOSpec:
    name: str
    dtype: str | None  # numpy dtype name: float32, int64, …; None when the runtime does not record it
    shape: list[int | str | None] | None  # int fixed; str symbolic; None unknown (the whole list: unknown rank)


@dataclass
class RunnerInfo:
    runtime: str  # "onnxruntime", "openvino", "torch", "litert", …
    version: str
    precision: str  # the precision it actually computes in, pinned: fp32, fp16, bf16, int8
    threads: int | None  # None when the runtime does not let us set it (Core ML)
    device: str = "cpu"
    details: dict[str, Any] = field(default_factory=dict)


class Runner(ABC):
    """Implementations set ``info``, ``_inputs`` and ``_outputs`` (or override the two methods)."""

    info: RunnerInfo
    _inputs: list[IOSpec]
    _outputs: list[IOSpec]

    def inputs(self) -> list[IOSpec]:
        return list(self._inputs)

    def outputs(self) -> list[IOSpec]:
        return list(self._outputs)

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` maps every input name to an array; returns every output by name
        (outputs without names in the format are named ``output_0``, ``output_1``, …)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass
