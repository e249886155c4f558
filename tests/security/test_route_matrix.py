"""Every route × every kind of token, with tokens of the built-in issuer and of a real OpenID provider
(npm oidc-provider): the status is the one RFC 6750 and the scope rules give, and no answer to a
refused or out-of-context request carries the other patient's data.

Routes are read from the built app, so a route added later is walked too; one that is neither guarded
nor public fails ``test_every_route_is_guarded_or_public``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import ECKey
from starlette.routing import BaseRoute, Mount

from pacsbridge.adapters.auth.middleware import GuardedRoute, PublicRoute
from pacsbridge.adapters.web.pages import PageRoute

from .conftest import Closed

PUBLIC = {"/health", "/.well-known/openid-configuration", "/.well-known/oauth-authorization-server",
          "/.well-known/smart-configuration", "/oauth/jwks", "/oauth/token",
          # signing in to the HTML pages, and their stylesheet
          "/", "/ui", "/login", "/auth/callback", "/logout", "/ui/static/pacsbridge.css",
          # the FHIR door's CapabilityStatement (discovery)
          "/fhir/metadata"}


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, BaseRoute]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from walk(list(route.routes), prefix + route.path)
        else:
            yield prefix + getattr(route, "path", "?"), route


def test_every_route_is_guarded_or_public(closed: Closed) -> None:
    found = list(walk(list(closed.server.app.routes)))
    assert len(found) > 25
    for path, route in found:
        assert isinstance(route, GuardedRoute | PublicRoute | PageRoute), f"{path} is neither guarded nor public"
        if isinstance(route, PublicRoute):
            assert path in PUBLIC, f"{path} is public but not in the reviewed list of public routes"


def concrete(path: str, study: object) -> str:
    return (path.replace("{study}", study.study_uid).replace("{series}", study.series_uid)  # type: ignore[attr-defined]
            .replace("{instance}", study.sop_uid).replace("{frames}", "1").replace("{frame}", "1")  # type: ignore[attr-defined]
            .replace("{path:path}", "7FE00010").replace("{id}", "x").replace("{vid}", "1")
            .replace("{rest:path}", "no-such-thing"))


def guarded(closed: Closed) -> list[tuple[str, str, GuardedRoute]]:
    out = []
    for path, route in walk(list(closed.server.app.routes)):
        if isinstance(route, GuardedRoute):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    out.append((method, path, route))
    return out


def call(closed: Closed, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Accept": "*/*"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = closed.base + concrete(path, closed.studies["A"])
    if method == "POST":
        headers["Content-Type"] = 'multipart/related; type="application/dicom"; boundary=b'
        return httpx.post(url, content=b"--b--\r\n", headers=headers)
    if method in ("PUT", "DELETE"):
        headers["Content-Type"] = "application/fhir+json"
        return httpx.request(method, url, content=b"{}", headers=headers)
    return httpx.get(url, headers=headers)


def tokens(closed: Closed) -> dict[str, str | None]:
    now = int(time.time())
    stranger = ECKey.generate_key("P-256", private=True)
    kid, _key = closed.signing_key()
    return {
        "none": None,
        "expired": closed.mint(scope="dicomweb.read dicomweb.write", iat=now - 900, nbf=now - 900, exp=now - 600),
        "not yet valid": closed.mint(scope="dicomweb.read dicomweb.write", nbf=now + 600),
        "wrong audience": closed.mint(scope="dicomweb.read dicomweb.write", aud="another-api"),
        "wrong issuer": closed.mint(scope="dicomweb.read dicomweb.write", iss="https://idp.example"),
        "bad signature": closed.mint(key=stranger, kid=kid, scope="dicomweb.read dicomweb.write"),
        "unknown key": closed.mint(key=stranger, kid="no-such-kid", scope="dicomweb.read dicomweb.write"),
        "garbage": "not.a.jwt",
    }


REFUSED = ["none", "expired", "not yet valid", "wrong audience", "wrong issuer", "bad signature", "unknown key",
           "garbage"]


def test_refused_tokens_get_401_with_the_rfc6750_challenge(any_closed: Closed) -> None:
    closed = any_closed
    minted = tokens(closed)
    secret_values = [v for s in closed.studies.values() for v in (s.patient_id, s.patient_name)]
    for method, path, _route in guarded(closed):
        for case in REFUSED:
            r = call(closed, method, path, minted[case])
            assert r.status_code == 401, (case, method, path, r.status_code, r.text)
            challenge = r.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="pacsbridge"')
            assert ('error="invalid_token"' in challenge) == (case != "none"), (case, challenge)
            assert not any(v in r.text for v in secret_values)
            if minted[case]:
                assert minted[case] not in r.text  # never echoed


def test_missing_scope_is_403_and_the_right_scope_passes(any_closed: Closed) -> None:
    closed = any_closed
    token = {c: closed.token(c) for c in ("admin", "reader", "writer", "smart", "orders", "links")}
    for method, path, route in guarded(closed):
        need = route.need.scope
        if route.need.anyone:  # the FHIR door's 404/405 for paths it does not serve: any valid token
            assert call(closed, method, path, token["reader"]).status_code in (404, 405), (method, path)
            continue
        wrong = {"admin": ["reader", "writer"], "dicomweb.write": ["reader", "admin"],
                 "orders.read": ["reader", "admin"], "orders.write": ["reader", "admin"],
                 "links.review": ["orders", "admin"]}.get(need, ["admin"])
        right = {"admin": "admin", "dicomweb.write": "writer", "orders.read": "orders",
                 "orders.write": "orders", "links.review": "links"}.get(need, "reader")
        for client in wrong:
            r = call(closed, method, path, token[client])
            assert r.status_code == 403, (client, method, path, r.status_code)
            assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
            assert f'scope="{route.need.describe()}"' in r.headers["WWW-Authenticate"]
            assert "PAT-" not in r.text
        ok = call(closed, method, path, token[right])
        assert ok.status_code not in (401, 403), (method, path, ok.status_code, ok.text)
        if need == "dicomweb.read":  # SMART Imaging Access: ImagingStudy.rs reads images too
            assert call(closed, method, path, token["smart"]).status_code not in (401, 403), (method, path)


def test_another_patients_context_sees_and_leaks_nothing(any_closed: Closed) -> None:
    """A token bound to patient B, asking for patient A's study on every route."""
    closed = any_closed
    b_only = closed.mint(scope="dicomweb.read dicomweb.write", patient=closed.studies["B"].patient_id)
    a = closed.studies["A"]
    for method, path, route in guarded(closed):
        if not route.need.scope.startswith("dicomweb."):
            continue  # the audit trail and orders are for principals without patient context (403 here)
        r = call(closed, method, path, b_only)
        assert r.status_code not in (200, 401, 403) or path in SEARCH_PATHS, (
            method, path, r.status_code)
        assert a.patient_id not in r.text and a.patient_name not in r.text, (method, path)


