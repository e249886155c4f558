"""Streaming multipart/related: a sans-I/O parser for request bodies, framing bytes for responses.

See: RFC 2046 §5.1.1 (syntax), RFC 2387 (multipart/related), PS3.18 §8.6.1.2 (DICOMweb use).

The parser's rules:
1. A delimiter is CRLF "--" boundary; at the very start of the body the CRLF is implied. It counts
   only when followed by "--" (the close delimiter), transport padding (SP, HT) or a line break; any
   other byte makes it data, the boundary then being the prefix of some longer string.
2. Part data is emitted as soon as it cannot be the start of a delimiter: at most len(boundary) + 4
   bytes are held back (+ 5 while the input ends in CRLF "--" boundary "-"), so a part of several GB
   is never buffered.
3. Header lines may end in LF alone, as may the line of a delimiter; a line starting with SP or HT
   continues the previous header (joined with one space) and a repeated header is joined with ", "
   (RFC 9110 §5.2, §5.3). More than `max_header_bytes` of headers in one part is an error.
4. The line break of the blank line after the headers may double as the CRLF of the next delimiter:
   that is how a part with headers and no body is written (RFC 2046 body-part grammar).
5. Preamble and epilogue are ignored; a body with no part, or without its close delimiter, is invalid.
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from pacsbridge.domain.errors import InvalidInput

from .media import is_token, parse_content_type

__all__ = [
    "Event",
    "MultipartParser",
    "MultipartWriter",
    "PartData",
    "PartEnd",
    "PartStart",
    "multipart_related_type",
    "new_boundary",
    "parse_content_type",
]

_CRLF = b"\r\n"
_DASH = 0x2D
# What may follow "--" boundary in a delimiter (rule 1); a "-" also needs a second one.
_AFTER_BOUNDARY = frozenset(b" \t\r\n")
_PADDING = b" \t"
# RFC 2046 says 70; some slack for lax senders, as the length only bounds what is held back.
_MAX_BOUNDARY_BYTES = 200
# RFC 2046 §5.1.1 bchars, 1 to 70 of them, not ending in a space: all the writer will produce.
_BCHARS_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True)
class PartStart:
    """A part begins; `headers` has lower-cased names and stripped values."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(frozen=True)
class PartData:
    """The next slice (never empty) of the current part's body."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part's body is complete."""


Event: TypeAlias = PartStart | PartData | PartEnd


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    AFTER_DELIMITER = enum.auto()
    HEADERS = enum.auto()
    BODY = enum.auto()
    EPILOGUE = enum.auto()
    CLOSED = enum.auto()
    FAILED = enum.auto()


_TRUNCATED_IN = {
    _State.AFTER_DELIMITER: "right after a boundary delimiter",
    _State.HEADERS: "in the headers of a part",
    _State.BODY: "in the body of a part",
}


