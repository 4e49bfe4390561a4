"""The runner interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RunnerUnavailable(Exception):
    """This runtime cannot run here (not installed, wrong OS, no GPU) or this model needs code."""


@dataclass
class IOSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, …
    shape: list[int | str | None]  # int fixed; str symbolic; None unknown


@dataclass
class RunnerInfo:
    runtime: str  # "onnxruntime", "openvino", "torch", "litert", …
    version: str
    precision: str  # the precision it actually computes in, pinned: fp32, fp16, bf16, int8
    threads: int | None
    device: str = "cpu"
    details: dict[str, Any] = field(default_factory=dict)


class Runner(ABC):
    info: RunnerInfo

    @abstractmethod
    def inputs(self) -> list[IOSpec]: ...

    @abstractmethod
    def outputs(self) -> list[IOSpec]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feeds`` maps every input name to an array; returns every output by name
        (outputs without names in the format are named ``output_0``, ``output_1``, …)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass
