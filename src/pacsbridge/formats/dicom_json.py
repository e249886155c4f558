"""DICOM JSON model: pydicom datasets to and from PS3.18 Annex F objects.

See: PS3.18 Annex F (DICOM JSON Model), PS3.5 §6.2 (value representations and their padding).

Rules:
1. Keys are 8 upper-case hex digits in ascending order; group lengths (gggg,0000), File Meta
   (group 0002) and Data Set Trailing Padding (FFFC,FFFC) are left out; private elements and their
   creators are kept.
2. Speed: elements still in the raw form a file was read into, sequences included, are converted
   from their bytes here rather than through pydicom's elements and item Datasets, when the VR is
   known and the text is single-byte or UTF-8. Everything else (implicit private VRs, ambiguous VRs,
   UN, ISO 2022 escapes, item-level charsets, deferred text) goes through ``Dataset.__getitem__``,
   so it follows pydicom's rules exactly; both paths give the same JSON.
3. IS, DS, SV and UV are JSON numbers only when the number survives a trip through an IEEE double
   exactly (integers up to 2**53, at most 15 significant digits otherwise); else, and for text that
   is not a number at all, the text is kept as a string, as Annex F allows. Integral DS become ints.
4. JSON has no NaN or infinity: FL/FD values that are not finite are written as the strings
   ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` and read back from them.
5. Binary values (OB, OD, OF, OL, OV, OW, UN) become a BulkDataURI when a URI builder is given and
   the value is longer than the threshold, and always for pixel data (7FE0,0008/0009/0010) at any
   depth; otherwise InlineBinary, little endian, base64. Empty values have only ``"vr"``.
6. Text loses trailing padding (spaces, NUL); VRs whose leading spaces are insignificant
   (AE, AS, CS, DA, DS, DT, IS, LO, SH, TM, UI) lose those too. Empty values inside a multi-valued
   attribute are ``null``.
"""

from __future__ import annotations

import array
import base64
import binascii
import codecs
import math
import re
import struct
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import format_number_as_ds

from ..domain.errors import InvalidInput
from ..domain.model import DicomJson

BulkUri = Callable[[str], str]
"""Builds the BulkDataURI of the value at a path such as ``7FE00010`` or ``00540016/0/00181072``."""
BulkLoader = Callable[[str], bytes]
"""Fetches the bytes behind a BulkDataURI."""

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UR", "UT"})
MULTI_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})
TEXT_VRS = SINGLE_TEXT_VRS | MULTI_TEXT_VRS
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
KNOWN_VRS = TEXT_VRS | BINARY_VRS | frozenset(NUMBER_FORMATS) | {"AT", "SQ"}
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
MAX_EXACT_INT = 2**53

_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_STRIP_BOTH_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})
_NUMBER_SIZES = {"AT": 4} | {vr: struct.calcsize("<" + fmt) for vr, fmt in NUMBER_FORMATS.items()}
_SWAP_TYPECODES = {"OW": "H", "OF": "f", "OL": "L", "OD": "d", "OV": "Q"}
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NONFINITE_NAMES = {math.inf: "Infinity", -math.inf: "-Infinity"}  # and NaN, which equals nothing
_IS_TEXT = re.compile(r"[+-]?[0-9]+")
_DS_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{8}")
_ESC = b"\x1b"
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_TRAILING_PADDING = 0xFFFCFFFC
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
# pydicom turns a negative first value of these into its unsigned form; leave them to it.
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})


# --- dataset -> JSON ---------------------------------------------------------------------------

def first_value(result: DicomJson, tag: str) -> str:
    """The first value of an element of a DICOM JSON object as text ("" when absent or empty)."""
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0] or "")


def dataset_to_json(
    ds: Dataset, bulk_uri: BulkUri | None = None, bulk_threshold: int = 1024
) -> DicomJson:
    """The DICOM JSON object of a dataset (PS3.18 Annex F), File Meta excluded.

    See: PS3.18 §F.2. ``bulk_uri`` maps a value's path (``TAG[/ITEM/TAG]...``, 0-based items) to its
    BulkDataURI; without it every binary value is inline. Pixel data the dataset does not hold (read
    with ``stop_before_pixels``) is added by the caller with :func:`pixel_data_json`.
    """
    return _Encoder(bulk_uri, bulk_threshold).dataset(ds, "")


