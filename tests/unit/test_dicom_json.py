"""DICOM JSON model (PS3.18 Annex F): formats/dicom_json.py against pydicom's bundled files and
random datasets written to and read back from real Part 10 bytes."""

from __future__ import annotations

import base64
import datetime
import io
import json
import math
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsbridge.domain.errors import InvalidInput
from pacsbridge.formats.dicom_json import (
    attribute_values,
    dataset_to_json,
    json_to_dataset,
    pixel_data_json,
)


def bundled(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


TEST_FILES = Path(bundled("CT_small.dcm")).parent
CHARSET_FILES = TEST_FILES.parent / "charset_files"
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    # pydicom warns about the odd values some bundled files and generated examples carry.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def uri(path: str) -> str:
    return f"https://px.example/bulk/{path}"


def read(name: str, **kwargs: Any) -> pydicom.FileDataset:
    return pydicom.dcmread(bundled(name), **kwargs)


def explicit_le(*elements: tuple[int, str, bytes]) -> Dataset:
    """A dataset read from hand-made Explicit VR Little Endian bytes (no File Meta)."""
    out = bytearray()
    for tag, vr, value in elements:
        if len(value) % 2:
            value += b"\x00" if vr in {"OB", "UI", "UN"} else b" "
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
        out += b"\x00\x00" + struct.pack("<L", len(value)) if vr in LONG_LENGTH_VRS else struct.pack(
            "<H", len(value))
        out += value
    return pydicom.dcmread(io.BytesIO(bytes(out)), force=True)


def through_file(ds: Dataset, transfer_syntax: str) -> pydicom.FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def fully_converted(ds: Dataset) -> Dataset:
    for _ in ds.iterall():
        pass
    return ds


def assert_well_formed(obj: dict[str, Any]) -> None:
    keys = list(obj)
    assert keys == sorted(keys)
    for key, attr in obj.items():
        assert len(key) == 8 and key == key.upper() and int(key, 16) >= 0
        assert not key.startswith("0002") and not key.endswith("0000")
        assert isinstance(attr["vr"], str)
        assert len({"Value", "InlineBinary", "BulkDataURI"} & set(attr)) <= 1
        if attr["vr"] == "SQ":
            for item in attr.get("Value", []):
                assert_well_formed(item)


# --- the shape of real headers -----------------------------------------------------------------

def test_ct_header() -> None:
    obj = dataset_to_json(read("CT_small.dcm", stop_before_pixels=True))
    assert_well_formed(obj)
    json.dumps(obj, allow_nan=False)
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert obj["00200032"] == {"vr": "DS", "Value": [-158.135803, -179.035797, -75.699997]}
    assert obj["00280010"] == {"vr": "US", "Value": [128]}
    assert obj["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]}
    assert obj["00090010"] == {"vr": "LO", "Value": ["GEMS_IDEN_01"]}  # private creator kept
    assert any(key.startswith("0009") and key != "00090010" for key in obj)  # and its elements
    assert "7FE00010" not in obj


def test_all_bundled_files_agree_between_raw_and_converted_paths() -> None:
    """Bytes converted here give exactly what pydicom's converted elements give, file by file."""
    files = sorted(TEST_FILES.glob("*.dcm")) + sorted(CHARSET_FILES.glob("*.dcm"))
    assert len(files) > 50
    for path in files:
        try:
            raw = pydicom.dcmread(path, force=True)
        except Exception:  # truncated files pydicom itself cannot read
            continue
        obj = dataset_to_json(raw, uri, 64)
        assert obj == dataset_to_json(fully_converted(pydicom.dcmread(path, force=True)), uri, 64), path.name
        assert_well_formed(obj)
        json.dumps(obj, allow_nan=False)
        inline = dataset_to_json(pydicom.dcmread(path, force=True))
        assert dataset_to_json(json_to_dataset(inline)) == inline, path.name


def test_big_endian_and_implicit_files_give_the_same_json() -> None:
    little = dataset_to_json(read("MR_small.dcm"))
    assert dataset_to_json(read("MR_small_bigendian.dcm")) == little  # OW pixel data swapped back
    implicit = dataset_to_json(read("MR_small_implicit.dcm"))
    assert {k: v for k, v in implicit.items() if k != "7FE00010"} == {
        k: v for k, v in little.items() if k != "7FE00010"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrJapMulti.dcm", {"Alphabetic": "やまだ^たろう"}),  # ISO 2022 escapes inside one group
        ("chrX1.dcm", {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}),
        ("chrRuss.dcm", {"Alphabetic": "Люкceмбypг"}),
        ("chrFren.dcm", {"Alphabetic": "Buc^Jérôme"}),
        ("chrGerm.dcm", {"Alphabetic": "Äneas^Rüdiger"}),
        ("chrH31.dcm", {
            "Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}),
    ],
)
def test_person_names_are_decoded_per_specific_character_set(name: str, expected: dict[str, str]) -> None:
    ds = pydicom.dcmread(CHARSET_FILES / name)
    groups = str(fully_converted(pydicom.dcmread(CHARSET_FILES / name)).PatientName).split("=")
    obj = dataset_to_json(ds)
    value = obj["00100010"]["Value"][0]
    assert value == expected
    names = ("Alphabetic", "Ideographic", "Phonetic")
    assert value == {g: v for g, v in zip(names, groups, strict=False) if v}
    assert all(isinstance(v, str) for v in value.values())


# --- binary values and bulk data -----------------------------------------------------------------

def test_pixel_data_is_inline_without_bulk_uri_and_always_bulk_with_one() -> None:
    ds = read("CT_small.dcm")
    inline = dataset_to_json(ds)["7FE00010"]
    assert inline["vr"] == "OW"
    assert base64.b64decode(inline["InlineBinary"]) == ds.PixelData
    assert dataset_to_json(ds, uri, bulk_threshold=10**9)["7FE00010"] == {
        "vr": "OW", "BulkDataURI": "https://px.example/bulk/7FE00010"}

    tiny = Dataset()
    tiny.add_new(0x7FE00010, "OB", b"\x01\x02")
    tiny.add_new(0x7FE00008, "OF", b"\x00\x00\x80\x3f")
    obj = dataset_to_json(tiny, uri)
    assert obj["7FE00010"] == {"vr": "OB", "BulkDataURI": uri("7FE00010")}
    assert obj["7FE00008"] == {"vr": "OF", "BulkDataURI": uri("7FE00008")}


def test_bulk_threshold_and_paths_into_sequences() -> None:
    ds = Dataset()
    ds.add_new(0x00420011, "OB", b"x" * 2000)  # EncapsulatedDocument
    ds.add_new(0x0008041B, "OB", b"small!")  # RecordKey
    first, second = Dataset(), Dataset()
    second.add_new(0x00420011, "OB", b"y" * 1025)
    icon = Dataset()
    icon.add_new(0x7FE00010, "OB", b"\x00" * 16)
    second.IconImageSequence = Sequence([icon])
    ds.ContentSequence = Sequence([first, second])

    obj = dataset_to_json(ds, uri, bulk_threshold=1024)
    assert obj["00420011"] == {"vr": "OB", "BulkDataURI": uri("00420011")}
    assert obj["0008041B"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"small!").decode()}
    items = obj["0040A730"]["Value"]
    assert items[0] == {}
    assert items[1]["00420011"] == {"vr": "OB", "BulkDataURI": uri("0040A730/1/00420011")}
    assert items[1]["00880200"]["Value"][0]["7FE00010"] == {
        "vr": "OB", "BulkDataURI": uri("0040A730/1/00880200/0/7FE00010")}
    # the same paths when the sequences are still bytes
    assert dataset_to_json(through_file(ds, ExplicitVRLittleEndian), uri, 1024) == obj


def test_stop_before_pixels_and_pixel_data_json() -> None:
    ds = read("MR_small.dcm", stop_before_pixels=True)
    obj = dataset_to_json(ds, uri)
    assert "7FE00010" not in obj
    assert pixel_data_json("OW", uri) == {"vr": "OW", "BulkDataURI": uri("7FE00010")}


def test_deferred_values_are_not_read_when_they_become_bulk_data() -> None:
    path = bundled("CT_small.dcm")
    ds = pydicom.dcmread(path, defer_size=256)
    obj = dataset_to_json(ds, uri)
    assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": uri("7FE00010")}
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None
    assert dataset_to_json(pydicom.dcmread(path, defer_size=256)) == dataset_to_json(pydicom.dcmread(path))


# --- value representations -----------------------------------------------------------------------

def test_empty_values_nulls_and_padding() -> None:
    ds = explicit_le(
        (0x00080008, "CS", b"A\\\\B "),
        (0x00080016, "UI", b"1.2.3\x00"),
        (0x00080050, "SH", b""),
        (0x00080070, "LO", b"  ACME  "),
        (0x00081030, "LO", b"   "),
        (0x00100010, "PN", b"Doe^John  "),
        (0x00104000, "LT", b"  indented\\text  "),
        (0x00081140, "SQ", b""),
        (0x00081150, "UI", b"1.2\x00"),
    )
    obj = dataset_to_json(ds)
    assert obj["00080008"] == {"vr": "CS", "Value": ["A", None, "B"]}
    assert obj["00080016"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert obj["00080050"] == {"vr": "SH"}
    assert obj["00080070"] == {"vr": "LO", "Value": ["ACME"]}
    assert obj["00081030"] == {"vr": "LO"}
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert obj["00104000"] == {"vr": "LT", "Value": ["  indented\\text"]}  # leading spaces count in LT
    assert obj["00081140"] == {"vr": "SQ"}


def test_empty_sequence_item_is_an_empty_object() -> None:
    ds = Dataset()
    ds.ReferencedSeriesSequence = Sequence([Dataset(), Dataset()])
    obj = dataset_to_json(ds)
    assert obj == {"00081115": {"vr": "SQ", "Value": [{}, {}]}}
    assert dataset_to_json(through_file(ds, ImplicitVRLittleEndian)) == obj
    assert dataset_to_json(json_to_dataset(obj)) == obj


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", 12), ("+7", 7), ("-0", 0), ("1.50", 1.5), ("1.0", 1), ("1e3", 1000), ("-2.5E-3", -0.0025),
        (".5", 0.5), ("1234567890123456", 1234567890123456),
        ("9999999999999999", "9999999999999999"),  # beyond 2**53: exact only as text
        ("0.12345678901234567", "0.12345678901234567"),  # 17 significant digits (too long, seen anyway)
        ("1e400", "1e400"), ("1e-400", "1e-400"), ("abc", "abc"), ("NaN", "NaN"), ("1,5", "1,5"),
    ],
)
def test_decimal_strings(text: str, expected: Any) -> None:
    obj = dataset_to_json(explicit_le((0x00101020, "DS", text.encode())))
    assert obj["00101020"] == {"vr": "DS", "Value": [expected]}
    assert type(obj["00101020"]["Value"][0]) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("714", 714), ("-3", -3), (" 42 ", 42), ("9007199254740993", "9007199254740993"), ("1A", "1A")],
)
def test_integer_strings(text: str, expected: Any) -> None:
    obj = dataset_to_json(explicit_le((0x00201002, "IS", text.encode())))
    assert obj["00201002"] == {"vr": "IS", "Value": [expected]}
    assert dataset_to_json(json_to_dataset(obj)) == obj


