"""create_app(): routers, lifespan, error handlers; create_asgi(): that app behind the inference fast path."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.config import Settings, get_settings
from app.errors import ModelportError

log = logging.getLogger("modelport")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from app.catalog.db import Database, upgrade
        from app.storage import open_store

        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        upgrade(db.engine)
        app.state.settings = settings
        app.state.db = db
        app.state.store = open_store(settings.resolved_storage_url, settings)
        executor = None
        if settings.broker_url:
            from app.pipeline.dispatch import CeleryDispatcher

            app.state.dispatcher = CeleryDispatcher(broker_url=settings.broker_url)
        elif settings.executor_socket:  # a worker of `modelport serve --workers N`: its supervisor runs the steps
            from app.pipeline.relay import RelayDispatcher

            app.state.dispatcher = RelayDispatcher(settings.executor_socket)
        else:  # embedded: the same step function on a thread pool in this process
            from app.pipeline.embedded import EmbeddedExecutor

            executor = EmbeddedExecutor(settings, db, app.state.store)
            executor.start()
            app.state.dispatcher = executor
        from app.auth import Authenticator
        from app.serving.metrics import Metrics
        from app.serving.runtime import ModelCache

        app.state.auth = Authenticator(db, settings)
        app.state.metrics = Metrics(db)
        app.state.models = ModelCache(settings, db, app.state.store, app.state.metrics)
        if settings.serving_load == "eager":
            await _load_all(app)
        import threading

        from app.pipeline import callbacks, dispatch

        stop = threading.Event()
        callbacks.start_sender(db, stop)
        dispatch.start_relay(db, app.state.dispatcher, stop)  # steps queued while the broker was down
        try:
            yield
        finally:
            stop.set()
            from app.serving import endpoint_bench

            await endpoint_bench.stop_all(app.state)
            await app.state.models.close()
            from app.serving.dataplane import close_decoders

            close_decoders()
            if executor is not None:
                executor.stop()
            db.dispose()

    app = FastAPI(title="modelport", version=__version__, lifespan=lifespan,
                  description="Convert, prove, measure and serve trained models.")

    @app.exception_handler(ModelportError)
    async def _domain(request: Request, exc: ModelportError):  # a body that stopped arriving: drop the connection
        return _error_response(exc, settings, headers={"Connection": "close"} if exc.status_code == 408 else None)

    async def _infrastructure(request: Request, exc: Exception):
        """The catalog, the object store or the disk failing: 503 (507 for a full disk) naming what,
        never an exception out of the ASGI app; anything else of theirs is a 500 like any bug."""
        err = _infrastructure_error(exc)
        if err is None:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return JSONResponse({"error": {"code": "internal_error", "message": "internal error; see the server log",
                                           "detail": {"type": type(exc).__name__}}}, status_code=500)
        log.warning("%s %s: %s", request.method, request.url.path, err.message)
        return _error_response(err, settings, headers={"Retry-After": "5"} if err.status_code == 503 else None)

    from app.catalog.db import error_types as catalog_errors
    from app.storage import error_types as storage_errors

    for cls in (*catalog_errors(), *storage_errors(settings.resolved_storage_url), OSError):
        app.add_exception_handler(cls, _infrastructure)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(x) for x in first["loc"])
        return JSONResponse({"error": {"code": "invalid_request", "message": f"{where}: {first['msg']}",
                                       "detail": {"errors": errors}}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail), "detail": {}}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": {"code": "internal_error", "message": "internal error; see the server log",
                                       "detail": {"type": type(exc).__name__}}}, status_code=500)

    from fastapi import Depends

    from app.api import deployments, formats, health, keys, models, v2
    from app.api import jobs as jobs_api
    from app.api.deps import authenticated
    from app.api.schemas import ERRORS, V2_ERRORS

    auth = [Depends(authenticated)]  # every route but health: a key (once keys exist), scoped to its project
    app.include_router(health.router, responses=ERRORS)  # errors documented once, for every route
    app.include_router(v2.health_router, responses=V2_ERRORS)
    app.include_router(models.router, dependencies=auth, responses=ERRORS)
    app.include_router(jobs_api.router, dependencies=auth, responses=ERRORS)
    app.include_router(formats.router, dependencies=auth, responses=ERRORS)
    app.include_router(deployments.router, dependencies=auth, responses=ERRORS)
    app.include_router(keys.router, dependencies=auth, responses=ERRORS)
    app.include_router(v2.router, dependencies=auth, responses=V2_ERRORS)

    from app.api.deps import admin
    from app.api.guards import RequestGuard

    app.add_middleware(RequestGuard, settings=settings)  # NUL in paths, JSON body caps, body read timeouts

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(authenticated), Depends(admin)])
    def metrics():  # every project's deployment names are in it: an admin key, once keys exist
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        return Response(app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    from app.ui import mount as mount_ui

    mount_ui(app)  # /ui: web pages, clients of the routes above (no data of their own)
    return app


def create_asgi(settings: Settings | None = None):
    """The served application: the inference fast path in front of the FastAPI app, both behind
    the request guard."""
    from app.api.fastpath import FastPath

    settings = settings or get_settings()
    return FastPath(create_app(settings), settings)


def http_protocol(settings: Settings):
    """uvicorn's httptools protocol with request header deadlines and size bounds (app/api/server.py)."""
    from app.api.server import GuardedHttpToolsProtocol

    GuardedHttpToolsProtocol.header_timeout_s = settings.request_header_timeout_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    return GuardedHttpToolsProtocol


def _error_response(err: ModelportError, settings: Settings, headers: dict[str, str] | None = None) -> JSONResponse:
    """One error as JSON: its message bounded, and no absolute path of this host (a temp folder) in it."""
    import json

    body = err.to_dict()
    msg = body["error"]["message"]
    if len(msg) > 2000:
        body["error"]["message"] = msg[:2000] + "…"
    text = json.dumps(body, default=str)
    if len(text) > 16384:  # details that echo client input at length
        body["error"]["detail"] = {"truncated": True}
        text = json.dumps(body, default=str)
    text = text.replace(str(settings.resolved_data_dir), "$MODELPORT_DATA_DIR")
    return JSONResponse(json.loads(text), status_code=err.status_code, headers=headers)


def _infrastructure_error(exc: BaseException) -> ModelportError | None:
    import errno

    from app.catalog.db import unavailable as catalog_down
    from app.errors import InsufficientStorage, ServiceUnavailable
    from app.storage import unavailable as storage_down

    why = catalog_down(exc)
    if why:
        return ServiceUnavailable(why, code="catalog_unavailable")
    why = storage_down(exc)
    if why:
        return ServiceUnavailable(why, code="storage_unavailable")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage(f"no space left to write the request's files ({exc.strerror}): the temp folder "
                                   "(MODELPORT_DATA_DIR/tmp) or the object store's disk is full", code="disk_full")
    return None


async def _load_all(app: FastAPI) -> None:
    """MODELPORT_SERVING_LOAD=eager: load the serving version of every deployment at start."""
    import anyio

    from app.catalog import repo
    from app.serving.runtime import qualified

    cache = app.state.models
    with app.state.db.session() as s:
        names = [qualified(p, n) for p, n in repo.all_deployment_names(s)]
    for name in names:
        try:
            row = cache.resolve(name, None)
            await anyio.to_thread.run_sync(cache.get, row, name)
        except Exception as e:  # one deployment that cannot load must not stop the others
            log.warning("eager load of %s failed: %s", name, e)
