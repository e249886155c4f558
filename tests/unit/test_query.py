"""Matching rules of PS3.4 §C.2.2.2 as the domain implements them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.domain.model import Level
from pacsbridge.domain.query import (
    Match,
    MatchKind,
    Query,
    fold_person_name,
    fuzzy_person_name,
    matches,
    matches_all,
    name_tokens,
    normalize_datetime,
    normalize_time,
    split_for_remote,
)


def pn(value: str) -> dict:
    return {"00100010": {"vr": "PN", "Value": [{"Alphabetic": value}]}}


@pytest.mark.parametrize(("written", "folded"), [
    ("Müller^Jürgen", "MULLER^JURGEN"), ("Gößmann", "GOSSMANN"), ("Łukasz", "LUKASZ"),
    ("Øster^Åsa", "OSTER^ASA"), ("García^José", "GARCIA^JOSE"), ("  doe^jane ", "DOE^JANE"),
])
def test_fold_person_name(written: str, folded: str) -> None:
    assert fold_person_name(written) == folded


@given(st.text())
def test_folding_is_idempotent(text: str) -> None:
    assert fold_person_name(fold_person_name(text)) == fold_person_name(text)


@pytest.mark.parametrize(("query", "hit"), [
    ("Müller^Jürgen", True), ("MULLER^JURGEN", True), ("mül*", True), ("*JÜRG*", True),
    ("M?ller*", True), ("Mueller*", False), ("Müller", False),
])
def test_person_name_matching(query: str, hit: bool) -> None:
    kind = MatchKind.WILDCARD if any(c in query for c in "*?") else MatchKind.SINGLE
    assert matches(Match("00100010", "PN", kind, value=query), pn("Müller^Jürgen")) is hit


def test_fuzzy_words_start_components() -> None:
    assert fuzzy_person_name("jo do", "Doe^John")
    assert fuzzy_person_name("doe", "Doe^John^^Dr.")
    assert not fuzzy_person_name("oh", "Doe^John")
    assert name_tokens("van der Berg^Jan") == "^VAN^DER^BERG^JAN^"


def test_single_value_matching_is_case_sensitive_except_pn() -> None:
    attrs = {"00100020": {"vr": "LO", "Value": ["abc"]}}
    assert matches(Match("00100020", "LO", MatchKind.SINGLE, value="abc"), attrs)
    assert not matches(Match("00100020", "LO", MatchKind.SINGLE, value="ABC"), attrs)


def test_empty_attribute_matches_only_universal() -> None:
    attrs = {"00080050": {"vr": "SH"}}
    assert matches(Match("00080050", "SH", MatchKind.UNIVERSAL), attrs)
    assert not matches(Match("00080050", "SH", MatchKind.SINGLE, value="X"), attrs)
    assert not matches(Match("00080050", "SH", MatchKind.WILDCARD, value="*"), {})


def test_ranges_are_inclusive_and_partial_upper_bounds_reach_the_end() -> None:
    def in_range(value: str, low: str | None, high: str | None, vr: str = "DA") -> bool:
        attrs = {"00080020": {"vr": vr, "Value": [value]}}
        return matches(Match("00080020", vr, MatchKind.RANGE, low=low, high=high), attrs)

    assert in_range("20240131", "20240101", "20240131")
    assert not in_range("20240201", "20240101", "20240131")
    assert in_range("20240101", "20240101", None) and in_range("19000101", None, "20240101")
    assert in_range("1715", None, "1715", "TM") and in_range("171559", None, "1715", "TM")
    assert not in_range("1716", None, "1715", "TM")
    assert normalize_time("08") == "080000.000000" and normalize_time("1700", ceil=True) == "170059.999999"
    assert normalize_datetime("2024", ceil=True) == "20241231235959.999999"


def test_sequence_matching_needs_one_item_matching_every_key() -> None:
    attrs = {"00400275": {"vr": "SQ", "Value": [
        {"00400009": {"vr": "SH", "Value": ["SPS1"]}, "00401001": {"vr": "SH", "Value": ["RP1"]}},
        {"00400009": {"vr": "SH", "Value": ["SPS2"]}, "00401001": {"vr": "SH", "Value": ["RP2"]}},
    ]}}
    inner = (Match("00400009", "SH", MatchKind.SINGLE, value="SPS2"), Match("00401001", "SH", MatchKind.SINGLE,
                                                                            value="RP2"))
    assert matches(Match("00400275", "SQ", MatchKind.SEQUENCE, items=inner), attrs)
    crossed = (inner[0], Match("00401001", "SH", MatchKind.SINGLE, value="RP1"))
    assert not matches(Match("00400275", "SQ", MatchKind.SEQUENCE, items=crossed), attrs)


def test_uid_lists() -> None:
    attrs = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}
    assert matches(Match("0020000D", "UI", MatchKind.UID_LIST, values=("9.9", "1.2.3")), attrs)
    assert not matches(Match("0020000D", "UI", MatchKind.UID_LIST, values=("1.2",)), attrs)


def test_a_sequence_key_with_only_return_keys_is_universal() -> None:
    """`RequestAttributesSequence.ScheduledProcedureStepID=` asks for a value, it filters nothing."""
    universal = Match("00400275", "SQ", MatchKind.SEQUENCE,
                      items=(Match("00400009", "SH", MatchKind.UNIVERSAL),))
    assert matches(universal, {})
    assert matches(universal, {"00400275": {"vr": "SQ"}})


def test_person_names_match_on_the_alphabetic_group() -> None:
    attrs = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]}}
    assert matches(Match("00100010", "PN", MatchKind.SINGLE, value="yamada^tarou"), attrs)
    assert not matches(Match("00100010", "PN", MatchKind.SINGLE, value="山田^太郎"), attrs)


# --- split_for_remote: what an upstream is asked, what is matched here ---------------------------------

def _context(*patients: str) -> Match:
    return Match("00100020", "LO", MatchKind.UID_LIST, values=patients)


def test_one_context_patient_becomes_a_single_value_key_for_the_upstream() -> None:
    universal = Match("00100020", "LO", MatchKind.UNIVERSAL)
    query = Query(Level.STUDY, (universal, _context("PAT-B")), limit=10, offset=5)
    remote, local = split_for_remote(query, uid_lists_anywhere=False, fuzzy=False)
    assert local == ()
    assert remote.matches == (Match("00100020", "LO", MatchKind.SINGLE, value="PAT-B"),)
    assert (remote.limit, remote.offset) == (10, 5) and "00100020" in remote.includefields


def test_several_patients_or_a_second_key_on_patient_id_are_matched_here_without_paging() -> None:
    for query in (Query(Level.SERIES, (_context("A", "B"),), limit=10, offset=5),
                  Query(Level.SERIES, (Match("00100020", "LO", MatchKind.WILDCARD, value="A*"), _context("A")),
                        limit=10)):
        remote, local = split_for_remote(query, uid_lists_anywhere=False, fuzzy=False)
        assert local == (query.matches[-1],)
        assert all(m.kind is not MatchKind.UID_LIST for m in remote.matches)
        assert remote.limit is None and remote.offset == 0 and "00100020" in remote.includefields


def test_uid_lists_stay_with_the_upstream_and_fuzzy_names_only_when_it_can() -> None:
    uids = Match("0020000D", "UI", MatchKind.UID_LIST, values=("1.2", "1.3"))
    name = Match("00100010", "PN", MatchKind.SINGLE, value="jo do")
    query = Query(Level.STUDY, (uids, name), fuzzy=True, limit=3)
    remote, local = split_for_remote(query, uid_lists_anywhere=False, fuzzy=True)
    assert remote.matches == (uids, name) and remote.fuzzy and local == ()
    remote, local = split_for_remote(query, uid_lists_anywhere=False, fuzzy=False)
    assert remote.matches == (uids,) and not remote.fuzzy and local == (name,)
    assert matches_all(local, {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}}, fuzzy=True)