def pixel_data_json(vr: str, bulk_uri: BulkUri, path: str = "7FE00010") -> DicomJson:
    """The entry for pixel data that was not read: always a BulkDataURI (PS3.18 §F.2.6)."""
    return {"vr": vr, "BulkDataURI": bulk_uri(path)}


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    """The VR an implicit-VR element gets from the dictionary; None where pydicom must decide."""
    if (tag >> 16) & 1:
        return "LO" if 0x0010 <= (tag & 0xFFFF) <= 0x00FF else None  # private creators only
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in KNOWN_VRS and vr != "UN" else None


@lru_cache(maxsize=64)
def _fast_codec(encodings: tuple[str, ...]) -> str | None:
    """A codec whose bytes 0x5C and 0x3D are always delimiters, or None (ISO 2022, Asian codecs)."""
    try:
        name = codecs.lookup(encodings[0] if encodings else "iso8859").name
    except LookupError:
        return None
    return name if name.startswith("iso8859-") or name in {"utf-8", "tis-620", "ascii"} else None


class _Fallback(Exception):
    """Raised by the byte-level conversion wherever pydicom's own rules have to decide."""


class _Encoder:
    def __init__(self, bulk_uri: BulkUri | None, bulk_threshold: int) -> None:
        self.bulk_uri = bulk_uri
        self.bulk_threshold = bulk_threshold

    def dataset(self, ds: Dataset, prefix: str) -> DicomJson:
        charset = ds.original_character_set
        codec = _fast_codec((charset,) if isinstance(charset, str) else tuple(charset))
        # Values of a dataset read as big endian stay big endian in pydicom; JSON wants little.
        little = ds.original_encoding[1] is not False
        out: DicomJson = {}
        get_item = ds.get_item
        for tag in sorted(ds.keys(), key=int):
            if not tag & 0xFFFF or tag >> 16 == 0x0002 or tag == _TRAILING_PADDING:
                continue
            key = f"{tag:08X}"
            elem = get_item(tag, keep_deferred=True)
            entry = self.raw(tag, elem, key, prefix, codec) if isinstance(elem, RawDataElement) else None
            out[key] = entry if entry is not None else self.element(ds[tag], key, prefix, little)
        return out

    def raw(
        self, tag: int, raw: RawDataElement, key: str, prefix: str, codec: str | None
    ) -> DicomJson | None:
        """Convert a raw element from its bytes; None when pydicom has to convert it."""
        vr = raw.VR or _dictionary_vr(tag)
        if vr is None:
            return None
        value = raw.value
        if value is None and raw.length:  # deferred: only bulk data can stay unread
            if vr in BINARY_VRS and vr != "UN" and self.is_bulk(tag, raw.length):
                return self.binary(vr, tag, None, raw.length, key, prefix, True)
            return None
        try:
            return self.value(vr, tag, value or b"", raw.length, key, prefix, codec,
                              raw.is_little_endian, raw.is_implicit_VR)
        except (_Fallback, struct.error):
            return None

    def value(
        self, vr: str, tag: int, data: bytes, length: int, key: str, prefix: str, codec: str | None,
        little: bool, implicit: bool,
    ) -> DicomJson:
        """One element from its encoded value; raises _Fallback where pydicom must decide."""
        if vr in BINARY_VRS:
            if vr == "UN":
                raise _Fallback  # pydicom may know the real VR (replace_un_with_known_vr)
            return self.binary(vr, tag, data, length, key, prefix, little)
        if not data:
            return {"vr": vr}
        if vr in TEXT_VRS:
            if vr in _CHARSET_VRS:
                if codec is None or _ESC in data:
                    raise _Fallback
                try:
                    text = data.decode(codec)
                except UnicodeDecodeError:
                    raise _Fallback from None  # pydicom decodes with replacement characters and warns
            else:
                text = data.decode("latin-1")
            return _text_entry(vr, [text] if vr in SINGLE_TEXT_VRS else text.split("\\"))
        if vr == "SQ":
            return self.sequence(data, 0, len(data), False, key, prefix, codec, little, implicit)[0]
        size = _NUMBER_SIZES.get(vr)
        if size is None or len(data) % size or tag in _LUT_DESCRIPTOR_TAGS:
            raise _Fallback
        return {"vr": vr, "Value": _decode_numbers(vr, data, little)}

    def sequence(
        self, buf: bytes, pos: int, end: int, undefined: bool, key: str, prefix: str, codec: str | None,
        little: bool, implicit: bool,
    ) -> tuple[DicomJson, int]:
        """A sequence's items straight from its encoded bytes (PS3.5 §7.5); returns the end position."""
        header = struct.Struct("<HHL" if little else ">HHL")
        base = f"{prefix}{key}/"
        items: list[DicomJson] = []
        while True:
            if pos + 8 > end:
                if undefined:
                    raise _Fallback  # no sequence delimiter
                break
            group, element, length = header.unpack_from(buf, pos)
            pos += 8
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM:
                raise _Fallback
            item_prefix = f"{base}{len(items)}/"
            if length == _UNDEFINED:
                item, pos = self.elements(buf, pos, end, True, item_prefix, codec, little, implicit)
            else:
                if pos + length > end:
                    raise _Fallback
                item, _ = self.elements(buf, pos, pos + length, False, item_prefix, codec, little, implicit)
                pos += length
            items.append(item)
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), pos

    def elements(
        self, buf: bytes, pos: int, end: int, undefined: bool, prefix: str, codec: str | None,
        little: bool, implicit: bool,
    ) -> tuple[DicomJson, int]:
        """One item's elements from its encoded bytes; returns the position after the item."""
        endian = "<" if little else ">"
        tag_header = struct.Struct(f"{endian}HH")
        long_length = struct.Struct(f"{endian}L")
        short_length = struct.Struct(f"{endian}H")
        out: DicomJson = {}
        previous = -1
        in_order = True
        while pos + 8 <= end:
            group, element = tag_header.unpack_from(buf, pos)
            tag = group << 16 | element
            if tag == _ITEM_END:
                pos += 8
                if undefined:
                    return _sorted(out, in_order), pos
                continue
            if implicit:
                vr = _dictionary_vr(tag)
                length = long_length.unpack_from(buf, pos + 4)[0]
                pos += 8
            else:
                vr = buf[pos + 4:pos + 6].decode("latin-1")
                if vr in _LONG_LENGTH_VRS:
                    length = long_length.unpack_from(buf, pos + 8)[0]
                    pos += 12
                else:
                    length = short_length.unpack_from(buf, pos + 6)[0]
                    pos += 8
            if vr is None or vr not in KNOWN_VRS or tag == 0x00080005:
                raise _Fallback  # private/ambiguous implicit VR, odd VR, or an item-level charset
            key = f"{tag:08X}"
            if length == _UNDEFINED:
                if vr != "SQ":
                    raise _Fallback
                entry, pos = self.sequence(buf, pos, end, True, key, prefix, codec, little, implicit)
            elif pos + length > end:
                raise _Fallback
            elif vr == "SQ":
                entry = self.sequence(buf, pos, pos + length, False, key, prefix, codec, little, implicit)[0]
                pos += length
            else:
                data = buf[pos:pos + length]
                entry = self.value(vr, tag, data, length, key, prefix, codec, little, implicit)
                pos += length
            if not element or group == 0x0002 or tag == _TRAILING_PADDING:
                continue
            in_order = in_order and tag > previous
            previous = tag
            out[key] = entry
        if undefined:
            raise _Fallback  # no item delimiter
        return _sorted(out, in_order), pos

    def element(self, elem: DataElement, key: str, prefix: str, little: bool) -> DicomJson:
        """One element pydicom has already converted."""
        vr: str = elem.VR
        if " or " in vr:  # ambiguous VR pydicom could not resolve: the first one is the usual one
            vr = vr.split(" or ")[0]
        value = elem.value
        if vr == "SQ":
            if not value:
                return {"vr": vr}
            base = f"{prefix}{key}/"
            return {"vr": vr, "Value": [self.dataset(item, f"{base}{i}/") for i, item in enumerate(value)]}
        if vr in BINARY_VRS or vr not in KNOWN_VRS:
            vr = vr if vr in BINARY_VRS else "UN"
            data = _as_bytes(value)
            return self.binary(vr, elem.tag, data, len(data), key, prefix, little)
        if value is None or (isinstance(value, str | bytes) and not value):
            return {"vr": vr}
        if isinstance(value, bytes) and vr not in TEXT_VRS:  # e.g. an unresolved "US or SS"
            numbers = _decode_numbers(vr, value, little)
            return {"vr": vr, "Value": numbers} if numbers else {"vr": vr}
        values: list[Any] = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        if not values:
            return {"vr": vr}
        if vr in TEXT_VRS:
            parts = [_as_text(v) for v in values]
            if vr in MULTI_TEXT_VRS and any("\\" in p for p in parts):
                parts = "\\".join(parts).split("\\")
            return _text_entry(vr, parts)
        if vr == "AT":
            return {"vr": vr, "Value": [f"{int(v):08X}" for v in values]}
        if vr == "FL" or vr == "FD":
            return {"vr": vr, "Value": _number_values(vr, [float(v) for v in values])}
        return {"vr": vr, "Value": _number_values(vr, [int(v) for v in values])}

    def is_bulk(self, tag: int, length: int) -> bool:
        return self.bulk_uri is not None and (tag in PIXEL_DATA_TAGS or length > self.bulk_threshold)

    def binary(
        self, vr: str, tag: int, value: bytes | None, length: int, key: str, prefix: str, little: bool
    ) -> DicomJson:
        if not length:
            return {"vr": vr}
        if self.bulk_uri is not None and self.is_bulk(tag, length):
            return {"vr": vr, "BulkDataURI": self.bulk_uri(prefix + key)}
        data = value or b""
        if not little and vr in _SWAP_TYPECODES:
            data = _swap(data, _SWAP_TYPECODES[vr])
        return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}


