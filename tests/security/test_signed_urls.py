"""Signed URLs: a link a browser opens without headers, bound to one path and query, GET only,
short-lived, carrying its signer's scopes and patient context, never a token."""

from __future__ import annotations

import time

import httpx

from .conftest import Closed


def signed(closed: Closed, token: str, target: str, expires_in: int = 60) -> httpx.Response:
    return httpx.post(closed.base + "/auth/signed-url", json={"path": target, "expires_in": expires_in},
                      headers={"Authorization": f"Bearer {token}"})


def wado_uri(closed: Closed, key: str, content_type: str = "image/jpeg") -> str:
    s = closed.studies[key]
    return (f"/dicomweb/wado?requestType=WADO&studyUID={s.study_uid}&seriesUID={s.series_uid}"
            f"&objectUID={s.sop_uid}&contentType={content_type}")


def test_a_signed_wado_uri_link_opens_without_a_token(closed: Closed) -> None:
    token = closed.token("reader")
    answer = signed(closed, token, wado_uri(closed, "A"))
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    url = answer.json()["url"]
    assert token not in url and answer.json()["expires_in"] == 60
    image = httpx.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"
    assert httpx.get(url.split("&pb-sig=")[0]).status_code == 401  # the link without its signature


def test_a_signature_binds_path_query_and_method(closed: Closed) -> None:
    url = signed(closed, closed.token("reader"), wado_uri(closed, "A")).json()["url"]
    other = url.replace(closed.studies["A"].sop_uid, closed.studies["B"].sop_uid)
    assert httpx.get(other).status_code == 401
    assert httpx.get(url.replace("contentType=image/jpeg", "contentType=application/dicom")).status_code == 401
    assert httpx.get(url.replace("&pb-sig=", "&rows=64&pb-sig=")).status_code == 401
    moved = url.replace("/dicomweb/wado?", "/dicomweb/studies?")
    assert httpx.get(moved).status_code == 401
    posted = httpx.post(url, content=b"--b--", headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert posted.status_code == 401
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert httpx.get(tampered).status_code == 401


def test_signed_links_expire_and_are_short_lived(closed: Closed) -> None:
    token = closed.token("reader")
    assert signed(closed, token, wado_uri(closed, "A"), expires_in=3600).status_code == 400
    url = signed(closed, token, wado_uri(closed, "A"), expires_in=1).json()["url"]
    assert httpx.get(url).status_code == 200
    time.sleep(3.5)  # one second of life and two of leeway
    assert httpx.get(url).status_code == 401


def test_a_signed_link_keeps_its_signers_patient_context(closed: Closed) -> None:
    b_only = closed.mint(patient=closed.studies["B"].patient_id)
    to_a = signed(closed, b_only, wado_uri(closed, "A", "application/dicom")).json()["url"]
    to_b = signed(closed, b_only, wado_uri(closed, "B", "application/dicom")).json()["url"]
    refused = httpx.get(to_a)
    assert refused.status_code == 404 and closed.studies["A"].patient_id not in refused.text
    assert httpx.get(to_b).status_code == 200


def test_only_readers_may_sign(closed: Closed) -> None:
    assert signed(closed, closed.token("admin"), wado_uri(closed, "A")).status_code == 403
    assert httpx.post(closed.base + "/auth/signed-url", json={"path": wado_uri(closed, "A")}).status_code == 401
