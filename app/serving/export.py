"""Export a deployment for the serving engines that scale out across boxes.

``triton``: a Triton model repository — ``<model>/config.pbtxt`` written from the deployment's
validated signature and settings, and ``<model>/<version>/`` holding the artifact's files as the
format's Triton backend expects them (``TritonModel`` in each format's declaration says how). The
bytes are the stored artifact's, unchanged.

``kserve``: an InferenceService on KServe's ``kserve-tritonserver`` runtime. KServe's storage
initializer copies ``storageUri`` to ``/mnt/models``, which that runtime serves as a Triton model
repository, so a content-addressed blob cannot be pointed at as it is (its name is a digest, and an
OpenVINO IR is two objects): the same repository is written into the object store under
``exports/triton/<deployment id>-<digest>/`` — model files by server-side copy of the stored
objects, never re-uploaded — and ``storageUri`` points there. Only an S3 store can be reached from a
cluster: on a local store the export is refused (409 ``export_needs_s3``) rather than pointing at a
path no pod can read.

Names: a deployment is named within its project (``project/name`` in the runner cache); the
project's clients call it by its bare name, on ``/v2/models/<name>`` as on Triton, so the Triton
model is named by the bare name (Triton names cannot hold '/'), or by ``model_name`` when given.
The InferenceService's name is that name made a DNS-1035 label (lowercase letters, digits, '-'),
with a short digest of the original appended when that changed it, so two names never collide."""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from app.catalog import repo
from app.catalog.tables import DEFAULT_PROJECT
from app.errors import Conflict, NotFound, Unprocessable
from app.storage import blob_key

FORMATS = ("triton", "kserve")
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING", "object": "TYPE_STRING", "bytes": "TYPE_STRING", "str": "TYPE_STRING",
}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
KSERVE_RUNTIME = "kserve-tritonserver"


@dataclass
class Tensor:
    name: str
    dtype: str  # numpy-style name
    dims: list[int]  # -1 for a dynamic dimension


@dataclass
class Export:
    """What one export of one deployment version is: the repository's files and its config."""

    deployment: str
    version: int
    model_name: str
    format: str
    source: dict[str, Any]  # what the version serves: artifact or model id, digest, validation
    config: str  # config.pbtxt
    files: list[tuple[str, str, int]]  # (path in the repository, sha256, size)
    warnings: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.config.encode())
        for path, sha, _ in self.files:
            h.update(f"\0{path}\0{sha}".encode())
        return h.hexdigest()[:16]

    def headers(self) -> dict[str, str]:
        out = {"X-Modelport-Triton-Model": self.model_name, "X-Modelport-Version": str(self.version)}
        if self.warnings:  # headers are latin-1: what does not fit is replaced
            text = " | ".join(" ".join(w.split()) for w in self.warnings)
            out["X-Modelport-Warnings"] = text.encode("ascii", "replace").decode()
        return out


@dataclass
class Result:
    """The answer: a zip of the repository (``entries``) or a manifest (``manifest``)."""

    headers: dict[str, str]
    filename: str = ""
    entries: list[tuple[str, int, Callable[[], Iterable[bytes]]]] | None = None
    manifest: dict[str, Any] | None = None


def export(db, store, name: str, project: str = DEFAULT_PROJECT, *, format: str, version: int | None = None,
           model_name: str | None = None) -> Result:
    """The export of ``name`` (``version``, else the serving one, else the newest) as ``format``."""
    if format not in FORMATS:
        raise Unprocessable(f"export format must be one of {', '.join(FORMATS)}, got {format!r}",
                            code="unknown_export_format")
    exp = plan(db, name, project, version=version, model_name=model_name)
    if format == "triton":
        entries = [(f"{exp.model_name}/config.pbtxt", len(exp.config.encode()), lambda: [exp.config.encode()])]
        entries += [(path, size, (lambda k=blob_key(sha): store.iter_chunks(k))) for path, sha, size in exp.files]
        return Result(exp.headers(), f"{exp.model_name}-v{exp.version}-triton.zip", entries=entries)
    return Result(exp.headers(), manifest=kserve_manifest(store, exp))