def _sorted(out: DicomJson, in_order: bool) -> DicomJson:
    return out if in_order else dict(sorted(out.items()))


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, MultiValue | list | tuple):
        return b"".join(_as_bytes(v) for v in value)
    raise TypeError(f"binary value of type {type(value).__name__}")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _swap(data: bytes, typecode: str) -> bytes:
    words = array.array(typecode)
    if len(data) % words.itemsize:
        return data
    words.frombytes(data)
    words.byteswap()
    return words.tobytes()


def _text_entry(vr: str, parts: list[str]) -> DicomJson:
    """The entry of a text VR from its values (already split at backslashes)."""
    strip = str.strip if vr in _STRIP_BOTH_VRS else str.rstrip
    parts = [strip(p, " \x00") for p in parts]
    values: list[Any]
    if vr == "PN":
        values = [_person_name(p) for p in parts]
    elif vr == "DS":
        values = [_decimal_string(p) for p in parts]
    elif vr == "IS":
        values = [_integer_string(p) for p in parts]
    else:
        values = [p or None for p in parts]
    if len(values) == 1 and values[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    if "=" not in text:
        return {"Alphabetic": text}
    groups = {name: group for name, group in zip(PN_GROUPS, text.split("=", 2), strict=False) if group}
    return groups or None


def _integer_string(text: str) -> int | str | None:
    if not text:
        return None
    if _IS_TEXT.fullmatch(text):
        number = int(text)
        if -MAX_EXACT_INT <= number <= MAX_EXACT_INT:
            return number
    return text


def _decimal_string(text: str) -> int | float | str | None:
    if not text:
        return None
    if not _DS_TEXT.fullmatch(text):
        return text  # not a number: keep what was stored rather than lose it
    number = float(text)
    # At most 15 significant digits always survive a double (DBL_DIG); else compare exactly.
    digits = len(text) - (text[0] in "+-") - ("." in text)
    if (digits > 15 or "e" in text or "E" in text) and not (
        math.isfinite(number) and Decimal(repr(number)) == Decimal(text)
    ):
        return text
    if number.is_integer() and -MAX_EXACT_INT <= number <= MAX_EXACT_INT:
        return int(number)
    return number


def _decode_numbers(vr: str, data: bytes, little: bool) -> list[Any]:
    """Binary numbers (AT as 8-hex strings) from their encoding; a trailing partial value is dropped."""
    endian = "<" if little else ">"
    size = _NUMBER_SIZES[vr]
    count = len(data) // size
    whole = data if count * size == len(data) else data[: count * size]
    if vr == "AT":
        words = struct.unpack(f"{endian}{count * 2}H", whole)
        return [f"{words[i]:04X}{words[i + 1]:04X}" for i in range(0, len(words), 2)]
    return _number_values(vr, struct.unpack(f"{endian}{count}{NUMBER_FORMATS[vr]}", whole))


def _number_values(vr: str, numbers: Any) -> list[Any]:
    if vr == "FL" or vr == "FD":
        return [x if math.isfinite(x) else _NONFINITE_NAMES.get(x, "NaN") for x in numbers]
    if vr == "SV" or vr == "UV":
        return [n if -MAX_EXACT_INT <= n <= MAX_EXACT_INT else str(n) for n in numbers]
    return list(numbers)


# --- JSON -> dataset ---------------------------------------------------------------------------

def json_to_dataset(obj: DicomJson, bulk_loader: BulkLoader | None = None) -> Dataset:
    """The dataset of a DICOM JSON object; the inverse of :func:`dataset_to_json`.

    See: PS3.18 §F.2. IS/DS/SV/UV are accepted as numbers or strings, FL/FD also as ``"NaN"`` and
    ``"±Infinity"``. A BulkDataURI is resolved with ``bulk_loader``; without one the element is left
    out. Malformed input raises ``InvalidInput`` naming the tag, never the value.
    """
    if not isinstance(obj, dict):
        raise InvalidInput("a DICOM JSON dataset must be a JSON object")
    ds = Dataset()
    for key, attr in obj.items():
        if not _HEX_KEY.fullmatch(key):
            raise InvalidInput("DICOM JSON keys must be 8 hex digits")
        tag = int(key, 16)
        element = _element_from_json(tag, key.upper(), attr, bulk_loader)
        if element is not None:
            ds[tag] = element
    return ds


def _element_from_json(
    tag: int, key: str, attr: Any, bulk_loader: BulkLoader | None
) -> DataElement | RawDataElement | None:
    if not isinstance(attr, dict):
        raise InvalidInput(f"attribute {key} is not a JSON object")
    vr = attr.get("vr")
    if not isinstance(vr, str) or vr not in KNOWN_VRS:
        raise InvalidInput(f"attribute {key} has a missing or unknown vr")
    given = [name for name in ("Value", "InlineBinary", "BulkDataURI") if name in attr]
    if len(given) > 1:
        raise InvalidInput(f"attribute {key} has more than one of Value, InlineBinary, BulkDataURI")
    if not given:
        return DataElement(tag, vr, empty_value_for_VR(vr))
    if given[0] == "BulkDataURI":
        uri = attr["BulkDataURI"]
        if not isinstance(uri, str):
            raise InvalidInput(f"attribute {key} has a BulkDataURI that is not a string")
        if bulk_loader is None:
            return None
        return DataElement(tag, vr, _value_from_bytes(vr, key, bulk_loader(uri)))
    if given[0] == "InlineBinary":
        text = attr["InlineBinary"]
        if not isinstance(text, str):
            raise InvalidInput(f"attribute {key} has an InlineBinary that is not a string")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"attribute {key} has an InlineBinary that is not base64") from exc
        return DataElement(tag, vr, _value_from_bytes(vr, key, data))
    values = attr["Value"]
    if not isinstance(values, list):
        raise InvalidInput(f"attribute {key} has a Value that is not an array")
    if vr == "SQ":
        items = []
        for item in values:
            if not isinstance(item, dict):
                raise InvalidInput(f"attribute {key} has a sequence item that is not an object")
            items.append(json_to_dataset(item, bulk_loader))
        return DataElement(tag, vr, Sequence(items))
    if vr in BINARY_VRS:
        raise InvalidInput(f"attribute {key} of VR {vr} has a Value instead of binary data")
    if vr not in TEXT_VRS:
        values = [v for v in values if v is not None]  # a null number has no binary encoding
    if not values:
        return DataElement(tag, vr, empty_value_for_VR(vr))
    converted = [_value_from_json(vr, key, v) for v in values]
    try:
        element = DataElement(tag, vr, converted[0] if len(converted) == 1 else converted)
    except (ValueError, OverflowError):
        if vr not in ("IS", "DS"):
            raise InvalidInput(f"attribute {key} of VR {vr} has a value pydicom cannot hold") from None
        return _raw_number_strings(tag, vr, converted)
    if vr in ("IS", "DS"):
        held = element.value if isinstance(element.value, MultiValue) else [element.value]
        if [str(v) for v in held] != converted:
            return _raw_number_strings(tag, vr, converted)
    return element


