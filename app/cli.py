"""`modelport serve | worker | db | formats | keys` (run the service; keys on the catalog directly) and the client commands over its HTTP
API, for people and CI pipelines: `upload | convert | report-all | jobs | wait | logs | report |
download | deploy | predict | gate` (built on the SDK, app/client.py; the gate's logic is app/gate.py).

The client commands read `--url`/`MODELPORT_URL` and `--api-key`/`MODELPORT_API_KEY`, print
machine-readable JSON only with `--json`, draw progress bars on stderr when it is a terminal (or
with `--progress`), and exit with the codes in EXIT_CODES."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_CODES = """exit codes of the client commands:
  0  ok
  1  a job failed, was cancelled, or had not ended when --timeout ran out; a deployed
     version failed to load
  2  usage error: a bad flag or argument, a missing file, or a request the server refused as
     wrong (400, 404, 409, 413, 415, 422: an unknown target or option, no such model ...)
  3  validation failed (a waited-for job succeeded but its final artifact's validation failed;
     a deploy refused because validation did not pass) or the regression gate failed
  4  the server is unreachable (refused, timed out, 5xx) or refused the API key (401, 403)"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelport", description="convert, prove, measure and serve models",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the API (embedded defaults unless MODELPORT_* is set)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="serving processes on the one port (default MODELPORT_SERVING_WORKERS, 1); see app/serve.py")
    serve.add_argument("--insecure", action="store_true",
                       help="listen beyond loopback even though no API key exists (anyone reaching it has every right)")
    db = sub.add_parser("db", help="catalog migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", default=None)
    sub.add_parser("formats", help="list the formats this host understands")
    worker = sub.add_parser("worker", help="run a Celery worker for hardware queues (needs MODELPORT_BROKER_URL)")
    worker.add_argument("--queues", "-Q", default="", help="comma-separated: cpu,intel,gpu,apple,cpu.tf … "
                        "(default: every queue this host can serve)")
    worker.add_argument("--concurrency", "-c", type=int, default=1)
    from app import keys_cli

    keys_cli.add_parser(sub)
    # -- the client commands over the HTTP API (upload, convert, ..., gate): below, _client_commands
    _client_commands(sub)
    args = parser.parse_args(argv)
    if args.cmd in CLIENT_COMMANDS:
        return _client_main(args)

    from app.config import get_settings

    settings = get_settings()
    if args.cmd == "keys":
        return keys_cli.run(args, settings)
    if args.cmd == "serve":
        import uvicorn

        from app.main import create_asgi, http_protocol

        refused = keys_cli.serve_guard(settings, args.host or settings.host, args.insecure)
        if refused is not None:
            return refused
        workers = args.workers if args.workers is not None else settings.serving_workers
        if workers < 1:
            print(f"modelport serve: --workers must be at least 1, got {workers}", file=sys.stderr)
            return 2
        if workers > 1:  # N processes on one port under a supervisor (which runs the embedded executor)
            from app import serve as supervisor

            return supervisor.run(settings, args.host or settings.host, args.port or settings.port, workers)
        settings = settings.model_copy(update={"serving_workers": 1, "executor_socket": None})  # one process

        # no per-request access log or proxy-header rewriting on the hot path (set log level debug for
        # request logs); the inference routes bypass FastAPI's routing (app.api.fastpath)
        uvicorn.run(create_asgi(settings), host=args.host or settings.host, port=args.port or settings.port,
                    log_level=settings.log_level, http=http_protocol(settings),
                    access_log=settings.log_level == "debug",
                    proxy_headers=False, server_header=False)
        return 0
    if args.cmd == "db":
        from app.catalog.db import Database, downgrade, upgrade

        database = Database(settings.resolved_database_url)
        if args.action == "upgrade":
            upgrade(database.engine, args.revision or "head")
        elif args.action == "downgrade":
            downgrade(database.engine, args.revision or "-1")
        else:
            from alembic.runtime.migration import MigrationContext

            with database.engine.connect() as conn:
                print(MigrationContext.configure(conn).get_current_revision())
        return 0
    if args.cmd == "worker":
        return _worker(settings, args)
    if args.cmd == "formats":
        from app.pipeline import formats

        json.dump(formats.describe(), sys.stdout, indent=2)
        print()
        return 0
    return 2


