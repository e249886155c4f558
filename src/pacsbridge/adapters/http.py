"""HTTP concerns shared by every door: CORS, cross-origin isolation headers, access log, health."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .streaming import ZERO_COPY


class CrossOriginResourcePolicy:
    """Adds ``Cross-Origin-Resource-Policy: cross-origin`` so a cross-origin-isolated viewer (OHIF with
    COOP/COEP for SharedArrayBuffer) may use our responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"cross-origin-resource-policy", b"cross-origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


access_log = logging.getLogger("pacsbridge.access")


class AccessLog:
    """One line per request: method, path, status, bytes, milliseconds — never the query string, which
    carries patient names and IDs in QIDO searches (uvicorn's own access log is turned off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY:
                sent += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %s %d %dB %.1fms", client[0], scope["method"], scope["path"], status, sent,
                            (time.perf_counter() - started) * 1000)


class CorsForApi:
    """CORS on the API routes only. The HTML pages and their sign-in are same-origin by design: no
    other origin may read them, whatever ``cors.allow_origins`` and ``allow_credentials`` say, so a
    page's patient data and CSRF token never reach another site's script."""

    def __init__(self, app: ASGIApp, same_origin_only: tuple[str, ...], **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)
        self.same_origin_only = same_origin_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.same_origin_only):
            await self.app(scope, receive, send)
        else:
            await self.cors(scope, receive, send)


def cors_middleware(origins: list[str], allow_credentials: bool, max_age: int,
                    same_origin_only: tuple[str, ...] = ()) -> list[Middleware]:
    if not origins:
        return []
    return [Middleware(
        CorsForApi,
        same_origin_only=same_origin_only,
        allow_origins=origins,
        allow_credentials=allow_credentials,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Accept", "Content-Type", "If-None-Exist", "If-Match", "Prefer"],
        expose_headers=["Warning", "Content-Location", "Content-Type", "Content-Length", "Location", "ETag",
                        "WWW-Authenticate"],
        max_age=max_age,
    )]


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})
