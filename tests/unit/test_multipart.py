"""multipart/related parser and writer: RFC 2046 §5.1.1 edge cases, errors and round-trip properties."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsbridge.domain.errors import InvalidInput
from pacsbridge.formats.multipart import (
    Event,
    MultipartParser,
    MultipartWriter,
    PartData,
    PartEnd,
    PartStart,
    multipart_related_type,
    new_boundary,
    parse_content_type,
)

B = "simple-boundary"
Part = tuple[dict[str, str], bytes]


def collect(events: list[Event]) -> list[Part]:
    """Fold events into (headers, body) pairs, checking their order and that no PartData is empty."""
    parts: list[Part] = []
    open_part: list[bytes] | None = None
    for event in events:
        if isinstance(event, PartStart):
            assert open_part is None, "PartStart inside a part"
            parts.append((event.headers, b""))
            open_part = []
        elif isinstance(event, PartData):
            assert open_part is not None, "PartData outside a part"
            assert event.data, "empty PartData"
            open_part.append(event.data)
        else:
            assert isinstance(event, PartEnd)
            assert open_part is not None, "PartEnd outside a part"
            parts[-1] = (parts[-1][0], b"".join(open_part))
            open_part = None
    assert open_part is None, "part left open"
    return parts


def parse(body: bytes, chunks: list[int] | None = None, boundary: str = B) -> list[Part]:
    """Parse `body` fed in pieces cut at the positions in `chunks` (one piece if None)."""
    parser = MultipartParser(boundary.encode())
    events: list[Event] = []
    cuts = [0, *sorted(chunks or []), len(body)]
    for start, stop in itertools.pairwise(cuts):
        events += parser.feed(body[start:stop])
    events += parser.close()
    return collect(events)


def parse_bytewise(body: bytes, boundary: str = B) -> list[Part]:
    return parse(body, list(range(1, len(body))), boundary)


TWO_PARTS = (
    b"--simple-boundary\r\n"
    b"Content-Type: application/dicom\r\n"
    b"Content-Location: /studies/1\r\n"
    b"\r\n"
    b"first\r\nbody--simple-boundary\r\n"
    b"\r\n--simple-boundary \t\r\n"
    b"Content-Type: application/json\r\n"
    b"\r\n"
    b"{}"
    b"\r\n--simple-boundary--\r\n"
)
TWO_PARTS_PARSED = [
    (
        {"content-type": "application/dicom", "content-location": "/studies/1"},
        b"first\r\nbody--simple-boundary\r\n",
    ),
    ({"content-type": "application/json"}, b"{}"),
]


# --- parse_content_type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/dicom", ("application/dicom", {})),
        ("Multipart/Related; Boundary=AbC", ("multipart/related", {"boundary": "AbC"})),
        (
            'multipart/related; type="application/dicom"; boundary=x',
            ("multipart/related", {"type": "application/dicom", "boundary": "x"}),
        ),
        ('a/b; x="semi;colon, comma"', ("a/b", {"x": "semi;colon, comma"})),
        (r'a/b; x="back\\slash \"quote\" \z"', ("a/b", {"x": 'back\\slash "quote" z'})),
        ('a/b; x=""', ("a/b", {"x": ""})),
        ("  a/b  ;  x = 1 ;", ("a/b", {"x": "1"})),
        ("a/b;;x=1;;", ("a/b", {"x": "1"})),
        ("a/b;", ("a/b", {})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "application",
        "application/",
        "/dicom",
        "a/b c",
        "a/b; x",
        "a/b; x=",
        'a/b; x="open',
        "a/b; x=1 2",
        "a/b; x=1; X=2",
        "a/b x=1",
        'a/b; x="bad\rchar"',
        "a/b, c/d",
    ],
)
def test_parse_content_type_rejects_garbage(value: str) -> None:
    with pytest.raises(InvalidInput):
        parse_content_type(value)


# --- parser: the rules -------------------------------------------------------------------------


def test_two_parts_with_padding_and_boundary_lookalikes_in_data() -> None:
    assert parse(TWO_PARTS) == TWO_PARTS_PARSED


def test_every_two_way_split_gives_the_same_parts() -> None:
    for cut in range(len(TWO_PARTS) + 1):
        assert parse(TWO_PARTS, [cut]) == TWO_PARTS_PARSED, cut


def test_every_three_way_split_around_the_delimiter() -> None:
    start = TWO_PARTS.index(b"\r\n--simple-boundary \t")
    for first in range(start - 2, start + 25):
        for second in range(first, start + 25):
            assert parse(TWO_PARTS, [first, second]) == TWO_PARTS_PARSED, (first, second)


def test_one_byte_chunks() -> None:
    assert parse_bytewise(TWO_PARTS) == TWO_PARTS_PARSED


def test_preamble_and_epilogue_are_ignored() -> None:
    body = (
        b"This is a preamble --simple-boundary that is not a delimiter\r\n"
        b"--simple-boundaryX still preamble\r\n"
        b"--simple-boundary\r\n\r\ndata\r\n--simple-boundary--  \r\nepilogue\r\n--simple-boundary\r\n"
    )
    assert parse(body) == [({}, b"data")]
    assert parse_bytewise(body) == [({}, b"data")]


def test_first_delimiter_at_the_very_start_needs_no_crlf() -> None:
    assert parse(b"--simple-boundary\r\n\r\nx\r\n--simple-boundary--") == [({}, b"x")]


def test_lf_only_line_endings_in_headers() -> None:
    body = b"--simple-boundary\nContent-Type: a/b\nX-A: 1\n\nbody\r\n--simple-boundary--\n"
    assert parse(body) == [({"content-type": "a/b", "x-a": "1"}, b"body")]


def test_header_names_lowered_values_stripped_folded_and_repeated() -> None:
    body = (
        b"--simple-boundary\r\n"
        b"CONTENT-type:   application/dicom  \r\n"
        b"X-Long: first\r\n"
        b"   second\r\n"
        b"\tthird\r\n"
        b"X-Twice: one\r\n"
        b"x-twice: two\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
        b"\r\n--simple-boundary--"
    )
    assert parse(body) == [
        (
            {
                "content-type": "application/dicom",
                "x-long": "first second third",
                "x-twice": "one, two",
                "x-empty": "",
            },
            b"",
        )
    ]


def test_non_utf8_header_value_is_read_as_latin1() -> None:
    body = b"--simple-boundary\r\nX-Name: caf\xe9\r\n\r\n\r\n--simple-boundary--"
    assert parse(body) == [({"x-name": "café"}, b"")]


@pytest.mark.parametrize(
    "data",
    [
        b"--simple-boundaryZ",
        b"x--simple-boundary--\r\n",
        b"\n--simple-boundary\r\n",
        b"\r--simple-boundary\r\n",
        b"\r\n-simple-boundary\r\n",
        b"\r\n--simple-boundar\r\n",
        b"\r\n--simple-boundaryX\r\n",
        b"\r\n--simple-boundary-X",
        b"\r\n--simple-boundary-",
        b"\r\n\r\n\r\n",
    ],
)
def test_boundary_lookalikes_stay_data(data: bytes) -> None:
    body = b"--simple-boundary\r\n\r\n" + data + b"\r\n--simple-boundary--"
    assert parse(body) == [({}, data)]
    assert parse_bytewise(body) == [({}, data)]


def test_empty_parts() -> None:
    # No headers and no body; no headers and an empty body; headers and no body (rule 4).
    body = (
        b"--simple-boundary\r\n\r\n--simple-boundary\r\n\r\n\r\n--simple-boundary\r\n"
        b"Content-Type: a/b\r\n\r\n--simple-boundary--"
    )
    expected: list[Part] = [({}, b""), ({}, b""), ({"content-type": "a/b"}, b"")]
    assert parse(body) == expected
    assert parse_bytewise(body) == expected


def test_data_is_emitted_as_soon_as_it_cannot_start_a_delimiter() -> None:
    parser = MultipartParser(B.encode())
    assert parser.feed(b"--simple-boundary\r\nContent-Type: a/b\r\n\r\n") == [
        PartStart({"content-type": "a/b"})
    ]
    assert parser.feed(b"hello") == [PartData(b"hello")]
    assert parser.feed(b"\r\n--simple-bou") == []
    assert parser.feed(b"ndar") == []
    assert parser.feed(b"y") == []  # the whole delimiter: len(boundary) + 4 bytes held back
    assert parser.feed(b"!") == [PartData(b"\r\n--simple-boundary!")]
    assert parser.feed(b"\r") == []
    assert parser.feed(b"x") == [PartData(b"\rx")]
    assert parser.feed(b"\r\n--simple-boundary-") == []
    assert parser.feed(b"-") == [PartEnd()]
    assert parser.feed(b"\r\nepilogue") == []
    assert parser.close() == []


def test_for_content_type_uses_the_boundary_parameter() -> None:
    parser = MultipartParser.for_content_type(f'multipart/related; type="application/dicom"; boundary="{B}"')
    events = parser.feed(TWO_PARTS) + parser.close()
    assert collect(events) == TWO_PARTS_PARSED


# --- parser: errors ----------------------------------------------------------------------------


def fails(body: bytes, match: str, **kwargs: int) -> None:
    parser = MultipartParser(B.encode(), **kwargs)
    with pytest.raises(InvalidInput, match=match):
        parser.feed(body)
        parser.close()


def test_headers_too_long() -> None:
    fails(b"--simple-boundary\r\nX-A: " + b"a" * 100 + b"\r\n\r\n", "exceed 64 bytes", max_header_bytes=64)
    # Also when the line never ends, and when it is fed a byte at a time.
    fails(b"--simple-boundary\r\nX-A: " + b"a" * 100, "exceed 64 bytes", max_header_bytes=64)
    parser = MultipartParser(B.encode(), max_header_bytes=64)
    parser.feed(b"--simple-boundary\r\n")
    with pytest.raises(InvalidInput, match="exceed"):
        for _ in range(65):
            parser.feed(b"a")


def test_headers_at_the_limit_are_fine() -> None:
    headers = b"X-A: 12345\r\n\r\n"
    body = b"--simple-boundary\r\n" + headers + b"x\r\n--simple-boundary--"
    parser = MultipartParser(B.encode(), max_header_bytes=len(headers))
    assert collect(parser.feed(body) + parser.close()) == [({"x-a": "12345"}, b"x")]


@pytest.mark.parametrize("body", [b"", b"no delimiter here", b"--other\r\n\r\nx\r\n--other--"])
def test_no_delimiter(body: bytes) -> None:
    fails(body, "no parts")


def test_close_delimiter_without_parts() -> None:
    fails(b"preamble\r\n--simple-boundary--\r\n", "no parts")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"--simple-boundary", "after a boundary"),
        (b"--simple-boundary  ", "after a boundary"),
        (b"--simple-boundary\r\nContent-Type: a/b\r\n", "headers"),
        (b"--simple-boundary\r\n\r\nhalf a part", "body"),
        (b"--simple-boundary\r\n\r\nx\r\n--simple-boundary", "after a boundary"),
        (b"--simple-boundary\r\n\r\nx\r\n--simple-boundary-", "after a boundary"),
        (b"--simple-boundary\r\n\r\nx\r\n--simple-boundary \t", "after a boundary"),
    ],
)
def test_truncated(body: bytes, where: str) -> None:
    fails(body, f"truncated.*{where}")


def test_part_without_blank_line_after_headers() -> None:
    fails(
        b"--simple-boundary\r\nContent-Type: a/b\r\n--simple-boundary--\r\n", "not followed by a blank line"
    )
    fails(b"--simple-boundary\r\nContent-Type: a/b\r\nDICM\x00\x01 binary\r\n", "without ':'")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"--simple-boundary x\r\n\r\n", "after a multipart boundary"),
        (b"--simple-boundary \rx", "after a multipart boundary"),
        (b"--simple-boundary\r\n continued: no\r\n\r\n", "continuation"),
        (b"--simple-boundary\r\nbad name: x\r\n\r\n", "header name"),
        (b"--simple-boundary\r\n: x\r\n\r\n", "header name"),
    ],
)
def test_malformed_framing(body: bytes, match: str) -> None:
    fails(body, match)


@pytest.mark.parametrize("boundary", [b"", b"a\r\nb", b"x" * 201])
def test_bad_boundary(boundary: bytes) -> None:
    with pytest.raises(InvalidInput):
        MultipartParser(boundary)


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom; boundary=x", "multipart/related", 'multipart/related; boundary=""', "garbage"],
)
def test_for_content_type_needs_a_multipart_type_with_a_boundary(content_type: str) -> None:
    with pytest.raises(InvalidInput):
        MultipartParser.for_content_type(content_type)


def test_misuse_after_close_or_error() -> None:
    parser = MultipartParser(B.encode())
    parser.feed(TWO_PARTS)
    parser.close()
    with pytest.raises(ValueError):
        parser.feed(b"x")
    broken = MultipartParser(B.encode())
    with pytest.raises(InvalidInput):
        broken.feed(b"--simple-boundary x\r\n")
    with pytest.raises(ValueError):
        broken.feed(b"more")
    with pytest.raises(ValueError):
        broken.close()


# --- writer ------------------------------------------------------------------------------------


def test_writer_bytes() -> None:
    writer = MultipartWriter("b1")
    assert writer.part_header("application/dicom", {"Content-Location": "/x"}) == (
        b"--b1\r\nContent-Type: application/dicom\r\nContent-Location: /x\r\n\r\n"
    )
    assert writer.part_end() == b"\r\n"
    assert writer.close() == b"--b1--\r\n"
    assert writer.part("a/b", b"xyz") == b"--b1\r\nContent-Type: a/b\r\n\r\nxyz\r\n"


def test_writer_round_trip_through_its_own_content_type() -> None:
    writer = MultipartWriter()
    body = (
        writer.part_header("application/dicom", {"Content-Location": "/studies/1.2"})
        + b"DICM\r\n--"
        + writer.part_end()
        + writer.part("application/dicom+json", b"[]")
        + writer.close()
    )
    parser = MultipartParser.for_content_type(writer.content_type("application/dicom"))
    assert collect(parser.feed(body) + parser.close()) == [
        ({"content-type": "application/dicom", "content-location": "/studies/1.2"}, b"DICM\r\n--"),
        ({"content-type": "application/dicom+json"}, b"[]"),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("Content-Type", "a/b"), ("content-type", "a/b"), ("Bad Name", "x"), ("X", "line\r\nbreak"), ("X", "é")],
)
def test_writer_rejects_bad_headers(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        MultipartWriter("b").part_header("a/b", {name: value})


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends in space ", 'bad"quote', "naïve"])
def test_writer_rejects_bad_boundaries(boundary: str) -> None:
    with pytest.raises(ValueError):
        MultipartWriter(boundary)


def test_new_boundary_is_random_and_a_token() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", boundary) for boundary in boundaries)


def test_multipart_related_type() -> None:
    assert multipart_related_type("application/dicom", "abc") == (
        'multipart/related; type="application/dicom"; boundary=abc'
    )
    assert multipart_related_type(
        "application/octet-stream", "a:b", transfer_syntax="1.2.840.10008.1.2.1", **{"x-note": 'say "hi"'}
    ) == (
        'multipart/related; type="application/octet-stream"; boundary="a:b"; '
        'transfer-syntax=1.2.840.10008.1.2.1; x-note="say \\"hi\\""'
    )
    media_type, params = parse_content_type(multipart_related_type("a/b", "q=1", charset="utf-8"))
    assert (media_type, params) == (
        "multipart/related",
        {"type": "a/b", "boundary": "q=1", "charset": "utf-8"},
    )


@pytest.mark.parametrize(
    "kwargs", [{"type": "a/b"}, {"Boundary": "x"}, {"bad name": "x"}, {"x": "new\nline"}]
)
def test_multipart_related_type_rejects(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        multipart_related_type("a/b", "abc", **kwargs)


# --- properties --------------------------------------------------------------------------------

BCHARS = "0123456789abcdefABCDEF'()+_,-./:=? "
# Boundaries of our writer's form (``new_boundary``: 32 hex digits), drawn by hypothesis rather than
# taken from ``secrets``: a random boundary outside hypothesis's control changed the body's length
# between a case and its replay, which hypothesis reports as FlakyStrategyDefinition (seen once in CI).
boundaries = st.one_of(
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" ")),
)
header_names = st.text("abcdefghijklmnopqrstuvwxyz-_.!#0123456789", min_size=1, max_size=12).filter(
    lambda name: name != "content-type"
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)
content_types = st.sampled_from(
    ["application/dicom", "application/octet-stream", "application/dicom+json", 'text/plain; charset="x;y"']
)


def is_delimiter(framed: bytes, boundary: bytes, at: int) -> bool:
    """Whether the candidate at `at` in `framed` (which ends where the writer's CRLF begins) delimits."""
    after = framed[at + len(boundary) + 4 : at + len(boundary) + 6]
    return after == b"" or after[:1] in (b" ", b"\t", b"\r", b"\n") or after == b"--"


def unambiguous(data: bytes, boundary: bytes) -> bytes:
    """`data` with an "X" put after every boundary that would make it a delimiter (rules 1 and 4)."""
    delimiter = b"\r\n--" + boundary
    framed = b"\r\n" + data  # rule 4: the blank line's CRLF is right before the data
    at = framed.find(delimiter)
    while at >= 0:
        if is_delimiter(framed, boundary, at):
            cut = at + len(delimiter)
            framed = framed[:cut] + b"X" + framed[cut:]
        at = framed.find(delimiter, at + 1)
    return framed[2:]


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[str, list[Part], bytes]:
    """A boundary, parts (headers, data) and the body our writer makes of them."""
    boundary = draw(boundaries)
    raw = boundary.encode()
    pieces = st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"\r",
                b"\n",
                b"\r\n",
                b"-",
                b"--",
                b" ",
                raw,
                b"--" + raw,
                raw[:-1],
                b"\r\n--" + raw,
                b"\r\n--" + raw[:-1],
                b"\r\n--" + raw + b"-",
                b"\r\n--" + raw + b"X",
            ]
        ),
    )
    parts: list[Part] = []
    written = []
    for _ in range(draw(st.integers(1, 4))):
        content_type = draw(content_types)
        extra = draw(st.dictionaries(header_names, header_values, max_size=3))
        data = unambiguous(b"".join(draw(st.lists(pieces, max_size=8))), raw)
        parts.append(({"content-type": content_type, **extra}, data))
        # Header names go out in any case; the parser lower-cases them.
        spelled = {
            draw(st.sampled_from([name, name.upper(), name.title()])): value for name, value in extra.items()
        }
        written.append((content_type, data, spelled))
    writer = MultipartWriter(boundary)
    body = b"".join(writer.part(*part) for part in written) + writer.close()
    return boundary, parts, body