def test_non_finite_floats_are_strings_and_come_back() -> None:
    ds = Dataset()
    ds.add_new(0x00120052, "FD", [math.nan, math.inf, -math.inf, 1.5])
    ds.add_new(0x00089459, "FL", [math.inf])
    obj = dataset_to_json(ds)
    assert obj["00120052"] == {"vr": "FD", "Value": ["NaN", "Infinity", "-Infinity", 1.5]}
    assert obj["00089459"] == {"vr": "FL", "Value": ["Infinity"]}
    json.dumps(obj, allow_nan=False)
    back = json_to_dataset(obj)
    values = list(back[0x00120052].value)
    assert math.isnan(values[0]) and values[1:] == [math.inf, -math.inf, 1.5]


def test_64_bit_integers_beyond_2_to_53_are_strings() -> None:
    ds = Dataset()
    ds.add_new(0x00720082, "SV", [-(2**63), 5, 2**53])
    ds.add_new(0x0008040C, "UV", [2**64 - 1])
    obj = dataset_to_json(ds)
    assert obj["00720082"] == {"vr": "SV", "Value": [str(-(2**63)), 5, 2**53]}
    assert obj["0008040C"] == {"vr": "UV", "Value": [str(2**64 - 1)]}
    back = json_to_dataset(obj)
    assert list(back[0x00720082].value) == [-(2**63), 5, 2**53]
    assert back[0x0008040C].value == 2**64 - 1


