"""OHIF 3.13 signs the user in at a real OpenID provider and reads pacsbridge with the access token.

pacsbridge checks the provider's JWT access tokens (``auth.mode: oidc``); OHIF (another origin, cross-origin
isolated) signs in with authorization code + PKCE as the provider's public client ``viewer`` through the
provider's development login and consent pages, then sends ``Authorization: Bearer`` on every QIDO-RS and
WADO-RS request. See: docs/ohif.md, "Signing in (OIDC) and bearer tokens".
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from playwright.sync_api import expect
from pydicom.uid import generate_uid

from pacsbridge.settings import Settings
from pacsbridge.synthetic import StudySpec, make_instance, study_specs

from ..support.http import stow_body
from ..support.ohif import Session, Stack, oidc_client, serve_ohif
from ..support.oidc import TEST_ACCOUNT, VIEWER_CLIENT_ID, OidcProvider, oidc_provider
from ..support.servers import serve
from .conftest import _require_browser
from .test_ohif import assert_viewer_shows, rows

pytestmark = pytest.mark.browser

CLIENTS = [
    # Registers the scope dicomweb.read at the provider, so that the viewer may ask for it.
    {"client_id": "reader", "client_secret": "reader-secret", "scopes": "dicomweb.read"},
    # Loads the studies.
    {"client_id": "writer", "client_secret": "writer-secret", "scopes": "dicomweb.read dicomweb.write"},
]
VIEWER_SCOPE = "openid dicomweb.read"
NAMES = ["Kowalski^Anna", "Nakamura^Ken"]
SHOWN = ["Kowalski, Anna", "Nakamura, Ken"]
REALM = 'Bearer realm="pacsbridge"'


@dataclasses.dataclass(frozen=True)
class SignedIn:
    """The browser's view of the sign-in: the authorization requests OHIF sent to the provider, the pages
    the tab showed, and every DICOMweb request with the Authorization header it carried."""

    authorize: list[dict[str, str]]
    pages: list[str]
    authorizations: list[tuple[str, str | None]]


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWS compact token, unverified (pacsbridge verifies it; the test reads it)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def stow_study(dicomweb: str, spec: StudySpec, token: str) -> None:
    series_uid = generate_uid()
    instances = [make_instance(spec, series_uid, 1, n) for n in range(1, spec.instances_per_series + 1)]
    body, content_type = stow_body(instances)
    response = httpx.post(f"{dicomweb}/studies", content=body, timeout=60,
                          headers={"Content-Type": content_type, "Accept": "application/dicom+json",
                                   "Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def ohif() -> Iterator[Any]:
    _require_browser()
    with serve_ohif() as server:
        yield server


@pytest.fixture(scope="module")
def provider(ohif: Any) -> Iterator[OidcProvider]:
    with oidc_provider(CLIENTS, token_ttl=600, viewer_redirect_uris=[f"{ohif.origin}/callback"]) as running:
        yield running


@pytest.fixture(scope="module")
def stack(ohif: Any, provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """This module's stack (overrides conftest's, so conftest's ``session`` uses it): pacsbridge checking
    the provider's tokens, with two studies, and OHIF signing in at the provider."""
    specs = tuple(
        dataclasses.replace(spec, patient_name=name)
        for spec, name in zip(study_specs(2, seed=47, modality="CT", series=1, instances_per_series=10),
                              NAMES, strict=True)
    )
    settings = Settings(data_dir=tmp_path_factory.mktemp("ohif-oidc") / "data", storage={"fsync": False},
                        cors={"allow_origins": [ohif.origin]},
                        auth={"mode": "oidc", "issuer": provider.issuer})
    with serve(settings) as pacsbridge:
        ohif.point_at(pacsbridge.dicomweb, oidc=oidc_client(provider.issuer, VIEWER_CLIENT_ID, VIEWER_SCOPE))
        token = provider.token("writer")
        for spec in specs:
            stow_study(pacsbridge.dicomweb, spec, token)
        yield Stack(pacsbridge, ohif, specs)


