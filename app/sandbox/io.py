"""What an edge implementation receives and returns. Standard library only: this module is
imported inside the sandbox, possibly under another toolchain's interpreter.

An edge implementation is a function ``f(src: Source, out_dir: Path, options: dict) -> Result`` in a
module under ``app/conversion/edges/``. It imports its heavy libraries itself, writes its artifact
into ``out_dir`` and returns what it wrote. It raises :class:`ConversionError` for failures it
understands; anything else is reported with its traceback."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Source:
    root: Path
    paths: list[str]
    primary: str
    format: str
    inspection: dict[str, Any]
    input_specs: dict[str, dict[str, Any]] | None = None

    @property
    def primary_path(self) -> Path:
        return self.root / self.primary


@dataclass
class Result:
    primary: str  # relative to out_dir
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # tool -> version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConversionError(Exception):
    """A failure the converter understood: what failed, in which tool, and what to do."""

    def __init__(self, message: str, *, tool: str | None = None, tool_version: str | None = None,
                 unsupported_operator: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.tool_version = tool_version
        self.unsupported_operator = unsupported_operator
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "tool": self.tool, "tool_version": self.tool_version,
                "unsupported_operator": self.unsupported_operator, "hint": self.hint}