def test_attribute_tags() -> None:
    ds = Dataset()
    ds.add_new(0x00209165, "AT", [0x00100020, 0x7FE00010])
    obj = dataset_to_json(ds)
    assert obj["00209165"] == {"vr": "AT", "Value": ["00100020", "7FE00010"]}
    assert dataset_to_json(through_file(ds, ExplicitVRBigEndian)) == obj
    assert list(json_to_dataset(obj)[0x00209165].value) == [0x00100020, 0x7FE00010]


def test_person_name_groups_round_trip() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.ReferringPhysicianName = "=山田^太郎"
    ds.add_new(0x00081048, "PN", ["Doe^Jane", "", "Roe^R"])  # PhysiciansOfRecord
    obj = dataset_to_json(ds)
    assert obj["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]
    assert obj["00080090"]["Value"] == [{"Ideographic": "山田^太郎"}]
    assert obj["00081048"]["Value"] == [{"Alphabetic": "Doe^Jane"}, None, {"Alphabetic": "Roe^R"}]
    back = json_to_dataset(obj)
    assert str(back.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert str(back.ReferringPhysicianName) == "=山田^太郎"
    assert dataset_to_json(through_file(back, ExplicitVRLittleEndian)) == obj


def test_ambiguous_us_or_ss_follows_pixel_representation() -> None:
    ds = Dataset()
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "SS", -5)  # SmallestImagePixelValue, "US or SS" in the dictionary
    obj = dataset_to_json(through_file(ds, ImplicitVRLittleEndian))
    assert obj["00280106"] == {"vr": "SS", "Value": [-5]}

    unsigned = Dataset()
    unsigned.add_new(0x00280106, "US", 5)
    obj = dataset_to_json(through_file(unsigned, ImplicitVRLittleEndian))
    assert obj["00280106"] == {"vr": "US", "Value": [5]}


def test_private_elements_keep_their_vr_when_explicit() -> None:
    elements = (
        (0x00090010, "LO", b"PACSBRIDGE TEST"),
        (0x00091001, "LO", b"kept"),
        (0x00091002, "US", struct.pack("<H", 7)),
        (0x00091003, "UN", b"\x01\x02"),
    )
    obj = dataset_to_json(explicit_le(*elements))
    assert obj["00090010"] == {"vr": "LO", "Value": ["PACSBRIDGE TEST"]}
    assert obj["00091001"] == {"vr": "LO", "Value": ["kept"]}
    assert obj["00091002"] == {"vr": "US", "Value": [7]}
    assert obj["00091003"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"\x01\x02").decode()}


