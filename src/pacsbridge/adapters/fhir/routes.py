"""The FHIR R4 URL space under the configured root (``/fhir``), built from ``capability.DECLARED``.

See: FHIR R4 http.html (the RESTful API: one URL pattern per interaction), search.html (``_search``).

Rules:
1. Every route is a ``FhirRoute`` (a GuardedRoute) naming its resource type and interaction, needing
   the scope of that action (``NEEDS``); the scope check answers before the door's code runs.
2. Every answer the door's code gives is FHIR JSON; every error an OperationOutcome (``errors.py``),
   including 404 for an unknown path and 405 for a known path with another method (the last route).
3. ``GET [base]/metadata`` is public: discovery needs no token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from ...domain.errors import NotFound, PacsbridgeError, without_values
from ...domain.scopes import (
    ANY_CALLER,
    DICOMWEB_READ,
    DICOMWEB_SEARCH,
    ORDERS_CREATE,
    ORDERS_DELETE,
    ORDERS_READ,
    ORDERS_SEARCH,
    ORDERS_UPDATE,
    PATIENTS_CREATE,
    PATIENTS_DELETE,
    PATIENTS_READ,
    PATIENTS_SEARCH,
    PATIENTS_UPDATE,
    Need,
)
from ...services.fhir_index import PATIENT_PARAMS, SERVICE_REQUEST_PARAMS
from ..auth.middleware import GuardedRoute, PublicRoute, insufficient_scope_outcome
from . import resources, studies
from .capability import DECLARED, capability_statement
from .context import FhirContext
from .errors import MethodNotAllowed, error_response, fhir_response, unexpected_response
from .messages import check_negotiation, pretty
from .resources import Held
from .validation import check_output

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

NEEDS: dict[tuple[str, str], Need] = {
    **{("ServiceRequest", i): n for i, n in (
        ("read", ORDERS_READ), ("vread", ORDERS_READ), ("history-instance", ORDERS_READ),
        ("search-type", ORDERS_SEARCH), ("create", ORDERS_CREATE), ("update", ORDERS_UPDATE),
        ("delete", ORDERS_DELETE))},
    **{("Patient", i): n for i, n in (
        ("read", PATIENTS_READ), ("vread", PATIENTS_READ), ("history-instance", PATIENTS_READ),
        ("search-type", PATIENTS_SEARCH), ("create", PATIENTS_CREATE), ("update", PATIENTS_UPDATE),
        ("delete", PATIENTS_DELETE))},
    ("ImagingStudy", "read"): DICOMWEB_READ,
    ("ImagingStudy", "search-type"): DICOMWEB_SEARCH,
    ("Endpoint", "read"): DICOMWEB_READ,
    ("Endpoint", "search-type"): DICOMWEB_SEARCH,
}

# interaction -> (path after [type], methods)
PATHS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "search-type": (("", ("GET",)), ("/_search", ("GET", "POST"))),
    "create": (("", ("POST",)),),
    "read": (("/{id}", ("GET",)),),
    "vread": (("/{id}/_history/{vid}", ("GET",)),),
    "history-instance": (("/{id}/_history", ("GET",)),),
    "update": (("/{id}", ("PUT",)),),
    "delete": (("/{id}", ("DELETE",)),),
}


class FhirRoute(GuardedRoute):
    """A route of the FHIR door: one interaction on one resource type (rule 1)."""

    def __init__(self, path: str, endpoint: Handler, *, need: Need, methods: tuple[str, ...], resource_type: str,
                 interaction: str) -> None:
        super().__init__(path, endpoint, need=need, methods=methods, refuse=insufficient_scope_outcome)
        self.resource_type = resource_type
        self.interaction = interaction


def _answering(handler: Handler, where: str) -> Handler:
    """``handler`` with rule 2: core errors through the table, anything else a logged 500."""

    async def endpoint(request: Request) -> Response:
        try:
            check_negotiation(request)
            return await handler(request)
        except PacsbridgeError as exc:
            return error_response(exc)
        except Exception as exc:
            log.error("FHIR %s %s failed: %s", request.method, where, without_values(exc))
            return unexpected_response()

    return endpoint


def _handler(ctx: FhirContext, resource_type: str, interaction: str) -> Handler:
    held = _held(ctx).get(resource_type)
    if held is not None:
        act = {"create": resources.create, "read": resources.read, "vread": resources.vread,
               "history-instance": resources.history, "update": resources.update, "delete": resources.delete,
               "search-type": resources.search}[interaction]

        async def on_held(request: Request) -> Response:
            return await act(ctx, held, request)

        return on_held
    act_on = {("ImagingStudy", "read"): studies.read_study, ("ImagingStudy", "search-type"): studies.search_studies,
              ("Endpoint", "read"): studies.read_endpoint, ("Endpoint", "search-type"): studies.search_endpoints,
              }[(resource_type, interaction)]

    async def on_derived(request: Request) -> Response:
        return await act_on(ctx, request)

    return on_derived


def _held(ctx: FhirContext) -> dict[str, Held]:
    return {
        "ServiceRequest": Held("ServiceRequest", ctx.service_requests, ctx.orders, SERVICE_REQUEST_PARAMS,
                               ORDERS_READ, ORDERS_SEARCH),
        "Patient": Held("Patient", ctx.patients, ctx.patients, PATIENT_PARAMS, PATIENTS_READ, PATIENTS_SEARCH),
    }


def routes(ctx: FhirContext) -> list[BaseRoute]:
    """The door's routes, relative to ``ctx.config.root`` (where app.py mounts them)."""
    out: list[BaseRoute] = []
    for declared in DECLARED:
        # literal paths (/_search) before /{id}
        for interaction in sorted(declared.interactions, key=lambda i: i != "search-type"):
            handler = _handler(ctx, declared.type, interaction)
            for suffix, methods in PATHS[interaction]:
                path = f"/{declared.type}{suffix}"
                out.append(FhirRoute(path, _answering(handler, path), need=NEEDS[(declared.type, interaction)],
                                     methods=methods, resource_type=declared.type, interaction=interaction))
    known = [*out, Route("/metadata", _nothing, methods=["GET"])]
    out.append(GuardedRoute("/{rest:path}", _answering(_fallback(known), "(unknown path)"), need=ANY_CALLER,
                            methods=ALL_METHODS))
    return out


def _fallback(known: list[BaseRoute]) -> Handler:
    """404 for a path the door does not serve, 405 with ``Allow`` for a known path and another method."""

    async def answer(request: Request) -> Response:
        allowed: set[str] = set()
        for route in known:
            if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
                allowed |= set(route.methods or ())
        if allowed:
            raise MethodNotAllowed(f"{request.method} is not supported here", sorted(allowed))
        raise NotFound("this server offers no such resource type or interaction (see [base]/metadata)")

    return answer


async def _nothing(_request: Request) -> Response:
    return Response(status_code=404)  # never served: /metadata is a public route (only matched against)


def public_routes(ctx: FhirContext) -> list[BaseRoute]:
    """``GET [root]/metadata``: the CapabilityStatement, served without a token (rule 3)."""

    async def metadata(request: Request) -> Response:
        statement = capability_statement(ctx.base_url(request), ctx.config.software_version)
        return fhir_response(check_output(statement), pretty=pretty(request))

    path = ctx.config.root.rstrip("/") + "/metadata"
    return [PublicRoute(path, _answering(metadata, path), methods=["GET"])]
