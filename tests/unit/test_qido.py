"""QIDO-RS query parameters (PS3.18 §8.3.4) <-> domain Query: formats/qido.py."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import keyword_for_tag

from pacsbridge.domain.errors import InvalidInput
from pacsbridge.domain.model import Level
from pacsbridge.domain.query import Match, MatchKind, Query, matches_all
from pacsbridge.formats.qido import encode_qido, parse_qido


def parse(*params: tuple[str, str], level: Level = Level.STUDY, **kwargs: Any) -> Query:
    return parse_qido(list(params), level, **kwargs)


def only_match(query: Query) -> Match:
    assert len(query.matches) == 1
    return query.matches[0]


# --- what real clients send ---------------------------------------------------------------------

def test_ohif_study_list_query() -> None:
    query = parse(("limit", "101"), ("offset", "0"), ("fuzzymatching", "true"),
                  ("includefield", "00081030,00080060,00080020"))
    assert query == Query(level=Level.STUDY, includefields=("00081030", "00080060", "00080020"),
                          limit=101, offset=0, fuzzy=True)
    assert query.extra == {}


def test_tag_form_key_with_wildcards() -> None:
    assert only_match(parse(("00100020", "*abc*"))) == Match(
        tag="00100020", vr="LO", kind=MatchKind.WILDCARD, value="*abc*")


def test_utf8_person_name_wildcard_matches_folded_names() -> None:
    query = parse(("PatientName", "Müller*"))
    assert only_match(query) == Match(tag="00100010", vr="PN", kind=MatchKind.WILDCARD, value="Müller*")
    assert matches_all(query.matches, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "MULLER^HANS"}]}})
    assert not matches_all(query.matches, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Meier"}]}})


def test_keyword_and_any_case_hex_name_the_same_attribute() -> None:
    expected = Match(tag="0020000D", vr="UI", kind=MatchKind.UID_LIST, values=("1.2.3",))
    assert only_match(parse(("StudyInstanceUID", "1.2.3"))) == expected
    assert only_match(parse(("0020000d", "1.2.3"))) == expected
    with pytest.raises(InvalidInput):
        parse(("StudyInstanceUID", "1.2.3"), ("0020000D", "1.2.4"))


def test_lower_level_keys_are_filters_not_errors() -> None:
    match = only_match(parse(("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), level=Level.STUDY))
    assert match.tag == "00080016"


# --- matching kinds ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("PatientName", "", Match(tag="00100010", vr="PN", kind=MatchKind.UNIVERSAL)),
        ("PatientID", "*", Match(tag="00100020", vr="LO", kind=MatchKind.UNIVERSAL)),
        ("PatientID", "**", Match(tag="00100020", vr="LO", kind=MatchKind.UNIVERSAL)),
        ("StudyDate", "", Match(tag="00080020", vr="DA", kind=MatchKind.UNIVERSAL)),
        ("PatientID", "12?4", Match(tag="00100020", vr="LO", kind=MatchKind.WILDCARD, value="12?4")),
        ("ModalitiesInStudy", "CT", Match(tag="00080061", vr="CS", kind=MatchKind.SINGLE, value="CT")),
        ("AccessionNumber", "A 1", Match(tag="00080050", vr="SH", kind=MatchKind.SINGLE, value="A 1")),
        ("StudyInstanceUID", "1.2.3,1.2.4",
         Match(tag="0020000D", vr="UI", kind=MatchKind.UID_LIST, values=("1.2.3", "1.2.4"))),
        ("StudyInstanceUID", "1.2.3\\1.2.4",
         Match(tag="0020000D", vr="UI", kind=MatchKind.UID_LIST, values=("1.2.3", "1.2.4"))),
        ("StudyDate", "20240131", Match(tag="00080020", vr="DA", kind=MatchKind.SINGLE, value="20240131")),
        ("StudyDate", "20240101-20240131",
         Match(tag="00080020", vr="DA", kind=MatchKind.RANGE, low="20240101", high="20240131")),
        ("StudyDate", "-20240131", Match(tag="00080020", vr="DA", kind=MatchKind.RANGE, high="20240131")),
        ("StudyDate", "20240101-", Match(tag="00080020", vr="DA", kind=MatchKind.RANGE, low="20240101")),
        ("StudyDate", "-", Match(tag="00080020", vr="DA", kind=MatchKind.UNIVERSAL)),
        ("StudyTime", "0800-170000.5",
         Match(tag="00080030", vr="TM", kind=MatchKind.RANGE, low="0800", high="170000.5")),
        ("StudyTime", "08:00:00", Match(tag="00080030", vr="TM", kind=MatchKind.SINGLE, value="08:00:00")),
        ("AcquisitionDateTime", "2024-2025",
         Match(tag="0008002A", vr="DT", kind=MatchKind.RANGE, low="2024", high="2025")),
        ("AcquisitionDateTime", "20240101120000-0500",
         Match(tag="0008002A", vr="DT", kind=MatchKind.SINGLE, value="20240101120000-0500")),
        ("AcquisitionDateTime", "20240101120000+0100-20240102120000-0500",
         Match(tag="0008002A", vr="DT", kind=MatchKind.RANGE, low="20240101120000+0100",
               high="20240102120000-0500")),
        ("SeriesNumber", "3", Match(tag="00200011", vr="IS", kind=MatchKind.SINGLE, value="3")),
        ("SliceThickness", "1.25", Match(tag="00180050", vr="DS", kind=MatchKind.SINGLE, value="1.25")),
        ("Rows", "512", Match(tag="00280010", vr="US", kind=MatchKind.SINGLE, value="512")),
        ("00091001", "Siemens", Match(tag="00091001", vr="UN", kind=MatchKind.SINGLE, value="Siemens")),
        ("00091001", "", Match(tag="00091001", vr="UN", kind=MatchKind.UNIVERSAL)),
        ("00081234", "x", Match(tag="00081234", vr="UN", kind=MatchKind.SINGLE, value="x")),
        ("SmallestImagePixelValue", "0", Match(tag="00280106", vr="US", kind=MatchKind.SINGLE, value="0")),
    ],
)
def test_match_kinds(key: str, value: str, expected: Match) -> None:
    assert only_match(parse((key, value))) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("StudyInstanceUID", "1.2.Secret"),
        ("StudyInstanceUID", "1.2.3,"),
        ("StudyInstanceUID", "1.2.*"),
        ("StudyInstanceUID", "1." + "2" * 64),
        ("StudyDate", "2024*"),
        ("StudyDate", "20241301"),
        ("StudyDate", "20240230"),
        ("StudyDate", "2024-01-01"),
        ("StudyDate", "Secret-20240101"),
        ("StudyTime", "2500"),
        ("StudyTime", "0860"),
        ("AcquisitionDateTime", "20240101120000+2500"),
        ("AcquisitionDateTime", "202413"),
        ("SeriesNumber", "Secret"),
        ("SeriesNumber", "1*"),
        ("SeriesNumber", "1.5"),
        ("SliceThickness", "1,5"),
        ("Rows", "many"),
        ("00091001", "Sec*ret"),
        ("PixelData", "Secret"),
        ("RequestAttributesSequence", "Secret"),
        ("PatientName.PatientID", "Secret"),
        ("ReferencedSeriesSequence.ReferencedImageSequence.ReferencedSOPInstanceUID", "1.2"),
    ],
)
def test_invalid_values_raise_without_echoing_them(key: str, value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse((key, value))
    assert "Secret" not in caught.value.message
    assert value not in caught.value.message or value in key


def test_duplicate_match_keys_are_rejected() -> None:
    with pytest.raises(InvalidInput):
        parse(("PatientID", "a"), ("PatientID", "b"))
    with pytest.raises(InvalidInput):
        parse(("PatientID", "a"), ("00100020", ""))
    with pytest.raises(InvalidInput):
        parse(("00400275.00400009", "a"), ("RequestAttributesSequence.ScheduledProcedureStepID", "b"))
    with pytest.raises(InvalidInput):
        parse(("RequestAttributesSequence", ""), ("RequestAttributesSequence", ""))


# --- sequences -----------------------------------------------------------------------------------

def test_keys_into_one_sequence_merge() -> None:
    query = parse(("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1"), ("Modality", "CT"),
                  ("00400275.00401001", "RP*"), level=Level.SERIES)
    assert query.matches == (
        Match(tag="00400275", vr="SQ", kind=MatchKind.SEQUENCE, items=(
            Match(tag="00400009", vr="SH", kind=MatchKind.SINGLE, value="SPS1"),
            Match(tag="00401001", vr="SH", kind=MatchKind.WILDCARD, value="RP*"),
        )),
        Match(tag="00080060", vr="CS", kind=MatchKind.SINGLE, value="CT"),
    )
    series = {"00080060": {"vr": "CS", "Value": ["CT"]}, "00400275": {"vr": "SQ", "Value": [
        {"00400009": {"vr": "SH", "Value": ["SPS0"]}, "00401001": {"vr": "SH", "Value": ["RP9"]}},
        {"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}},
    ]}}
    assert matches_all(query.matches, series)


def test_bare_sequence_key_is_universal_and_gives_way_to_item_keys() -> None:
    assert only_match(parse(("RequestAttributesSequence", ""))) == Match(
        tag="00400275", vr="SQ", kind=MatchKind.UNIVERSAL)
    item = Match(tag="00400009", vr="SH", kind=MatchKind.SINGLE, value="X")
    sequence = Match(tag="00400275", vr="SQ", kind=MatchKind.SEQUENCE, items=(item,))
    assert only_match(parse(("RequestAttributesSequence", ""), ("00400275.00400009", "X"))) == sequence
    assert only_match(parse(("00400275.00400009", "X"), ("RequestAttributesSequence", ""))) == sequence


def test_item_key_that_is_itself_a_sequence_can_only_be_universal() -> None:
    match = only_match(parse(("ReferencedSeriesSequence.ReferencedImageSequence", "")))
    assert match.items == (Match(tag="00081140", vr="SQ", kind=MatchKind.UNIVERSAL),)


# --- includefield, paging, flags -----------------------------------------------------------------

def test_includefield_forms() -> None:
    query = parse(("includefield", "PatientAge,00101010"), ("includefield", "0008103e"),
                  ("includefield", "RequestAttributesSequence.ScheduledProcedureStepID,"),
                  ("includeField", "00091001"))
    assert query.includefields == ("00101010", "0008103E", "00400275", "00091001")
    assert not query.include_all
    everything = parse(("includefield", "all"))
    assert everything.include_all and everything.includefields == ()
    with pytest.raises(InvalidInput) as caught:
        parse(("includefield", "PatientNam"))
    assert "PatientNam" not in caught.value.message


def test_limit_and_offset() -> None:
    assert parse().limit is None and parse().offset == 0
    assert parse(default_limit=50).limit == 50
    assert parse(default_limit=5000, max_limit=200).limit == 200
    capped = parse(("limit", "5000"), max_limit=1000)
    assert capped.limit == 1000 and capped.extra["limit_capped"] is True
    assert "limit_capped" not in parse(("limit", "1000")).extra
    assert parse(("limit", "0"), ("offset", "20")).limit == 0
    assert parse(("offset", "20")).offset == 20
    for bad in ("-1", "ten", "1.5", "", "١٢"):
        with pytest.raises(InvalidInput):
            parse(("limit", bad))
        with pytest.raises(InvalidInput):
            parse(("offset", bad))
    with pytest.raises(InvalidInput):
        parse(("limit", "10"), ("limit", "20"))


def test_fuzzymatching() -> None:
    assert parse(("fuzzymatching", "true")).fuzzy
    assert parse(("FuzzyMatching", "TRUE")).fuzzy
    assert not parse(("fuzzymatching", "false")).fuzzy
    for bad in ("yes", "1", ""):
        with pytest.raises(InvalidInput):
            parse(("fuzzymatching", bad))


def test_timezone_offset_is_kept_apart() -> None:
    query = parse(("TimezoneOffsetFromUTC", "-0500"), ("StudyDate", "20240101"))
    assert query.extra["timezone_offset"] == "-0500"
    assert [m.tag for m in query.matches] == ["00080020"]
    assert parse(("00080201", "+1400")).extra["timezone_offset"] == "+1400"
    assert "timezone_offset" not in parse(("TimezoneOffsetFromUTC", "")).extra
    assert parse(("TimezoneOffsetFromUTC", " 0100")).extra["timezone_offset"] == "+0100"  # '+' unencoded
    assert only_match(parse(("AcquisitionDateTime", "20240101120000 0100-"))).low == "20240101120000+0100"
    for bad in ("0500", "+1500", "+0160", "UTC"):
        with pytest.raises(InvalidInput):
            parse(("TimezoneOffsetFromUTC", bad))
    again = parse_qido(encode_qido(query), Level.STUDY)
    assert again == query and again.extra["timezone_offset"] == "-0500"


def test_unknown_parameters_are_ignored_and_listed() -> None:
    query = parse(("_dc", "1712345"), ("callback", "cb"), ("NotAKeyword", "x"), ("Foo.Bar", "y"),
                  ("PatientID", "7"))
    assert [m.tag for m in query.matches] == ["00100020"]
    assert query.extra["ignored"] == ["_dc", "callback", "NotAKeyword", "Foo.Bar"]


# --- encode_qido and properties ------------------------------------------------------------------

def test_encode_qido() -> None:
    query = Query(
        level=Level.STUDY,
        matches=(
            Match(tag="00100010", vr="PN", kind=MatchKind.WILDCARD, value="Doe*"),
            Match(tag="00080020", vr="DA", kind=MatchKind.RANGE, low="20240101"),
            Match(tag="0020000D", vr="UI", kind=MatchKind.UID_LIST, values=("1.2", "1.3")),
            Match(tag="00100020", vr="LO", kind=MatchKind.UNIVERSAL),
            Match(tag="00400275", vr="SQ", kind=MatchKind.SEQUENCE, items=(
                Match(tag="00400009", vr="SH", kind=MatchKind.SINGLE, value="S1"),)),
        ),
        includefields=("00081030", "00080060"),
        include_all=True, limit=25, offset=50, fuzzy=True,
    )
    assert encode_qido(query) == [
        ("00100010", "Doe*"), ("00080020", "20240101-"), ("0020000D", "1.2,1.3"), ("00100020", ""),
        ("00400275.00400009", "S1"), ("includefield", "all,00081030,00080060"),
        ("fuzzymatching", "true"), ("limit", "25"), ("offset", "50"),
    ]
    assert parse_qido(encode_qido(query), Level.STUDY) == query


STRING_FIELDS = [("00100010", "PN"), ("00100020", "LO"), ("00080050", "SH"), ("00080060", "CS"),
                 ("00081030", "LO"), ("00080090", "PN")]
ITEM_FIELDS = [("00400009", "SH"), ("00401001", "SH"), ("00321060", "LO"), ("0020000D", "UI"),
               ("00400244", "DA")]
plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="*?"), min_size=1,
                max_size=12)
with_wildcard = st.tuples(plain | st.just(""), st.sampled_from(["*", "?"]), plain | st.just("")).map(
    "".join).filter(lambda s: s.strip("*") != "")
uids = st.from_regex(r"[12](\.[1-9][0-9]{0,6}){1,5}", fullmatch=True)
dates = st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}")
times = st.from_regex(r"(0[0-9]|1[0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?", fullmatch=True)
offsets = st.from_regex(r"[+-](0[0-9]|1[0-3])[0-5][0-9]", fullmatch=True)
datetimes = st.tuples(st.dates(min_value=datetime.date(1900, 1, 1)), times, st.none() | offsets).map(
    lambda t: f"{t[0].year:04d}{t[0].month:02d}{t[0].day:02d}" + t[1] + (t[2] or ""))


def range_of(values: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str | None, str | None]]:
    return st.tuples(st.none() | values, st.none() | values).filter(lambda lh: lh != (None, None))


def match_for(tag: str, vr: str) -> st.SearchStrategy[Match]:
    universal = st.just(Match(tag=tag, vr=vr, kind=MatchKind.UNIVERSAL))
    if vr == "UI":
        return universal | st.lists(uids, min_size=1, max_size=3).map(
            lambda us: Match(tag=tag, vr=vr, kind=MatchKind.UID_LIST, values=tuple(us)))
    if vr in ("DA", "TM", "DT"):
        values = {"DA": dates, "TM": times, "DT": datetimes}[vr]
        return (universal | values.map(lambda v: Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=v))
                | range_of(values).map(lambda lh: Match(tag=tag, vr=vr, kind=MatchKind.RANGE, low=lh[0],
                                                        high=lh[1])))
    if vr in ("IS", "US"):
        return universal | st.integers(0, 65535).map(
            lambda n: Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=str(n)))
    if vr == "DS":
        return universal | st.decimals(-1000, 1000, places=3).map(
            lambda d: Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=str(d)))
    if vr == "UN":
        return universal | plain.map(lambda v: Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=v))
    return (universal | plain.map(lambda v: Match(tag=tag, vr=vr, kind=MatchKind.SINGLE, value=v))
            | with_wildcard.map(lambda v: Match(tag=tag, vr=vr, kind=MatchKind.WILDCARD, value=v)))


TOP_FIELDS = [
    *STRING_FIELDS, ("00080020", "DA"), ("00080030", "TM"), ("0008002A", "DT"), ("0020000D", "UI"),
    ("0020000E", "UI"), ("00200011", "IS"), ("00180050", "DS"), ("00280010", "US"), ("00091001", "UN"),
]


@st.composite
def queries(draw: st.DrawFn) -> Query:
    fields = draw(st.lists(st.sampled_from(TOP_FIELDS), max_size=6, unique=True))
    matches = [draw(match_for(tag, vr)) for tag, vr in fields]
    if draw(st.booleans()):
        inner = draw(st.lists(st.sampled_from(ITEM_FIELDS), min_size=1, max_size=3, unique=True))
        sequence = Match(tag="00400275", vr="SQ", kind=MatchKind.SEQUENCE,
                         items=tuple(draw(match_for(tag, vr)) for tag, vr in inner))
        matches.insert(draw(st.integers(0, len(matches))), sequence)
    includefields = draw(st.lists(st.sampled_from([t for t, _ in TOP_FIELDS] + ["00400275"]), max_size=4,
                                  unique=True))
    return Query(
        level=draw(st.sampled_from(list(Level))),
        matches=tuple(matches),
        includefields=tuple(includefields),
        include_all=draw(st.booleans()),
        limit=draw(st.none() | st.integers(0, 1000)),
        offset=draw(st.integers(0, 10**6)),
        fuzzy=draw(st.booleans()),
    )


def keyword_form(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def name(tag: str) -> str:
        return keyword_for_tag(int(tag, 16)) or tag
    out = []
    for key, value in params:
        if key in ("includefield", "fuzzymatching", "limit", "offset"):
            out.append((key, value))
        else:
            out.append((".".join(name(part) for part in key.split(".")), value))
    return out


@settings(max_examples=300, deadline=None)
@given(queries())
def test_encode_then_parse_gives_the_query_back(query: Query) -> None:
    params = encode_qido(query)
    assert parse_qido(params, query.level) == query
    assert parse_qido(keyword_form(params), query.level) == query


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["limit", "offset", "fuzzymatching", "includefield", "PatientName", "StudyDate",
                     "0020000D", "00400275.00400009", "RequestAttributesSequence", "AcquisitionDateTime",
                     "SeriesNumber", "00091001", "TimezoneOffsetFromUTC", "_dc"]) | st.text(max_size=20),
    st.text(max_size=30)), max_size=8))
def test_any_parameters_give_a_query_or_invalid_input(params: list[tuple[str, str]]) -> None:
    try:
        query = parse_qido(params, Level.SERIES, default_limit=10, max_limit=100)
    except InvalidInput:
        return
    assert query.limit is not None and 0 <= query.limit <= 100
    assert len({m.tag for m in query.matches}) == len(query.matches)
