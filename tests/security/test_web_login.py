"""Signing in to the HTML pages as a built-in user (no identity provider): the form, the session
cookie and what it may and may not open, CSRF, locking, signing out, and the audit of each sign-in.

The users are made as an operator makes them (``PasswordLogin.add``, what ``pacsbridge users add``
calls); the browser is httpx with a cookie jar, following no redirects so each step is visible.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import anyio
import httpx
import pytest

from pacsbridge.app import build_app
from pacsbridge.settings import Settings

from ..support.servers import free_port, serve
from .conftest import Closed

PASSWORD = "a long enough test password"
ADMIN, READER, BOUND = "ada", "rita", "pat"


@pytest.fixture(scope="module", autouse=True)
def users(closed: Closed) -> None:
    passwords = closed.server.app.state.services.passwords

    async def add() -> None:
        await passwords.add(ADMIN, PASSWORD, ["admin", "dicomweb.read"], display_name="Ada Admin")
        await passwords.add(READER, PASSWORD, ["dicomweb.read"])
        await passwords.add(BOUND, PASSWORD, ["admin"], patient_ids=frozenset({closed.studies["B"].patient_id}))

    anyio.run(add)


@pytest.fixture
def browser(closed: Closed) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=closed.base, follow_redirects=False) as client:
        yield client


def form_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def sign_in(browser: httpx.Client, username: str, password: str = PASSWORD, next_page: str = "/ui/"
            ) -> httpx.Response:
    page = browser.get("/login", params={"next": next_page})
    assert page.status_code == 200
    return browser.post("/login", data={"username": username, "password": password, "csrf": form_token(page),
                                        "next": next_page})


def events(closed: Closed, door: str) -> list[dict[str, object]]:
    r = httpx.get(closed.base + "/admin/audit", params={"door": door, "_count": 1000},
                  headers={"Authorization": "Bearer " + closed.token("admin")})
    assert r.status_code == 200, r.text
    return list(r.json())


def test_a_page_sends_the_browser_to_sign_in_and_back(browser: httpx.Client) -> None:
    for entry in ("/", "/ui"):
        assert browser.get(entry).headers["Location"] == "/ui/"
    first = browser.get("/ui/audit", params={"door": "dicomweb"})
    assert first.status_code == 303
    next_page = unquote(first.headers["Location"].split("next=", 1)[1])
    assert next_page == "/ui/audit?door=dicomweb"

    signed_in = sign_in(browser, ADMIN, next_page=next_page)
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == next_page
    cookie = signed_in.headers["Set-Cookie"]
    assert cookie.startswith("pb_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie, cookie

    page = browser.get(next_page)
    assert page.status_code == 200
    assert "Audit trail" in page.text and "Ada Admin" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_the_audit_page_shows_who_read_which_study(closed: Closed, browser: httpx.Client) -> None:
    a = closed.studies["A"]
    token = closed.token("reader")
    assert httpx.get(f"{closed.server.dicomweb}/studies/{a.study_uid}/metadata",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 200
    sign_in(browser, ADMIN)
    page = browser.get("/ui/audit", params={"study": a.study_uid})
    assert page.status_code == 200
    rows = re.findall(r"<tr class=\"(ok|failed)\">(.*?)</tr>", page.text, re.S)
    assert any("/metadata" in row and a.patient_id in row and ">reader<" in row for _, row in rows), page.text
    exported = browser.get("/ui/audit/export", params={"study": a.study_uid})
    assert exported.status_code == 200 and exported.headers["Content-Type"].startswith("application/fhir+json")
    bundle = exported.json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] >= 1


def test_a_session_without_the_scope_or_bound_to_a_patient_gets_403_not_the_trail(
        closed: Closed, browser: httpx.Client) -> None:
    for user in (READER, BOUND):
        browser.cookies.clear()
        assert sign_in(browser, user).status_code == 303
        assert browser.get("/ui/").status_code == 200
        refused = browser.get("/ui/audit")
        assert refused.status_code == 403, user
        assert closed.studies["A"].patient_id not in refused.text


def test_the_session_cookie_opens_no_api_route(closed: Closed, browser: httpx.Client) -> None:
    """A cookie is not a credential outside the pages, so a cross-site request cannot ride on it."""
    sign_in(browser, ADMIN)
    assert browser.get("/ui/").status_code == 200
    for path in ("/admin/audit", "/dicomweb/studies", f"/dicomweb/studies/{closed.studies['A'].study_uid}"):
        r = browser.get(path)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="pacsbridge"'


def test_wrong_password_unknown_user_and_stale_form_are_refused_alike_and_audited(
        closed: Closed, browser: httpx.Client) -> None:
    wrong = sign_in(browser, READER, "not the password at all")
    unknown = sign_in(browser, "nobody-here", PASSWORD)
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert "pb_session" not in r.headers.get("Set-Cookie", "")
        assert "user name or password is wrong" in r.text
    assert browser.get("/ui/").status_code == 303  # still not signed in

    stale = browser.post("/login", data={"username": READER, "password": PASSWORD, "csrf": "forged"})
    assert stale.status_code == 400 and "pb_session" not in stale.headers.get("Set-Cookie", "")

    logins = [e for e in events(closed, "web") if e["action"] == "login"]
    details = {e["detail"] for e in logins if e["status"] >= 400}
    assert {"refused: wrong password", "refused: unknown user", "refused: stale or cross-site form"} <= details
    # A refused sign-in of a known user names the user (which account is being guessed); an unknown name does not.
    assert {e["subject"] for e in logins if e["detail"] == "refused: wrong password"} >= {f"user:{READER}"}
    assert {e["subject"] for e in logins if e["detail"] == "refused: unknown user"} == {"anonymous"}
    assert any(e["status"] == 303 and e["subject"] == f"user:{ADMIN}" for e in logins)
    assert not any(PASSWORD in str(e) or "not the password" in str(e) for e in logins)


def test_repeated_failures_lock_the_user_even_against_the_right_password(closed: Closed) -> None:
    passwords = closed.server.app.state.services.passwords
    anyio.run(lambda: passwords.add("locky", PASSWORD, ["dicomweb.read"]))
    lock_after = closed.server.settings.auth.web.lock_after
    with httpx.Client(base_url=closed.base) as browser:
        for _ in range(lock_after):
            assert sign_in(browser, "locky", "wrong wrong wrong").status_code == 401
        assert sign_in(browser, "locky").status_code == 401  # locked now
    anyio.run(lambda: passwords.set_password("locky", PASSWORD + "!"))  # the operator resets it: lock lifted
    with httpx.Client(base_url=closed.base, follow_redirects=False) as browser:
        assert sign_in(browser, "locky", PASSWORD + "!").status_code == 303


def test_sign_out_needs_the_forms_token_and_ends_the_session(browser: httpx.Client) -> None:
    sign_in(browser, ADMIN)
    home = browser.get("/ui/")
    assert home.status_code == 200
    assert browser.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert browser.get("/ui/").status_code == 200  # a forged sign-out does nothing
    key = browser.cookies["pb_session"]
    out = browser.post("/logout", data={"csrf": form_token(home)})
    assert out.status_code == 303 and out.headers["Location"] == "/login?signed_out=1"
    browser.cookies.set("pb_session", key)  # a copy of the old cookie opens nothing
    assert browser.get("/ui/").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "ui"])
def test_sign_in_never_sends_the_browser_off_site(browser: httpx.Client, target: str) -> None:
    r = sign_in(browser, ADMIN, next_page=target)
    assert r.status_code == 303 and r.headers["Location"] == "/ui/"


def test_the_database_keeps_hashes_not_session_keys_or_passwords(closed: Closed, browser: httpx.Client) -> None:
    sign_in(browser, ADMIN)
    key = browser.cookies["pb_session"]
    database = closed.server.settings.data_dir / "index.sqlite"
    with sqlite3.connect(database) as db:
        dumped = "\n".join(db.iterdump())
    assert key not in dumped and PASSWORD not in dumped
    assert "scrypt$" in dumped


def test_signing_in_again_ends_the_browsers_earlier_session(browser: httpx.Client) -> None:
    sign_in(browser, READER)
    first = browser.cookies["pb_session"]
    # Signed in, /login forwards to the pages; a form still open from before is posted (its token pair).
    assert browser.get("/login").status_code == 303
    browser.cookies.set("pb_login", "an-earlier-form-token")
    again = browser.post("/login", data={"username": ADMIN, "password": PASSWORD, "csrf": "an-earlier-form-token"})
    assert again.status_code == 303
    assert browser.get("/ui/").status_code == 200
    browser.cookies.set("pb_session", first)
    assert browser.get("/ui/").status_code == 303


def test_sign_ins_export_as_fhir_user_authentication_events(closed: Closed, browser: httpx.Client) -> None:
    sign_in(browser, READER, "not the password at all")
    sign_in(browser, ADMIN)
    bundle = browser.get("/ui/audit/export", params={"door": "web"}).json()
    logins = [e["resource"] for e in bundle["entry"] if e["resource"]["type"]["code"] == "110114"]
    assert {(r["subtype"][0]["code"], r["outcome"]) for r in logins} >= {("110122", "0"), ("110122", "4")}
    refused = [r for r in logins if r["outcome"] == "4"]
    assert any("refused: wrong password" in ent.get("description", "") for r in refused for ent in r["entity"])


def test_pages_are_never_open_to_other_origins_even_with_credentialed_cors(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={"fsync": False},
                        cors={"allow_origins": ["*"], "allow_credentials": True})
    origin = {"Origin": "https://intranet.example"}
    with serve(settings) as server:
        api = httpx.get(server.url + "/dicomweb/studies", headers=origin)
        assert api.headers.get("Access-Control-Allow-Origin") == "https://intranet.example"  # CORS is on
        for path in ("/ui/", "/login", "/auth/callback"):
            page = httpx.get(server.url + path, headers=origin)
            assert "Access-Control-Allow-Origin" not in page.headers, path
            assert "Access-Control-Allow-Credentials" not in page.headers, path


def test_sign_in_at_a_provider_that_is_not_set_up_or_not_reachable_says_so(tmp_path: Path) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    unregistered = Settings(data_dir=tmp_path / "a", storage={"fsync": False}, auth={"mode": "oidc", "issuer": gone})
    with serve(unregistered) as server:
        r = httpx.get(server.url + "/login")
        assert r.status_code == 503 and "auth.web.client_id" in r.text
        assert httpx.post(server.url + "/login", data={"username": "x", "password": "y"}).status_code == 405
    unreachable = Settings(data_dir=tmp_path / "b", storage={"fsync": False},
                           auth={"mode": "oidc", "issuer": gone, "web": {"client_id": "viewer"}})
    with serve(unreachable) as server:
        r = httpx.get(server.url + "/login")
        assert r.status_code == 503 and "identity provider cannot be reached" in r.text


def test_a_provider_sign_in_on_a_wildcard_address_needs_public_url(tmp_path: Path) -> None:
    auth = {"mode": "oidc", "issuer": "http://127.0.0.1:9", "web": {"client_id": "viewer"}}
    with pytest.raises(ValueError, match="public_url"):
        build_app(Settings(data_dir=tmp_path / "a", host="0.0.0.0", auth=auth))
    app = build_app(Settings(data_dir=tmp_path / "b", host="0.0.0.0", public_url="https://pacs.example", auth=auth))
    assert app is not None