SEARCH_PATHS = {"/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances", "/fhir/ImagingStudy",
                "/fhir/ImagingStudy/_search", "/fhir/Endpoint", "/fhir/Endpoint/_search"}


@pytest.mark.parametrize("path", sorted(p for p in SEARCH_PATHS if p.startswith("/dicomweb")))
def test_searches_in_patient_context_return_only_that_patient(any_closed: Closed, path: str) -> None:
    closed = any_closed
    b = closed.studies["B"]
    r = httpx.get(closed.base + path, headers={
        "Authorization": "Bearer " + closed.mint(patient=b.patient_id), "Accept": "application/dicom+json"})
    assert r.status_code == 200
    assert {row["00100020"]["Value"][0] for row in r.json()} == {b.patient_id}
    everyone = httpx.get(closed.base + path, headers={"Authorization": "Bearer " + closed.token("reader"),
                                                       "Accept": "application/dicom+json"})
    assert {row["00100020"]["Value"][0] for row in everyone.json()} == {s.patient_id for s in closed.studies.values()}


def test_every_page_sends_a_browser_without_a_session_to_sign_in_whatever_token_it_brings(closed: Closed) -> None:
    """Pages read the session cookie only: a bearer token, even an admin's, is not a way in."""
    pages = [(path, route) for path, route in walk(list(closed.server.app.routes)) if isinstance(route, PageRoute)]
    assert {"/ui/", "/ui/audit", "/ui/links", "/ui/links/{study}"} <= {path for path, _ in pages}
    admin = closed.token("admin")
    for path, _route in pages:
        for headers in ({}, {"Authorization": f"Bearer {admin}"}):
            r = httpx.get(closed.base + path, headers=headers)
            assert r.status_code == 303, (path, headers.keys(), r.status_code)
            assert r.headers["Location"].startswith("/login?next="), r.headers["Location"]
            assert "PAT-" not in r.text


def test_upstream_roots_are_guarded_like_the_main_root(tmp_path: object) -> None:
    """Each upstream's own DICOMweb root is walked by the same rules; no token: 401, before any upstream
    is asked (the upstream here does not even exist)."""
    from pathlib import Path

    from pacsbridge.settings import Settings

    from ..support.servers import free_port, serve

    assert isinstance(tmp_path, Path)
    settings = Settings(data_dir=tmp_path / "data", dimse={"enabled": False}, upstreams=[
        {"name": "far", "kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}])
    with serve(settings) as server:
        paths = [path for path, route in walk(list(server.app.routes)) if path.startswith("/upstreams/far/dicomweb")]
        assert len(paths) > 15
        assert all(isinstance(route, GuardedRoute) for path, route in walk(list(server.app.routes))
                   if path.startswith("/upstreams/"))
        for resource in ("/studies", "/series", "/instances"):
            answer = httpx.get(server.url + "/upstreams/far/dicomweb" + resource)
            assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