def _worker(settings, args) -> int:
    """Check the queues against this host, announce the worker, heartbeat and reap, run Celery."""
    import threading

    from app import host
    from app.ingest import blobs
    from app.pipeline import dispatch, jobs

    if not settings.broker_url:
        print("modelport worker: set MODELPORT_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker "
              "`modelport serve` runs conversions in-process", file=sys.stderr)
        return 2
    servable = host.servable_queues(settings)
    requested = [q for q in args.queues.split(",") if q] or sorted(q for q, why in servable.items() if not why)
    refused = {q: servable.get(q, "no conversion edge uses this queue") for q in requested
               if q not in servable or servable[q]}
    if refused:
        for q, why in refused.items():
            print(f"modelport worker: refusing queue '{q}': {why}", file=sys.stderr)
        return 2
    from app.catalog.db import upgrade
    from workers import tasks
    from workers.celery_app import app as celery_app

    wid = jobs.worker_id("celery")
    tasks._ctx["worker_id"] = wid
    ctx = tasks.context()
    upgrade(ctx["db"].engine)
    caps = host.describe(settings)
    jobs.announce(ctx["db"], wid, requested, caps)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(5.0, settings.worker_stale_s / 3)):
            try:
                jobs.announce(ctx["db"], wid, requested, caps)
                jobs.reap(ctx["db"], ctx["dispatcher"], settings)
                jobs.redispatch_unclaimed(ctx["db"], ctx["dispatcher"], settings)  # messages the broker lost
                dispatch.relay_due(ctx["db"], ctx["dispatcher"])  # messages the broker missed while down
            except Exception as e:  # keep beating through a database blip
                print(f"modelport worker: heartbeat failed: {e}", file=sys.stderr)

    threading.Thread(target=beat, daemon=True, name="modelport-heartbeat").start()
    blobs.start_sweeper(ctx["db"], ctx["store"], settings, stop)
    print(f"modelport worker {wid}: queues {', '.join(requested)}", flush=True)
    try:
        celery_app.worker_main([
            "worker", "-Q", ",".join(requested), "-n", wid.replace("@", "-") + "@%h",
            "--pool", "solo" if args.concurrency == 1 else "threads", "--concurrency", str(args.concurrency),
            "--without-gossip", "--without-mingle", "-l", settings.log_level.upper()])
    finally:
        stop.set()
        from app.catalog import repo

        with ctx["db"].session() as s:
            repo.remove_worker(s, wid)
    return 0


# ------------------------------------------------------------------------------------ client commands
# Each client command is `_cmd_<name>(client, args) -> int`; _client_main maps every error to an exit code.

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_VALIDATION, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
CLIENT_COMMANDS = ("upload", "convert", "rebuild", "report-all", "jobs", "wait", "logs", "report", "download",
                   "deploy", "predict", "gate")


class UsageError(Exception):
    """A client command's arguments make no sense together (exit 2)."""