# ----------------------------------------------------------------------------- the repository


def plan(db, name: str, project: str = DEFAULT_PROJECT, *, version: int | None = None,
         model_name: str | None = None) -> Export:
    from app import formats, runners

    with db.session() as s:
        d, warnings = _pick(repo.deployment_versions(s, name, project), name, version)
        src = repo.get_artifact(s, d.artifact_id) if d.artifact_id else repo.get_model(s, d.model_id)
        if src is None:
            raise NotFound(f"what deployment '{name}' version {d.version} serves was deleted",
                           code="deployment_not_found")
        fmt = formats.by_name(src.format)
        tm = fmt.triton
        if tm is None:
            able = sorted(f.name for f in formats.all_formats() if f.triton is not None)
            raise Unprocessable(
                f"deployment '{name}' version {d.version} serves a {fmt.title} {'artifact' if d.artifact_id else 'model'}"
                f", which no Triton backend runs; exportable formats: {', '.join(able)}. Convert it to one of them "
                "(POST /v1/models/{id}/conversions) and deploy that", code="not_exportable",
                detail={"format": src.format, "exportable": able})
        validation = repo.latest_validation(s, src.id) if d.artifact_id else None
        inputs, outputs, sig_warnings = _signature(s, src, validation, tm.output_names)
        files = [(f.path, f.sha256, f.size_bytes) for f in src.files]
        source = {"artifact_id": d.artifact_id, "model_id": d.model_id if d.model_id else src.model_id,
                  "format": src.format, "digest": src.digest, "primary_file": src.primary_file,
                  "validation": None if validation is None else {
                      "status": validation.status, "profile": validation.profile,
                      "max_abs_err": validation.max_abs_err}}
        runtime, batching, forced, dep_version = dict(d.runtime), dict(d.batching), d.forced, d.version
    warnings += sig_warnings + list(tm.notes)
    if forced:
        warnings.append(f"version {dep_version} was deployed with force: its validation had not passed")
    model = _model_name(model_name or name)
    rt = runners.runtime_of(src.format)
    kind = "KIND_GPU" if rt is not None and rt.hardware == "gpu" else "KIND_CPU"
    config, cfg_warnings = triton_config(model, tm, inputs, outputs, batching=batching, runtime=runtime,
                                         kind=kind, header=_header(name, dep_version, source))
    warnings += cfg_warnings
    layout = [(f"{model}/{dep_version}/{p}", sha, size) for p, sha, size in _layout(tm, files, source["primary_file"])]
    return Export(name, dep_version, model, src.format, source, config, layout, warnings)


def _pick(rows, name: str, version: int | None):
    if not rows:
        raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
    if version is not None:
        d = next((r for r in rows if r.version == version), None)
        if d is None:
            raise NotFound(f"deployment '{name}' has no version {version} (versions: "
                           f"{', '.join(str(r.version) for r in rows)})", code="version_not_found")
    else:
        d = next((r for r in rows if r.status == "ready"), rows[0])
    warnings = [] if d.status == "ready" else [
        f"version {d.version} is {d.status} here" + (f" ({d.reason[:300]})" if d.reason else "")
        + ": exported as deployed, though this server does not serve it"]
    return d, warnings


def _model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise Unprocessable("model_name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with "
                            "a letter or digit (it names a directory of the Triton repository)",
                            code="bad_model_name")
    return name


def _header(name: str, version: int, source: dict[str, Any]) -> list[str]:
    what = f"artifact {source['artifact_id']}" if source["artifact_id"] else f"uploaded model {source['model_id']}"
    v = source["validation"]
    verdict = ("not validated (the upload itself: its own reference)" if source["artifact_id"] is None else
               "never validated" if v is None else
               f"validation {v['status']} ({v['profile']}, max abs err {v['max_abs_err']})")
    return [f"written by modelport from deployment '{name}' version {version}",
            f"{what}: {source['format']}, sha256 {source['digest']}; {verdict}"]


