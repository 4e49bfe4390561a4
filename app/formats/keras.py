"""Keras models: legacy HDF5 (``.h5`` / ``.hdf5``) and Keras 3 archives (``.keras``).

Detection, from the bytes:

- ``.keras`` (Keras 3): a zip archive holding ``config.json`` and ``metadata.json`` at its root
  (and normally ``model.weights.h5``).
- HDF5: the signature ``\\x89HDF\\r\\n\\x1a\\n`` at offset 0 (or 512/1024/2048, after a user
  block), and then Keras markers read with h5py: a ``model_config`` root attribute (full model),
  a ``layer_names`` attribute at the root or on ``model_weights`` (legacy weights-only), or the
  Keras 3 weights layout (see :func:`_keras3_weights`): ``save_weights("x.weights.h5")``, the
  ``model.weights.h5`` inside a ``.keras`` archive, ``KerasFileEditor.save``.

HDF5 is a general container, so an HDF5 file without Keras markers is only claimed when its
name says Keras (``.h5``, ``.hdf5``, ``.keras``): then :func:`inspect` raises
:class:`MalformedModel` saying what the file holds instead. Without that hint :func:`detect`
returns ``None`` and the upload is "unknown format" (an HDF5 data set is not a model). An HDF5
file that h5py cannot open at all (truncated, corrupt) is claimed and reported as a malformed
Keras file, since Keras is the only HDF5-based model format modelport understands. Without h5py
installed, any HDF5 file is claimed on the signature alone and inspection reports the parts it
cannot read.

Inspection reads only JSON configs and HDF5 metadata (attributes, dataset shapes); no Keras
import, no deserialization. Reported: ``kind`` (``full_model`` / ``weights_only``), Keras
version and backend, layers (class names, count), ``params`` (elements of the model's weight
datasets; optimizer state excluded), inputs from the InputLayer(s) and outputs from
``output_layers`` with shapes inferred for common layer types (``None`` where a layer's shape
rule is unknown) and dtypes from the layers' dtype policies. Lambda layers holding marshalled
Python bytecode are never decoded: they are reported with a warning and
``safety = {"status": "contains_code", ...}``, and the model is accepted.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    name="keras",
    title="Keras",
    extensions=(".keras", ".h5", ".hdf5"),
    reader="h5py",
    notes="Keras 3 .keras archives and legacy HDF5 models/weights; configs are read as JSON, never deserialized",
    code_on_load=True,
    runner="tensorflow_runner",
    zip_markers=("model.weights.h5", ("config.json", "metadata.json")),
    packages=("keras", "tf_keras", "h5py"),
)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_OFFSETS = (0, 512, 1024, 2048)  # HDF5 allows a user block of 512 * 2**n bytes
ZIP_MAGIC = b"PK\x03\x04"
KERAS_HINTS = (".keras", ".h5", ".hdf5")
MAX_JSON = 256 * 1024 * 1024  # config.json / metadata.json larger than this is not a config
WEIGHTS_H5 = "model.weights.h5"

# Top-level groups of a Keras 3 weights file that are not model weights.
NON_MODEL_GROUPS = ("optimizer", "metrics", "compile_metrics", "loss")
# Legacy HDF5 weights: the model's own variables (subclassed models), next to the layer groups.
TOP_LEVEL_WEIGHTS = "top_level_model_weights"
# Objects looked at, at most, when telling the Keras 3 weights layout from other HDF5 files.
KERAS3_SCAN_LIMIT = 100_000


# --- detection ------------------------------------------------------------------------------


def _hdf5_offset(files: ModelFiles, rel: str) -> int | None:
    try:
        head = files.head(rel, HDF5_OFFSETS[-1] + 8)
    except OSError:
        return None
    for off in HDF5_OFFSETS:
        if head[off : off + 8] == HDF5_MAGIC:
            return off
    return None


def _keras_zip(files: ModelFiles, rel: str) -> bool:
    try:
        if files.head(rel, 4) != ZIP_MAGIC:
            return False
        with zipfile.ZipFile(files.abs(rel)) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return "config.json" in names and "metadata.json" in names


def _keras3_weights(f: Any) -> bool:
    """Whether an open HDF5 file has the Keras 3 weights layout (``H5IOStore``).

    Keras 3 (``keras/src/saving/saving_lib.py``: ``_save_state`` + ``H5IOStore``) walks the model
    and writes the variables of every object as datasets (``0``, ``1``, ... for built-in layers)
    in a ``vars`` group at the object's attribute path; nothing else holds datasets and no root
    attributes are written. The paths depend on the model, so no fixed top-level name is required:

    - Functional / Sequential: ``layers/<layer>/vars/<i>`` and an (empty) root ``vars``;
    - subclassed models: ``<attribute>/vars/<i>`` (``dense``, ``conv2d``, ``blocks/dense_1`` for a
      list attribute, ...), the model's own variables in the root ``vars``, no ``layers`` group;
    - a compiled model adds ``optimizer/vars/<i>`` (not parameters);
    - ``KerasFileEditor.save`` writes only groups that hold variables, so no root ``vars`` (and
      a model's own variables under ``vars/vars``);
    - tf.keras 2.12/2.13 ``.weights.h5``: ``_layer_checkpoint_dependencies/<layer>/vars/<i>``
      (Keras 3 loads it through a "Fix for 2.13 compatibility" in ``H5IOStore.get``).

    So: at least one group named ``vars``, and every dataset directly inside a ``vars`` group.
    The walk stops at the first dataset elsewhere, or after :data:`KERAS3_SCAN_LIMIT` objects."""
    import h5py

    found = False
    seen = 0

    def visit(name: str, obj: Any) -> str | None:
        nonlocal found, seen
        seen += 1
        parts = name.split("/")
        if isinstance(obj, h5py.Dataset):
            if len(parts) < 2 or parts[-2] != "vars":
                return "stray"
        elif parts[-1] == "vars":
            found = True
        return "limit" if seen >= KERAS3_SCAN_LIMIT else None

    stop = f.visititems(visit)
    return found and stop != "stray"


def _markers(f: Any) -> tuple[str | None, list[str]]:
    """(kind, top-level keys) of an open HDF5 file; kind None when no Keras markers."""
    import h5py

    keys = list(f.keys())
    if "model_config" in f.attrs:
        return "full_model", keys
    if "layer_names" in f.attrs:
        return "weights_only", keys
    mw = f.get("model_weights")
    if isinstance(mw, h5py.Group) and "layer_names" in mw.attrs:
        return "weights_only", keys
    if "keras_version" in f.attrs:
        return "weights_only", keys
    if _keras3_weights(f):  # Keras 3 save_weights("x.weights.h5"), any model kind
        return "weights_only", keys
    return None, keys


def _hdf5_markers(path: Path) -> tuple[str | None, list[str]]:
    import h5py

    with h5py.File(path, "r") as f:
        return _markers(f)


def detect(files: ModelFiles) -> Detection | None:
    hinted = bool(files.hint_name and files.hint_name.lower().endswith(KERAS_HINTS))
    for rel in files.paths:
        if _keras_zip(files, rel):
            return Detection(
                format="keras",
                primary=rel,
                reason="zip archive with Keras 3 config.json and metadata.json",
                extra={"container": "keras_zip"},
            )
    for rel in files.paths:
        off = _hdf5_offset(files, rel)
        if off is None:
            continue
        extra: dict[str, Any] = {"container": "hdf5", "userblock": off}
        try:
            import h5py  # noqa: F401
        except ImportError:
            return Detection(
                "keras", rel, "HDF5 signature (h5py unavailable to confirm Keras markers)", extra
            )
        try:
            kind, keys = _hdf5_markers(files.abs(rel))
        except Exception as exc:  # OSError from libhdf5 for truncated/corrupt files
            extra["open_error"] = f"{type(exc).__name__}: {exc}"
            return Detection("keras", rel, "HDF5 signature (file does not open)", extra)
        if kind is not None:
            extra["kind"] = kind
            return Detection("keras", rel, f"HDF5 with Keras markers ({kind})", extra)
        if hinted:
            extra["kind"] = None
            extra["keys"] = keys[:20]
            return Detection("keras", rel, "HDF5 signature and a Keras file name (no Keras markers)", extra)
    return None


# --- config helpers -------------------------------------------------------------------------


def _attr_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if hasattr(v, "tolist"):
        v = v.tolist()
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
    return str(v)


def _dtype_from_policy(d: Any) -> str | None:
    """Compute dtype of a layer from its ``dtype`` config (string or policy dict)."""
    if d is None:
        return None
    if isinstance(d, dict):
        cfg = d.get("config")
        name = cfg.get("name") if isinstance(cfg, dict) else None
        if name is None and isinstance(cfg, str):
            name = cfg
        d = name
    if not isinstance(d, str):
        return None
    name = d.split("_from_")[-1]  # QuantizedDTypePolicy "int8_from_mixed_bfloat16"
    if name.startswith("mixed_"):
        name = name[len("mixed_") :]
    return {"half": "float16", "float": "float32", "double": "float64"}.get(name, name)


def _walk_dicts(root: Any):
    """Every dict in a JSON value, iteratively (configs can be deep)."""
    stack = [root]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield v
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _code_layers(config: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(Lambda layers with bytecode or function references, custom class names)."""
    lambdas: list[dict[str, Any]] = []
    custom: set[str] = set()
    for d in _walk_dicts(config):
        cls = d.get("class_name")
        if not isinstance(cls, str):
            continue
        cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
        if cls == "Lambda":
            fn = cfg.get("function")
            ftype = cfg.get("function_type")
            entry = {"layer": cfg.get("name")}
            if isinstance(fn, list) and ftype == "lambda":
                entry["function"] = "bytecode"  # Keras 2: [base64 marshal, defaults, closure]
            elif isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
                entry["function"] = "bytecode"  # Keras 3
            else:
                entry["function"] = "reference"
                ref = fn.get("config") if isinstance(fn, dict) else fn
                entry["name"] = ref if isinstance(ref, str) else None
            lambdas.append(entry)
        # Keras 3 (and Keras >= 2.13) record where each serialized object comes from: anything
        # outside keras needs its Python code to load (layers, initializers, losses, ...).
        reg = d.get("registered_name")
        module = d.get("module")
        if isinstance(module, str) and module != "builtins" and not module.startswith(("keras", "tf_keras")):
            custom.add(f"{module}.{cls}")
        elif isinstance(reg, str) and reg and reg != cls:
            custom.add(reg)
    return lambdas, sorted(custom)


# --- shape inference (common layers only) ---------------------------------------------------

Shape = list[int | None] | None

IDENTITY = frozenset(
    {
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU",
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Masking",
        "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
        "Rescaling", "Normalization", "Identity", "RMSNormalization",
    }
)  # fmt: skip
MERGE_SAME = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})