def _raw_number_strings(tag: int, vr: str, texts: list[str]) -> RawDataElement:
    """IS/DS text pydicom's value classes would reject or alter ("1A", 2**53 + 1): keep it raw,
    as pydicom itself does when it reads such a value from a file."""
    data = "\\".join(texts).encode("latin-1", errors="replace")
    data += b" " * (len(data) % 2)
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)


def _value_from_json(vr: str, key: str, value: Any) -> Any:
    if vr == "PN":
        if value is None:
            return ""
        if isinstance(value, str):  # not Annex F, but some peers send bare strings
            return value
        groups = [value.get(g) or "" for g in PN_GROUPS] if isinstance(value, dict) else None
        if groups is None or not all(isinstance(g, str) for g in groups):
            raise InvalidInput(f"attribute {key} has a person name that is not an object of strings")
        return "=".join(groups).rstrip("=")
    if vr in TEXT_VRS:
        if value is None:
            return ""
        if vr in ("IS", "DS") and isinstance(value, int | float) and not isinstance(value, bool):
            return _number_text(vr, value)
        if not isinstance(value, str):
            raise InvalidInput(f"attribute {key} of VR {vr} has a value that is not a string")
        return value
    if vr == "AT":
        if not isinstance(value, str) or not _HEX_KEY.fullmatch(value):
            raise InvalidInput(f"attribute {key} has an AT value that is not 8 hex digits")
        return int(value, 16)
    if isinstance(value, bool):
        raise InvalidInput(f"attribute {key} of VR {vr} has a value that is not a number")
    if vr in ("FL", "FD"):
        if isinstance(value, str) and value in _NONFINITE:
            return _NONFINITE[value]
        return _parse_number(key, vr, value, float)
    return _parse_number(key, vr, value, int)


