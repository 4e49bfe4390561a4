"""Edge declarations: what converts to what, where, with which options (Pydantic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Hardware = Literal["cpu", "intel", "gpu", "apple"]
Precision = Literal["fp32", "fp16", "int8"]


class EdgeOptions(BaseModel):
    """Base of every edge's options: unknown keys are refused, never dropped."""

    model_config = ConfigDict(extra="forbid")


MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**28
"""An input spec's element count, at most (1 GiB of float32): converters and checks allocate it."""


class InputSpec(BaseModel):
    """What a model input looks like when the file does not say (TorchScript, state dicts)."""

    model_config = ConfigDict(extra="forbid")

    shape: list[Annotated[int, Field(ge=0, le=MAX_DIM)]] = Field(min_length=0, max_length=8)
    dtype: Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool"] = "float32"
    dynamic: dict[str, str] = Field(default_factory=dict, max_length=8,
                                    description="axis index -> symbolic name, e.g. {'0': 'batch'}")

    @field_validator("shape")
    @classmethod
    def _bounded(cls, shape: list[int]) -> list[int]:
        import math

        if math.prod(shape) > MAX_ELEMENTS:
            raise ValueError(f"shape {shape} has {math.prod(shape)} elements; at most {MAX_ELEMENTS} are allowed "
                             "(a converter makes inputs of this size)")
        return shape


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    hardware: Hardware
    toolchain: str  # "main" (torch/ONNX/OpenVINO stack) or another configured interpreter ("tf", …)
    options: type[EdgeOptions]
    implementation: str  # "module:function", imported only inside the sandbox
    tolerance: str  # validation profile: fp32 / fp16 / bf16 / int8 (a precision option may override)
    requires: tuple[str, ...] = ()  # python modules the toolchain must have
    needs_input_specs: bool = False
    description: str = ""
    variant: str = ""  # for same-format edges: what it does (optimize / fp16 / int8)
    report_variants: tuple[str, ...] = ()  # precisions report-all compares beside fp32 for this edge's target

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}" + (f":{self.variant}" if self.variant else "")

    @property
    def queue(self) -> str:
        return self.hardware if self.toolchain == "main" else f"{self.hardware}.{self.toolchain}"
