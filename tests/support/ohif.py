"""Serve the OHIF Viewer build (``.peers/ohif-<version>/dist``) on loopback, pointed at a DICOMweb root.

1. Static files come from the untouched ``dist/`` folder; ``/app-config.js`` is generated, so the
   copy under ``.peers`` is never written to.
2. A path with no file behind it gets ``index.html`` (OHIF is a single-page app: ``/viewer?...``),
   except paths ending in an asset suffix, which get 404 so a missing bundle fails loudly.
3. Every response carries COOP ``same-origin`` + COEP ``require-corp``, which OHIF's volume loader
   needs (SharedArrayBuffer), so the page is cross-origin isolated and every cross-origin response it
   loads (the DICOMweb server's) must pass CORS or CORP.
4. Optionally OHIF signs the user in (``point_at(dicomweb, oidc=oidc_client(...))``): authorization
   code + PKCE against an OpenID provider, then every DICOMweb request carries ``Authorization: Bearer``
   with the access token. Without ``oidc`` the generated ``app-config.js`` has no ``oidc`` key at all.

See: https://docs.ohif.org/deployment/cors/ ; the configuration keys are those of the build's own
``dist/app-config.js``.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pacsbridge.synthetic import StudySpec

from .servers import RunningServer

OHIF_VERSION = "3.13.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_SOURCE = "pacsbridge"

MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".onnx": "application/octet-stream",
}
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}


def ohif_dist(version: str = OHIF_VERSION) -> Path:
    """Where ``scripts/install-peers`` puts the OHIF build."""
    return REPO_ROOT / ".peers" / f"ohif-{version}" / "dist"


def data_source(dicomweb: str) -> dict[str, Any]:
    """The one DICOMweb data source OHIF uses, pointed at a pacsbridge DICOMweb root URL."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": DATA_SOURCE,
        "configuration": {
            "friendlyName": "pacsbridge",
            "name": DATA_SOURCE,
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "wadoUriRoot": dicomweb + "/wado",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }


def oidc_client(authority: str, client_id: str, scope: str = "openid dicomweb.read",
                **extra: Any) -> dict[str, Any]:
    """One entry of OHIF's ``window.config.oidc``: sign in with authorization code + PKCE at ``authority``.

    OHIF 3.13 (platform/app ``utils/OpenIdConnectRoutes.tsx`` and ``utils/nextOIDCClient.ts`` in the
    build) uses the first entry only. ``response_type: 'code'`` selects its oidc-client-ts UserManager
    (always PKCE); the entry is passed to it as UserManager settings, with ``redirect_uri``,
    ``silent_redirect_uri`` and ``post_logout_redirect_uri`` made absolute against the page's origin and
    ``revokeAccessTokenOnSignout`` becoming ``revokeTokensOnSignout``. ``redirect_uri`` is also the
    path of OHIF's callback route, so it must be registered at the provider as ``<origin>/callback``.
    Each DICOMweb request then carries ``Authorization: Bearer <access_token>``.
    ``post_logout_redirect_uri`` becomes a route of its own: it must not be ``/`` (the study list).
    ``extra`` adds or overrides keys (e.g. ``prompt``, ``extraQueryParams``, ``automaticSilentRenew``).
    """
    return {
        "authority": authority,
        "client_id": client_id,
        "redirect_uri": "/callback",
        "response_type": "code",
        "scope": scope,
        "post_logout_redirect_uri": "/logout-redirect",
        "automaticSilentRenew": True,
        # oidc-provider cannot revoke its JWT access tokens (400 unsupported_token_type), which would
        # make sign-out fail; a provider that can revoke them may leave this true (OHIF's default).
        "revokeAccessTokenOnSignout": False,
        **extra,
    }


