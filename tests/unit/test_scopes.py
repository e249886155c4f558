"""SMART v2 and door scopes, and the principal a token's claims make (domain/scopes.py, domain/access.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.domain.access import principal_from_claims
from pacsbridge.domain.scopes import (
    ADMIN,
    DICOMWEB_READ,
    DICOMWEB_SEARCH,
    DICOMWEB_WRITE,
    grants_of,
    narrow,
    parse_smart,
)


def allows(scopes: str, need: object) -> bool:
    return grants_of(frozenset(scopes.split())).allows(need)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scope", "perms"), [
    ("patient/ImagingStudy.rs", "rs"), ("user/ImagingStudy.cruds", "cruds"), ("system/*.r", "r"),
    ("system/ImagingStudy.read", "rs"), ("system/ImagingStudy.write", "cud"), ("user/*.*", "cruds"),
])
def test_smart_scopes_and_v1_aliases(scope: str, perms: str) -> None:
    parsed = parse_smart(scope)
    assert parsed is not None and parsed.permissions == frozenset(perms)


@pytest.mark.parametrize("scope", [
    "system/ImagingStudy.sr", "system/ImagingStudy.x", "system/ImagingStudy.rr", "system/ImagingStudy.",
    "clinic/ImagingStudy.rs", "system/Imaging-Study.rs", "system/ImagingStudy.rs?category=x", "ImagingStudy.rs",
])
def test_malformed_scopes_grant_nothing(scope: str) -> None:
    assert parse_smart(scope) is None
    for need in (DICOMWEB_READ, DICOMWEB_SEARCH, DICOMWEB_WRITE, ADMIN):
        assert not allows(scope, need)


def test_what_each_door_need_accepts() -> None:
    assert allows("dicomweb.read", DICOMWEB_READ) and allows("dicomweb.read", DICOMWEB_SEARCH)
    assert not allows("dicomweb.read", DICOMWEB_WRITE)
    assert allows("system/ImagingStudy.rs", DICOMWEB_SEARCH) and allows("user/ImagingStudy.r", DICOMWEB_READ)
    assert not allows("user/ImagingStudy.r", DICOMWEB_SEARCH)
    assert allows("system/ImagingStudy.c", DICOMWEB_WRITE) and allows("system/*.cruds", DICOMWEB_WRITE)
    assert not allows("system/ImagingStudy.write", DICOMWEB_READ)  # write never implies read
    assert not allows("system/Patient.rs", DICOMWEB_READ)
    assert allows("admin", ADMIN) and not allows("system/*.cruds", ADMIN)
    assert not allows("", DICOMWEB_READ)


@given(st.lists(st.text(alphabet="abcdrsuwxyz/.*?=ImagingStudyPatient", max_size=30), max_size=5))
def test_arbitrary_scope_strings_never_widen(scopes: list[str]) -> None:
    """Whatever a token carries, a need is met only by its door scope or a well-formed SMART scope."""
    grants = grants_of(frozenset(scopes))
    for need in (DICOMWEB_READ, DICOMWEB_SEARCH, DICOMWEB_WRITE, ADMIN):
        expected = need.scope in scopes or any(
            (p := parse_smart(s)) is not None and need.resource is not None
            and p.resource in (need.resource, "*") and set(need.permissions) <= p.permissions for s in scopes)
        assert grants.allows(need) == expected


def test_narrow_keeps_only_what_the_client_may_have() -> None:
    allowed = frozenset({"dicomweb.read", "system/*.rs"})
    assert narrow(frozenset({"dicomweb.read", "dicomweb.write"}), allowed) == {"dicomweb.read"}
    assert narrow(frozenset({"system/ImagingStudy.rs", "system/ImagingStudy.r"}), allowed) == {
        "system/ImagingStudy.rs", "system/ImagingStudy.r"}
    assert narrow(frozenset({"system/ImagingStudy.cruds", "user/ImagingStudy.rs"}), allowed) == set()


def test_principal_from_claims() -> None:
    p = principal_from_claims({"sub": "u1", "client_id": "viewer", "scope": "dicomweb.read openid",
                               "patient": "PAT-7"})
    assert (p.subject, p.client_id, p.patient_ids) == ("u1", "viewer", frozenset({"PAT-7"}))
    assert p.allows(DICOMWEB_READ) and not p.allows(DICOMWEB_WRITE)
    entra = principal_from_claims({"sub": "s", "azp": "app", "scp": ["dicomweb.read", "bad scope"]})
    assert entra.client_id == "app" and entra.scopes == {"dicomweb.read"} and entra.patient_ids is None
    assert principal_from_claims({"sub": "s", "mrn": "X"}, patient_claim="mrn").patient_ids == {"X"}


def test_patient_scopes_without_a_patient_see_nobody() -> None:
    p = principal_from_claims({"sub": "s", "scope": "patient/ImagingStudy.rs"})
    assert p.patient_ids == frozenset() and not p.sees_patient("ANY")
    mixed = principal_from_claims({"sub": "s", "scope": "patient/ImagingStudy.rs dicomweb.read"})
    assert mixed.patient_ids is None


def test_a_star_scope_grants_nothing() -> None:
    """Found by the property test above: ``*`` once meant the operator's grant, so any token carrying
    it was let in everywhere. Only the operator principal (opened routes) is allowed everything."""
    p = principal_from_claims({"sub": "s", "scope": "* admin*"})
    assert not any(p.allows(n) for n in (DICOMWEB_READ, DICOMWEB_SEARCH, DICOMWEB_WRITE, ADMIN))
