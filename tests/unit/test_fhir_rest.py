"""FHIR R4 REST mechanics (http.html, bundle.html, operationoutcome.html): formats/fhir_rest.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.domain.errors import InvalidInput
from pacsbridge.formats.fhir_rest import (
    BundleEntry,
    HistoryEntry,
    Issue,
    Prefer,
    fhir_instant,
    history_bundle,
    http_date,
    operation_outcome,
    outcome_for_status,
    parse_if_match,
    parse_if_none_exist,
    parse_prefer,
    resource_location,
    searchset,
    weak_etag,
)

BASE = "https://proxy.example/fhir"
STUDY = {"resourceType": "ImagingStudy", "id": "s1", "status": "available"}
MOMENT = datetime(2024, 1, 31, 14, 25, 30, 123456, tzinfo=UTC)


# --- OperationOutcome --------------------------------------------------------------------------

def test_operation_outcome() -> None:
    outcome = operation_outcome([
        Issue("error", "invalid", "started: not a FHIR date", ("ImagingStudy.started",)),
        Issue("warning", "not-supported", "_summary is ignored"),
    ])
    assert outcome == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "started: not a FHIR date",
         "expression": ["ImagingStudy.started"]},
        {"severity": "warning", "code": "not-supported", "diagnostics": "_summary is ignored"},
    ]}


def test_empty_outcome_is_all_ok() -> None:
    assert operation_outcome([]) == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}]}


@pytest.mark.parametrize(("status", "code"), [
    (400, "invalid"), (401, "login"), (403, "forbidden"), (404, "not-found"), (405, "not-supported"),
    (406, "not-supported"), (415, "not-supported"), (409, "conflict"), (410, "deleted"), (412, "conflict"),
    (413, "too-long"), (422, "processing"), (429, "throttled"), (500, "exception"), (502, "transient"),
    (503, "transient"), (504, "timeout"), (418, "invalid"), (507, "exception"),
])
def test_outcome_for_status(status: int, code: str) -> None:
    outcome = outcome_for_status(status, "what went wrong")
    assert outcome["issue"] == [{"severity": "error", "code": code, "diagnostics": "what went wrong"}]


def test_outcome_for_success_is_information() -> None:
    assert outcome_for_status(200, "created")["issue"][0] == {
        "severity": "information", "code": "informational", "diagnostics": "created"}


# --- Bundles -----------------------------------------------------------------------------------

def test_searchset() -> None:
    endpoint = {"resourceType": "Endpoint", "id": "dicomweb"}
    bundle = searchset(
        [BundleEntry(f"{BASE}/ImagingStudy/s1", STUDY), BundleEntry(f"{BASE}/Endpoint/dicomweb", endpoint, "include"),
         BundleEntry(None, operation_outcome([Issue("warning", "processing", "x")]), "outcome")],
        f"{BASE}/ImagingStudy?_count=1", next_url=f"{BASE}/ImagingStudy?_count=1&_offset=1", total=7,
    )
    assert bundle == {
        "resourceType": "Bundle", "type": "searchset", "total": 7,
        "link": [{"relation": "self", "url": f"{BASE}/ImagingStudy?_count=1"},
                 {"relation": "next", "url": f"{BASE}/ImagingStudy?_count=1&_offset=1"}],
        "entry": [
            {"fullUrl": f"{BASE}/ImagingStudy/s1", "resource": STUDY, "search": {"mode": "match"}},
            {"fullUrl": f"{BASE}/Endpoint/dicomweb", "resource": endpoint, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "warning", "code": "processing", "diagnostics": "x"}]}, "search": {"mode": "outcome"}},
        ],
    }


def test_empty_searchset_has_no_entry_array() -> None:
    bundle = searchset([], f"{BASE}/ImagingStudy?_count=20", previous_url=f"{BASE}/ImagingStudy?_count=20")
    assert bundle == {"resourceType": "Bundle", "type": "searchset", "link": [
        {"relation": "self", "url": f"{BASE}/ImagingStudy?_count=20"},
        {"relation": "previous", "url": f"{BASE}/ImagingStudy?_count=20"}]}


def test_history_bundle() -> None:
    v2 = STUDY | {"meta": {"versionId": "2"}}
    bundle = history_bundle([
        HistoryEntry(f"{BASE}/ImagingStudy/s1", None, "DELETE", "ImagingStudy/s1", "3", MOMENT),
        HistoryEntry(f"{BASE}/ImagingStudy/s1", v2, "PUT", "ImagingStudy/s1", "2", MOMENT - timedelta(hours=1)),
        HistoryEntry(f"{BASE}/ImagingStudy/s1", STUDY, "POST", "ImagingStudy", "1", MOMENT - timedelta(days=1)),
    ], f"{BASE}/ImagingStudy/s1/_history", total=3)
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert bundle["link"] == [{"relation": "self", "url": f"{BASE}/ImagingStudy/s1/_history"}]
    deleted, updated, created = bundle["entry"]
    assert deleted == {
        "fullUrl": f"{BASE}/ImagingStudy/s1",
        "request": {"method": "DELETE", "url": "ImagingStudy/s1"},
        "response": {"status": "204 No Content", "etag": 'W/"3"', "lastModified": "2024-01-31T14:25:30.123+00:00"},
    }
    assert updated["resource"] == v2 and updated["response"]["status"] == "200 OK"
    assert created["request"] == {"method": "POST", "url": "ImagingStudy"}
    assert created["response"] == {"status": "201 Created", "etag": 'W/"1"',
                                   "lastModified": "2024-01-30T14:25:30.123+00:00"}


def test_history_entry_status_may_be_given() -> None:
    bundle = history_bundle([HistoryEntry("u", STUDY, "PUT", "ImagingStudy/s1", "4", MOMENT, "201 Created")], "s")
    assert bundle["entry"][0]["response"]["status"] == "201 Created"


# --- ETags and preconditions -------------------------------------------------------------------

def test_weak_etag() -> None:
    assert weak_etag("3") == 'W/"3"'
    with pytest.raises(ValueError):
        weak_etag('3"')


@pytest.mark.parametrize(("header", "version"), [
    ('W/"3"', "3"), ('"3"', "3"), ("3", "3"), ('w/"3"', "3"), ('  W/"a-1.b"  ', "a-1.b"), ("*", "*"),
    (None, None), ("", None), ("  ", None),
])
def test_if_match_is_lenient(header: str | None, version: str | None) -> None:
    assert parse_if_match(header) == version


@pytest.mark.parametrize("header", ['W/3', '"3', '""', 'W/"3", W/"4"', 'W/"3 4"', "x/\"3\"", 'W/"é"'])
def test_if_match_rejects_other_forms(header: str) -> None:
    with pytest.raises(InvalidInput, match="If-Match"):
        parse_if_match(header)


@given(st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True))
def test_etag_round_trips(version: str) -> None:
    assert parse_if_match(weak_etag(version)) == version


@pytest.mark.parametrize("header", [
    "identifier=urn:dicom:uid|urn:oid:1.2.3",
    "identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A1.2.3",
    "?identifier=urn:dicom:uid|urn:oid:1.2.3",
    "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3",
])
def test_if_none_exist(header: str) -> None:
    assert parse_if_none_exist(header) == [("identifier", "urn:dicom:uid|urn:oid:1.2.3")]


def test_if_none_exist_keeps_every_pair() -> None:
    assert parse_if_none_exist("identifier=a|b&status=available&started=ge2024-01-01T00:00:00%2B01:00") == [
        ("identifier", "a|b"), ("status", "available"), ("started", "ge2024-01-01T00:00:00+01:00")]


@pytest.mark.parametrize("header", ["", "  ", "?", "=x"])
def test_if_none_exist_needs_a_parameter(header: str) -> None:
    with pytest.raises(InvalidInput, match="If-None-Exist"):
        parse_if_none_exist(header)


# --- Prefer ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "prefer"), [
    (None, Prefer()),
    ("", Prefer()),
    ("return=minimal", Prefer("minimal")),
    ("return=representation", Prefer("representation")),
    ("return=OperationOutcome", Prefer("OperationOutcome")),
    ("handling=strict", Prefer(None, "strict")),
    ("return=minimal, handling=lenient", Prefer("minimal", "lenient")),
    ('handling="strict"; foo=bar, respond-async', Prefer(None, "strict")),
    ("Return=Minimal", Prefer("minimal")),
    ("return=everything, handling=sloppy", Prefer()),
    ("handling=strict, handling=lenient", Prefer(None, "strict")),
])
def test_parse_prefer(header: str | None, prefer: Prefer) -> None:
    assert parse_prefer(header) == prefer


def test_prefer_strict() -> None:
    assert parse_prefer("handling=strict").strict
    assert not parse_prefer("handling=lenient").strict


# --- dates and locations -----------------------------------------------------------------------

def test_http_date() -> None:
    assert http_date(MOMENT) == "Wed, 31 Jan 2024 14:25:30 GMT"
    berlin = MOMENT.astimezone(timezone(timedelta(hours=1)))
    assert http_date(berlin) == "Wed, 31 Jan 2024 14:25:30 GMT"


def test_fhir_instant() -> None:
    assert fhir_instant(MOMENT) == "2024-01-31T14:25:30.123+00:00"
    assert fhir_instant(datetime(2024, 1, 31, 15, 0, tzinfo=timezone(timedelta(hours=1)))) == (
        "2024-01-31T14:00:00.000+00:00")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        http_date(datetime(2024, 1, 31))
    with pytest.raises(ValueError):
        fhir_instant(datetime(2024, 1, 31))


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)))
def test_http_date_parses_back(moment: datetime) -> None:
    assert parsedate_to_datetime(http_date(moment)) == moment.replace(microsecond=0)
    assert datetime.fromisoformat(fhir_instant(moment)) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_resource_location() -> None:
    assert resource_location(BASE + "/", "ImagingStudy", "s1", "2") == f"{BASE}/ImagingStudy/s1/_history/2"
