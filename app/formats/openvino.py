"""OpenVINO IR: an ``.xml`` graph whose root element is ``<net version=…>`` plus a ``.bin`` with the
weights (same stem).

Detection reads only the XML root element (``defusedxml`` iterparse, DTDs and entities refused).
Inspection cross-checks the ``.bin`` against the ``offset``/``size`` that the XML's ``Const`` layers
declare, then reads the signature with ``openvino.Core().read_model`` where openvino is installed,
and from the XML (``Parameter`` and ``Result`` layers) where it is not. Nothing is compiled or run.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

from app.formats.base import (
    Detection,
    FormatInfo,
    Inspection,
    MalformedModel,
    ModelFiles,
    TensorSpec,
    TritonModel,
    missing_library,
    prod,
)

FORMAT = FormatInfo(
    name="openvino",
    title="OpenVINO IR",
    extensions=(".xml",),
    multi_file=True,
    reader="openvino",
    notes="an .xml graph plus its .bin weights with the same stem",
    code_on_load=False,
    runner="openvino_runner",
    packages=("openvino", "nncf"),
    triton=TritonModel(backend="openvino", filename="model.xml", layout="stem",
                       threads_parameter="INFERENCE_NUM_THREADS",
                       notes=("Triton's openvino backend has no setting that pins f32 inference: on a CPU with "
                              "bf16 (AVX-512 BF16, AMX) OpenVINO computes in bf16 there, while modelport "
                              "validated and serves it with INFERENCE_PRECISION_HINT=f32",)),
)

# IR element_type names (``<data element_type=…>``, ``ov.Type.get_type_name()``) -> numpy-style names.
_ELEMENT_TYPES = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "f8e4m3": "float8_e4m3fn",
    "f8e5m2": "float8_e5m2",
    "f8e8m0": "float8_e8m0fnu",
    "f4e2m1": "float4_e2m1fn",
    "nf4": "nf4",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "i4": "int4",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "u4": "uint4",
    "u3": "uint3",
    "u2": "uint2",
    "u6": "uint6",
    "u1": "uint1",
    "boolean": "bool",
    "string": "str",
}
# Port ``precision`` attributes (upper-case legacy names) -> numpy-style names.
_PRECISIONS = {
    "FP64": "float64",
    "FP32": "float32",
    "FP16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "I4": "int4",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "U4": "uint4",
    "U1": "uint1",
    "BOOL": "bool",
    "BOOLEAN": "bool",
    "STRING": "str",
    "NF4": "nf4",
    "F8E4M3": "float8_e4m3fn",
    "F8E5M2": "float8_e5m2",
}
_SNIFF = 4096
_RT_INFO_MAX = 64  # entries of <rt_info> copied into details


def _dtype(element_type: str | None) -> str | None:
    if not element_type:
        return None
    return _ELEMENT_TYPES.get(element_type.lower(), element_type.lower())


def _precision_dtype(precision: str | None) -> str | None:
    if not precision:
        return None
    return _PRECISIONS.get(precision.upper(), precision.lower())


def _looks_like_xml(files: ModelFiles, rel: str) -> bool:
    try:
        head = files.head(rel, 256)
    except OSError:
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def _root(path) -> tuple[str, dict[str, str]] | None:
    """Tag and attributes of the XML root element, reading no further than its start tag."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, iterparse

    try:
        for _event, elem in iterparse(str(path), events=("start",), forbid_dtd=True):
            return elem.tag, dict(elem.attrib)
    except (ParseError, DefusedXmlException, UnicodeDecodeError, OSError, ValueError):
        return None
    return None


def _sniff_net(files: ModelFiles, rel: str) -> bool:
    """A ``<net … version=…>`` start tag in the first bytes: for XML that the safe parser refuses
    (a DTD), so that it is still recognised as an IR and then rejected with a clear reason."""
    text = files.head(rel, _SNIFF).decode("utf-8", "replace")
    return re.search(r"<net\b[^>]*\bversion\s*=", text) is not None


def _bin_for(files: ModelFiles, xml: str) -> str | None:
    want = str(PurePosixPath(xml).with_suffix(".bin"))
    for p in files.paths:
        if p == want or p.lower() == want.lower():
            return p
    return None


