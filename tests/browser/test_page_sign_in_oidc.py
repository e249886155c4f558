"""A browser signs in to pacsbridge's pages at a real OpenID provider (npm oidc-provider): authorization
code + PKCE, the ID token for who, the access token for what; then signs out at both.

pacsbridge runs in ``auth.mode: oidc`` with ``auth.web.client_id`` set to the provider's public client
``viewer``, whose redirect URI is pacsbridge's ``/auth/callback``. See docs/security.md, "Signing in to
the pages".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from pacsbridge.settings import Settings

from ..support.oidc import VIEWER_CLIENT_ID, OidcProvider, oidc_provider
from ..support.servers import RunningServer, free_port, serve

pytestmark = pytest.mark.browser

# Registers the scopes a page session asks for (admin) at the provider; also reads the audit trail.
CLIENTS = [{"client_id": "auditor", "client_secret": "auditor-secret", "scopes": "admin dicomweb.read"}]


@dataclass
class Stack:
    provider: OidcProvider
    pacsbridge: RunningServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with oidc_provider(CLIENTS, viewer_redirect_uris=[base + "/auth/callback"]) as provider:
        settings = Settings(data_dir=tmp_path_factory.mktemp("pages-oidc") / "data", storage={"fsync": False},
                            port=port, auth={"mode": "oidc", "issuer": provider.issuer,
                                             "web": {"client_id": VIEWER_CLIENT_ID}})
        with serve(settings, port=port) as pacsbridge:
            yield Stack(provider, pacsbridge)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(30_000)
    tab = context.new_page()
    # The development login page's stylesheet imports a web font: no network needed (or wanted) here.
    tab.route("https://fonts.googleapis.com/**", lambda route: route.abort())
    yield tab
    context.close()


def sign_in_at_provider(page: Any, provider: OidcProvider) -> None:
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    login_page = page.url
    page.locator('input[name="login"]').fill("alice")
    page.locator('input[name="password"]').fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/interaction/") and url != login_page)
    page.get_by_role("button", name="Continue").click()  # consent to openid profile admin


def audit_events(stack: Stack, door: str) -> list[dict[str, Any]]:
    token = stack.provider.token("auditor", "admin")
    r = httpx.get(stack.pacsbridge.url + "/admin/audit", params={"door": door},
                  headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return list(r.json())


def test_sign_in_at_the_provider_opens_the_audit_page_and_sign_out_ends_it(page: Any, stack: Stack) -> None:
    base, provider = stack.pacsbridge.url, stack.provider
    authorize: list[dict[str, str]] = []
    page.on("request", lambda request: authorize.append(dict(parse_qsl(urlsplit(request.url).query)))
            if request.url.startswith(provider.authorization_endpoint + "?") else None)

    page.goto(base + "/ui/audit?door=web")
    sign_in_at_provider(page, provider)
    page.wait_for_url(base + "/ui/audit?door=web")
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(page.get_by_test_id("signed-in-as")).to_have_text("Test User")  # the ID token's name claim

    assert len(authorize) == 1, authorize
    sent = authorize[0]
    assert sent["client_id"] == VIEWER_CLIENT_ID and sent["response_type"] == "code"
    assert sent["redirect_uri"] == base + "/auth/callback"
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert set(sent["scope"].split()) == {"openid", "profile", "admin"}
    assert len(sent["state"]) >= 32 and len(sent["nonce"]) >= 32

    logins = [e for e in audit_events(stack, "web") if e["action"] == "login"]
    assert any(e["subject"] == "test-user" and e["status"] == 303 and e["client_id"] == VIEWER_CLIENT_ID
               for e in logins), logins

    page.get_by_role("button", name="Sign out").click()
    # RP-initiated logout: the provider asks, with the ID token as the hint of who is signing out.
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/session/end?"))
    assert dict(parse_qsl(urlsplit(page.url).query))["client_id"] == VIEWER_CLIENT_ID
    assert "pb_session" not in {c["name"] for c in page.context.cookies(base)}
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/session/end/success"))

    page.goto(base + "/ui/")  # signed out at both: the provider asks for a login again
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    expect(page.locator('input[name="login"]')).to_be_visible()


def test_a_callback_that_was_not_started_here_is_refused(stack: Stack) -> None:
    r = httpx.get(stack.pacsbridge.url + "/auth/callback", params={"code": "stolen-code", "state": "guessed"})
    assert r.status_code == 400
    assert "Sign-in expired" in r.text
    assert "pb_session" not in r.headers.get("Set-Cookie", "")