def _layout(tm, files: list[tuple[str, str, int]], primary: str) -> list[tuple[str, str, int]]:
    """Where each stored file goes inside the version directory."""
    layout = tm.layout
    if layout == "file_or_directory":
        layout = "file" if len(files) == 1 else "directory"
    if layout == "file":
        if len(files) != 1:
            raise Unprocessable(f"Triton's {tm.backend} backend takes one file ({tm.filename}); this artifact has "
                                f"{len(files)}", code="not_exportable")
        _, sha, size = files[0]
        return [(tm.filename, sha, size)]
    base = PurePosixPath(primary).parent
    out = []
    for path, sha, size in files:
        p = PurePosixPath(path)
        try:
            rel = p.relative_to(base)
        except ValueError:
            raise Unprocessable(f"file {path} lies outside the folder of {primary}, so it cannot be laid out for "
                                f"Triton's {tm.backend} backend", code="not_exportable") from None
        if layout == "stem":
            rel = rel.with_name(f"model{p.suffix}") if p.stem == PurePosixPath(primary).stem else rel
            out.append((str(rel), sha, size))
        else:
            if path == primary and tm.directory_primary:
                rel = rel.with_name(tm.directory_primary)
            out.append((f"{tm.filename}/{rel}", sha, size))
    return out


# ----------------------------------------------------------------------------- the signature


def _signature(s, src, validation, output_names: str) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """Names, dtypes and dims of every input and output: the artifact's own inspection, and where the
    format does not record them (TorchScript), what its validation ran: the reference's specs for
    inputs matched by name (else position), each output's dtype and the shapes it had."""
    insp = src.inspection or {}
    ins, outs = list(insp.get("inputs") or []), list(insp.get("outputs") or [])
    warnings: list[str] = []
    report = (validation.report or {}) if validation is not None else {}
    ref = _reference(s, validation)
    if ref is not None and any(not _known(t) for t in ins):
        ref_ins = ref.get("inputs") or []
        ins = [_fill(t, _match(t, i, ref_ins)) for i, t in enumerate(ins)]
        warnings.append("input dtypes and shapes the artifact does not record are taken from the model it was "
                        "validated against")
    if any(not _known(t) for t in outs) and report.get("outputs"):
        outs = [_observed(t, i, report, ref) for i, t in enumerate(outs)]
        warnings.append("output dtypes and shapes the artifact does not record are taken from its validation run")
    missing = [t.get("name") or f"#{i}" for i, t in enumerate(ins + outs) if not _known(t)]
    if missing or not ins or not outs:
        raise Unprocessable(f"Triton needs the dtype and shape of every input and output; not known for: "
                            f"{', '.join(missing) or 'the inputs/outputs themselves'} (neither recorded in the "
                            f"{src.format} file nor seen in a passed validation)", code="signature_unknown",
                            detail={"missing": missing})
    tensors_in = [Tensor(t["name"], t["dtype"], _dims(t["shape"])) for t in ins]
    tensors_out = [Tensor(f"OUTPUT__{i}" if output_names == "indexed" else t["name"], t["dtype"], _dims(t["shape"]))
                   for i, t in enumerate(outs)]
    for t in tensors_in + tensors_out:
        if t.dtype not in TRITON_DTYPES:
            raise Unprocessable(f"tensor '{t.name}' has dtype {t.dtype}, which Triton has no type for",
                                code="not_exportable")
    return tensors_in, tensors_out, warnings


def _known(t: dict[str, Any]) -> bool:
    return bool(t.get("name")) and bool(t.get("dtype")) and t.get("shape") is not None


def _dims(shape: list) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _reference(s, validation) -> dict[str, Any] | None:
    if validation is None or validation.status != "passed":
        return None
    kind, _, ref_id = (validation.reference or "").partition(":")
    row = repo.get_model(s, ref_id) if kind == "model" else repo.get_artifact(s, ref_id) if kind == "artifact" else None
    return (row.inspection or {}) if row is not None else None


