"""The format registry: one module per format, listed here in detection order.

Only :mod:`app.formats.base` is imported eagerly; each format module is imported when first
needed, and those modules keep their heavy libraries inside functions.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from app.formats.base import (
    Detection,
    FormatError,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
)

# Detection order matters: multi-file and directory formats first, then zip-based formats from
# the most specific layout to the least, then single-file magic numbers.
FORMAT_MODULES: tuple[str, ...] = (
    "openvino",
    "savedmodel",
    "coreml",
    "onnx",
    "torch_export",
    "torchscript",
    "torch_package",
    "pytorch",
    "keras",
    "safetensors",
    "tflite",
    "tensorrt",
)


# An entry is a module under app.formats or a dotted path (a plug-in, or a test's throw-away format).


@cache
def _import(entry: str) -> ModuleType:
    return importlib.import_module(entry if "." in entry else f"app.formats.{entry}")


def _modules() -> dict[str, ModuleType]:
    return {m.FORMAT.name: m for m in map(_import, FORMAT_MODULES)}


def module(name: str) -> ModuleType:
    return _modules()[name]


def all_formats() -> list[FormatInfo]:
    return [m.FORMAT for m in _modules().values()]


def by_name(name: str) -> FormatInfo:
    return module(name).FORMAT


def find(name: str) -> FormatInfo | None:
    """The declaration, or None for a name no module declares (``unknown`` uploads)."""
    m = _modules().get(name)
    return m.FORMAT if m is not None else None


def zip_markers() -> list[tuple[str, str | tuple[str, ...]]]:
    """(format, marker) for every declared zip marker: what tells a model zip from an archive."""
    return [(f.name, m) for f in all_formats() for m in f.zip_markers]


def format_for_extension(filename: str | None) -> FormatInfo | None:
    if not filename:
        return None
    low = filename.lower()
    best: tuple[int, FormatInfo] | None = None
    for info in all_formats():
        for ext in info.extensions:
            if low.endswith(ext) and (best is None or len(ext) > best[0]):
                best = (len(ext), info)
    return best[1] if best else None


def detect(files: ModelFiles) -> Detection | None:
    for m in _modules().values():
        det = m.detect(files)
        if det is not None:
            return det
    return None


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    return module(det.format).inspect(files, det)


def understood() -> str:
    return ", ".join(f"{f.title} ({' '.join(f.extensions)})" for f in all_formats())


def detect_and_inspect(files: ModelFiles, *, accept_unknown: bool = False) -> dict:
    """Decide the format from the bytes and inspect it. Returns the inspection as a dict, with
    ``extension_hint`` and any mismatch between name and content in ``warnings``.

    Raises :class:`FormatError` (422) for malformed or unsafe content and
    :class:`UnknownFormat` (415) when nothing recognises the bytes."""
    hint = format_for_extension(files.hint_name)
    det = detect(files)
    if det is None:
        if hint is not None:
            raise MalformedModel(
                hint.name,
                f"'{files.hint_name}' is named like {hint.title} but its content is not {hint.title} "
                f"(no {hint.title} header or structure found)",
            )
        if accept_unknown:
            primary = sorted(files.paths, key=files.size, reverse=True)[0]
            insp = Inspection(format="unknown", primary_file=primary)
            insp.warnings.append("format not recognised; stored as 'unknown' (MODELPORT_ACCEPT_UNKNOWN_FORMATS)")
            out = insp.to_dict()
            out["extension_hint"] = None
            out["detected_by"] = "nothing matched"
            return out
        raise UnknownFormat(
            None,
            "the uploaded content is not a model format modelport understands; understood formats: "
            + understood(),
            understood=[f.name for f in all_formats()],
        )
    insp = inspect(files, det)
    out = insp.to_dict()
    out["format_title"] = by_name(det.format).title
    out["detected_by"] = det.reason
    out["extension_hint"] = hint.name if hint else None
    if hint is not None and hint.name != det.format:
        out["warnings"].insert(
            0,
            f"the file name '{files.hint_name}' suggests {hint.title} but the content is "
            f"{by_name(det.format).title}; the content wins",
        )
    return out


class UnknownFormat(FormatError):
    status_code = 415
    code = "unknown_format"
