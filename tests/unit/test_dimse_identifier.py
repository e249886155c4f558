"""find_identifier: the C-FIND identifier of a Query, read back by find_query after a trip through the
bytes pynetdicom sends (PS3.4 C.2.2.2 matching syntax)."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from pacsbridge.domain.errors import InvalidInput
from pacsbridge.domain.model import Level
from pacsbridge.domain.query import Match, MatchKind, Query
from pacsbridge.formats.dimse_query import find_identifier, find_query, retrieve_scopes

STUDY_UID, OTHER_UID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def on_the_wire(ds: Dataset) -> Dataset:
    """The identifier as the peer decodes it (Implicit VR Little Endian, the default context)."""
    data = encode(ds, True, True)
    assert data is not None
    return decode(BytesIO(data), True, True)


def round_trip(query: Query, return_tags: tuple[str, ...] = ()) -> tuple[str, Query, tuple[str, ...]]:
    return find_query(on_the_wire(find_identifier(query, return_tags)))


def by_tag(matches: tuple[Match, ...]) -> dict[str, Match]:
    return {m.tag: m for m in matches}


@pytest.mark.parametrize(("level", "name"), [(Level.STUDY, "STUDY"), (Level.SERIES, "SERIES"),
                                             (Level.INSTANCE, "IMAGE")])
def test_level_and_character_set(level: Level, name: str) -> None:
    ds = find_identifier(Query(level), ())
    assert ds.QueryRetrieveLevel == name and ds.SpecificCharacterSet == "ISO_IR 192"
    parsed_level, query, _ = find_query(on_the_wire(ds))
    assert parsed_level == name and query.level is level and query.matches == ()


def test_single_value_person_name_with_non_ascii_letters_survives_utf8() -> None:
    match = Match("00100010", "PN", MatchKind.SINGLE, value="Müller^Jürgen")
    ds = find_identifier(Query(Level.STUDY, (match,)), ())
    assert "Müller^Jürgen".encode() in encode(ds, True, True)  # UTF-8 on the wire, as ISO_IR 192 says
    _, query, _ = round_trip(Query(Level.STUDY, (match,)))
    assert query.matches == (match,)


def test_wildcard_keeps_its_pattern() -> None:
    match = Match("00100010", "PN", MatchKind.WILDCARD, value="Sch?fer*")
    assert find_identifier(Query(Level.STUDY, (match,)), ()).PatientName == "Sch?fer*"
    assert round_trip(Query(Level.STUDY, (match,)))[1].matches == (match,)


@pytest.mark.parametrize(("low", "high", "text"), [("20240101", "20240131", "20240101-20240131"),
                                                   ("20240101", None, "20240101-"),
                                                   (None, "20240131", "-20240131")])
def test_date_range_open_on_either_side(low: str | None, high: str | None, text: str) -> None:
    match = Match("00080020", "DA", MatchKind.RANGE, low=low, high=high)
    assert find_identifier(Query(Level.STUDY, (match,)), ()).StudyDate == text
    assert round_trip(Query(Level.STUDY, (match,)))[1].matches == (match,)


def test_time_range() -> None:
    match = Match("00080030", "TM", MatchKind.RANGE, low="0800", high="123000.5")
    assert find_identifier(Query(Level.STUDY, (match,)), ()).StudyTime == "0800-123000.5"
    assert round_trip(Query(Level.STUDY, (match,)))[1].matches == (match,)


def test_uid_list_is_backslash_separated() -> None:
    match = Match("0020000D", "UI", MatchKind.UID_LIST, values=(STUDY_UID, OTHER_UID))
    encoded = encode(find_identifier(Query(Level.STUDY, (match,)), ()), True, True)
    assert f"{STUDY_UID}\\{OTHER_UID}".encode() in encoded
    assert round_trip(Query(Level.STUDY, (match,)))[1].matches == (match,)


def test_uid_list_on_another_vr_is_refused() -> None:
    match = Match("00100020", "LO", MatchKind.UID_LIST, values=("A", "B"))
    with pytest.raises(ValueError, match="00100020"):
        find_identifier(Query(Level.STUDY, (match,)), ())


def test_universal_match_and_return_keys_are_empty() -> None:
    query = Query(Level.SERIES, (Match("00080060", "CS", MatchKind.UNIVERSAL),))
    ds = find_identifier(query, ("0020000E", "00200011", "00400275"))
    assert ds["Modality"].is_empty and ds["SeriesInstanceUID"].is_empty and ds["SeriesNumber"].is_empty
    assert ds["RequestAttributesSequence"].VR == "SQ" and len(ds.RequestAttributesSequence) == 0
    _, parsed, requested = find_query(on_the_wire(ds))
    assert set(requested) == {"00080005", "00080052", "00080060", "0020000E", "00200011", "00400275"}
    assert {m.kind for m in parsed.matches} == {MatchKind.UNIVERSAL}


def test_a_return_key_that_is_also_a_match_keeps_the_match() -> None:
    match = Match("00100020", "LO", MatchKind.SINGLE, value="PID-1")
    ds = find_identifier(Query(Level.STUDY, (match,)), ("00100020", "00100010"))
    assert ds.PatientID == "PID-1" and ds["PatientName"].is_empty


def test_sequence_match_is_one_item_with_its_keys() -> None:
    match = Match("00081110", "SQ", MatchKind.SEQUENCE, items=(
        Match("00081150", "UI", MatchKind.UID_LIST, values=(STUDY_UID,)),
        Match("00081155", "UI", MatchKind.UNIVERSAL),
    ))
    ds = find_identifier(Query(Level.STUDY, (match,)), ())
    (item,) = ds.ReferencedStudySequence
    assert item.ReferencedSOPClassUID == STUDY_UID and item["ReferencedSOPInstanceUID"].is_empty
    assert round_trip(Query(Level.STUDY, (match,)))[1].matches == (match,)


def test_numbers_are_written_in_their_binary_vr() -> None:
    match = Match("00280010", "US", MatchKind.SINGLE, value="512")
    ds = find_identifier(Query(Level.INSTANCE, (match,)), ())
    assert ds.Rows == 512
    assert round_trip(Query(Level.INSTANCE, (match,)))[1].matches == (match,)


def test_every_kind_at_once_reads_back_as_the_same_matches() -> None:
    matches = (
        Match("00100020", "LO", MatchKind.SINGLE, value="PID-1"),
        Match("00100010", "PN", MatchKind.WILDCARD, value="Øster^Å*"),
        Match("00080020", "DA", MatchKind.RANGE, low="20240101", high="20241231"),
        Match("00080030", "TM", MatchKind.RANGE, low=None, high="120000"),
        Match("0020000D", "UI", MatchKind.UID_LIST, values=(STUDY_UID, OTHER_UID)),
        Match("00080050", "SH", MatchKind.UNIVERSAL),
        Match("00081110", "SQ", MatchKind.SEQUENCE, items=(
            Match("00081150", "UI", MatchKind.UID_LIST, values=(OTHER_UID,)),)),
    )
    return_tags = ("00080005", "00080061", "00201208", "00100030")
    level, parsed, requested = round_trip(Query(Level.STUDY, matches), return_tags)
    assert level == "STUDY"
    returned = {"00080061", "00201208", "00100030"}
    parsed_by_tag = by_tag(parsed.matches)
    # The return keys come back as universal keys; everything else is the original match.
    assert {t for t in parsed_by_tag if t not in by_tag(matches)} == returned
    assert all(parsed_by_tag[t].kind is MatchKind.UNIVERSAL for t in returned)
    assert {t: m for t, m in parsed_by_tag.items() if t not in returned} == by_tag(matches)
    assert set(requested) >= returned | set(by_tag(matches))


@pytest.mark.parametrize("patient_id", ["PAT-*", "PAT-?", "*", "PAT-A\\PAT-B", ""])
def test_a_patient_retrieve_takes_one_patient_id_not_a_pattern_or_a_list(patient_id: str) -> None:
    """PatientID is the unique key of a PATIENT retrieve (PS3.4 C.4.2.2.1): one value, which an upstream
    archive must not get to expand."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = patient_id
    with pytest.raises(InvalidInput, match="PATIENT retrieve needs PatientID"):
        retrieve_scopes(on_the_wire(identifier))


def test_a_patient_retrieve_keeps_its_one_patient_id() -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "PAT-A "
    assert retrieve_scopes(on_the_wire(identifier)) == ("PATIENT", [], "PAT-A")
