"""Run detection + inspection of an upload, in a child process with a time and memory limit
so that a hostile or broken file can crash or hang only that child, never the API."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.errors import ModelportError, Unprocessable, UnsupportedMediaType


def inspect_files(root: Path, paths: list[str], hint_name: str | None, *, accept_unknown: bool,
                  in_subprocess: bool = True, timeout_s: float = 120, memory_mb: int = 8192) -> dict[str, Any]:
    request = {"root": str(root), "paths": paths, "hint_name": hint_name, "accept_unknown": accept_unknown}
    if not in_subprocess:
        return _to_result(_run(request))
    limit = memory_mb * 1024 * 1024

    def _limits() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "app.ingest.inspection"], input=json.dumps(request), capture_output=True, text=True,
            timeout=timeout_s, preexec_fn=_limits, env=env,
        )
    except subprocess.TimeoutExpired:
        raise Unprocessable(f"inspecting the upload took longer than {timeout_s:g}s and was stopped",
                            code="inspection_timeout") from None
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        result = json.loads(line)
    except ValueError:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise Unprocessable(
            f"the format reader crashed on this file ({why}); the file is malformed or hostile",
            code="inspection_crashed", detail={"stderr": proc.stderr[-2000:]},
        ) from None
    return _to_result(result)


def _to_result(result: dict[str, Any]) -> dict[str, Any]:
    if result.get("ok"):
        return result["inspection"]
    err = result["error"]
    cls = {415: UnsupportedMediaType}.get(err["status"], Unprocessable)
    raise cls(err["message"], code=err["code"], detail=err.get("detail") or {})


def _run(request: dict[str, Any]) -> dict[str, Any]:
    from app.formats import detect_and_inspect
    from app.formats.base import ModelFiles

    files = ModelFiles(Path(request["root"]), list(request["paths"]), request.get("hint_name"))
    try:
        return {"ok": True, "inspection": detect_and_inspect(files, accept_unknown=request["accept_unknown"])}
    except ModelportError as e:  # FormatError among them
        return {"ok": False, "error": {"status": e.status_code, "code": e.code, "message": e.message,
                                       "detail": e.detail}}
    except MemoryError:
        return {"ok": False, "error": {"status": 422, "code": "inspection_out_of_memory",
                                       "message": "inspecting the file needed more memory than allowed", "detail": {}}}
    except Exception as e:  # a reader library failed in a way it does not document
        fmt = None
        return {"ok": False, "error": {"status": 422, "code": "malformed_model",
                                       "message": f"the file could not be read: {type(e).__name__}: {e}"[:2000],
                                       "detail": {"format": fmt}}}


def main() -> None:
    request = json.loads(sys.stdin.read())
    result = _run(request)
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