def _match(t: dict[str, Any], i: int, ref: list[dict[str, Any]]) -> dict[str, Any] | None:
    by_name = next((r for r in ref if r.get("name") == t.get("name")), None)
    return by_name or (ref[i] if i < len(ref) else None)


def _fill(t: dict[str, Any], r: dict[str, Any] | None) -> dict[str, Any]:
    if r is None:
        return t
    return {"name": t.get("name") or r.get("name"), "dtype": t.get("dtype") or r.get("dtype"),
            "shape": t.get("shape") if t.get("shape") is not None else r.get("shape")}


def _observed(t: dict[str, Any], i: int, report: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any]:
    """An output the file does not describe, from the passed validation's comparisons of it: its dtype,
    and its shapes over the input sets (a size that changed between them is dynamic)."""
    seen = [o for o in report.get("outputs") or [] if o.get("candidate_output") == t.get("name")]
    if not seen or ref is None:
        return t
    dtypes = {(o.get("dtypes") or {}).get("candidate") for o in seen}
    shapes = [(o.get("shapes") or {}).get("candidate") for o in seen]
    if len(dtypes) != 1 or None in dtypes or any(sh is None for sh in shapes) or len({len(sh) for sh in shapes}) != 1:
        return t
    ref_out = next((r for r in ref.get("outputs") or [] if r.get("name") == seen[0].get("output")), None)
    ref_shape = (ref_out or {}).get("shape")
    if ref_shape is not None and len(ref_shape) != len(shapes[0]):
        ref_shape = None
    dims = []
    for j, sizes in enumerate(zip(*shapes, strict=True)):
        dynamic = not isinstance(ref_shape[j], int) if ref_shape is not None else len(set(sizes)) > 1
        dims.append(None if dynamic else sizes[0])
    return {"name": t.get("name"), "dtype": dtypes.pop(), "shape": dims}


# ----------------------------------------------------------------------------- config.pbtxt


class _Enum(str):
    """A protobuf enum value: written bare, not quoted."""


