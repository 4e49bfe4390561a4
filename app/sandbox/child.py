"""Child-process entry of the sandbox: ``python -m app.sandbox.child REQUEST.json RESULT.json``.

Standard library only until the edge implementation is imported. Whatever the converter prints
goes to the job log (the parent captures stdout and stderr)."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    result_path = Path(argv[1])
    from app.sandbox.io import ConversionError, Source

    src = Source(root=Path(request["source"]["root"]), paths=request["source"]["paths"],
                 primary=request["source"]["primary"], format=request["source"]["format"],
                 inspection=request["source"].get("inspection") or {},
                 input_specs=request["source"].get("input_specs"))
    out_dir = Path(request["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    module, _, func = request["implementation"].partition(":")
    started = time.monotonic()
    print(f"[modelport] {request['edge']} on {platform.node()} python {platform.python_version()}", flush=True)
    try:
        fn = getattr(importlib.import_module(module), func)
        result = fn(src, out_dir, request.get("options") or {})
        payload = {"ok": True, "result": result.to_dict(),
                   "inspection": _inspect(out_dir, result.primary) if request.get("kind", "convert") == "convert"
                   else None}
    except ConversionError as e:
        payload = {"ok": False, "error": e.to_dict()}
        print(f"[modelport] conversion failed: {e.message}", file=sys.stderr, flush=True)
    except BaseException as e:  # anything the converter did not expect: report it whole
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        payload = {"ok": False, "error": {"message": f"{type(e).__name__}: {e}"[:4000], "tool": None,
                                          "tool_version": None, "unsupported_operator": None,
                                          "hint": None, "traceback": tb[-4000:]}}
    payload["seconds"] = round(time.monotonic() - started, 3)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(result_path)
    return 0


def _inspect(out_dir: Path, primary: str) -> dict | None:
    """Inspect the artifact here, where the format libraries are already imported; the parent
    falls back to its own sandboxed inspection when this fails or is not available."""
    try:
        from app.formats import detect_and_inspect
        from app.formats.base import NOT_INSTALLED, ModelFiles

        paths = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
        insp = detect_and_inspect(ModelFiles(out_dir, paths, primary))
        missing = [u for u in insp.get("unavailable") or [] if NOT_INSTALLED in u]
        if missing:  # this toolchain lacks a reader the main one has (the TF venv has no 'tflite')
            print(f"[modelport] in-process inspection incomplete here: {'; '.join(missing)}", flush=True)
            return None
        return insp
    except Exception as e:  # noqa: BLE001 - reported, and the parent inspects again
        print(f"[modelport] in-process inspection of the artifact failed: {type(e).__name__}: {e}", flush=True)
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
