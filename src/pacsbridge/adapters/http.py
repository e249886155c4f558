"""HTTP concerns shared by every door: CORS, cross-origin isolation headers, health."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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


def cors_middleware(origins: list[str], allow_credentials: bool, max_age: int) -> list[Middleware]:
    if not origins:
        return []
    return [Middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=allow_credentials,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Accept", "Content-Type", "If-None-Exist", "If-Match", "Prefer"],
        expose_headers=["Warning", "Content-Location", "Content-Type", "Content-Length", "Location", "ETag"],
        max_age=max_age,
    )]


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})