@settings(max_examples=150, deadline=None)
@given(multipart_bodies(), st.data())
def test_round_trip_at_random_chunk_boundaries(
    case: tuple[str, list[Part], bytes], data: st.DataObject
) -> None:
    boundary, parts, body = case
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=20))
    assert parse(body, cuts, boundary) == parts


@settings(max_examples=60, deadline=None)
@given(multipart_bodies())
def test_round_trip_one_byte_at_a_time(case: tuple[str, list[Part], bytes]) -> None:
    boundary, parts, body = case
    assert parse_bytewise(body, boundary) == parts


@settings(max_examples=60, deadline=None)
@given(multipart_bodies(), st.binary(max_size=30), st.binary(max_size=30))
def test_preamble_and_epilogue_do_not_change_the_parts(
    case: tuple[str, list[Part], bytes], preamble: bytes, epilogue: bytes
) -> None:
    boundary, parts, body = case
    # A preamble must not itself hold a delimiter (rule 1); "X" after a lookalike keeps it data.
    preamble = unambiguous(preamble, boundary.encode()).replace(b"\r\n--" + boundary.encode(), b"-")
    assert parse(preamble + b"\r\n" + body + epilogue, [len(preamble) + 1], boundary) == parts


@settings(max_examples=60, deadline=None)
@given(multipart_bodies())
def test_at_most_len_boundary_plus_5_bytes_are_held_back(case: tuple[str, list[Part], bytes]) -> None:
    boundary, parts, body = case
    parser = MultipartParser(boundary.encode())
    writer = MultipartWriter(boundary)
    offset = 0
    for headers, data in parts:
        header = writer.part_header(
            headers["content-type"], {k: v for k, v in headers.items() if k != "content-type"}
        )
        parser.feed(body[offset : offset + len(header)])
        offset += len(header)
        emitted = 0
        for i in range(len(data)):
            emitted += sum(len(e.data) for e in parser.feed(data[i : i + 1]) if isinstance(e, PartData))
            assert emitted >= i + 1 - (len(boundary) + 5)
        rest = sum(len(e.data) for e in parser.feed(b"\r\n") if isinstance(e, PartData))
        assert emitted + rest <= len(data)
        offset += len(data) + 2
    parser.feed(body[offset:])
    assert parser.close() == []