def _tup(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    return [int(x) for x in v]


def _conv_len(size: int | None, k: int, s: int, d: int, padding: str) -> int | None:
    if size is None:
        return None
    if padding in ("same", "causal"):
        return math.ceil(size / s)
    eff = (k - 1) * d + 1
    return (size - eff) // s + 1 if size >= eff else None


def _spatial(cls: str, cfg: dict[str, Any], shp: list[int | None], rank: int, channels: int | None) -> Shape:
    first = cfg.get("data_format") == "channels_first"
    sp = shp[2:] if first else shp[1:-1]
    if len(sp) != rank:
        return None
    if "Pooling" in cls:
        k = _tup(cfg.get("pool_size", 2), rank)
        s = _tup(cfg.get("strides") or k, rank)
        d = [1] * rank
    else:
        k = _tup(cfg["kernel_size"], rank)
        s = _tup(cfg.get("strides", 1), rank)
        d = _tup(cfg.get("dilation_rate", 1), rank)
    pad = str(cfg.get("padding", "valid")).lower()
    out = [_conv_len(sp[i], k[i], s[i], d[i], pad) for i in range(rank)]
    ch = channels if channels is not None else (shp[1] if first else shp[-1])
    return [shp[0], ch, *out] if first else [shp[0], *out, ch]


def _infer(cls: str, cfg: dict[str, Any], ins: list[Shape]) -> Shape:
    """Output shape of one layer call from its input shapes, for common layers; None if unknown."""
    if not ins or any(s is None for s in ins):
        return None
    shp: list[int | None] = list(ins[0])  # type: ignore[arg-type]
    try:
        if cls in IDENTITY:
            return shp
        if cls == "Dense":
            return [*shp[:-1], int(cfg["units"])]
        if cls == "Flatten":
            rest = shp[1:]
            return [shp[0], None if any(d is None for d in rest) else prod(rest)]  # type: ignore[arg-type]
        if cls == "Reshape":
            target = [int(d) for d in cfg["target_shape"]]
            if -1 in target:
                rest = shp[1:]
                known = prod([d for d in target if d != -1])
                fill = None if any(d is None for d in rest) or not known else prod(rest) // known  # type: ignore[arg-type]
                target = [fill if d == -1 else d for d in target]  # type: ignore[misc]
            return [shp[0], *target]
        if cls == "Concatenate":
            axis = int(cfg.get("axis", -1))
            out = list(shp)
            ax = axis if axis >= 0 else len(out) + axis
            dims = [s[ax] for s in ins]  # type: ignore[index]
            out[ax] = None if any(d is None for d in dims) else sum(dims)  # type: ignore[arg-type]
            return out
        if cls in MERGE_SAME:
            return shp
        if cls == "Embedding":
            return [*shp, int(cfg["output_dim"])]
        if cls == "RepeatVector":
            return [shp[0], int(cfg["n"]), *shp[1:]]
        if cls == "Permute":
            return [shp[0], *[shp[int(i)] for i in cfg["dims"]]]
        if cls in ("LSTM", "GRU", "SimpleRNN"):
            units = int(cfg["units"])
            if cfg.get("return_state"):
                return None
            return [shp[0], shp[1], units] if cfg.get("return_sequences") else [shp[0], units]
        for r in (1, 2, 3):
            if cls in (f"Conv{r}D", f"DepthwiseConv{r}D", f"SeparableConv{r}D"):
                ch = cfg.get("filters")
                if cls.startswith("Depthwise"):
                    first = cfg.get("data_format") == "channels_first"
                    c_in = shp[1] if first else shp[-1]
                    ch = None if c_in is None else c_in * int(cfg.get("depth_multiplier", 1))
                return _spatial(cls, cfg, shp, r, ch)
            if cls in (f"MaxPooling{r}D", f"AveragePooling{r}D"):
                return _spatial(cls, cfg, shp, r, None)
            if cls in (f"GlobalMaxPooling{r}D", f"GlobalAveragePooling{r}D"):
                first = cfg.get("data_format") == "channels_first"
                ch = shp[1] if first else shp[-1]
                if cfg.get("keepdims"):
                    return [shp[0], ch, *[1] * r] if first else [shp[0], *[1] * r, ch]
                return [shp[0], ch]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def _batch_shape(cfg: dict[str, Any]) -> Shape:
    for key in ("batch_shape", "batch_input_shape"):
        v = cfg.get(key)
        if isinstance(v, list):
            return [None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in v]
    return None


def _refs(v: Any) -> list[list[Any]]:
    """``input_layers`` / ``output_layers``: [[name, node, tensor], ...] or one flat ref."""
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
        return [v]
    if isinstance(v, list):
        return [r for r in v if isinstance(r, list) and r and isinstance(r[0], str)]
    return []


def _inbound(layer: dict[str, Any]) -> tuple[list[str], list[Shape] | None]:
    """(inbound layer names, input shapes when recorded) for the first call of a layer."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return [], None
    node = nodes[0]
    names: list[str] = []
    shapes: list[Shape] = []
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}} of __keras_tensor__s
        for d in _walk_dicts(node.get("args", [])):
            if d.get("class_name") == "__keras_tensor__":
                c = d.get("config", {})
                hist = c.get("keras_history") or [None]
                names.append(hist[0])
                sh = c.get("shape")
                shapes.append([None if x is None else int(x) for x in sh] if isinstance(sh, list) else None)
        names.reverse()  # _walk_dicts is LIFO; restore argument order
        shapes.reverse()
        return names, shapes
    if isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        for ref in node:
            if isinstance(ref, list) and ref and isinstance(ref[0], str):
                names.append(ref[0])
    return names, None


def _signature(model: dict[str, Any]) -> tuple[list[TensorSpec] | None, list[TensorSpec] | None, list[str]]:
    cls = model.get("class_name")
    cfg = model.get("config") if isinstance(model.get("config"), dict) else {}
    layers = cfg.get("layers") if isinstance(cfg.get("layers"), list) else None
    if layers is None:
        return None, None, []
    classes = [str(layer.get("class_name")) for layer in layers if isinstance(layer, dict)]
    out_shape: dict[str, Shape] = {}
    out_dtype: dict[str, str | None] = {}

    def lname(layer: dict[str, Any]) -> str:
        return str(layer.get("name") or layer.get("config", {}).get("name"))

    if cls == "Sequential":
        inputs: list[TensorSpec] = []
        prev: Shape = None
        prev_dtype: str | None = None
        for i, layer in enumerate(layers):
            lcls, lcfg = layer.get("class_name"), layer.get("config", {})
            if lcls == "InputLayer":
                prev = _batch_shape(lcfg)
                prev_dtype = _dtype_from_policy(lcfg.get("dtype")) or "float32"
                inputs.append(TensorSpec(lcfg.get("name") or lname(layer), prev_dtype, prev))
                continue
            if i == 0 and not inputs:
                bs = _batch_shape(lcfg) or (
                    [None if d is None else int(d) for d in cfg["build_input_shape"]]
                    if isinstance(cfg.get("build_input_shape"), list)
                    else None
                )
                dt = _dtype_from_policy(lcfg.get("dtype")) or "float32"
                inputs.append(TensorSpec(f"{lcfg.get('name', 'input')}_input", dt, bs))
                prev = bs
            prev = _infer(str(lcls), lcfg, [prev])
            prev_dtype = _dtype_from_policy(lcfg.get("dtype")) or prev_dtype
        last = layers[-1] if layers else {}
        outputs = [TensorSpec(lname(last), prev_dtype, prev)] if layers else []
        return inputs or None, outputs or None, classes

    by_name = {lname(layer): layer for layer in layers if isinstance(layer, dict)}
    for layer in layers:  # saved in topological order
        if not isinstance(layer, dict):
            continue
        name, lcls = lname(layer), str(layer.get("class_name"))
        lcfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if lcls == "InputLayer":
            out_shape[name] = _batch_shape(lcfg)
            out_dtype[name] = _dtype_from_policy(lcfg.get("dtype")) or "float32"
            continue
        srcs, recorded = _inbound(layer)
        ins = recorded if recorded is not None else [out_shape.get(s) for s in srcs]
        out_shape[name] = _infer(lcls, lcfg, ins)
        # A layer without a dtype config keeps its input's dtype, for layer types known here only.
        inherited = out_dtype.get(srcs[0]) if srcs and out_shape[name] is not None else None
        out_dtype[name] = _dtype_from_policy(lcfg.get("dtype")) or inherited

    inputs = []
    for ref in _refs(cfg.get("input_layers")):
        layer = by_name.get(ref[0], {})
        lcfg = layer.get("config", {}) if isinstance(layer, dict) else {}
        inputs.append(
            TensorSpec(
                ref[0], out_dtype.get(ref[0]) or _dtype_from_policy(lcfg.get("dtype")), out_shape.get(ref[0])
            )
        )
    outputs = [
        TensorSpec(ref[0], out_dtype.get(ref[0]), out_shape.get(ref[0]))
        for ref in _refs(cfg.get("output_layers"))
    ]
    return inputs or None, outputs or None, classes


# --- HDF5 weights ---------------------------------------------------------------------------


def _count_weights(group: Any) -> tuple[int, int]:
    """(elements, datasets) under an h5py group."""
    import h5py

    total = 0
    count = 0

    def visit(_name: str, obj: Any) -> None:
        nonlocal total, count
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            total += prod(obj.shape)
            count += 1

    group.visititems(visit)
    return total, count


def _weights_params(f: Any) -> tuple[int, int, str]:
    """(params, weight tensors, layout) of an open Keras HDF5 file."""
    import h5py

    if isinstance(f.get("model_weights"), h5py.Group):
        p, n = _count_weights(f["model_weights"])
        return p, n, "legacy_h5"
    if "layer_names" in f.attrs:
        total = n = 0
        names = [_attr_str(x) for x in f.attrs["layer_names"]]
        if TOP_LEVEL_WEIGHTS not in names:
            names.append(TOP_LEVEL_WEIGHTS)  # a subclassed model's own variables
        for lname in names:
            g = f.get(lname)
            if isinstance(g, h5py.Group):
                p, c = _count_weights(g)
                total += p
                n += c
        return total, n, "legacy_h5"
    total = n = 0
    for key in f:
        if key in NON_MODEL_GROUPS:
            continue
        obj = f[key]
        if isinstance(obj, h5py.Group):
            p, c = _count_weights(obj)
            total += p
            n += c
        elif isinstance(obj, h5py.Dataset):
            total += prod(obj.shape or ())
            n += 1
    return total, n, "keras3"


class _Slice(io.RawIOBase):
    """Read-only window [start, start+size) of a binary file: a stored zip member, for h5py."""

    def __init__(self, f: Any, start: int, size: int):
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextmanager
def _zip_member_h5(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo):
    """Open a zip member as an h5py File without reading it whole when it is stored."""
    import h5py

    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != ZIP_MAGIC:
                raise zipfile.BadZipFile("bad local header for " + info.filename)
            start = (
                info.header_offset
                + 30
                + int.from_bytes(local[26:28], "little")
                + int.from_bytes(local[28:30], "little")
            )
            with h5py.File(_Slice(raw, start, info.file_size), "r") as f:
                yield f
        return
    with tempfile.TemporaryDirectory(prefix="modelport-keras-") as tmp:
        dest = Path(tmp) / "weights.h5"
        with z.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        with h5py.File(dest, "r") as f:
            yield f


# --- inspection -----------------------------------------------------------------------------


def _malformed(det: Detection, msg: str) -> MalformedModel:
    return MalformedModel("keras", f"Keras file '{det.primary}' {msg}")


def _load_json(raw: bytes | str, det: Detection, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _malformed(det, f"has an unreadable {what}: {type(exc).__name__}: {exc}") from None


def _apply_config(insp: Inspection, config: Any) -> None:
    if not isinstance(config, dict):
        insp.warnings.append("model config is not a JSON object; inputs and outputs are not knowable")
        return
    insp.details["model_class"] = config.get("class_name")
    insp.details["model_name"] = (
        (config.get("config") or {}).get("name") if isinstance(config.get("config"), dict) else None
    )
    try:
        inputs, outputs, classes = _signature(config)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        insp.warnings.append(f"could not read inputs/outputs from the model config ({type(exc).__name__})")
        inputs, outputs, classes = None, None, []
    insp.inputs, insp.outputs = inputs, outputs
    if classes:
        counts: dict[str, int] = {}
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
        insp.details["layers"] = {"count": len(classes), "classes": dict(sorted(counts.items()))}
    elif inputs is None:
        insp.warnings.append(
            f"model class '{config.get('class_name')}' has no layer graph in its config "
            "(subclassed model?); inputs and outputs are not knowable from the file"
        )
    lambdas, custom = _code_layers(config)
    if lambdas:
        code = [x for x in lambdas if x["function"] == "bytecode"]
        insp.details["lambda_layers"] = lambdas
        if code:
            names = ", ".join(str(x["layer"]) for x in code)
            insp.safety = {
                "status": "contains_code",
                "kind": "keras_lambda_bytecode",
                "layers": [x["layer"] for x in code],
                "message": f"Lambda layer(s) {names} hold marshalled Python bytecode; modelport never "
                "deserializes it, and loading the model would run it (Keras safe_mode refuses it)",
            }
            insp.warnings.append(insp.safety["message"])
        refs = [x for x in lambdas if x["function"] != "bytecode"]
        if refs:
            insp.warnings.append(
                "Lambda layer(s) refer to Python functions by name ("
                + ", ".join(str(x.get("name")) for x in refs)
                + "); loading needs that code"
            )
    if custom:
        insp.details["custom_objects"] = custom
        insp.warnings.append("uses custom (non-Keras) classes that loading needs: " + ", ".join(custom))


def inspect(files: ModelFiles, det: Detection) -> Inspection:
    insp = Inspection(format="keras", primary_file=det.primary)
    if det.extra.get("container") == "keras_zip":
        _inspect_keras_zip(files, det, insp)
    else:
        _inspect_h5(files, det, insp)
    return insp


def _inspect_keras_zip(files: ModelFiles, det: Detection, insp: Inspection) -> None:
    path = files.abs(det.primary)
    insp.details["container"] = "keras_v3"
    insp.details["kind"] = "full_model"
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            for name in ("config.json", "metadata.json"):
                if infos[name].file_size > MAX_JSON:
                    raise _malformed(det, f"has a {name} of {infos[name].file_size} bytes")
            config = _load_json(z.read("config.json"), det, "config.json")
            meta = _load_json(z.read("metadata.json"), det, "metadata.json")
            if isinstance(meta, dict):
                if meta.get("keras_version"):
                    insp.versions["keras"] = str(meta["keras_version"])
                if meta.get("date_saved"):
                    insp.details["date_saved"] = str(meta["date_saved"])
            insp.details["archive"] = sorted(infos)[:50]
            _apply_config(insp, config)
            winfo = infos.get(WEIGHTS_H5)
            if winfo is None:
                npz = [n for n in infos if n.endswith(".npz")]
                insp.warnings.append(
                    "archive has no model.weights.h5"
                    + (f" (weights in {npz[0]})" if npz else "; weights are missing")
                )
                return
            try:
                import h5py  # noqa: F401
            except ImportError:
                missing_library(insp, "h5py", "weights (parameter count)")
                return
            try:
                with _zip_member_h5(path, z, winfo) as f:
                    insp.params, n, layout = _weights_params(f)
                    insp.details["weight_tensors"] = n
            except (OSError, zipfile.BadZipFile) as exc:
                raise _malformed(det, f"has an unreadable model.weights.h5: {exc}") from None
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:
        raise _malformed(det, f"is not a readable Keras archive: {type(exc).__name__}: {exc}") from None


def _inspect_h5(files: ModelFiles, det: Detection, insp: Inspection) -> None:
    insp.details["container"] = "hdf5"
    if det.extra.get("open_error"):
        raise _malformed(
            det, f"is an HDF5 file that cannot be opened (truncated or corrupt): {det.extra['open_error']}"
        )
    try:
        import h5py
    except ImportError:
        missing_library(insp, "h5py", "Keras HDF5 model (config, weights)")
        return
    path = files.abs(det.primary)
    try:
        with h5py.File(path, "r") as f:
            kind, keys = _markers(f)
            if kind is None:
                shown = ", ".join(keys[:10]) or "nothing"
                raise _malformed(
                    det,
                    f"is an HDF5 file but not a Keras model: no model_config or layer_names "
                    f"attribute and not the Keras 3 weights layout (datasets in 'vars' groups) "
                    f"(top-level entries: {shown})",
                )
            insp.details["kind"] = kind
            attrs = f.attrs
            mw = f.get("model_weights")
            src = attrs if "keras_version" in attrs else (mw.attrs if isinstance(mw, h5py.Group) else attrs)
            if "keras_version" in src:
                insp.versions["keras"] = _attr_str(src["keras_version"])
            if "backend" in src:
                insp.details["backend"] = _attr_str(src["backend"])
            if kind == "full_model":
                raw = _attr_str(attrs["model_config"]) or ""
                if len(raw) > MAX_JSON:
                    raise _malformed(det, f"has a model_config of {len(raw)} bytes")
                _apply_config(insp, _load_json(raw, det, "model_config"))
                if "training_config" in attrs:
                    tc = _load_json(_attr_str(attrs["training_config"]) or "null", det, "training_config")
                    opt = tc.get("optimizer_config", {}) if isinstance(tc, dict) else {}
                    insp.details["compiled"] = True
                    insp.details["optimizer"] = opt.get("class_name") if isinstance(opt, dict) else None
                insp.details["has_optimizer_state"] = "optimizer_weights" in f
            else:
                names = attrs.get("layer_names")
                if names is None and isinstance(mw, h5py.Group):
                    names = mw.attrs.get("layer_names")
                if names is not None:
                    insp.details["layers"] = {
                        "count": len(names),
                        "names": [_attr_str(n) for n in names][:200],
                    }
                insp.warnings.append(
                    "weights only: no model architecture in the file, so inputs and outputs are not knowable"
                )
            insp.params, n, layout = _weights_params(f)
            insp.details["weight_tensors"] = n
            insp.details["layout"] = layout
    except OSError as exc:
        raise _malformed(det, f"is an HDF5 file that cannot be read: {exc}") from None
