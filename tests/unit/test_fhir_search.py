"""FHIR R4 search parameters (search.html) <-> SearchRequest, and value matching: formats/fhir_search.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.domain.errors import InvalidInput, Unsupported
from pacsbridge.formats.fhir_search import (
    Criterion,
    DateValue,
    Include,
    NumberValue,
    OfType,
    ReferenceValue,
    SearchParam,
    SearchRequest,
    Token,
    date_matches,
    escape,
    fhir_value_range,
    fold_text,
    number_matches,
    page_link,
    parse_search,
    self_link,
    split_escaped,
    string_matches,
    token_matches,
    unescape,
)

DECLARED = {p.name: p for p in (
    SearchParam("_id", "token"),
    SearchParam("identifier", "token", identifier=True),
    SearchParam("status", "token"),
    SearchParam("modality", "token"),
    SearchParam("started", "date"),
    SearchParam("birthdate", "date"),
    SearchParam("subject", "reference", targets=("Patient", "Device", "Group")),
    SearchParam("patient", "reference", targets=("Patient",)),
    SearchParam("endpoint", "reference", targets=("Endpoint",)),
    SearchParam("family", "string"),
    SearchParam("url", "uri"),
    SearchParam("length", "number"),
)}
BASE = "https://proxy.example/fhir"
SECRET = "Smith-0815"  # stands for a patient value that must never reach an error message


def parse(*params: tuple[str, str], strict: bool = False, **kwargs: Any) -> SearchRequest:
    options: dict[str, Any] = {"default_count": 20, "max_count": 100} | kwargs
    return parse_search(list(params), DECLARED, strict=strict, **options)


def only(request: SearchRequest) -> Criterion:
    assert len(request.criteria) == 1
    return request.criteria[0]


def one_value(*params: tuple[str, str], **kwargs: Any) -> Any:
    criterion = only(parse(*params, **kwargs))
    assert len(criterion.values) == 1
    return criterion.values[0]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def rejects(*params: tuple[str, str], strict: bool = False, **kwargs: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse(*params, strict=strict, **kwargs)
    assert SECRET not in caught.value.message
    return caught.value.message


# --- the standard's own examples ---------------------------------------------------------------

def test_study_uid_identifier_with_system() -> None:
    assert one_value(("identifier", "urn:dicom:uid|urn:oid:1.2.3")) == Token("urn:dicom:uid", "urn:oid:1.2.3")


def test_identifier_in_any_system() -> None:
    assert one_value(("identifier", "urn:oid:1.2.3")) == Token(None, "urn:oid:1.2.3", any_system=True)


def test_accession_by_identifier_type() -> None:
    criterion = only(parse(("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|A12345")))
    assert criterion == Criterion("identifier", "token", (
        OfType("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN", "A12345"),), "of-type")


def test_modality_coding() -> None:
    assert one_value(("modality", "http://dicom.nema.org/resources/ontology/DCM|CT")) == Token(
        "http://dicom.nema.org/resources/ontology/DCM", "CT")


def test_birthdate_ge() -> None:
    value = one_value(("birthdate", "ge2013-01-14"))
    assert value == DateValue("ge", utc(2013, 1, 14), utc(2013, 1, 15), "2013-01-14")
    assert date_matches(value, *fhir_value_range("2013-01-14"))
    assert date_matches(value, *fhir_value_range("2014-06-01"))
    assert not date_matches(value, *fhir_value_range("2013-01-13"))


def test_eq_day_matches_a_time_within_it() -> None:
    value = one_value(("started", "eq2013-01-14"))
    assert date_matches(value, *fhir_value_range("2013-01-14T10:00"))
    assert date_matches(value, *fhir_value_range("2013-01-14T23:59:59.999Z"))
    assert not date_matches(value, *fhir_value_range("2013-01-15T00:00:00Z"))
    assert not date_matches(value, *fhir_value_range("2013-01"))  # a month is not inside a day


def test_eq_is_the_default_prefix() -> None:
    assert one_value(("started", "2013-01-14")).prefix == "eq"


# --- AND, OR, escaping -------------------------------------------------------------------------

def test_repeated_parameter_is_and_comma_is_or() -> None:
    request = parse(("status", "available,registered"), ("status", "cancelled"))
    assert request.criteria == (
        Criterion("status", "token", (Token(None, "available", True), Token(None, "registered", True))),
        Criterion("status", "token", (Token(None, "cancelled", True),)),
    )


def test_escaped_separators_are_literal() -> None:
    assert one_value(("family", r"a\,b\|c\$d\\e")) == "a,b|c$d\\e"
    assert one_value(("identifier", r"sys\|tem|co\,de")) == Token("sys|tem", "co,de")
    assert split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert unescape(r"\x\,") == r"\x,"  # an unknown escape stays


def test_empty_values_and_alternatives_add_nothing() -> None:
    assert parse(("status", "")).criteria == ()
    assert only(parse(("status", "a,,a"))).values == (Token(None, "a", True),)


@given(st.text())
def test_escape_round_trips(text: str) -> None:
    parts = split_escaped(escape(text) + "," + escape(text), ",")
    assert [unescape(p) for p in parts] == [text, text]


# --- tokens ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "token"), [
    ("sys|code", Token("sys", "code")),
    ("|code", Token(None, "code")),
    ("code", Token(None, "code", any_system=True)),
    ("sys|", Token("sys", None)),
])
def test_token_forms(text: str, token: Token) -> None:
    assert one_value(("status", text)) == token


@pytest.mark.parametrize("text", ["|", "a|b|c"])
def test_bad_tokens(text: str) -> None:
    assert "status" in rejects(("status", text))


def test_token_matching() -> None:
    assert token_matches(Token("sys", "code"), "sys", "code")
    assert not token_matches(Token("sys", "code"), "other", "code")
    assert not token_matches(Token("sys", "code"), "sys", "CODE")
    assert token_matches(Token(None, "code", True), "anything", "code")
    assert token_matches(Token(None, "code"), None, "code")
    assert not token_matches(Token(None, "code"), "sys", "code")
    assert token_matches(Token("sys", None), "sys", "whatever")


def test_of_type_needs_three_parts_and_an_identifier_parameter() -> None:
    assert "identifier" in rejects(("identifier:of-type", "sys|ACSN"))
    assert "identifier" in rejects(("identifier:of-type", "|ACSN|"))
    assert one_value(("identifier:of-type", f"|ACSN|{SECRET}")) == OfType(None, "ACSN", SECRET)
    assert "modality" in rejects(("modality:of-type", f"sys|MR|{SECRET}"))


def test_not_modifier() -> None:
    criterion = only(parse(("status:not", "cancelled")))
    assert criterion.modifier == "not"
    assert criterion.values == (Token(None, "cancelled", True),)


# --- references --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "text", "value"), [
    ("subject", "Patient/123", ReferenceValue("Patient", "123")),
    ("patient", "123", ReferenceValue("Patient", "123")),
    ("subject", "123", ReferenceValue(None, "123")),
    ("subject:Patient", "123", ReferenceValue("Patient", "123")),
    ("subject:Patient", "Patient/123", ReferenceValue("Patient", "123")),
    ("subject", "Patient/123/_history/2", ReferenceValue("Patient", "123")),
    ("subject", "http://x/fhir/Patient/123", ReferenceValue("Patient", "123", "http://x/fhir/Patient/123")),
    ("subject", "http://Host/fhir/Patient/9/_history/1",
     ReferenceValue("Patient", "9", "http://Host/fhir/Patient/9/_history/1")),
    ("endpoint", "urn:uuid:0f1e", ReferenceValue(None, None, "urn:uuid:0f1e")),
])
def test_reference_forms(name: str, text: str, value: ReferenceValue) -> None:
    assert one_value((name, text)) == value


def test_reference_by_identifier() -> None:
    criterion = only(parse(("patient:identifier", "http://hospital/mrn|12345")))
    assert criterion == Criterion("patient", "reference", (Token("http://hospital/mrn", "12345"),), "identifier")


@pytest.mark.parametrize(("name", "text"), [
    ("subject:Patient", "Group/1"),  # type and modifier disagree
    ("subject", "Observation/1"),  # not a target type
    ("subject:Observation", "1"),
    ("subject", f"Patient/{SECRET} x"),  # not an id
    ("subject", "patient/1"),
])
def test_bad_references(name: str, text: str) -> None:
    assert "subject" in rejects((name, text))


def test_chain_on_a_declared_reference_is_refused() -> None:
    assert "chained" in rejects(("subject.name", SECRET))
    assert "chained" in rejects(("subject:Patient.name", SECRET))


# --- strings, uri, number ----------------------------------------------------------------------

def test_string_modifiers() -> None:
    assert only(parse(("family:exact", "Müller"))).modifier == "exact"
    assert only(parse(("family:contains", "ll"))).values == ("ll",)
    assert one_value(("url", "http://a/b")) == "http://a/b"


@pytest.mark.parametrize(("value", "target", "modifier", "expected"), [
    ("mul", "Müller", None, True),
    ("MUEL", "Müller", None, False),
    ("jorg", "Jörg", None, True),
    ("strasse", "Straße", None, True),
    ("ller", "Müller", None, False),
    ("LLER", "Müller", "contains", True),
    ("Müller", "Müller", "exact", True),
    ("müller", "Müller", "exact", False),
    ("Mul", "Müller", "exact", False),
    ("ø", "Søren", "contains", True),
])
def test_string_matching(value: str, target: str, modifier: str | None, expected: bool) -> None:
    assert string_matches(value, target, modifier) is expected


def test_fold_text() -> None:
    assert fold_text("ÅNGSTRÖM Ǆ ﬁ") == "angstrom dz fi"


def test_numbers() -> None:
    value = one_value(("length", "100"))
    assert value == NumberValue("eq", Decimal("100"), "100")
    assert (value.low, value.high) == (Decimal("99.5"), Decimal("100.5"))
    assert number_matches(value, Decimal("99.5")) and not number_matches(value, Decimal("100.5"))
    precise = one_value(("length", "100.00"))
    assert number_matches(precise, 100) and not number_matches(precise, Decimal("100.01"))
    assert number_matches(one_value(("length", "gt100")), 101)
    assert not number_matches(one_value(("length", "gt100")), 100)
    assert number_matches(one_value(("length", "le100")), 100)
    assert number_matches(one_value(("length", "ne100")), 101)
    assert number_matches(one_value(("length", "ap100")), 109)
    assert not number_matches(one_value(("length", "ap100")), 111)
    assert number_matches(one_value(("length", "lt1e2")), 99)
    assert "length" in rejects(("length", "abc"))
    assert "length" in rejects(("length", "xx100"))


# --- modifiers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["true", "false"])
def test_missing_on_any_type(flag: str) -> None:
    for name in ("status", "started", "subject", "family", "length"):
        assert only(parse((f"{name}:missing", flag))) == Criterion(
            name, DECLARED[name].type, (flag == "true",), "missing")


def test_missing_needs_a_boolean() -> None:
    assert "status:missing" in rejects(("status:missing", SECRET))


@pytest.mark.parametrize(("name", "modifier"), [
    ("status", "text"), ("status", "in"), ("status", "exact"), ("family", "not"), ("started", "exact"),
    ("url", "below"), ("patient", "Group"),
])
def test_unsupported_modifier_names_the_parameter(name: str, modifier: str) -> None:
    message = rejects((f"{name}:{modifier}", SECRET))
    assert name in message


def test_unknown_parameter_with_modifier_is_ignored() -> None:
    assert parse(("foo:bar", SECRET)).ignored == ("foo:bar",)


# --- dates -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "low", "high"), [
    ("2013", utc(2013, 1, 1), utc(2014, 1, 1)),
    ("2013-12", utc(2013, 12, 1), utc(2014, 1, 1)),
    ("2013-02", utc(2013, 2, 1), utc(2013, 3, 1)),
    ("2012-02-29", utc(2012, 2, 29), utc(2012, 3, 1)),
    ("2013-01-14T10:00", utc(2013, 1, 14, 10), utc(2013, 1, 14, 10, 1)),
    ("2013-01-14T10:00:30Z", utc(2013, 1, 14, 10, 0, 30), utc(2013, 1, 14, 10, 0, 31)),
    ("2013-01-14T10:00:30.12Z", utc(2013, 1, 14, 10, 0, 30, 120000), utc(2013, 1, 14, 10, 0, 30, 130000)),
    ("2013-01-14T10:00:30.1234567Z", utc(2013, 1, 14, 10, 0, 30, 123456), utc(2013, 1, 14, 10, 0, 30, 123457)),
    ("2013-01-14T10:00:30+01:00", utc(2013, 1, 14, 9, 0, 30), utc(2013, 1, 14, 9, 0, 31)),
    ("2013-01-14T10:00:30 01:00", utc(2013, 1, 14, 9, 0, 30), utc(2013, 1, 14, 9, 0, 31)),  # '+' sent raw
    ("2013-01-14T10:00:30-05:30", utc(2013, 1, 14, 15, 30, 30), utc(2013, 1, 14, 15, 30, 31)),
    ("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59), utc(2017, 1, 1)),  # a leap second
    ("9999", utc(9999, 1, 1), datetime.max.replace(tzinfo=UTC)),
])
def test_date_precision_ranges(text: str, low: datetime, high: datetime) -> None:
    assert fhir_value_range(text) == (low, high)


def test_dates_without_offset_use_the_default_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    value = one_value(("started", "2024-07-01"), default_tz=berlin)
    assert (value.low, value.high) == (utc(2024, 6, 30, 22), utc(2024, 7, 1, 22))
    winter = one_value(("started", "2024-01-31T14:25"), default_tz=berlin)
    assert winter.low == utc(2024, 1, 31, 13, 25)
    explicit = one_value(("started", "2024-01-31T14:25:00Z"), default_tz=berlin)
    assert explicit.low == utc(2024, 1, 31, 14, 25)
    # the day of the switch to summer time has 23 hours
    switch = fhir_value_range("2024-03-31", berlin)
    assert switch[1] - switch[0] == timedelta(hours=23)


@pytest.mark.parametrize("text", [
    "2013-13", "2013-02-30", "13-01-14", "2013-01-14T25:00", "2013-01-14T10", "2013-01-14T10:00+15:00",
    "2013-01-14T10:00+01:60", "20130114", "2013-01-14 10:00", "", "0001-01-01T00:00:00+01:00", "yesterday",
])
def test_bad_dates(text: str) -> None:
    with pytest.raises(InvalidInput):
        fhir_value_range(text)


def test_bad_date_parameter_does_not_echo_the_value() -> None:
    message = rejects(("birthdate", f"ge{SECRET}"))
    assert message.startswith("birthdate:")
    assert "prefix" in rejects(("birthdate", "xy2013"))


PREFIX_CASES = [  # (prefix, target, expected) for the parameter 2013-01-14
    ("eq", "2013-01-14T10:00Z", True), ("eq", "2013-01-13T23:00Z", False), ("eq", "2013-01", False),
    ("ne", "2013-01-14T10:00Z", False), ("ne", "2013-01-15", True), ("ne", "2013-01", True),
    ("gt", "2013-01-15", True), ("gt", "2013-01-14T23:59:59Z", False), ("gt", "2013", True),
    ("lt", "2013-01-13", True), ("lt", "2013-01-14T00:00:00Z", False), ("lt", "2013", True),
    ("ge", "2013-01-14T00:00:00Z", True), ("ge", "2013-01-15", True), ("ge", "2013-01-13", False),
    ("le", "2013-01-14T23:59:59Z", True), ("le", "2013-01-13", True), ("le", "2013-01-15", False),
    ("sa", "2013-01-15", True), ("sa", "2013-01-14T23:59:59Z", False), ("sa", "2013", False),
    ("eb", "2013-01-13", True), ("eb", "2013-01-14T00:00:00Z", False), ("eb", "2013", False),
]


@pytest.mark.parametrize(("prefix", "target", "expected"), PREFIX_CASES)
def test_date_prefixes_follow_the_range_table(prefix: str, target: str, expected: bool) -> None:
    value = one_value(("started", f"{prefix}2013-01-14"))
    assert date_matches(value, *fhir_value_range(target)) is expected


def test_ap_is_ten_percent_of_the_gap_to_now_at_least_a_day() -> None:
    now = utc(2024, 1, 1)
    old = one_value(("started", "ap2014-01-01"))  # ten years ago: about a year either side
    assert date_matches(old, *fhir_value_range("2014-11-01"), now=now)
    assert date_matches(old, *fhir_value_range("2013-03-01"), now=now)
    assert not date_matches(old, *fhir_value_range("2015-03-01"), now=now)
    recent = one_value(("started", "ap2023-12-31"))  # today's neighbour: one day
    assert date_matches(recent, *fhir_value_range("2024-01-01T12:00:00Z"), now=now)
    assert date_matches(recent, *fhir_value_range("2023-12-30T12:00:00Z"), now=now)
    assert not date_matches(recent, *fhir_value_range("2023-12-29T12:00:00Z"), now=now)
    future = one_value(("started", "ap2034-01-01"))
    assert date_matches(future, *fhir_value_range("2033-03-01"), now=now)


DATE_TEXT = st.builds(
    lambda moment, precision, tz: (
        f"{moment.year:04d}"  # strftime's %Y does not pad years below 1000
        + moment.strftime(["", "-%m", "-%m-%d", "-%m-%dT%H:%M", "-%m-%dT%H:%M:%S", "-%m-%dT%H:%M:%S.%f"][precision])
        + (tz if precision >= 3 else "")
    ),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(0, 5),
    st.sampled_from(["", "Z", "+01:00", "-05:30", "+14:00", "-12:00"]),
)


@given(DATE_TEXT)
def test_every_precision_is_a_non_empty_range(text: str) -> None:
    low, high = fhir_value_range(text)
    assert low < high
    assert low.tzinfo is UTC and high.tzinfo is UTC
    value = one_value(("started", text))
    assert date_matches(value, low, high)  # a value equals itself
    assert not date_matches(replace(value, prefix="ne"), low, high)
    assert not date_matches(replace(value, prefix="sa"), low, high)
    assert not date_matches(replace(value, prefix="eb"), low, high)


# --- result parameters -------------------------------------------------------------------------

def test_count_default_cap_and_errors() -> None:
    assert parse().count == 20
    assert parse(default_count=500).count == 100
    assert parse(("_count", "5")).count == 5
    assert parse(("_count", "0")).count == 0
    assert parse(("_count", "5000")).count == 100
    for bad in ("-1", "abc", "", "1.5", "99999999999"):
        assert "_count" in rejects(("_count", bad))
    assert "more than once" in rejects(("_count", "1"), ("_count", "2"))


def test_offset() -> None:
    assert parse(("_offset", "40")).offset == 40
    assert "_offset" in rejects(("_offset", "-5"))


def test_sort() -> None:
    assert parse(("_sort", "-started,status")).sort == (("started", True), ("status", False))
    lenient = parse(("_sort", "-started,nosuch"))
    assert lenient.sort == (("started", True),)
    assert lenient.ignored == ("_sort",)
    assert "nosuch" in rejects(("_sort", "nosuch"), strict=True)
    assert "_sort" in rejects(("_sort", "started,,status"))


def test_include() -> None:
    request = parse(("_include", "ImagingStudy:endpoint"), ("_include", "ImagingStudy:subject:Patient"),
                    resource_type="ImagingStudy")
    assert request.includes == (Include("ImagingStudy", "endpoint"), Include("ImagingStudy", "subject", "Patient"))
    assert parse(("_include", "ImagingStudy:status")).ignored == ("_include",)
    assert parse(("_include", "Patient:endpoint"), resource_type="ImagingStudy").includes == ()
    assert parse(("_include", "*")).ignored == ("_include",)
    assert "_include" in rejects(("_include", "endpoint"))
    assert "_include" in rejects(("_include", "ImagingStudy:status"), strict=True)


def test_total() -> None:
    assert parse(("_total", "accurate")).total == "accurate"
    assert "_total" in rejects(("_total", "all"))


def test_unknown_parameters_are_ignored_unless_strict() -> None:
    request = parse(("name", SECRET), ("_summary", "true"), ("_elements", "id"), ("status", "x"))
    assert request.ignored == ("name", "_summary", "_elements")
    assert "'name'" in rejects(("name", SECRET), strict=True)
    assert "_summary" in rejects(("_summary", "true"), strict=True)
    assert "_elements" in rejects(("_elements", "id"), strict=True)
    assert "a parameter" in rejects((f"{SECRET} 12 Main Street", "x"), strict=True)


def test_format_and_pretty_are_accepted() -> None:
    for fmt in ("json", "application/fhir+json", "application/fhir json", "application/json;fhirVersion=4.0"):
        assert parse(("_format", fmt), ("_pretty", "true"), strict=True).ignored == ()
    with pytest.raises(Unsupported):
        parse(("_format", "xml"))


# --- links -------------------------------------------------------------------------------------

def test_self_link_is_canonical_and_drops_ignored_parameters() -> None:
    request = parse(
        ("identifier", "urn:dicom:uid|urn:oid:1.2.3"), ("started", "ge2024-01-31T14:25:30+01:00"),
        ("nosuch", SECRET), ("_sort", "-started"), ("_include", "ImagingStudy:endpoint"), ("_format", "json"),
        ("family", r"O'Brien\, Jr & co"), ("subject:Patient", "p1"), ("_count", "10"),
    )
    link = self_link(BASE, "ImagingStudy", request)
    assert link == (
        "https://proxy.example/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3"
        "&started=ge2024-01-31T14:25:30%2B01:00&family=O%27Brien%5C,%20Jr%20%26%20co&subject:Patient=p1"
        "&_include=ImagingStudy:endpoint&_sort=-started&_count=10"
    )
    assert SECRET not in link


def test_page_links_move_the_offset() -> None:
    request = parse(("status", "available"), ("_count", "10"), ("_offset", "10"))
    assert self_link(BASE + "/", "ImagingStudy", request).endswith("?status=available&_count=10&_offset=10")
    assert page_link(BASE, "ImagingStudy", request, 20).endswith("&_count=10&_offset=20")
    assert page_link(BASE, "ImagingStudy", request, 0).endswith("?status=available&_count=10")


def reparse(request: SearchRequest, **kwargs: Any) -> SearchRequest:
    query = urlsplit(self_link(BASE, "ImagingStudy", request)).query
    return parse(*parse_qsl(query, keep_blank_values=True), **kwargs)


VALUE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
ID = st.from_regex(r"[A-Za-z0-9\-.]{1,8}", fullmatch=True)
PARAMS = st.one_of(
    st.tuples(st.sampled_from(["status", "identifier", "identifier:not", "patient:identifier"]),
              st.builds(lambda s, c, form: [f"{escape(s)}|{escape(c)}", escape(c), f"|{escape(c)}",
                                            f"{escape(s)}|"][form], VALUE_TEXT, VALUE_TEXT, st.integers(0, 3))),
    st.tuples(st.just("identifier:of-type"),
              st.builds(lambda s, c, v: f"{escape(s)}|{escape(c)}|{escape(v)}", VALUE_TEXT, VALUE_TEXT, VALUE_TEXT)),
    st.tuples(st.sampled_from(["family", "family:exact", "family:contains", "url"]),
              st.lists(VALUE_TEXT.map(escape), min_size=1, max_size=3).map(",".join)),
    st.tuples(st.sampled_from(["started", "birthdate"]),
              st.builds(lambda p, d: p + d, st.sampled_from(["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
                        DATE_TEXT)),
    st.tuples(st.sampled_from(["subject", "patient", "subject:Patient", "subject:Group"]), ID),
    st.tuples(st.just("subject"), st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["Patient", "Device"]), ID)),
    st.tuples(st.just("endpoint"), ID.map(lambda i: f"https://x.example/fhir/Endpoint/{i}")),
    st.tuples(st.sampled_from(["length"]),
              st.from_regex(r"(eq|ne|gt|lt|ge|le|ap)?-?[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True)),
    st.tuples(st.sampled_from(["status:missing", "started:missing"]), st.sampled_from(["true", "false"])),
    st.tuples(st.sampled_from(["_sort"]), st.sampled_from(["-started", "status,-birthdate", "family"])),
    st.tuples(st.just("_include"), st.sampled_from(["ImagingStudy:endpoint", "ImagingStudy:subject:Patient"])),
    st.tuples(st.just("_total"), st.sampled_from(["none", "estimate", "accurate"])),
    st.tuples(st.just("_offset"), st.integers(0, 500).map(str)),
    st.tuples(st.sampled_from(["nosuch", "_summary", "_format"]), st.just("json")),
)


def unique_singles(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    kept = []
    for name, value in params:
        if name in ("_sort", "_total", "_offset", "_count"):
            if name in seen:
                continue
            seen.add(name)
        kept.append((name, value))
    return kept


@given(st.lists(PARAMS, max_size=6).map(unique_singles), st.integers(0, 300))
def test_parse_of_self_link_round_trips(params: list[tuple[str, str]], count: int) -> None:
    request = parse(*params, ("_count", str(count)))
    assert reparse(request) == replace(request, ignored=())