def sign_in(session: Session, stack: Stack, provider: OidcProvider) -> SignedIn:
    """Opens OHIF, which sends the browser to the provider; logs in, consents, and is back on the list."""
    page = session.page
    signed_in = SignedIn([], [], [])
    root, authorization_endpoint = stack.pacsbridge.dicomweb, provider.authorization_endpoint

    def seen(request: Any) -> None:
        if request.url.startswith(root):
            signed_in.authorizations.append((request.url, request.headers.get("authorization")))
        elif request.url.startswith(authorization_endpoint + "?"):
            signed_in.authorize.append(dict(parse_qsl(urlsplit(request.url).query)))

    page.on("request", seen)
    page.on("framenavigated", lambda frame: signed_in.pages.append(frame.url) if frame == page.main_frame else None)
    # The development login page's stylesheet imports a web font: no network needed (or wanted) here.
    page.route("https://fonts.googleapis.com/**", lambda route: route.abort())

    page.goto(stack.ohif.url + "/")
    page.wait_for_url(f"{provider.issuer}/interaction/**")
    assert not signed_in.authorizations, "OHIF asked pacsbridge before signing in: " + session.traffic.report()
    login_page = page.url
    login = page.locator('input[name="login"]')
    expect(login).to_be_visible()
    login.fill("alice")
    page.locator('input[name="password"]').fill("any password")
    page.get_by_role("button", name="Sign-in").click()

    # A first sign-in asks for consent to the requested scopes (openid, dicomweb.read).
    page.wait_for_url(lambda url: url.startswith(provider.issuer + "/interaction/") and url != login_page)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{stack.ohif.url}/**")
    return signed_in


def test_signed_in_ohif_lists_and_renders_studies_with_a_bearer_token(
        session: Session, stack: Stack, provider: OidcProvider, tmp_path: Path) -> None:
    page = session.page
    signed_in = sign_in(session, stack, provider)

    expect(rows(page)).to_have_count(2, timeout=45_000)
    for shown in SHOWN:
        expect(page.get_by_text(shown)).to_be_visible()
    assert page.url.rstrip("/") == stack.ohif.url, page.url  # back from /callback to where it started
    # Authorization code + PKCE, as the public client, for the configured scopes, back to /callback.
    assert len(signed_in.authorize) == 1, signed_in.authorize
    request = signed_in.authorize[0]
    assert request["client_id"] == VIEWER_CLIENT_ID and request["response_type"] == "code", request
    assert request["code_challenge_method"] == "S256" and request["code_challenge"], request
    assert request["redirect_uri"] == f"{stack.ohif.origin}/callback", request
    assert request["scope"] == VIEWER_SCOPE, request
    assert any(url.startswith(f"{stack.ohif.origin}/callback?code=") for url in signed_in.pages), signed_in.pages
    page.screenshot(path=str(tmp_path / "study-list-signed-in.png"))

    # Every DICOMweb request carried the access token the provider issued to the viewer.
    assert signed_in.authorizations, "no DICOMweb request seen"
    tokens = {header for _url, header in signed_in.authorizations}
    assert None not in tokens, [url for url, header in signed_in.authorizations if header is None]
    assert len(tokens) == 1, tokens
    scheme, token = tokens.pop().split(" ", 1)
    assert scheme == "Bearer"
    claims = jwt_claims(token)
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert claims["iss"] == provider.issuer, claims
    assert "pacsbridge" in audience, claims
    assert "dicomweb.read" in claims["scope"].split(), claims
    assert claims["client_id"] == VIEWER_CLIENT_ID, claims
    assert claims["sub"] == TEST_ACCOUNT, claims
    assert not [e for e in session.traffic.exchanges if e.status == 401], session.traffic.report()

    # Open the first study from the list: series, metadata and frames come with the same token.
    study = stack.studies[0]
    page.get_by_text(SHOWN[0]).click()
    expect(page.get_by_text(study.patient_id)).to_be_visible()
    page.get_by_role("button", name="Basic Viewer").click()
    page.wait_for_url(f"**/viewer?*StudyInstanceUIDs={study.study_uid}*")
    assert_viewer_shows(session, stack, study.study_uid, tmp_path / "ohif-viewer-signed-in.png")
    frames = [(url, header) for url, header in signed_in.authorizations if "/frames/" in url]
    assert frames, session.traffic.report()
    assert all(header == f"Bearer {token}" for _url, header in signed_in.authorizations), [
        url for url, header in signed_in.authorizations if header != f"Bearer {token}"]
    assert not [e for e in session.traffic.exchanges if e.status == 401], session.traffic.report()


def test_without_a_token_pacsbridge_answers_401(browser: Any, stack: Stack) -> None:
    dicomweb = stack.pacsbridge.dicomweb
    response = httpx.get(f"{dicomweb}/studies", timeout=10)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith(REALM), response.headers

    # From the OHIF origin (cross-origin, isolated), without signing in: the 401 passes CORS, so a viewer
    # sees it as a 401 and not as a network error; an invented token fares no better.
    context = browser.new_context(service_workers="block")
    try:
        page = context.new_page()
        page.goto(stack.ohif.url + "/app-config.js")  # a document of the OHIF origin that does not sign in
        statuses = page.evaluate("""async url => {
          const plain = await fetch(url, {headers: {Accept: 'application/dicom+json'}});
          const forged = await fetch(url, {headers: {Accept: 'application/dicom+json',
                                                      Authorization: 'Bearer not-a-token'}});
          return [plain.status, forged.status];
        }""", f"{dicomweb}/studies")
        assert statuses == [401, 401]
    finally:
        context.close()