def detect(files: ModelFiles) -> Detection | None:
    candidates = files.by_suffix(".xml") + [p for p in files.paths if not p.lower().endswith(".xml")]
    for rel in candidates:
        if rel.lower().endswith(".bin") or not _looks_like_xml(files, rel):
            continue
        root = _root(files.abs(rel))
        if root is None:
            if _sniff_net(files, rel):
                return Detection(
                    format="openvino",
                    primary=rel,
                    reason="XML with a <net version=…> root that the safe XML parser refuses",
                    extra={"xml": rel, "bin": _bin_for(files, rel), "unparseable": True},
                )
            continue
        tag, attrs = root
        if tag != "net" or "version" not in attrs:
            continue
        return Detection(
            format="openvino",
            primary=rel,
            reason=f'XML root element <net version="{attrs["version"]}">',
            extra={"xml": rel, "bin": _bin_for(files, rel), "ir_version": attrs["version"]},
        )
    return None


# --- the XML, parsed whole -------------------------------------------------------------------


def _parse_xml(files: ModelFiles, xml: str):
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, parse

    try:
        tree = parse(str(files.abs(xml)), forbid_dtd=True)
    except DefusedXmlException as e:
        raise MalformedModel(
            "openvino", f"'{xml}' declares a DTD or entities, which an OpenVINO IR never has ({e})"
        ) from None
    except (ParseError, UnicodeDecodeError, ValueError) as e:
        raise MalformedModel("openvino", f"'{xml}' is not well-formed XML: {e}") from None
    root = tree.getroot()
    if root.tag != "net" or "version" not in root.attrib:
        raise MalformedModel("openvino", f"'{xml}' has no <net version=…> root element")
    return root


def _layers(root) -> list:
    layers = root.find("layers")
    return [] if layers is None else list(layers.findall("layer"))


def _int(value: str | None, what: str) -> int:
    try:
        n = int(value or "")
    except ValueError:
        raise MalformedModel("openvino", f"{what}: '{value}' is not an integer") from None
    if n < 0:
        raise MalformedModel("openvino", f"{what}: {n} is negative")
    return n


def _const_data(layer) -> tuple[int, int] | None:
    data = layer.find("data")
    if data is None or ("offset" not in data.attrib and "size" not in data.attrib):
        return None
    name = layer.get("name", layer.get("id", "?"))
    return (
        _int(data.get("offset"), f"Const layer '{name}' offset"),
        _int(data.get("size"), f"Const layer '{name}' size"),
    )


def _parse_shape(text: str | None) -> tuple[list[int | str | None] | None, list | None]:
    """``<data shape="?,4">`` -> ([None, 4], bounds); "..." is a dynamic rank; "1..8" is a bounded dim."""
    if text is None:
        return None, None
    text = text.strip()
    if text in ("...", "?..."):
        return None, None
    if text == "":
        return [], None
    shape: list[int | str | None] = []
    bounds: list = []
    bounded = False
    for tok in (t.strip() for t in text.split(",")):
        if tok in ("?", "-1"):
            shape.append(None)
            bounds.append(None)
        elif ".." in tok:
            lo, _, hi = tok.partition("..")
            shape.append(None)
            bounds.append([int(lo) if lo else 0, int(hi) if hi else None])
            bounded = True
        else:
            try:
                shape.append(int(tok))
            except ValueError:
                shape.append(tok)  # a named/symbolic dimension
            bounds.append(None)
    return shape, (bounds if bounded else None)


def _port_shape(port) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in port.findall("dim"):
        text = (d.text or "").strip()
        try:
            n = int(text)
        except ValueError:
            dims.append(text or None)
            continue
        dims.append(None if n < 0 else n)
    return dims


def _port_names(port) -> list[str]:
    names = port.get("names")
    if not names:
        return []
    return [n.replace("\\,", ",") for n in re.split(r"(?<!\\),", names) if n]


