"""torch.package archives: Python source + pickles, loaded by importing the packaged code.
Recognised and described, never loaded: modelport does not run uploaded code."""

from __future__ import annotations

from app.formats import torchzip
from app.formats.base import Detection, FormatInfo, Inspection, ModelFiles, NeedsCode

FORMAT = FormatInfo(
    name="torch_package",
    title="torch.package",
    extensions=(),
    notes="loading runs the Python code packaged inside; refused",
    code_on_load=True,
    zip_markers=(".data/extern_modules",),
)


def detect(files: ModelFiles) -> Detection | None:
    if len(files.paths) != 1:
        return None
    p = files.paths[0]
    if files.head(p, 4) != torchzip.ZIP_MAGIC:
        return None
    members = torchzip.names(files.abs(p)) or []
    if torchzip.member_ending(members, ".data/extern_modules") is not None:
        return Detection("torch_package", p, "zip archive with .data/extern_modules (torch.package layout)")
    return None


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    members = torchzip.names(files.abs(det.primary)) or []
    modules = sorted(m for m in members if m.endswith(".py"))
    pickled = sorted(m for m in members if m.endswith(".pkl"))
    raise NeedsCode(
        "torch_package",
        "torch.package archive: loading it imports the Python code packaged inside, and modelport does not "
        "run uploaded code; export the model with torch.export (.pt2), TorchScript, or save a state dict",
        python_modules=modules[:50],
        pickles=pickled[:50],
    )
