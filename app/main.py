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

        from app.pipeline import callbacks

        stop = threading.Event()
        callbacks.start_sender(db, stop)
        try:
            yield
        finally:
            stop.set()
            from app.serving import endpoint_bench

            await endpoint_bench.stop_all(app.state)
            await app.state.models.close()
            if executor is not None:
                executor.stop()
            db.dispose()

    app = FastAPI(title="modelport", version=__version__, lifespan=lifespan,
                  description="Convert, prove, measure and serve trained models.")

    @app.exception_handler(ModelportError)
    async def _domain(request: Request, exc: ModelportError):
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

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

    auth = [Depends(authenticated)]  # every route but health: a key (once keys exist), scoped to its project
    app.include_router(health.router)
    app.include_router(v2.health_router)
    app.include_router(models.router, dependencies=auth)
    app.include_router(jobs_api.router, dependencies=auth)
    app.include_router(formats.router, dependencies=auth)
    app.include_router(deployments.router, dependencies=auth)
    app.include_router(keys.router, dependencies=auth)
    app.include_router(v2.router, dependencies=auth)

    from app.api.deps import admin

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(authenticated), Depends(admin)])
    def metrics():  # every project's deployment names are in it: an admin key, once keys exist
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        return Response(app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def create_asgi(settings: Settings | None = None):
    """The served application: the inference fast path in front of the FastAPI app."""
    from app.api.fastpath import FastPath

    return FastPath(create_app(settings))


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
