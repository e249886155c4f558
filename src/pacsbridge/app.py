"""Composition root: builds backends, services and doors from one Settings object.

Only this module and ``cli.py`` see everything. The archive is opened (and its schema migrated) when
the app is built, so a bad database URL fails at start-up, not at the first request; the lifespan
closes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from . import allocator
from .adapters.auth import AccessMiddleware, open_access
from .adapters.dicomweb.context import DicomwebConfig, DicomwebContext
from .adapters.dicomweb.errors import handle_domain_error
from .adapters.dicomweb.routes import routes as dicomweb_routes
from .adapters.http import AccessLog, CrossOriginResourcePolicy, cors_middleware, health
from .backends.local import LocalArchive
from .domain.access import Principal
from .domain.errors import PacsbridgeError
from .services.ingest import IngestOptions, IngestService
from .services.retrieve import RetrieveService
from .services.search import SearchService
from .settings import Settings

log = logging.getLogger(__name__)

OPERATOR = Principal(subject="open-access", scopes=frozenset({"*"}))


@dataclass
class Services:
    """The use cases, as every door sees them."""

    archive: LocalArchive
    ingest: IngestService
    search: SearchService
    retrieve: RetrieveService


def build_services(settings: Settings) -> Services:
    data_dir = settings.data_dir.resolve()
    archive = LocalArchive.open(settings.resolved_database_url(), data_dir, fsync=settings.storage.fsync)
    return Services(
        archive=archive,
        ingest=IngestService(archive, archive.blobs, IngestOptions(settings.dicomweb.bulk_threshold)),
        search=SearchService(archive),
        retrieve=RetrieveService(archive, scratch_dir=archive.blobs.spool_dir),
    )


def build_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The ASGI application for these settings."""
    services = services or build_services(settings)
    dw = settings.dicomweb
    ctx = DicomwebContext(
        search=services.search, retrieve=services.retrieve, ingest=services.ingest,
        config=DicomwebConfig(
            root=dw.root, public_url=settings.public_url, qido_default_limit=dw.qido_default_limit,
            qido_max_limit=dw.qido_max_limit, strict_accept=dw.strict_accept, stow_max_bytes=dw.stow_max_bytes,
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        log.info("pacsbridge serving DICOMweb at %s, data in %s", dw.root or "/", settings.data_dir)
        try:
            yield
        finally:
            await services.archive.close()

    middleware = [
        Middleware(AccessLog),
        *cors_middleware(settings.cors.allow_origins, settings.cors.allow_credentials, settings.cors.max_age),
        *([Middleware(CrossOriginResourcePolicy)] if settings.cors.cross_origin_isolation else []),
        Middleware(AccessMiddleware, resolve=open_access(OPERATOR)),
    ]
    app = Starlette(
        routes=[
            Route("/health", health),
            Mount(dw.root, routes=dicomweb_routes(ctx)) if dw.root else Mount("", routes=dicomweb_routes(ctx)),
        ],
        middleware=middleware,
        exception_handlers={PacsbridgeError: handle_domain_error},
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def app_from_environment() -> Starlette:
    """The app factory a uvicorn worker process calls (``pacsbridge serve`` with ``workers`` > 1)."""
    import os

    from .logs import configure_logging
    from .settings import RESOLVED_ENV, from_worker_environment

    settings = from_worker_environment(os.environ[RESOLVED_ENV])
    configure_logging(settings.log_level)
    allocator.tune()
    return build_app(settings)