def _connection_options(p: argparse.ArgumentParser, default) -> None:
    """--url/--api-key/--progress on the top-level parser (default None) and again on each client
    command (default SUPPRESS, so `modelport --url U jobs` and `modelport jobs --url U` both work)."""
    p.add_argument("--url", default=default, help="the server (env MODELPORT_URL; default http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=default, help="sent as Authorization: Bearer (env MODELPORT_API_KEY)")
    p.add_argument("--progress", action="store_true", default=default if default is not None else False,
                   help="progress bars on stderr even when it is not a terminal")
    p.add_argument("--no-progress", action="store_true", default=default if default is not None else False,
                   help="no progress bars, even on a terminal")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object ({...})")
    return value


def _percent(text: str) -> float | None:
    from app.gate import parse_percent

    try:
        return parse_percent(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage like 10% (or off), got {text!r}") from None


def _error_cap(text: str):
    from app.gate import parse_error_cap

    try:
        return parse_error_cap(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (1e-4), PRECISION=NUMBER,... or off, got {text!r}") \
            from None


def _client_commands(sub) -> None:
    def add(name: str, help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        _connection_options(p, argparse.SUPPRESS)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON only")

    p = add("upload", "upload a model: one file, several files of one model, or a directory (sent as .tar.gz)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--name")
    p.add_argument("--metadata", type=_json_object, help="a JSON object stored with the model")
    json_flag(p)

    def conversion(p: argparse.ArgumentParser) -> None:
        p.add_argument("--input-specs", type=_json_object,
                       help='{"x": {"shape": [1, 8], "dtype": "float32", "dynamic": {"0": "batch"}}}')
        p.add_argument("--tolerance", type=_json_object, help='validation overrides: {"atol": .., "rtol": ..}')
        p.add_argument("--no-benchmark", action="store_true")
        p.add_argument("--wait", action="store_true", help="wait for the job(s) to end; exit 1 if one failed, "
                                                            "3 if a final artifact's validation failed")
        p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most (default: no limit)")
        json_flag(p)

    p = add("convert", "request a conversion (validated and benchmarked unless told otherwise)")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("--target", "-t", required=True, help="onnx, openvino, tflite, torchscript, safetensors, ...")
    p.add_argument("--options", type=_json_object, default=None, help='e.g. {"precision": "fp16"}')
    p.add_argument("--no-validate", action="store_true")
    p.add_argument("--hardware", choices=("cpu", "intel", "gpu", "apple"), default=None,
                   help="validate and benchmark there where a format has a runtime for it (gpu: CUDA)")
    conversion(p)

    p = add("rebuild", "make an artifact again (same edge and options) on its edge's queue: a TensorRT engine "
                       "for another GPU")
    p.add_argument("artifact_id", metavar="ARTIFACT_ID")
    p.add_argument("--no-validate", action="store_true")
    p.add_argument("--no-benchmark", action="store_true")
    p.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 if it failed, 3 if the "
                                                        "artifact's validation failed")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most (default: no limit)")
    json_flag(p)

    p = add("report-all", "convert to every reachable target and precision variant, validate and benchmark all")
    p.add_argument("model_id", metavar="MODEL_ID")
    conversion(p)

    p = add("jobs", "list jobs")
    p.add_argument("--model", help="only this model's jobs")
    p.add_argument("--status", help="queued, running, waiting_for_hardware, succeeded, failed, cancelled")
    json_flag(p)

    p = add("wait", "wait for jobs to end: exit 1 if any failed, 3 if one's final artifact failed validation")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for all of them (default: no limit)")
    json_flag(p)

    p = add("logs", "a job's log (each step's converter output)")
    p.add_argument("job_id", metavar="JOB_ID")

    p = add("report", "a model's format report (Markdown unless --json)")
    p.add_argument("model_id", metavar="MODEL_ID")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="Markdown (the default)")
    fmt.add_argument("--json", action="store_true", help="the JSON report")

    p = add("download", "download an artifact (its file, or a zip of its files)")
    p.add_argument("artifact_id", metavar="ARTIFACT_ID")
    p.add_argument("dest", nargs="?", default=".", metavar="DEST", help="a file, or a directory (default: .)")
    json_flag(p)

    p = add("deploy", "deploy a validated artifact (or an uploaded model) as a new version of NAME")
    p.add_argument("name", metavar="NAME")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--artifact", help="an artifact id (its validation must have passed, unless --force)")
    src.add_argument("--model", help="an uploaded model's id (served as uploaded)")
    p.add_argument("--force", action="store_true", help="deploy even though validation did not pass")
    p.add_argument("--threads", type=int, help="intra-op threads")
    p.add_argument("--max-batch-size", type=int, help="dynamic batching: rows merged per run")
    json_flag(p)

    p = add("predict", "run a deployment on arrays from .npy/.npz files")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--input", "-i", action="append", required=True, metavar="[NAME=]PATH",
                   help="NAME=file.npy (repeat per input), file.npz (every input), or file.npy for a one-input model")
    p.add_argument("--output", "-o", help="also save the outputs as this .npz")
    json_flag(p)

    p = add("gate", "fail (exit 3) when MODEL's report regressed against --baseline's",
            usage="modelport gate MODEL --baseline OTHER_MODEL [--max-latency-regression 10%%] "
                  "[--max-error E] [--max-size-growth 5%%] [--json]")
    p.add_argument("model_id", metavar="MODEL", help="the candidate model's id")
    p.add_argument("--baseline", required=True, metavar="OTHER_MODEL", help="the baseline model's id")
    p.add_argument("--max-latency-regression", type=_percent, default=0.10, metavar="PCT",
                   help="allowed p50 latency growth per (format, precision) row (default 10%%; off)")
    p.add_argument("--latency-floor-ms", type=float, default=0.0, metavar="MS",
                   help="a p50 change smaller than this never fails (timing noise; default 0)")
    p.add_argument("--max-size-growth", type=_percent, default=0.05, metavar="PCT",
                   help="allowed size growth (default 5%%; 0 fails on any growth; negative demands a shrink)")
    p.add_argument("--max-error", type=_error_cap, default=None, metavar="E",
                   help="cap on each row's validation max abs error: 1e-4, or per precision "
                        "fp32=1e-4,fp16=1e-2 (default: off; a failed validation where the baseline passed "
                        "always fails)")
    p.add_argument("--summary", metavar="FILE", help="also append the Markdown to FILE (e.g. $GITHUB_STEP_SUMMARY)")
    json_flag(p)


def _client_main(args) -> int:
    """Run one client command; every error becomes a message on stderr (and JSON on stdout with
    --json) and its exit code."""
    from app import client as sdk

    as_json = bool(getattr(args, "json", False))

    def fail(exit_code: int, message: str, **extra) -> int:
        print(f"modelport {args.cmd}: {message}", file=sys.stderr)
        if as_json:
            _print_json({"error": {"message": message, "exit_code": exit_code, **extra}})
        return exit_code

    args.progress = bool(args.progress or (sys.stderr.isatty() and not args.no_progress))
    try:
        with sdk.Client(url=args.url, api_key=args.api_key) as c:
            return _COMMANDS[args.cmd](c, args)
    except sdk.AuthError as e:
        return fail(EXIT_UNREACHABLE, f"the server refused the API key ({e.status} {e.code}): {e.message}",
                    status=e.status, code=e.code)
    except sdk.ModelportHTTPError as e:
        code = EXIT_UNREACHABLE if e.status >= 500 else EXIT_VALIDATION if e.code == "not_validated" else EXIT_USAGE
        return fail(code, f"{e.status} {e.code}: {e.message}", status=e.status, code=e.code, detail=e.detail)
    except sdk.Unreachable as e:
        return fail(EXIT_UNREACHABLE, f"server unreachable: {e}")
    except (sdk.JobFailed, sdk.JobTimeout) as e:
        return fail(EXIT_JOB_FAILED, str(e), job=e.job.data)
    except (UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError) as e:
        return fail(EXIT_USAGE, str(e))
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    except BrokenPipeError:  # `modelport jobs --json | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    print()


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _cmd_upload(c, args) -> int:
    m = c.upload(args.paths if len(args.paths) > 1 else args.paths[0], name=args.name, metadata=args.metadata,
                 progress=args.progress)
    if args.json:
        _print_json(m.data)
    else:
        print(f"{m.id}  {m.name}  {m.format}  {_size(m.size_bytes)}")
        for w in m.data.get("warnings") or []:
            print(f"warning: {w}", file=sys.stderr)
    return EXIT_OK


def _cmd_convert(c, args) -> int:
    job = c.convert(args.model_id, args.target, options=args.options, input_specs=args.input_specs,
                    validate=not args.no_validate, benchmark=not args.no_benchmark, tolerance=args.tolerance,
                    hardware=args.hardware)
    return _one_job(c, job, args)


def _cmd_rebuild(c, args) -> int:
    return _one_job(c, c.rebuild(args.artifact_id, validate=not args.no_validate, benchmark=not args.no_benchmark),
                    args)


def _one_job(c, job, args) -> int:
    if not args.wait:
        if args.json:
            _print_json(job.data)
        else:
            print(f"{job.id}  {job.status}  {job.target}  {' -> '.join(job.data.get('plan') or [])}")
        return EXIT_OK
    outcomes = _wait_all(c, [job], args.timeout, args.progress)
    if args.json:
        _print_json(outcomes[0])
    else:
        _print_outcomes(outcomes)
    return _exit_of(outcomes)


def _cmd_report_all(c, args) -> int:
    jobs = c.report_all(args.model_id, benchmark=not args.no_benchmark, input_specs=args.input_specs,
                        tolerance=args.tolerance)
    for s in jobs.skipped:
        print(f"skipped {s['target']} {s.get('options') or ''}: {s['reason']}", file=sys.stderr)
    if not args.wait:
        if args.json:
            _print_json({"jobs": [j.data for j in jobs], "skipped": jobs.skipped})
        else:
            for j in jobs:
                print(f"{j.id}  {j.status}  {j.target}  {json.dumps(j.data.get('options') or {})}")
        return EXIT_OK
    outcomes = _wait_all(c, list(jobs), args.timeout, args.progress)
    if args.json:
        _print_json({"jobs": outcomes, "skipped": jobs.skipped})
    else:
        _print_outcomes(outcomes)
    return _exit_of(outcomes)


def _cmd_jobs(c, args) -> int:
    jobs = c.jobs(model_id=args.model, status=args.status)
    if args.json:
        _print_json([j.data for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id}  {j.status:<20} {j.target:<12} model {j.model_id}  {j.data.get('created_at') or ''}")
    return EXIT_OK


def _cmd_wait(c, args) -> int:
    outcomes = _wait_all(c, [c.job(j) for j in args.job_ids], args.timeout, args.progress)
    if args.json:
        _print_json(outcomes)
    else:
        _print_outcomes(outcomes)
    return _exit_of(outcomes)


def _wait_all(c, jobs: list, timeout: float | None, progress: bool) -> list[dict]:
    """Wait for each job (one deadline for all); each job's JSON with ``validation``: the status of its
    final artifact's validation (None: not validated, or no artifact), and ``timed_out``."""
    import time

    from app.client import JobTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for job in jobs:
        timed_out = False
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.wait(timeout=left, progress=progress, check=False)
        except JobTimeout:
            timed_out = True
        art = job.artifact() if job.status == "succeeded" else None
        out.append({**job.data, "timed_out": timed_out, "validation": art.validation_status if art else None,
                    "validation_reason": (art.validation or {}).get("reason") if art else None})
    return out


def _print_outcomes(outcomes: list[dict]) -> None:
    for o in outcomes:
        line = f"{o['id']}  {o['status']}  {o['target']}"
        if o.get("timed_out"):
            line += "  (timed out waiting)"
        if o.get("artifact_id"):
            line += f"  artifact {o['artifact_id']}  validation {o.get('validation') or 'none'}"
        print(line)
        err = o.get("error")
        if o["status"] in ("failed", "cancelled") and err:
            msg = err.get("message") if isinstance(err, dict) else err
            hint = err.get("hint") if isinstance(err, dict) else None
            print(f"  error: {msg}" + (f"\n  hint: {hint}" if hint else ""), file=sys.stderr)
        if o.get("validation") == "failed":
            print(f"  validation failed: {o.get('validation_reason')}", file=sys.stderr)


def _exit_of(outcomes: list[dict]) -> int:
    if any(o["status"] != "succeeded" for o in outcomes):
        return EXIT_JOB_FAILED
    if any(o.get("validation") == "failed" for o in outcomes):
        return EXIT_VALIDATION
    return EXIT_OK


def _cmd_logs(c, args) -> int:
    sys.stdout.write(c.job(args.job_id).logs())
    return EXIT_OK


def _cmd_report(c, args) -> int:
    if args.json:
        _print_json(c.report(args.model_id))
    else:
        sys.stdout.write(c.report(args.model_id, markdown=True))
    return EXIT_OK


def _cmd_download(c, args) -> int:
    path = c.download(args.artifact_id, args.dest, progress=args.progress)
    if args.json:
        _print_json({"artifact_id": args.artifact_id, "path": str(path), "size_bytes": path.stat().st_size})
    else:
        print(path)
    return EXIT_OK


def _cmd_deploy(c, args) -> int:
    runtime = {"threads": args.threads} if args.threads else None
    batching = {"max_batch_size": args.max_batch_size} if args.max_batch_size else None
    d = c.deploy(args.name, artifact_id=args.artifact, model_id=args.model, force=args.force, runtime=runtime,
                 batching=batching)
    versions = d.data.get("versions") or []
    if args.json:
        _print_json(d.data)
    else:
        print(f"{args.name}: " + (", ".join(f"version {v.get('version')} {v.get('status')}" for v in versions)
                                  or json.dumps(d.data)))
    newest = max(versions, key=lambda v: v.get("version") or 0, default=None)
    if newest is not None and newest.get("status") == "failed":  # the previous version (if any) still serves
        print(f"modelport deploy: version {newest.get('version')} failed to load: {newest.get('reason')}",
              file=sys.stderr)
        return EXIT_JOB_FAILED
    return EXIT_OK


def _read_inputs(specs: list[str]):
    """``NAME=file.npy`` pairs, one ``.npz`` (every input), or one bare ``.npy`` (a one-input model)."""
    import numpy as np

    named: dict = {}
    bare = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--input {spec}: no such file: {p}")
        try:
            loaded = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise UsageError(f"--input {spec}: not a .npy/.npz of numeric arrays: {e}") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
            if name:
                if len(arrays) != 1:
                    raise UsageError(f"--input {spec}: NAME= takes one array; this .npz holds {len(arrays)}")
                arrays = {name: next(iter(arrays.values()))}
            named.update(arrays)
        elif name:
            named[name] = loaded
        else:
            bare.append(loaded)
    if bare and (named or len(bare) > 1):
        raise UsageError("a bare .npy is the one input of a one-input model; name each input as NAME=file.npy")
    return bare[0] if bare else named


def _cmd_predict(c, args) -> int:
    import numpy as np

    outputs = c.predict(args.name, _read_inputs(args.input))
    if args.output:
        np.savez(args.output, **outputs)
    if args.json:
        _print_json({"outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.tolist()}
                                 for k, v in outputs.items()}})
    else:
        for k, v in outputs.items():
            print(f"{k}: {v.dtype} {list(v.shape)}")
            print(np.array2string(v, threshold=200))
    return EXIT_OK


def _cmd_gate(c, args) -> int:
    from app import gate

    thresholds = gate.Thresholds(max_latency_regression=args.max_latency_regression,
                                 max_size_growth=args.max_size_growth, max_error=args.max_error,
                                 latency_floor_ms=args.latency_floor_ms)
    result = gate.compare_reports(c.report(args.model_id), c.report(args.baseline), thresholds)
    md = gate.markdown(result)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as f:
            f.write(md)
    if args.json:
        _print_json({**result.to_dict(), "markdown": md})
    else:
        sys.stdout.write(md)
    if not result.passed:
        print(f"modelport gate: {len(result.failures)} regression(s): "
              + "; ".join(f"{x.format} {x.precision} {x.metric}: {x.reason}" for x in result.failures), file=sys.stderr)
        return EXIT_VALIDATION
    return EXIT_OK


_COMMANDS = {"upload": _cmd_upload, "convert": _cmd_convert, "rebuild": _cmd_rebuild, "report-all": _cmd_report_all, "jobs": _cmd_jobs,
             "wait": _cmd_wait, "logs": _cmd_logs, "report": _cmd_report, "download": _cmd_download,
             "deploy": _cmd_deploy, "predict": _cmd_predict, "gate": _cmd_gate}


if __name__ == "__main__":
    sys.exit(main())