def triton_config(model: str, tm, inputs: list[Tensor], outputs: list[Tensor], *, batching: dict[str, Any],
                  runtime: dict[str, Any], kind: str, header: list[str]) -> tuple[str, list[str]]:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) and what to warn about."""
    warnings: list[str] = []
    mbs = int(batching.get("max_batch_size") or 1)
    batched = mbs > 1 and all(t.dims and t.dims[0] == -1 for t in (*inputs, *outputs))
    if mbs > 1 and not batched:
        warnings.append(f"batching of up to {mbs} was asked for, but not every input and output has a dynamic first "
                        "dimension: exported unbatched (max_batch_size 0), as modelport serves it")
    fields: list[tuple[str, Any]] = [("name", model)]
    if tm.platform:
        fields.append(("platform", tm.platform))
    fields += [("backend", tm.backend), ("default_model_filename", tm.filename),
               ("max_batch_size", mbs if batched else 0)]
    for key, tensors in (("input", inputs), ("output", outputs)):
        fields.append((key, [_tensor(t, batched) for t in tensors]))
    if batched:
        delay_us = round(float(batching.get("max_queue_delay_ms") or 0) * 1000)
        fields.append(("dynamic_batching", [("max_queue_delay_microseconds", delay_us)]))
    fields.append(("instance_group", [[("count", 1), ("kind", _Enum(kind))]]))
    threads = runtime.get("threads")
    if threads and tm.threads_parameter:
        fields.append(("parameters", [("key", tm.threads_parameter), ("value", [("string_value", str(threads))])]))
    elif threads:
        warnings.append(f"Triton's {tm.backend} backend takes its thread count from the server's backend config, "
                        f"not the model's: pass --backend-config={tm.backend},... for the {threads} threads deployed")
    precision = runtime.get("precision", "fp32")
    if precision != "fp32":
        warnings.append(f"the deployment computes in {precision}; Triton runs the artifact at the precision the "
                        "backend chooses")
    lines = [f"# {_oneline(h)}" for h in header] + [f"# warning: {_oneline(w)}" for w in warnings]
    return "\n".join(lines + _pbtxt(fields, 0)) + "\n", warnings


def _oneline(text: str) -> str:
    return " ".join(text.split())


def _tensor(t: Tensor, batched: bool) -> list[tuple[str, Any]]:
    dims = t.dims[1:] if batched else t.dims
    out: list[tuple[str, Any]] = [("name", t.name), ("data_type", _Enum(TRITON_DTYPES[t.dtype]))]
    if dims:
        return [*out, ("dims", dims)]
    return [*out, ("dims", [1]), ("reshape", [("shape", [])])]  # a scalar: Triton's dims need one entry


def _quote(s: str) -> str:
    out = []
    for b in s.encode():
        c = chr(b)
        out.append("\\" + c if c in "\"\\" else c if 0x20 <= b < 0x7F else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _pbtxt(fields: list[tuple[str, Any]], depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for key, value in fields:
        if isinstance(value, _Enum):
            lines.append(f"{pad}{key}: {value}")
        elif isinstance(value, str):
            lines.append(f"{pad}{key}: {_quote(value)}")
        elif isinstance(value, int | float):
            lines.append(f"{pad}{key}: {value}")
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            lines.append(f"{pad}{key}: [ {', '.join(str(v) for v in value)} ]")
        elif value and isinstance(value[0], list):  # repeated message
            lines.append(f"{pad}{key} [")
            for i, msg in enumerate(value):
                lines += [f"{pad}  {{", *_pbtxt(msg, depth + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
            lines.append(f"{pad}]")
        else:  # one message
            lines += [f"{pad}{key} {{", *_pbtxt(value, depth + 1), f"{pad}}}"]
    return lines


# ----------------------------------------------------------------------------- KServe


def isvc_name(model: str) -> str:
    """A DNS-1035 label (what KServe requires of an InferenceService's name)."""
    label = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", model.lower())).strip("-")
    if not label or not label[0].isalpha():
        label = f"m-{label}".rstrip("-")
    if label != model or len(label) > 45:
        label = f"{label[:38].rstrip('-')}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"
    return label


def kserve_manifest(store, exp: Export) -> dict[str, Any]:
    """Write the repository into the object store (once: the prefix names its content) and return the
    InferenceService that serves it."""
    from app import formats

    if not store.url.startswith("s3://"):
        raise Conflict("KServe pulls models from object storage, and this server keeps its objects on local disk "
                       f"({store.url}), which no pod can read. Set MODELPORT_STORAGE_URL=s3://bucket[/prefix], or "
                       "take ?format=triton and put that repository where your cluster reads models",
                       code="export_needs_s3", detail={"storage_url": store.url})
    prefix = f"exports/triton/{exp.digest}"
    for path, sha, _ in exp.files:
        store.copy(blob_key(sha), f"{prefix}/{path}")
    with tempfile.TemporaryDirectory(prefix="modelport-export-") as tmp:
        cfg = Path(tmp) / "config.pbtxt"
        cfg.write_text(exp.config)
        store.put_file(f"{prefix}/{exp.model_name}/config.pbtxt", cfg)
    name, fmt_version = formats.by_name(exp.format).triton.kserve_format
    annotations = {"modelport.io/deployment": exp.deployment, "modelport.io/version": str(exp.version),
                   "modelport.io/triton-model": exp.model_name, "modelport.io/format": exp.format,
                   "modelport.io/sha256": exp.source["digest"]}
    if exp.source["artifact_id"]:
        annotations["modelport.io/artifact"] = exp.source["artifact_id"]
    if exp.warnings:
        annotations["modelport.io/warnings"] = " | ".join(exp.warnings)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": isvc_name(exp.model_name), "annotations": annotations},
        "spec": {"predictor": {"model": {
            "modelFormat": {"name": name, "version": fmt_version},
            "runtime": KSERVE_RUNTIME,
            "protocolVersion": "v2",
            "storageUri": f"{store.url}/{prefix}",
        }}},
    }
