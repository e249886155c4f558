"""What every HTML page shares: the session cookie, the page route type, templates and security headers.

See: OWASP Session Management and CSRF Prevention cheat sheets; RFC 6265bis (SameSite, ``__Host-``).

Rules:
1. A page authenticates by the session cookie alone, and only pages do: the access middleware never
   reads cookies, so a cookie can never carry a cross-site request into an API route.
2. ``PageRoute(path, endpoint, need=...)`` is the page's twin of ``GuardedRoute``: without a session a
   GET is sent to the sign-in page (and back afterwards), anything else gets 401; a session without the
   scope gets 403. A state-changing request must also carry the session's CSRF token.
3. The cookie is HttpOnly and SameSite=Lax; Secure with the ``__Host-`` prefix when the site is reached
   over HTTPS. Pages are ``no-store`` and framed by nobody, with a CSP that allows our own styles only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ...domain.access import Principal
from ...domain.scopes import Need
from ...services.web_login import SessionBook, session_principal
from ..auth.middleware import ACTIONS, principal_of

HERE = Path(__file__).parent
STATIC = HERE / "static"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PAGE_PREFIXES = ("/ui/", "/login", "/logout", "/auth/callback")  # same-origin only: never under CORS
R = TypeVar("R", bound=Response)


@dataclass
class Pages:
    """The pages' shared configuration and the session book behind them."""

    sessions: SessionBook
    secure_cookies: bool
    login_mode: str  # "password" (built-in users) or "oidc"
    form_origins: tuple[str, ...] = ()  # where a form may lead besides us (the provider's sign-out)

    def __post_init__(self) -> None:
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["utc"] = lambda t: datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.env.globals["idle_minutes"] = self.sessions.policy.idle_s // 60

    @property
    def session_cookie(self) -> str:
        return "__Host-pb_session" if self.secure_cookies else "pb_session"

    @property
    def login_cookie(self) -> str:
        return "__Host-pb_login" if self.secure_cookies else "pb_login"

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        principal = principal_of(request)
        html = self.env.get_template(template).render(
            principal=principal if principal.subject != "anonymous" else None,
            session=request.scope.get("state", {}).get("web_session"), login_mode=self.login_mode, **context)
        return self.secured(HTMLResponse(html, status_code=status))

    def message(self, request: Request, status: int, title: str, text: str) -> HTMLResponse:
        return self.render(request, "message.html", status, title=title, text=text)

    def secured(self, response: R) -> R:
        form_action = " ".join(("'self'", *self.form_origins))
        response.headers.update({
            "Cache-Control": "no-store",
            "Content-Security-Policy": f"default-src 'none'; style-src 'self'; img-src 'self'; "
                                       f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        })
        return response

    def set_cookie(self, response: Response, name: str, value: str, max_age: int, path: str = "/") -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, secure=self.secure_cookies, httponly=True,
                            samesite="lax")

    def clear_cookie(self, response: Response, name: str, path: str = "/") -> None:
        response.delete_cookie(name, path=path, secure=self.secure_cookies, httponly=True, samesite="lax")


def safe_next(value: str | None, default: str = "/ui/") -> str:
    """A local path to go to after signing in; anything that could lead off-site becomes ``default``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or any(
            ord(c) < 0x20 for c in value):
        return default
    return value


class PageRoute(Route):
    """An HTML page for signed-in users whose session meets ``need`` (None: any signed-in user)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], *, pages: Pages,
                 need: Need | None = None, methods: Sequence[str] = ("GET",), door: str = "web",
                 action: str | None = None, unbound_only: bool = False) -> None:
        self.need = need
        self.action = action or (ACTIONS.get(need.permissions[:1], "read") if need else "read")

        async def page(request: Request) -> Response:
            state = request.scope.setdefault("state", {})
            state["audit"] = (door, self.action, request.scope.get("root_path", "") + path)
            session = await pages.sessions.find(request.cookies.get(pages.session_cookie))
            if session is None:
                if request.method == "GET":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return pages.secured(RedirectResponse(f"/login?next={quote(target, safe='')}", 303))
                return pages.message(request, 401, "Signed out", "Your session has ended. Please sign in again.")
            principal = session_principal(session)
            state["principal"] = principal
            state["web_session"] = session
            if request.method in UNSAFE_METHODS and not await _csrf_ok(request, session.csrf):
                return pages.message(request, 403, "Request refused", "The form was out of date or came "
                                     "from another site. Reload the page and try again.")
            if not _allowed(principal, need, unbound_only):
                wanted = need.describe() if need else "a signed-in user"
                return pages.message(request, 403, "Not allowed",
                                     f"Your account lacks the access this page needs ({wanted}).")
            return await endpoint(request)

        super().__init__(path, page, methods=list(methods))


def _allowed(principal: Principal, need: Need | None, unbound_only: bool) -> bool:
    if unbound_only and principal.patient_ids is not None:
        return False
    return need is None or principal.allows(need)


async def _csrf_ok(request: Request, expected: str) -> bool:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        sent = (await form_fields(request)).get("csrf")
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


async def form_fields(request: Request, limit: int = 64 * 1024) -> dict[str, str]:
    """An urlencoded form body (small, for pages), parsed once; python-multipart is not needed for it."""
    cached = request.scope.setdefault("state", {}).get("form_fields")
    if cached is not None:
        return dict(cached)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            break
    fields = dict(parse_qsl(body[:limit].decode("utf-8", "replace"), keep_blank_values=True))
    request.scope["state"]["form_fields"] = fields
    return fields