def _parse_number(key: str, vr: str, value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, float) and kind is int:
        if not value.is_integer():
            raise InvalidInput(f"attribute {key} of VR {vr} has a value that is not an integer")
        return int(value)
    if isinstance(value, int | float):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    raise InvalidInput(f"attribute {key} of VR {vr} has a value that is not a number")


def _number_text(vr: str, number: int | float) -> str:
    if vr == "IS" or isinstance(number, int):
        if isinstance(number, float) and not number.is_integer():
            raise InvalidInput("an IS value is not an integer")
        return str(int(number))
    if not math.isfinite(number):
        raise InvalidInput("a DS value is not finite")
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    text = repr(number)
    return text if len(text) <= 16 else format_number_as_ds(number)


def _value_from_bytes(vr: str, key: str, data: bytes) -> Any:
    """A value delivered as bytes (InlineBinary or bulk data): little endian, as PS3.18 §F.2.7 says."""
    if vr in BINARY_VRS:
        return data
    if vr in TEXT_VRS:
        text = data.decode("utf-8", errors="replace").rstrip(" \x00")
        return text if vr in SINGLE_TEXT_VRS else text.split("\\")
    size = _NUMBER_SIZES.get(vr)
    if size is None or len(data) % size:
        raise InvalidInput(f"attribute {key} has binary data of the wrong length for VR {vr}")
    if vr == "AT":
        words = struct.unpack(f"<{len(data) // 2}H", data)
        return [(words[i] << 16) | words[i + 1] for i in range(0, len(words), 2)]
    return list(struct.unpack(f"<{len(data) // size}{NUMBER_FORMATS[vr]}", data))


# --- helpers for the index ---------------------------------------------------------------------

def attribute_values(element: dict[str, Any]) -> list[str]:
    """The string forms of one DICOM JSON attribute's values, empty ones left out.

    PN values come back in their DICOM form, groups joined with ``=`` (``Yamada^Tarou=山田^太郎``);
    numbers in Python's shortest form; sequences and binary values have no string form.
    """
    values = element.get("Value")
    if not values or element.get("vr") == "SQ":
        return []
    out: list[str] = []
    for value in values:
        if value is None:
            continue
        if isinstance(value, dict):
            text = "=".join(str(value.get(g) or "") for g in PN_GROUPS).rstrip("=")
            if text:
                out.append(text)
        else:
            out.append(str(value))
    return out