def app_config(dicomweb: str, oidc: Mapping[str, Any] | None = None) -> str:
    """``app-config.js``: OHIF reads ``window.config`` from it before its bundle starts.

    ``oidc`` (see :func:`oidc_client`) makes OHIF sign the user in; without it the output has no
    ``oidc`` key.
    """
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        # The banner would cover the bottom of the viewport in screenshots.
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [data_source(dicomweb)],
    }
    if oidc is not None:
        config["oidc"] = [dict(oidc)]
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class OhifServer:
    """The OHIF build on a loopback port; :meth:`point_at` sets the DICOMweb root it is configured for
    (and, optionally, the OpenID provider it signs users in with)."""

    def __init__(self, dist: Path) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"OHIF build not found at {dist} (run scripts/install-peers)")
        self.dist = dist
        self.dicomweb: str | None = None
        self.oidc: dict[str, Any] | None = None
        self.not_found: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self._httpd.server_address[1])
        self.url = self.origin = f"http://127.0.0.1:{self.port}"

    def point_at(self, dicomweb: str, oidc: Mapping[str, Any] | None = None) -> None:
        """Configure OHIF for the DICOMweb root ``dicomweb``; ``oidc``: see :func:`oidc_client`."""
        self.dicomweb = dicomweb
        self.oidc = None if oidc is None else dict(oidc)

    def _handler(self) -> type[SimpleHTTPRequestHandler]:
        server = self

        class Handler(SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **MEDIA_TYPES}

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(server.dist), **kwargs)

            def end_headers(self) -> None:
                for name, value in ISOLATION_HEADERS.items():
                    self.send_header(name, value)
                super().end_headers()

            def send_head(self) -> Any:
                path = urlsplit(self.path).path
                if path == "/app-config.js":
                    return self._send_config()
                target = Path(self.translate_path(self.path))
                if not (target.is_file() or (target / "index.html").is_file()):
                    if Path(path).suffix.lower() in MEDIA_TYPES:
                        server.not_found.append(path)
                        self.send_error(HTTPStatus.NOT_FOUND)
                        return None
                    self.path = "/index.html"
                return super().send_head()

            def _send_config(self) -> Any:
                if server.dicomweb is None:
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no DICOMweb root configured yet")
                    return None
                body = app_config(server.dicomweb, server.oidc).encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/javascript; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                return io.BytesIO(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> None:
        threading.Thread(target=self._httpd.serve_forever, name="ohif-static", daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextlib.contextmanager
def serve_ohif(dist: Path | None = None) -> Iterator[OhifServer]:
    """OHIF's static build on a free loopback port, stopped on exit. Call ``point_at`` before loading it."""
    server = OhifServer(dist or ohif_dist())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Exchange:
    """One request the page made to the DICOMweb server, and what became of it."""

    method: str
    url: str
    accept: str
    status: int | None = None
    content_type: str = ""
    failure: str | None = None

    def __str__(self) -> str:
        outcome = self.failure or (f"{self.status} {self.content_type}" if self.status else "no answer")
        return f"{self.method} {self.url} (Accept: {self.accept}) -> {outcome}"


class Traffic:
    """Records every request a Playwright page makes under ``root`` (the DICOMweb server's URL).

    CORS preflights are not page requests and do not appear; a request the browser blocks (CORS,
    CORP under COEP) appears as a failure.
    """

    def __init__(self, page: Any, root: str) -> None:
        self.root = root
        self.exchanges: list[Exchange] = []
        self._by_request: dict[Any, Exchange] = {}
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _request(self, request: Any) -> None:
        if request.url.startswith(self.root):
            exchange = Exchange(request.method, request.url, request.headers.get("accept", ""))
            self._by_request[request] = exchange
            self.exchanges.append(exchange)

    def _response(self, response: Any) -> None:
        exchange = self._by_request.get(response.request)
        if exchange is not None:
            exchange.status = response.status
            exchange.content_type = response.headers.get("content-type", "")

    def _failed(self, request: Any) -> None:
        exchange = self._by_request.get(request)
        if exchange is not None:
            exchange.failure = request.failure or "failed"

    def matching(self, fragment: str) -> list[Exchange]:
        return [e for e in self.exchanges if fragment in e.url]

    def problems(self) -> list[Exchange]:
        """Requests that failed in the browser or were answered with an HTTP error."""
        return [e for e in self.exchanges if e.failure is not None or (e.status or 0) >= 400]

    def report(self) -> str:
        return "\n".join(str(e) for e in self.exchanges)


@dataclass(frozen=True)
class Stack:
    """pacsbridge holding ``studies``, and OHIF (another origin) configured to use it."""

    pacsbridge: RunningServer
    ohif: OhifServer
    studies: tuple[StudySpec, ...]


@dataclass
class Session:
    """One page in a fresh browser context, with its DICOMweb traffic and uncaught script errors."""

    page: Any
    traffic: Traffic
    errors: list[str]