def _xml_signature(root) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, Any]]:
    layers = {layer.get("id"): layer for layer in _layers(root)}
    edges_to: dict[tuple[str, str], tuple[str, str]] = {}
    edges = root.find("edges")
    for e in [] if edges is None else edges.findall("edge"):
        edges_to[(e.get("to-layer"), e.get("to-port"))] = (e.get("from-layer"), e.get("from-port"))
    bounds: dict[str, list] = {}
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for layer in layers.values():
        kind = layer.get("type")
        if kind == "Parameter":
            data = layer.find("data")
            port = layer.find("output/port")
            names = _port_names(port) if port is not None else []
            name = names[0] if names else layer.get("name", "")
            shape, b = _parse_shape(data.get("shape") if data is not None else None)
            if shape is None and data is not None and data.get("shape") is None and port is not None:
                shape = _port_shape(port)
            if b:
                bounds[name] = b
            dtype = _dtype(data.get("element_type")) if data is not None else None
            if dtype is None and port is not None:
                dtype = _precision_dtype(port.get("precision"))
            inputs.append(TensorSpec(name=name, dtype=dtype, shape=shape))
        elif kind == "Result":
            port = layer.find("input/port")
            name = layer.get("output_names", "").split(",")[0] if layer.get("output_names") else ""
            if not name and port is not None:
                src = edges_to.get((layer.get("id"), port.get("id")))
                if src is not None and src[0] in layers:
                    for out in layers[src[0]].findall("output/port"):
                        if out.get("id") == src[1] and _port_names(out):
                            name = _port_names(out)[0]
            if not name:
                name = re.sub(r"/sink_port_\d+$", "", layer.get("name", ""))
            outputs.append(
                TensorSpec(
                    name=name,
                    dtype=_precision_dtype(port.get("precision")) if port is not None else None,
                    shape=_port_shape(port) if port is not None else None,
                )
            )
    return inputs, outputs, bounds


def _rt_info(root) -> dict[str, Any]:
    node = root.find("rt_info")
    if node is None:
        return {}
    out: dict[str, Any] = {}

    def walk(el, prefix: str) -> None:
        for child in el:
            if len(out) >= _RT_INFO_MAX:
                return
            key = child.get("name") if child.tag == "info" and child.get("name") else child.tag
            key = f"{prefix}{key}"
            if "value" in child.attrib:
                out[key] = child.get("value")
            if len(child):
                walk(child, key + ".")

    walk(node, "")
    return out


# --- inspect ----------------------------------------------------------------------------------


def _check_bin(files: ModelFiles, xml: str, bin_rel: str | None, layers: list) -> int:
    """The ``.bin`` must hold every byte range the Const layers declare. Returns the bytes needed."""
    need = 0
    for layer in layers:
        if layer.get("type") != "Const":
            continue
        od = _const_data(layer)
        if od is not None and od[1] > 0:
            need = max(need, od[0] + od[1])
    if need == 0:
        return 0
    expected = str(PurePosixPath(xml).with_suffix(".bin"))
    if bin_rel is None:
        raise MalformedModel(
            "openvino",
            f"'{xml}' references {need} bytes of weights but its weights file '{expected}' was not "
            "uploaded (an OpenVINO IR is the .xml and the .bin with the same name)",
            missing=expected,
            bin_bytes_needed=need,
        )
    have = files.size(bin_rel)
    if have < need:
        raise MalformedModel(
            "openvino",
            f"weights file '{bin_rel}' is {have} bytes but '{xml}' declares Const data up to byte "
            f"{need}: the .bin is truncated or belongs to another model",
            bin=bin_rel,
            bin_bytes=have,
            bin_bytes_needed=need,
        )
    return need


def _ov_shape(pshape) -> tuple[list[int | str | None] | None, list | None]:
    if pshape.rank.is_dynamic:
        return None, None
    shape: list[int | str | None] = []
    bounds: list = []
    bounded = False
    for d in pshape:
        if d.is_static:
            shape.append(d.get_length())
            bounds.append(None)
            continue
        shape.append(None)
        lo, hi = d.get_min_length(), d.get_max_length()
        if lo > 0 or hi >= 0:
            bounds.append([lo, hi if hi >= 0 else None])
            bounded = True
        else:
            bounds.append(None)
    return shape, (bounds if bounded else None)


