"""Signing in and out of the HTML pages: a password form for built-in users, or the site's OpenID
provider (authorization code + PKCE, ``adapters/auth/oidc_login.py``).

GET  /login           the form (built-in users), or off to the provider; ``next`` is where to go after
POST /login           check the form, open a session
GET  /auth/callback   the provider's answer: open a session
POST /logout          close the session (and sign out at the provider when it offers that)

These routes are public (no token); each sign-in, refused or not, is an audit event of door ``web``.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute

from ...domain.access import ANONYMOUS, Principal
from ...domain.errors import UpstreamUnavailable
from ...services.web_login import PasswordLogin, SignInRefused, session_principal
from ..auth.middleware import PublicRoute
from ..auth.oidc_login import OidcSignIn
from .pages import STATIC, Pages, form_fields, safe_next

log = logging.getLogger(__name__)
LOGIN_FORM_S = 3600


def routes(pages: Pages, passwords: PasswordLogin | None, oidc: OidcSignIn | None,
           post_logout_redirect_uri: str | None = None) -> list[BaseRoute]:
    """The sign-in routes for built-in users (``passwords``) or an OpenID provider (``oidc``)."""

    def audit(request: Request, action: str, detail: str | None = None) -> None:
        state = request.scope.setdefault("state", {})
        state["audit"] = ("web", action, request.url.path)
        if detail:
            state["audit_detail"] = detail

    async def login_page(request: Request) -> Response:
        next_page = safe_next(request.query_params.get("next"))
        if await pages.sessions.find(request.cookies.get(pages.session_cookie)) is not None:
            return pages.secured(RedirectResponse(next_page, 303))
        if oidc is not None:
            return await _to_provider(request, next_page)
        if passwords is None:
            return pages.message(request, 503, "Sign-in not set up", "This site signs in at its identity "
                                 "provider, but pacsbridge is not registered there yet (auth.web.client_id).")
        return _form(request, next_page, None, 200)

    def _form(request: Request, next_page: str, error: str | None, status: int) -> Response:
        token = secrets.token_urlsafe(24)
        response = pages.render(request, "login.html", status, next=next_page, csrf=token, error=error,
                                signed_out="signed_out" in request.query_params)
        pages.set_cookie(response, pages.login_cookie, token, LOGIN_FORM_S)
        return response

    async def _to_provider(request: Request, next_page: str) -> Response:
        assert oidc is not None
        try:
            url, kept = await oidc.start(next_page)
        except UpstreamUnavailable as exc:
            log.warning("sign-in: the OpenID provider cannot be reached: %s", exc.message)
            return pages.message(request, 503, "Sign-in unavailable",
                                 "The identity provider cannot be reached. Try again in a moment.")
        key, _ = await pages.sessions.begin_login(kept)
        response = pages.secured(RedirectResponse(url, 303))
        pages.set_cookie(response, pages.login_cookie, key, pages.sessions.policy.login_s)
        return response

    async def login_submit(request: Request) -> Response:
        if passwords is None:
            return pages.message(request, 405, "Not here", "This site signs in at its identity provider.")
        audit(request, "login")
        fields = await form_fields(request)
        next_page = safe_next(fields.get("next"))
        sent, expected = fields.get("csrf", ""), request.cookies.get(pages.login_cookie, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            audit(request, "login", "refused: stale or cross-site form")
            return _form(request, next_page, "The form was out of date. Please try again.", 400)
        username = fields.get("username", "").strip()
        try:
            principal, name = await passwords.sign_in(username, fields.get("password", ""))
        except SignInRefused as exc:
            audit(request, "login", f"refused: {exc.reason}")
            request.scope["state"]["principal"] = Principal(subject=exc.subject) if exc.subject else ANONYMOUS
            return _form(request, next_page, "The user name or password is wrong, or the account is locked.", 401)
        return await _open(request, principal, name, None, next_page)

    async def _open(request: Request, principal: Principal, name: str | None, id_token: str | None,
                    next_page: str) -> Response:
        await pages.sessions.close(request.cookies.get(pages.session_cookie))  # one session per browser
        key, _ = await pages.sessions.open(principal, name, {"id_token": id_token} if id_token else None)
        request.scope["state"]["principal"] = principal
        response = pages.secured(RedirectResponse(next_page, 303))
        pages.set_cookie(response, pages.session_cookie, key, pages.sessions.policy.lifetime_s)
        pages.clear_cookie(response, pages.login_cookie)
        return response

    async def callback(request: Request) -> Response:
        audit(request, "login")
        if oidc is None:
            return pages.message(request, 404, "Not here", "This site has no identity provider.")
        cookie = request.cookies.get(pages.login_cookie)
        pending = await pages.sessions.find(cookie, kind="login")
        await pages.sessions.close(cookie)  # a sign-in record is used once
        q = request.query_params
        if pending is None or pending.data is None or not hmac.compare_digest(
                q.get("state", "").encode(), pending.data.get("state", "").encode()):
            audit(request, "login", "refused: unknown or expired sign-in (state)")
            return pages.message(request, 400, "Sign-in expired",
                                 "This sign-in was not started here or took too long. Please sign in again.")
        if "error" in q or "code" not in q:
            audit(request, "login", f"refused by the provider: {q.get('error', 'no code')}"[:200])
            return pages.message(request, 401, "Sign-in refused", "The identity provider did not sign you in.")
        try:
            principal, name, id_token = await oidc.finish(q["code"], pending.data)
        except SignInRefused as exc:
            log.warning("sign-in at the provider refused: %s", exc.reason)
            audit(request, "login", f"refused: {exc.reason}"[:200])
            return pages.message(request, 401, "Sign-in refused",
                                 "The identity provider's answer could not be accepted. Ask your administrator.")
        except UpstreamUnavailable as exc:
            log.warning("sign-in: the OpenID provider cannot be reached: %s", exc.message)
            audit(request, "login", "failed: the identity provider cannot be reached")
            return pages.message(request, 503, "Sign-in unavailable", "The identity provider cannot be reached.")
        return await _open(request, principal, name, id_token, pending.data.get("next", "/ui/"))

    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(pages.session_cookie)
        session = await pages.sessions.find(cookie)
        if session is None:
            return pages.secured(RedirectResponse("/login?signed_out=1", 303))
        fields = await form_fields(request)
        if not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
            return pages.message(request, 403, "Request refused", "The form was out of date. Reload the page.")
        audit(request, "logout")
        request.scope["state"]["principal"] = session_principal(session)
        await pages.sessions.close(cookie)
        target = "/login?signed_out=1"
        if oidc is not None:
            id_token = (session.data or {}).get("id_token")
            target = await oidc.end_session_url(id_token, post_logout_redirect_uri) or target
        response = pages.secured(RedirectResponse(target, 303))
        pages.clear_cookie(response, pages.session_cookie)
        return response

    async def home(_request: Request) -> Response:
        return RedirectResponse("/ui/", 303)

    async def stylesheet(_request: Request) -> Response:
        return FileResponse(STATIC / "pacsbridge.css", media_type="text/css",
                            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    return [
        PublicRoute("/", home),
        PublicRoute("/ui", home),
        PublicRoute("/login", login_page, methods=["GET"]),
        PublicRoute("/login", login_submit, methods=["POST"]),
        PublicRoute("/auth/callback", callback),
        PublicRoute("/logout", logout, methods=["POST"]),
        PublicRoute("/ui/static/pacsbridge.css", stylesheet),
    ]
