"""Accept parsing for DICOMweb negotiation: RFC 9110 §12.5.1 and PS3.18 §8.7 cases, and a round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsbridge.formats.media import MediaRange, is_token, parse_accept, parse_accept_param

OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def test_absent_or_empty_header() -> None:
    assert parse_accept(None) == []
    assert parse_accept("") == []
    assert parse_accept(" , ,") == []
    assert parse_accept_param("") == []


def test_ohif_header() -> None:
    assert parse_accept(OHIF) == [
        MediaRange("multipart", "related", (("type", "application/octet-stream"), ("transfer-syntax", "*")))
    ]


def test_list_with_weights_and_transfer_syntax() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, '
        "application/dicom+json;q=0.5"
    )
    assert [(r.media_type, r.param("type"), r.param("transfer-syntax"), r.q) for r in ranges] == [
        ("multipart/related", "application/dicom", "1.2.840.10008.1.2.1", 1.0),
        ("application/dicom+json", None, None, 0.5),
    ]


def test_comma_inside_quotes_does_not_split() -> None:
    ranges = parse_accept('a/b; x="1,2", c/d; y="say \\"hi\\", bye"')
    assert [(r.media_type, r.params) for r in ranges] == [
        ("a/b", (("x", "1,2"),)),
        ("c/d", (("y", 'say "hi", bye'),)),
    ]


def test_sorted_by_q_descending_stable_for_ties() -> None:
    ranges = parse_accept("a/one;q=0.5, a/two, a/three;q=0.5, a/four;q=1.0, */*;q=0.1, a/five ; Q=0.500")
    assert [r.subtype for r in ranges] == ["two", "four", "one", "three", "five", "*"]


def test_case_is_folded_except_for_values() -> None:
    (media_range,) = parse_accept('Application/DICOM; Transfer-Syntax="1.2.AbC"')
    assert media_range == MediaRange("application", "dicom", (("transfer-syntax", "1.2.AbC"),))
    assert media_range.param("TRANSFER-SYNTAX") == "1.2.AbC"
    assert media_range.param("charset") is None


@pytest.mark.parametrize(
    "weight", ["abc", "2", "-1", "1.5", "1.001", "", " ", "0.5.1", "nan", "inf", "1e-1", ".5"]
)
def test_invalid_weight_skips_only_that_range(weight: str) -> None:
    assert [r.media_type for r in parse_accept(f"a/bad;q={weight}, a/good")] == ["a/good"]


@pytest.mark.parametrize("weight", ["0", "0.", "0.0", "0.000"])
def test_zero_weight_is_dropped(weight: str) -> None:
    assert [r.media_type for r in parse_accept(f"a/no;q={weight}, a/yes;q=0.001")] == ["a/yes"]


@pytest.mark.parametrize("weight", ["1", "1.", "1.000", "0.3", "0.123", '"0.3"'])
def test_valid_weights(weight: str) -> None:
    (media_range,) = parse_accept(f"a/b; q={weight}")
    assert media_range.q == float(weight.strip('"'))
    assert media_range.params == ()


@pytest.mark.parametrize(
    "garbage",
    ["text", "*/json", "a/b; c", "a/b; c=", "a/b; c=d e", "a/b c", "/b", "a/b; q=1; q=0.5", "é/b"],
)
def test_malformed_ranges_are_skipped(garbage: str) -> None:
    assert [r.media_type for r in parse_accept(f"{garbage}, a/good")] == ["a/good"]


def test_an_unterminated_quote_runs_to_the_end() -> None:
    assert [r.media_type for r in parse_accept('a/good, a/b; c="open, x/y')] == ["a/good"]


def test_unquoted_slash_in_a_value_is_tolerated() -> None:
    (media_range,) = parse_accept("multipart/related; type=application/dicom")
    assert media_range.param("type") == "application/dicom"


def test_parameters_after_the_weight_are_kept() -> None:
    (media_range,) = parse_accept("multipart/related; q=0.9; type=application/dicom")
    assert (media_range.q, media_range.params) == (0.9, (("type", "application/dicom"),))


@pytest.mark.parametrize(
    ("media_range", "media_type", "expected"),
    [
        ("*/*", "application/dicom", True),
        ("application/*", "application/dicom+json", True),
        ("application/*", "image/jpeg", False),
        ("image/jpeg", "image/jpeg", True),
        ("image/jpeg", "IMAGE/JPEG", True),
        ("image/jpeg", "image/jp2", False),
        ("image/jpeg", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", True),
        ("application/dicom", "application/dicom+json", False),
    ],
)
def test_matches(media_range: str, media_type: str, expected: bool) -> None:
    (parsed,) = parse_accept(media_range)
    assert parsed.matches(media_type) is expected


def test_media_ranges_are_hashable_values() -> None:
    assert len(set(parse_accept("a/b; x=1, a/b;x=1, a/b; x=2"))) == 2


def test_accept_param_restores_a_plus_decoded_as_space() -> None:
    ranges = parse_accept_param('application/dicom json, multipart/related; type="application/dicom"')
    assert [r.media_type for r in ranges] == ["application/dicom+json", "multipart/related"]
    assert [r.media_type for r in parse_accept_param("application/vnd.a b c;q=0.5")] == [
        "application/vnd.a+b+c"
    ]


def test_accept_param_has_the_header_syntax() -> None:
    value = 'application/dicom+json;q=0.5, multipart/related; type="application/dicom", bad'
    assert parse_accept_param(value) == parse_accept(value)


def test_is_token() -> None:
    assert is_token("1.2.840.10008.1.2.1")
    assert is_token("*")
    assert not is_token("")
    assert not is_token("a/b")
    assert not is_token("a b")


# --- property: what we format, we read back ----------------------------------------------------

tokens = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-+!#$%&'^_`|~", min_size=1, max_size=10)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
weights = st.integers(0, 1000).map(lambda q: q / 1000)


@st.composite
def media_ranges(draw: st.DrawFn) -> MediaRange:
    kind = draw(st.sampled_from(["any", "type", "exact"]))
    type_ = "*" if kind == "any" else draw(tokens)
    subtype = "*" if kind != "exact" else draw(tokens)
    names = draw(st.lists(tokens.filter(lambda name: name != "q"), unique=True, max_size=3))
    params = tuple((name, draw(values)) for name in names)
    return MediaRange(type_, subtype, params, draw(weights))


def format_range(media_range: MediaRange, spaces: str) -> str:
    def quoted(value: str) -> str:
        return value if is_token(value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = media_range.media_type.upper()
    for name, value in media_range.params:
        text += f"{spaces};{spaces}{name.upper()}={quoted(value)}"
    if media_range.q != 1.0 or not media_range.params:
        text += f";q={media_range.q:.3f}"
    return text


@given(st.lists(media_ranges(), max_size=6), st.sampled_from(["", " ", "\t "]))
def test_formatted_ranges_parse_back(ranges: list[MediaRange], spaces: str) -> None:
    header = f"{spaces},{spaces}".join(format_range(r, spaces) for r in ranges)
    expected = sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)
    assert parse_accept(header) == expected
