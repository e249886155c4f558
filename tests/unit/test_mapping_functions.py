"""The named transforms of mapping files: examples, bad data, round trips, and their documentation."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.mapping import FUNCTIONS
from pacsbridge.mapping.functions import (
    BODY_PARTS,
    DCM,
    LOCAL_DESIGNATOR,
    SCT,
    BadValue,
    body_part_coding,
    coding_to_dicom_code,
    count,
    dicom_code_to_coding,
    dicom_date_to_fhir,
    dicom_datetime_to_fhir,
    dicom_sex_to_fhir,
    fhir_date_to_dicom,
    fhir_datetime_to_dicom_date,
    fhir_datetime_to_dicom_time,
    fhir_gender_to_dicom,
    fhir_name_to_pn,
    fhir_priority_to_dicom,
    first,
    join,
    laterality_coding,
    lookup,
    lower,
    modality_coding,
    pn_to_fhir_name,
    pn_to_text,
    reference_id,
    sop_class_coding,
    strip_urn_oid,
    truncate,
    uid_urn,
    unsigned_int,
    upper,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mappings.md"
SECRET = "Zebediah-4711"  # stands for patient data: no message may quote it


def test_every_transform_is_documented_with_its_arguments() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", text, re.MULTILINE)}
    missing = sorted(set(FUNCTIONS) - set(rows))
    assert not missing, f"document these transforms in docs/mappings.md: {missing}"
    for name, function in FUNCTIONS.items():
        keywords = [p.name for p in inspect.signature(function).parameters.values() if p.kind == p.KEYWORD_ONLY]
        undocumented = [k for k in keywords if f"`{k}`" not in rows[name]]
        assert not undocumented, f"docs/mappings.md: document the arguments {undocumented} of {name}"


def test_every_transform_has_a_one_line_docstring() -> None:
    for name, function in FUNCTIONS.items():
        assert function.__doc__ and function.__doc__.strip(), name


# --- general ---------------------------------------------------------------------------------

def test_general_transforms() -> None:
    assert first(["", None, "a", "b"]) == "a"
    assert first("x") == "x"
    assert first(["", None]) is None
    assert join(["a", "", "b"], sep="-") == "a-b"
    assert join("a", None, ["b", "c"]) == "a b c"
    assert join([None, ""]) is None
    assert join(1, 2, sep="") == "12"
    assert upper("ct") == "CT" and lower("CT") == "ct"
    assert truncate("abcdef", length=3) == "abc"
    assert truncate("ab  cd", length=4) == "ab"
    assert lookup("CT", table={"CT": "computed", "MR": "magnetic"}) == "computed"
    assert lookup(1, table={1: "one"}) == "one"
    assert lookup("XA", table={"CT": 1}) is None
    assert lookup("XA", table={"CT": 1}, default=0) == 0
    assert count([1, 2, 3]) == 3 and count({"a": 1}) == 1
    assert reference_id("Practitioner/12") == "12"
    assert reference_id("https://fhir.example/r4/Patient/p-1/_history/3") == "p-1"
    assert reference_id({"reference": "Endpoint/e1"}) == "e1"


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), ("12", 12), (" +7 ", 7), (0, 0), (-1, None), ("-20", None),
])
def test_unsigned_int(value: Any, expected: int | None) -> None:
    assert unsigned_int(value) == expected


@pytest.mark.parametrize("value", ["3.5", "x", 2.0, True, [1, 2], {"a": 1}])
def test_unsigned_int_refuses_what_is_no_integer(value: Any) -> None:
    with pytest.raises(BadValue):
        unsigned_int(value)


@pytest.mark.parametrize(("function", "value"), [
    (upper, {"a": SECRET}),
    (upper, [SECRET, SECRET]),
    (lambda value: truncate(value, length=3), {"x": SECRET}),
    (reference_id, SECRET),
    (uid_urn, SECRET),
    (strip_urn_oid, "urn:oid:" + SECRET),
    (sop_class_coding, "1.2.03"),
    (dicom_date_to_fhir, SECRET),
    (dicom_date_to_fhir, "20230229"),
    (fhir_date_to_dicom, SECRET),
    (fhir_date_to_dicom, "2023-02-30"),
    (fhir_gender_to_dicom, SECRET),
    (fhir_priority_to_dicom, SECRET),
    (fhir_name_to_pn, [7]),
    (pn_to_text, SECRET + "^a^b^c^d^e"),
    (dicom_code_to_coding, {"CodeMeaning": SECRET}),
    (dicom_code_to_coding, {"CodeValue": "1", "CodeMeaning": SECRET}),
    (coding_to_dicom_code, SECRET),
    (modality_coding, " "),
])
def test_bad_values_raise_without_quoting_them(function: Any, value: Any) -> None:
    with pytest.raises(BadValue) as caught:
        function(value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None


def test_truncate_needs_a_positive_length() -> None:
    with pytest.raises(BadValue, match="length must be positive"):
        truncate("abc", length=0)


# --- UIDs and codes --------------------------------------------------------------------------

def test_uids() -> None:
    assert uid_urn("1.2.840.10008.1.2") == "urn:oid:1.2.840.10008.1.2"
    assert uid_urn("urn:oid:1.2.3") == "urn:oid:1.2.3"
    assert strip_urn_oid("urn:oid:1.2.3") == "1.2.3"
    assert strip_urn_oid("1.2.3") == "1.2.3"
    assert sop_class_coding("1.2.840.10008.5.1.4.1.1.2") == {
        "system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}
    assert modality_coding("CT") == {"system": DCM, "code": "CT"}
    with pytest.raises(BadValue, match="not a DICOM UID"):
        uid_urn("1." + "2" * 64)


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8))
def test_uid_urns_round_trip(arcs: list[int]) -> None:
    uid = ".".join(map(str, arcs))
    if len(uid) <= 64:
        assert strip_urn_oid(uid_urn(uid)) == uid


def test_dicom_code_to_coding() -> None:
    assert dicom_code_to_coding({
        "00080100": {"vr": "SH", "Value": ["24627-2"]}, "00080102": {"vr": "SH", "Value": ["LN"]},
        "00080104": {"vr": "LO", "Value": ["CT Chest"]}}) == {
        "system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}
    radlex = {"CodeValue": "RID1", "CodingSchemeDesignator": "RADLEX", "CodingSchemeVersion": "4"}
    assert dicom_code_to_coding(radlex) == {"system": "http://www.radlex.org", "version": "4", "code": "RID1"}
    assert dicom_code_to_coding({"LongCodeValue": "1234567891000123456", "CodingSchemeDesignator": "SCT"}) == {
        "system": SCT, "code": "1234567891000123456"}
    assert dicom_code_to_coding({"URNCodeValue": "urn:x:1", "CodeMeaning": "X"}) == {
        "system": "urn:ietf:rfc:3986", "code": "urn:x:1", "display": "X"}
    assert dicom_code_to_coding({"CodeValue": "9", "CodingSchemeDesignator": "99ACME"}) == {
        "system": "urn:dicom:coding-scheme:99ACME", "code": "9"}
    assert dicom_code_to_coding({}) is None


def test_coding_to_dicom_code() -> None:
    assert coding_to_dicom_code({"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}) == {
        "CodeValue": "24627-2", "CodingSchemeDesignator": "LN", "CodeMeaning": "CT Chest"}
    concept = {"coding": [{"system": "http://x.example", "display": "no code"},
                          {"system": SCT, "code": "1234567891000123456", "version": "2024"}], "text": "Thing"}
    assert coding_to_dicom_code(concept) == {
        "LongCodeValue": "1234567891000123456", "CodingSchemeDesignator": "SCT", "CodingSchemeVersion": "2024",
        "CodeMeaning": "Thing"}
    assert coding_to_dicom_code({"system": "http://x.example", "code": "A"}) == {
        "CodeValue": "A", "CodingSchemeDesignator": LOCAL_DESIGNATOR, "CodeMeaning": "A"}
    assert coding_to_dicom_code({"system": "urn:dicom:coding-scheme:99ACME", "code": "A", "display": "a"}) == {
        "CodeValue": "A", "CodingSchemeDesignator": "99ACME", "CodeMeaning": "a"}
    assert coding_to_dicom_code({"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.3", "display": "U"}) == {
        "URNCodeValue": "urn:oid:1.2.3", "CodeMeaning": "U"}
    assert coding_to_dicom_code({"text": "only text"}) is None
    assert len(coding_to_dicom_code({"system": SCT, "code": "1", "display": "x" * 80})["CodeMeaning"]) == 64  # type: ignore[index]


@given(st.sampled_from(["DCM", "SCT", "LN", "RADLEX", "UCUM", "99ACME"]),
       st.from_regex(r"[A-Za-z0-9.\-]{1,16}", fullmatch=True),
       st.from_regex(r"[A-Za-z][A-Za-z ]{0,30}", fullmatch=True))
def test_codes_round_trip(designator: str, code: str, meaning: str) -> None:
    item = {"CodeValue": code, "CodingSchemeDesignator": designator, "CodeMeaning": meaning.strip() or "m"}
    assert coding_to_dicom_code(dicom_code_to_coding(item)) == item


def test_body_parts_and_laterality() -> None:
    assert body_part_coding("CHEST") == {"system": SCT, "code": "816094009", "display": "Chest"}
    assert body_part_coding("lspine") == {"system": SCT, "code": "122496007", "display": "Lumbar spine"}
    assert body_part_coding("TORSO") is None
    assert laterality_coding("L") == {"system": SCT, "code": "7771000", "display": "Left"}
    assert laterality_coding("R") == {"system": SCT, "code": "24028007", "display": "Right"}
    assert laterality_coding("B") == {"system": SCT, "code": "51440002", "display": "Bilateral"}
    assert laterality_coding("U") is None
    assert {"HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE", "CSPINE", "TSPINE", "LSPINE", "BREAST", "HAND",
            "FOOT", "SHOULDER", "HIP"} <= set(BODY_PARTS)


# --- dates and times -------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    (("20240131", "142530", "+0100"), {}, "2024-01-31T14:25:30+01:00"),
    (("20240131", "142530.123456", "-0500"), {}, "2024-01-31T14:25:30.123456-05:00"),
    (("20240131", "1425"), {"default_offset": "+01:00"}, "2024-01-31T14:25:00+01:00"),
    (("20240131", "14"), {"default_offset": "Z"}, "2024-01-31T14:00:00+00:00"),
    (("20240131", "14:25:30", None), {"default_offset": "+0200"}, "2024-01-31T14:25:30+02:00"),
    (("20240131", "142530", "+0100"), {"default_offset": "+05:00"}, "2024-01-31T14:25:30+01:00"),
    (("20240131", "142530"), {}, "2024-01-31"),
    (("20240131",), {}, "2024-01-31"),
    (("2024.01.31", None, "+0100"), {}, "2024-01-31"),
])
def test_dicom_datetime_to_fhir(args: tuple[Any, ...], kwargs: dict[str, Any], expected: str) -> None:
    assert dicom_datetime_to_fhir(*args, **kwargs) == expected


@pytest.mark.parametrize(("args", "message"), [
    (("20240131", "252530", "+0100"), "not a time of day"),
    (("20240131", "14h", "+0100"), "not a DICOM time"),
    (("20240131", "142530", "+1"), "not a UTC offset"),
    (("20240131", "142530", "+1500"), "not a UTC offset"),
])
def test_dicom_datetime_to_fhir_refuses_bad_parts(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(BadValue, match=message):
        dicom_datetime_to_fhir(*args)


@pytest.mark.parametrize(("value", "tz", "day", "time"), [
    ("2024-03-01T08:30:00Z", "Europe/Berlin", "20240301", "093000"),
    ("2024-03-31T01:30:00-05:00", "Europe/Berlin", "20240331", "083000"),  # after the spring change
    ("2024-12-31T23:30:00-08:00", "Europe/Berlin", "20250101", "083000"),
    ("2024-12-31T23:30:00-08:00", None, "20241231", "233000"),
    ("2024-07-15T10:00:00.5+02:00", "Europe/Oslo", "20240715", "100000"),
    ("2024-07-15T10:00+02:00", "UTC", "20240715", "080000"),
    ("2024-07-15", "Europe/Berlin", "20240715", None),
    ("2024-07", "Europe/Berlin", None, None),
    ("1970", None, None, None),
])
def test_fhir_datetime_to_dicom(value: str, tz: str | None, day: str | None, time: str | None) -> None:
    assert fhir_datetime_to_dicom_date(value, tz=tz) == day
    assert fhir_datetime_to_dicom_time(value, tz=tz) == time


def test_unknown_time_zones_are_bad_values() -> None:
    with pytest.raises(BadValue, match="unknown IANA time zone"):
        fhir_datetime_to_dicom_date("2024-03-01T08:30:00Z", tz="Mars/Olympus")


def test_fhir_date_to_dicom() -> None:
    assert fhir_date_to_dicom("1970-05-03") == "19700503"
    assert fhir_date_to_dicom("1970-05-03T23:30:00-05:00") == "19700503"  # as written, no zone moves
    assert fhir_date_to_dicom("1970-05") is None
    assert dicom_date_to_fhir("19700503") == "1970-05-03"


@given(st.dates(min_value=date(1000, 1, 1)))
def test_dates_round_trip(day: date) -> None:
    assert fhir_date_to_dicom(dicom_date_to_fhir(day.strftime("%Y%m%d"))) == day.strftime("%Y%m%d")


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)),
       st.integers(min_value=-12 * 4, max_value=14 * 4),
       st.sampled_from(["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC", "Australia/Lord_Howe"]))
def test_dicom_to_fhir_to_site_time_is_the_same_instant(moment: datetime, quarters: int, tz: str) -> None:
    moment = moment.replace(microsecond=0)
    offset = timedelta(minutes=15 * quarters)
    sign = "-" if quarters < 0 else "+"
    minutes = abs(quarters) * 15
    text = dicom_datetime_to_fhir(moment.strftime("%Y%m%d"), moment.strftime("%H%M%S"),
                                  f"{sign}{minutes // 60:02d}{minutes % 60:02d}")
    day, time = fhir_datetime_to_dicom_date(text, tz=tz), fhir_datetime_to_dicom_time(text, tz=tz)
    assert day is not None and time is not None
    local = datetime.strptime(day + time, "%Y%m%d%H%M%S").replace(tzinfo=ZoneInfo(tz))
    written = moment.replace(tzinfo=timezone(offset))
    # Wall-clock times that a DST change repeats are ambiguous; the fold picks the other one.
    assert written.astimezone(UTC) in {local.astimezone(UTC), local.replace(fold=1).astimezone(UTC)}


# --- people ----------------------------------------------------------------------------------

def test_pn_to_fhir_name() -> None:
    assert pn_to_fhir_name("Doe^Jane^Q^Dr.^PhD") == {
        "text": "Dr. Jane Q Doe PhD", "family": "Doe", "given": ["Jane", "Q"], "prefix": ["Dr."], "suffix": ["PhD"]}
    assert pn_to_fhir_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == {
        "text": "Tarou Yamada", "family": "Yamada", "given": ["Tarou"]}
    assert pn_to_fhir_name("Cher") == {"text": "Cher", "family": "Cher"}
    assert pn_to_fhir_name("^^^") is None
    assert pn_to_fhir_name("=山田^太郎") is None
    assert pn_to_text("Müller^Jürgen^^Prof. Dr.") == "Prof. Dr. Jürgen Müller"


def test_fhir_name_to_pn() -> None:
    names = [{"use": "usual", "given": ["Jo"]}, {"use": "official", "family": "Doe", "given": ["Jane", "Q", "R"]},
             {"family": "Other"}]
    assert fhir_name_to_pn(names) == "Doe^Jane^Q R"
    assert fhir_name_to_pn([{"family": "First"}, {"use": "usual", "family": "Usual"}]) == "Usual"
    assert fhir_name_to_pn([{"family": "First"}, {"family": "Second"}]) == "First"
    assert fhir_name_to_pn({"family": "Doe", "prefix": ["Dr.", "med."], "suffix": ["MD"]}) == "Doe^^^Dr. med.^MD"
    assert fhir_name_to_pn({"text": "Jane Doe"}) == "Jane Doe"
    assert fhir_name_to_pn({"text": "Jane Doe", "family": "Doe"}) == "Doe"
    assert fhir_name_to_pn({"family": "O^Brien=x\\y"}) == "O Brien x y"
    assert fhir_name_to_pn("Dr. Anna Schmidt") == "Dr. Anna Schmidt"
    assert fhir_name_to_pn([]) is None
    assert fhir_name_to_pn({"use": "official"}) is None
    assert fhir_name_to_pn([{"use": "official", "period": {"end": "2001"}}, {"family": "Kept"}]) == "Kept"


_PART = st.from_regex(r"[A-Za-zÀ-ÿ\u0400-\u04ff\u4e00-\u4e20][a-zà-ÿ'\-\u0400-\u04ff]{0,12}", fullmatch=True)


@given(_PART, st.lists(_PART, max_size=2), st.lists(_PART, max_size=1), st.lists(_PART, max_size=1))
def test_simple_names_round_trip(family: str, given_names: list[str], prefix: list[str], suffix: list[str]) -> None:
    name: dict[str, Any] = {"family": family, "given": given_names, "prefix": prefix, "suffix": suffix}
    pn = fhir_name_to_pn(name)
    assert pn is not None
    back = pn_to_fhir_name(pn)
    assert back is not None
    assert back["family"] == family
    assert back.get("given", []) == given_names
    assert back.get("prefix", []) == prefix and back.get("suffix", []) == suffix
    assert fhir_name_to_pn(back) == pn


def test_sex_gender_and_priority() -> None:
    assert [dicom_sex_to_fhir(v) for v in ("M", "F", "O", "X", "")] == ["male", "female", "other", "unknown", "unknown"]
    assert [fhir_gender_to_dicom(v) for v in ("male", "female", "other", "unknown")] == ["M", "F", "O", None]
    assert [fhir_priority_to_dicom(v) for v in ("routine", "urgent", "asap", "stat")] == [
        "ROUTINE", "HIGH", "HIGH", "STAT"]