def _read_with_openvino(files: ModelFiles, xml: str, bin_rel: str | None, insp: Inspection) -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    try:
        core = ov.Core()
        if bin_rel is not None:
            model = core.read_model(str(files.abs(xml)), str(files.abs(bin_rel)))
        else:
            model = core.read_model(str(files.abs(xml)))
    except Exception as e:  # openvino raises RuntimeError and friends for any bad IR
        msg = str(e).strip().splitlines()
        raise MalformedModel(
            "openvino", f"OpenVINO cannot read '{xml}': {msg[0] if msg else type(e).__name__}"
        ) from None

    def spec(port) -> tuple[TensorSpec, list | None]:
        try:
            name = port.get_any_name()
        except RuntimeError:
            name = port.get_node().get_friendly_name()
        shape, bounds = _ov_shape(port.get_partial_shape())
        et = port.get_element_type()
        dtype = None if et.is_dynamic() else _dtype(et.get_type_name())
        return TensorSpec(name=name, dtype=dtype, shape=shape), bounds

    insp.inputs, insp.outputs = [], []
    bounds: dict[str, list] = {}
    for port in model.inputs:
        t, b = spec(port)
        insp.inputs.append(t)
        if b:
            bounds[t.name] = b
    for port in model.outputs:
        t, b = spec(port)
        insp.outputs.append(t)
        if b:
            bounds[t.name] = b
    if bounds:
        insp.details["dim_bounds"] = bounds
    insp.details["model_name"] = model.get_friendly_name()
    insp.details["op_types"] = dict(
        sorted(Counter(op.get_type_name() for op in model.get_ordered_ops()).items())
    )
    insp.versions["openvino_reader"] = ov.get_version()
    return True


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    xml = det.extra.get("xml", det.primary)
    bin_rel = det.extra.get("bin") or _bin_for(files, xml)
    insp = Inspection(format="openvino", primary_file=xml)
    root = _parse_xml(files, xml)
    layers = _layers(root)
    if not layers:
        raise MalformedModel("openvino", f"'{xml}' has a <net> root but no <layers>")

    ir_version_text = root.get("version", "")
    try:
        ir_version: int | str = int(ir_version_text)
    except ValueError:
        ir_version = ir_version_text
    insp.versions["ir_version"] = ir_version
    insp.details["model_name"] = root.get("name")
    insp.details["files"] = {"xml": xml, "bin": bin_rel}

    _check_bin(files, xml, bin_rel, layers)
    if bin_rel is not None:
        insp.details["bin_bytes"] = files.size(bin_rel)

    # Precisions of Parameter/Const layers and the parameter count come from the XML either way.
    precisions: dict[str, Counter] = {"Parameter": Counter(), "Const": Counter()}
    params = 0
    for layer in layers:
        kind = layer.get("type")
        if kind not in precisions:
            continue
        data = layer.find("data")
        et = _dtype(data.get("element_type")) if data is not None else None
        precisions[kind][et or "unknown"] += 1
        if kind == "Const" and data is not None:
            shape, _ = _parse_shape(data.get("shape"))
            if shape is not None and all(isinstance(d, int) for d in shape):
                params += prod(shape)  # type: ignore[arg-type]
    insp.params = params
    insp.details["precisions"] = {k: dict(sorted(v.items())) for k, v in precisions.items() if v}
    rt = _rt_info(root)
    if rt:
        insp.details["rt_info"] = rt
        for key in ("Runtime_version", "OpenVINO Runtime"):
            if key in rt:
                insp.versions["openvino_writer"] = rt[key]
                break

    readable_by_ov = isinstance(ir_version, int) and ir_version >= 10
    if readable_by_ov and _read_with_openvino(files, xml, bin_rel, insp):
        return insp

    inputs, outputs, bounds = _xml_signature(root)
    insp.inputs, insp.outputs = inputs, outputs
    if bounds:
        insp.details["dim_bounds"] = bounds
    insp.details["op_types"] = dict(sorted(Counter(layer.get("type") for layer in layers).items()))
    insp.details["signature_source"] = "xml"
    if not readable_by_ov:
        insp.unavailable.append(
            f"full model read: IR version {ir_version} is not readable by current OpenVINO releases "
            "(IR v10 and later are); inputs and outputs were read from the XML"
        )
    else:
        missing_library(insp, "openvino", "full model read (types as OpenVINO resolves them, op set)")
        insp.warnings.append("inputs and outputs were read from the XML; openvino was not available")
    return insp