class MultipartParser:
    """Turns a multipart body, fed in chunks of any size, into PartStart/PartData/PartEnd events.

    See: RFC 2046 §5.1.1, RFC 2387, PS3.18 §8.6.1.2. `feed()` each chunk, then `close()`; both return
    the events completed so far and raise InvalidInput on a malformed body.
    """

    def __init__(self, boundary: bytes, max_header_bytes: int = 16384) -> None:
        if not 0 < len(boundary) <= _MAX_BOUNDARY_BYTES or b"\r" in boundary or b"\n" in boundary:
            raise InvalidInput(
                f"multipart boundary must be 1 to {_MAX_BOUNDARY_BYTES} bytes without line breaks"
            )
        self._boundary = boundary
        self._delimiter = _CRLF + b"--" + boundary
        self._max_header_bytes = max_header_bytes
        self._state = _State.PREAMBLE
        # Unconsumed input. It starts with the CRLF rule 1 implies before the first delimiter.
        self._buffer = _CRLF
        # How many leading bytes of the buffer are not part data (the blank line of rule 4).
        self._skip = 0
        self._headers: dict[str, str] = {}
        self._last_header: str | None = None
        self._header_bytes = 0
        self._parts = 0

    @classmethod
    def for_content_type(cls, content_type: str, max_header_bytes: int = 16384) -> MultipartParser:
        """A parser for the boundary a request's Content-Type names; it must be multipart/*."""
        media_type, params = parse_content_type(content_type)
        if not media_type.startswith("multipart/"):
            raise InvalidInput(f"expected a multipart Content-Type, got {media_type}")
        boundary = params.get("boundary")
        if not boundary:
            raise InvalidInput("multipart Content-Type has no boundary parameter")
        try:
            # Servers decode header bytes as Latin-1, so this gives back the bytes that were sent.
            encoded = boundary.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidInput("multipart boundary is not Latin-1") from None
        return cls(encoded, max_header_bytes)

    def feed(self, data: bytes) -> list[Event]:
        """Consume the next chunk of the body; return the events it completes (possibly none)."""
        if self._state in (_State.CLOSED, _State.FAILED):
            raise ValueError(f"feed() on a {self._state.name.lower()} multipart parser")
        if self._state is _State.EPILOGUE:
            return []
        buffer = self._buffer + data if self._buffer else bytes(data)
        events: list[Event] = []
        pos, progressing = 0, True
        try:
            while progressing:
                pos, progressing = self._step(buffer, pos, events)
        except InvalidInput:
            self._state = _State.FAILED
            raise
        self._buffer = buffer[pos:]
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body; raise InvalidInput unless the close delimiter was seen."""
        state, self._state = self._state, _State.CLOSED
        if state is _State.EPILOGUE:
            return []
        if state in (_State.PREAMBLE, _State.BODY) and self._buffer.startswith(self._delimiter):
            state = _State.AFTER_DELIMITER  # held back only for want of the byte after it (rule 1)
        if state is _State.PREAMBLE:
            raise InvalidInput(
                f"multipart body has no parts: no delimiter with boundary {self._boundary[:80]!r}"
            )
        if state in _TRUNCATED_IN:
            raise InvalidInput(f"multipart body truncated {_TRUNCATED_IN[state]}, before the close delimiter")
        raise ValueError(f"close() on a {state.name.lower()} multipart parser")

    def _step(self, buffer: bytes, pos: int, events: list[Event]) -> tuple[int, bool]:
        """Advance in the current state: the new position, and whether another step can proceed."""
        state = self._state
        if state is _State.BODY:
            return self._scan(buffer, pos, events)
        if state is _State.HEADERS:
            return self._read_headers(buffer, pos, events)
        if state is _State.AFTER_DELIMITER:
            return self._after_delimiter(buffer, pos)
        if state is _State.PREAMBLE:
            return self._scan(buffer, pos, None)
        return len(buffer), False

    def _scan(self, buffer: bytes, pos: int, events: list[Event] | None) -> tuple[int, bool]:
        """Look for the next delimiter; emit the data certainly before it (dropped in the preamble)."""
        delimiter, end = self._delimiter, len(buffer)
        search = pos
        while True:
            found = buffer.find(delimiter, search)
            if found < 0:
                hold = self._held_back(buffer, pos)
                break
            after = found + len(delimiter)
            if after == end or (after + 1 == end and buffer[after] == _DASH):
                hold = found
                break
            if buffer[after] in _AFTER_BOUNDARY or buffer[after] == _DASH == buffer[after + 1]:
                if events is not None:
                    self._emit(buffer, pos, found, events)
                    events.append(PartEnd())
                self._skip = 0
                self._state = _State.AFTER_DELIMITER
                return after, True
            search = found + 1
        if events is not None:
            self._emit(buffer, pos, hold, events)
        self._skip = max(0, self._skip - (hold - pos))
        return hold, False

    def _held_back(self, buffer: bytes, pos: int) -> int:
        """Where the tail that could still grow into a delimiter begins (len(buffer) if none)."""
        end = len(buffer)
        # The boundary has no CR, so only the last CR of the tail can start a delimiter.
        cr = buffer.rfind(b"\r", max(pos, end - len(self._delimiter) + 1))
        if cr >= 0 and self._delimiter.startswith(buffer[cr:]):
            return cr
        return end

    def _emit(self, buffer: bytes, pos: int, stop: int, events: list[Event]) -> None:
        start = pos + self._skip
        if stop > start:
            events.append(PartData(buffer[start:stop]))

    def _after_delimiter(self, buffer: bytes, pos: int) -> tuple[int, bool]:
        """After a boundary: "--" ends the body; transport padding and a line break start a part."""
        if buffer.startswith(b"--", pos):
            if self._parts == 0:
                raise InvalidInput("multipart body has no parts: it starts with the close delimiter")
            self._state = _State.EPILOGUE
            return len(buffer), False
        newline = buffer.find(b"\n", pos)
        padding = buffer[pos:] if newline < 0 else buffer[pos:newline]
        if padding.removesuffix(b"\r").strip(_PADDING):
            raise InvalidInput("unexpected bytes after a multipart boundary delimiter")
        if newline < 0:
            if len(padding) > self._max_header_bytes:
                raise InvalidInput("transport padding after a multipart boundary delimiter is too long")
            return pos, False
        self._state = _State.HEADERS
        self._headers = {}
        self._last_header = None
        self._header_bytes = 0
        return newline + 1, True

    def _read_headers(self, buffer: bytes, pos: int, events: list[Event]) -> tuple[int, bool]:
        """Consume complete header lines up to the blank line that ends them."""
        while True:
            newline = buffer.find(b"\n", pos)
            size = (len(buffer) if newline < 0 else newline + 1) - pos
            if self._header_bytes + size > self._max_header_bytes:
                raise InvalidInput(f"part headers exceed {self._max_header_bytes} bytes")
            if newline < 0:
                return pos, False
            line = buffer[pos:newline].removesuffix(b"\r")
            if not line:
                events.append(PartStart(self._headers))
                self._parts += 1
                self._state = _State.BODY
                # Rule 4: the blank line stays in front of the body, but is never emitted as data.
                self._skip = size
                return pos, True
            self._header_bytes += size
            self._add_header_line(line)
            pos = newline + 1

    def _add_header_line(self, line: bytes) -> None:
        if line.startswith(b"--" + self._boundary):
            raise InvalidInput("part headers are not followed by a blank line")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("latin-1")
        if text[0] in " \t":
            if self._last_header is None:
                raise InvalidInput("part headers start with a continuation line")
            previous, more = self._headers[self._last_header], text.strip(" \t")
            self._headers[self._last_header] = f"{previous} {more}" if previous and more else previous + more
            return
        name, colon, value = text.partition(":")
        if not colon:
            raise InvalidInput(
                "part header line without ':' (is the blank line after the part headers missing?)"
            )
        name = name.rstrip(" \t").lower()
        if not is_token(name):
            raise InvalidInput(f"malformed part header name {name[:40]!r}")
        value = value.strip(" \t")
        previous_value = self._headers.get(name)
        self._headers[name] = value if previous_value is None else f"{previous_value}, {value}"
        self._last_header = name


def new_boundary() -> str:
    """A fresh random boundary: 32 hex digits, a token that never needs quoting."""
    return secrets.token_hex(16)


def multipart_related_type(type_: str, boundary: str, **params: str) -> str:
    """The Content-Type value of a multipart/related body of `type_` parts.

    See: RFC 2387 §3, PS3.18 §8.7.3. `type` is always quoted (a media type holds "/", which a token
    may not); other values only when they are not tokens. A "_" in a keyword becomes "-", so
    `transfer_syntax=` writes `transfer-syntax`; `**{"transfer-syntax": ...}` works too.
    """
    _check_boundary(boundary)
    items = [f"type={_quoted(type_)}", f"boundary={_param_value(boundary)}"]
    for key, value in params.items():
        name = key.replace("_", "-").lower()
        if not is_token(name) or name in ("type", "boundary"):
            raise ValueError(f"bad multipart/related parameter name {key!r}")
        items.append(f"{name}={_param_value(value)}")
    return "; ".join(["multipart/related", *items])


@dataclass(frozen=True)
class MultipartWriter:
    """Framing bytes for a multipart body: per part `part_header`, its data, `part_end`; then `close`.

    See: RFC 2046 §5.1.1, PS3.18 §8.6.1.2. The caller streams each part's data in between, so no
    part is ever held whole. Bad header names or values are a programming error: ValueError.
    """

    boundary: str = field(default_factory=new_boundary)

    def __post_init__(self) -> None:
        _check_boundary(self.boundary)

    def content_type(self, type_: str, **params: str) -> str:
        """The Content-Type value for this body; see `multipart_related_type`."""
        return multipart_related_type(type_, self.boundary, **params)

    def part_header(self, content_type: str, headers: Mapping[str, str] | None = None) -> bytes:
        """`--boundary`, the part's Content-Type and other headers, and the blank line after them."""
        lines = [f"--{self.boundary}", _header_line("Content-Type", content_type)]
        for name, value in (headers or {}).items():
            if name.lower() == "content-type":
                raise ValueError("give a part's Content-Type as content_type, not in headers")
            lines.append(_header_line(name, value))
        lines += ["", ""]
        return "\r\n".join(lines).encode("ascii")

    def part_end(self) -> bytes:
        """The CRLF that ends a part's data; it belongs to the delimiter that follows."""
        return _CRLF

    def close(self) -> bytes:
        """The close delimiter, after the last `part_end()`."""
        return f"--{self.boundary}--\r\n".encode("ascii")

    def part(self, content_type: str, data: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        """A whole small part (header, data, end), for bodies that are not worth streaming."""
        return self.part_header(content_type, headers) + data + _CRLF


def _check_boundary(boundary: str) -> None:
    if _BCHARS_RE.fullmatch(boundary) is None:
        raise ValueError("a boundary is 1 to 70 RFC 2046 bchars and does not end in a space")


def _header_line(name: str, value: str) -> str:
    if not is_token(name) or _FIELD_VALUE_RE.fullmatch(value) is None:
        raise ValueError(f"bad part header {name[:40]!r}: name must be a token, value printable ASCII")
    return f"{name}: {value}"


def _quoted(value: str) -> str:
    if _FIELD_VALUE_RE.fullmatch(value) is None:
        raise ValueError(f"cannot quote {value[:40]!r}: parameter values must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _param_value(value: str) -> str:
    return value if is_token(value) else _quoted(value)