def test_unknown_public_tag_in_implicit_vr_is_un() -> None:
    ds = Dataset()
    ds.add_new(0x00081234, "UN", b"\x01\x02\x03\x04")  # not in the dictionary
    obj = dataset_to_json(through_file(ds, ImplicitVRLittleEndian))
    assert obj["00081234"] == {"vr": "UN", "InlineBinary": base64.b64encode(b"\x01\x02\x03\x04").decode()}


# --- JSON -> dataset -----------------------------------------------------------------------------

def test_json_to_dataset_accepts_the_annex_f_variants() -> None:
    obj = {
        "00201208": {"vr": "IS", "Value": [42]},
        "00201206": {"vr": "IS", "Value": ["7"]},
        "00101020": {"vr": "DS", "Value": [1.75, "1.80", 2]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00420011": {"vr": "OB", "InlineBinary": base64.b64encode(b"%PDF").decode()},
        "00281201": {"vr": "OW", "BulkDataURI": "https://px.example/bulk/00281201"},
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100030": {"vr": "DA"},
        "0020000d": {"vr": "UI", "Value": ["1.2.3"]},
    }
    ds = json_to_dataset(obj, bulk_loader=lambda u: {"https://px.example/bulk/00281201": b"\x01\x00"}[u])
    assert ds.NumberOfStudyRelatedInstances == 42
    assert ds.NumberOfStudyRelatedSeries == 7
    assert [float(v) for v in ds.PatientSize] == [1.75, 1.8, 2.0]
    assert str(ds.PatientName) == "Doe^Jane"
    assert ds.EncapsulatedDocument == b"%PDF"
    assert ds.RedPaletteColorLookupTableData == b"\x01\x00"
    assert ds.PatientBirthDate == ""
    assert ds.StudyInstanceUID == "1.2.3"
    assert 0x00281201 not in json_to_dataset(obj)  # no loader: bulk data left out


def test_json_to_dataset_reads_pydicoms_own_json_samples() -> None:
    for name in ("test1.json", "test_PN.json"):
        obj = json.loads(Path(bundled(name)).read_text())
        ds = json_to_dataset(obj)
        reference = Dataset.from_json(obj)
        for tag in ("00080018", "00201002", "00100010"):
            if tag in obj:
                assert str(ds[int(tag, 16)].value) == str(reference[int(tag, 16)].value)
        again = dataset_to_json(ds)
        assert dataset_to_json(json_to_dataset(again)) == again


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"0010001": {"vr": "LO", "Value": ["Secret"]}},
        {"00100010": {"Value": ["Secret"]}},
        {"00100010": {"vr": "XX", "Value": ["Secret"]}},
        {"00100010": {"vr": "PN", "Value": "Secret"}},
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": 5}]}},
        {"00100020": {"vr": "LO", "Value": [17]}},
        {"00280010": {"vr": "US", "Value": ["Secret"]}},
        {"00280010": {"vr": "US", "Value": [1.5]}},
        {"00209165": {"vr": "AT", "Value": ["Secret"]}},
        {"00420011": {"vr": "OB", "InlineBinary": "Secret!!"}},
        {"00420011": {"vr": "OB", "Value": ["Secret"]}},
        {"00420011": {"vr": "OB", "InlineBinary": "AA==", "BulkDataURI": "Secret"}},
        {"00081115": {"vr": "SQ", "Value": ["Secret"]}},
    ],
)
def test_json_to_dataset_rejects_malformed_objects_without_echoing_values(obj: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        json_to_dataset(obj)
    assert "Secret" not in caught.value.message


def test_attribute_values() -> None:
    assert attribute_values({"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}, None, {"Ideographic": "山田"}]}) == [
        "Yamada^Tarou=山田^太郎", "=山田"]
    assert attribute_values({"vr": "CS", "Value": ["CT", None, "MR"]}) == ["CT", "MR"]
    assert attribute_values({"vr": "IS", "Value": [42, "9007199254740993"]}) == ["42", "9007199254740993"]
    assert attribute_values({"vr": "DS", "Value": [1.5, 2]}) == ["1.5", "2"]
    assert attribute_values({"vr": "SQ", "Value": [{}]}) == []
    assert attribute_values({"vr": "OB", "InlineBinary": "AA=="}) == []
    assert attribute_values({"vr": "LO"}) == []


# --- property tests: random datasets through JSON and through Part 10 bytes ----------------------

def _tags_by_vr() -> dict[str, list[int]]:
    skip = {0x00080005, 0x00281101, 0x00281102, 0x00281103, 0x00283002}
    out: dict[str, list[int]] = {}
    for tag, (vr, _vm, _name, retired, _keyword) in DicomDictionary.items():
        if retired or tag in skip or tag >> 16 in (0x0000, 0x0002, 0x7FE0) or not tag & 0xFFFF:
            continue
        if tag >> 16 >= 0xFFFC:
            continue
        out.setdefault(vr, []).append(tag)
    return {vr: sorted(tags)[:: max(1, len(tags) // 6)][:6] for vr, tags in out.items() if " or " not in vr}


TAGS_BY_VR = _tags_by_vr()
PRIVATE_CREATOR = 0x00090010
PRIVATE_UN_TAGS = [0x00091000 | i for i in range(1, 4)]

printable_ascii = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\")
unicode_text = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"), exclude_characters="\\=^"
)


def words(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    """Text without leading or trailing spaces (those are padding), spaces allowed inside."""
    word = st.text(alphabet, min_size=1, max_size=max(1, max_size // 3))
    return st.lists(word, min_size=1, max_size=3).map(" ".join).filter(lambda s: len(s) <= max_size)


def multi(single: st.SearchStrategy[Any], allow_empty: bool = True) -> st.SearchStrategy[list[Any]]:
    item = st.one_of(single, st.just("")) if allow_empty else single
    return st.one_of(st.lists(single, min_size=1, max_size=1), st.lists(item, min_size=2, max_size=3))


def decimal_text(n: int, places: int) -> str:
    digits = f"{abs(n):0{places + 1}d}"
    body = f"{digits[:-places]}.{digits[-places:]}" if places else digits
    return ("-" if n < 0 else "") + body


def date_text(d: datetime.date) -> str:
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


dates = st.dates()
times = st.builds(
    lambda h, m, s, f: f"{h:02d}{m:02d}{s:02d}" + (f".{f:06d}" if f is not None else ""),
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.none() | st.integers(0, 999999))
person_group = st.lists(st.text(unicode_text, min_size=1, max_size=8), min_size=1, max_size=3).map("^".join)
person_names = st.one_of(
    person_group,
    st.tuples(person_group, person_group).map("=".join),
    st.tuples(st.just(""), person_group).map("=".join),
    st.tuples(person_group, person_group, person_group).map("=".join),
)


def pn_json(text: str) -> Any:
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("="), strict=False))
    return {k: v for k, v in groups.items() if v} or None


def texts_entry(vr: str, values: list[str]) -> dict[str, Any]:
    return {"vr": vr, "Value": [v or None for v in values]}


def binary(unit: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, 8).flatmap(lambda n: st.binary(min_size=n * unit, max_size=n * unit))


def inline(vr: str, data: bytes) -> dict[str, Any]:
    return {"vr": vr, "InlineBinary": base64.b64encode(data).decode()} if data else {"vr": vr}


def numbers(vr: str, values: st.SearchStrategy[Any], to_json: Any = None) -> st.SearchStrategy[Any]:
    return st.lists(values, min_size=1, max_size=3).map(
        lambda vs: (vs, {"vr": vr, "Value": [to_json(v) if to_json else v for v in vs]}))


def float_json(x: float) -> Any:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def big_int_json(n: int) -> Any:
    return n if abs(n) <= 2**53 else str(n)


def _string_strategy(vr: str, single: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return multi(single).map(lambda vs: (vs, texts_entry(vr, vs)))


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "AE": _string_strategy("AE", words(printable_ascii, 16)),
    "AS": _string_strategy("AS", st.from_regex(r"[0-9]{3}[DWMY]", fullmatch=True)),
    "CS": _string_strategy("CS", words(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"), 16)),
    "DA": _string_strategy("DA", dates.map(date_text)),
    "DT": _string_strategy("DT", st.tuples(dates, times).map(lambda t: date_text(t[0]) + t[1])),
    "TM": _string_strategy("TM", times),
    "UI": _string_strategy("UI", st.from_regex(r"[12](\.[1-9][0-9]{0,8}){1,6}", fullmatch=True)),
    "LO": _string_strategy("LO", words(unicode_text, 64)),
    "SH": _string_strategy("SH", words(unicode_text, 16)),
    "UC": _string_strategy("UC", words(unicode_text, 80)),
    "PN": multi(person_names).map(lambda vs: (vs, {"vr": "PN", "Value": [pn_json(v) for v in vs]})),
    "IS": st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=3).map(
        lambda ns: ([str(n) for n in ns], {"vr": "IS", "Value": ns})),
    "DS": st.lists(st.tuples(st.integers(-(10**9), 10**9), st.integers(0, 6)), min_size=1, max_size=3).map(
        lambda ps: ([decimal_text(n, p) for n, p in ps], {"vr": "DS", "Value": [
            int(f) if (f := float(decimal_text(n, p))).is_integer() else f for n, p in ps]})),
    "LT": st.text(st.one_of(unicode_text, st.sampled_from(" \\\r\n")), min_size=1, max_size=60).map(
        lambda s: s.rstrip(" ")).filter(bool).map(lambda s: (s, {"vr": "LT", "Value": [s]})),
    "ST": st.text(st.one_of(unicode_text, st.just("\\")), min_size=1, max_size=60).map(
        lambda s: (s, {"vr": "ST", "Value": [s]})),
    "UT": st.text(st.one_of(unicode_text, st.sampled_from(" \\")), min_size=1, max_size=200).map(
        lambda s: s.rstrip(" ")).filter(bool).map(lambda s: (s, {"vr": "UT", "Value": [s]})),
    "UR": st.from_regex(r"https://[a-z]{1,10}\.example/[A-Za-z0-9/%?=&]{0,20}", fullmatch=True).map(
        lambda s: (s, {"vr": "UR", "Value": [s]})),
    "US": numbers("US", st.integers(0, 2**16 - 1)),
    "SS": numbers("SS", st.integers(-(2**15), 2**15 - 1)),
    "UL": numbers("UL", st.integers(0, 2**32 - 1)),
    "SL": numbers("SL", st.integers(-(2**31), 2**31 - 1)),
    "SV": numbers("SV", st.integers(-(2**63), 2**63 - 1), big_int_json),
    "UV": numbers("UV", st.integers(0, 2**64 - 1), big_int_json),
    "FL": numbers("FL", st.floats(width=32), float_json),
    "FD": numbers("FD", st.floats(), float_json),
    "AT": numbers("AT", st.integers(0, 2**32 - 1), lambda t: f"{t:08X}"),
    "OB": binary(2).map(lambda b: (b, inline("OB", b))),
    "OW": binary(2).map(lambda b: (b, inline("OW", b))),
    "OF": binary(4).map(lambda b: (b, inline("OF", b))),
    "OL": binary(4).map(lambda b: (b, inline("OL", b))),
    "OD": binary(8).map(lambda b: (b, inline("OD", b))),
    "OV": binary(8).map(lambda b: (b, inline("OV", b))),
}
Element = tuple[int, str, Any, Any]  # tag, VR, pydicom value, expected DICOM JSON entry
SWAPPED_VRS = {"OW", "OF", "OL", "OD", "OV"}  # pydicom writes their bytes unswapped to big endian files


@st.composite
def element_lists(draw: st.DrawFn, depth: int = 0, big_endian: bool = False) -> list[Element]:
    vrs = [vr for vr in VALUES if not (big_endian and vr in SWAPPED_VRS)] + (["SQ"] if depth < 2 else [])
    chosen = draw(st.lists(
        st.sampled_from(vrs).flatmap(lambda vr: st.tuples(st.sampled_from(TAGS_BY_VR[vr]), st.just(vr))),
        max_size=8, unique_by=lambda t: t[0]))
    out: list[Element] = []
    for tag, vr in chosen:
        if vr == "SQ":
            items = draw(st.lists(element_lists(depth + 1, big_endian), max_size=2))
            built = [build(item) for item in items]
            entry = {"vr": "SQ", "Value": [e for _, e in built]} if built else {"vr": "SQ"}
            out.append((tag, vr, Sequence([d for d, _ in built]), entry))
        else:
            value, entry = draw(VALUES[vr])
            out.append((tag, vr, value, entry))
    if depth == 0 and draw(st.booleans()):
        out.append((PRIVATE_CREATOR, "LO", "PACSBRIDGE TEST", {"vr": "LO", "Value": ["PACSBRIDGE TEST"]}))
        for tag in draw(st.lists(st.sampled_from(PRIVATE_UN_TAGS), max_size=2, unique=True)):
            data = draw(binary(2))
            out.append((tag, "UN", data, inline("UN", data)))
    return out


def build(elements: list[Element], charset: str | None = None) -> tuple[Dataset, dict[str, Any]]:
    ds = Dataset()
    expected: dict[str, Any] = {}
    if charset:
        ds.SpecificCharacterSet = charset
        expected["00080005"] = {"vr": "CS", "Value": [charset]}
    for tag, vr, value, entry in elements:
        ds.add_new(tag, vr, value)
        expected[f"{tag:08X}"] = entry
    return ds, dict(sorted(expected.items()))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(element_lists())
def test_random_datasets_match_annex_f_and_round_trip(elements: list[Element]) -> None:
    ds, expected = build(elements, "ISO_IR 192")
    obj = dataset_to_json(ds)
    assert obj == expected
    json.dumps(obj, allow_nan=False)
    assert dataset_to_json(json_to_dataset(obj)) == obj


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_datasets_read_from_part10_bytes_give_the_same_json(
    transfer_syntax: str, data: st.DataObject
) -> None:
    elements = data.draw(element_lists(big_endian=transfer_syntax == ExplicitVRBigEndian))
    ds, expected = build(elements, "ISO_IR 192")
    read_back = through_file(ds, transfer_syntax)
    assert dataset_to_json(read_back) == expected  # from bytes
    assert dataset_to_json(fully_converted(read_back)) == expected  # through pydicom's elements
