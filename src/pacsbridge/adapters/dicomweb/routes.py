"""The DICOMweb URL space under the configured root (PS3.18 §10.4–10.6, Ch. 9)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from ...domain.scopes import DICOMWEB_READ, DICOMWEB_SEARCH, DICOMWEB_WRITE, Need
from ..auth.middleware import GuardedRoute
from . import qido, stow, wado, wado_uri
from .context import DicomwebContext

Handler = Callable[[DicomwebContext, Request], Awaitable[Response]]

S = "/studies/{study}"
SE = S + "/series/{series}"
I = SE + "/instances/{instance}"  # noqa: E741


def routes(ctx: DicomwebContext) -> list[BaseRoute]:
    def r(path: str, handler: Handler, methods: tuple[str, ...] = ("GET",), need: Need = DICOMWEB_READ,
          **defaults: str) -> GuardedRoute:
        async def endpoint(request: Request) -> Response:
            request.path_params.update({k: v for k, v in defaults.items() if k not in request.path_params})
            return await handler(ctx, request)

        return GuardedRoute(path, endpoint, methods=methods, need=need)

    search, write = DICOMWEB_SEARCH, DICOMWEB_WRITE

    return [
        # QIDO-RS (§10.6.1)
        r("/studies", qido.search, need=search, resource="studies"),
        r("/series", qido.search, need=search, resource="series"),
        r("/instances", qido.search, need=search, resource="instances"),
        r(S + "/series", qido.search, need=search, resource="series"),
        r(S + "/instances", qido.search, need=search, resource="instances"),
        r(SE + "/instances", qido.search, need=search, resource="instances"),
        # STOW-RS (§10.5.1)
        r("/studies", stow.store, ("POST",), need=write),
        r(S, stow.store, ("POST",), need=write),
        # WADO-RS (§10.4.1)
        r(S, wado.retrieve_instances),
        r(SE, wado.retrieve_instances),
        r(I, wado.retrieve_instances),
        r(S + "/metadata", wado.metadata),
        r(SE + "/metadata", wado.metadata),
        r(I + "/metadata", wado.metadata),
        r(I + "/frames/{frames}", wado.frames),
        r(I + "/bulkdata/{path:path}", wado.bulkdata),
        r(I + "/rendered", wado.rendered),
        r(I + "/frames/{frame}/rendered", wado.rendered),
        r(S + "/thumbnail", wado.thumbnail),
        r(SE + "/thumbnail", wado.thumbnail),
        r(I + "/thumbnail", wado.thumbnail),
        r(I + "/frames/{frame}/thumbnail", wado.thumbnail),
        # WADO-URI (Ch. 9)
        r("/wado", wado_uri.retrieve),
    ]

