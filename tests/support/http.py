"""Small HTTP helpers for DICOMweb tests: build STOW bodies, split multipart answers."""

from __future__ import annotations

import io
from collections.abc import Iterable

import pydicom
from pydicom.dataset import Dataset

from pacsbridge.formats.media import parse_content_type
from pacsbridge.formats.multipart import MultipartParser, MultipartWriter, PartData, PartStart

from .dicom import to_bytes


def stow_body(parts: Iterable[bytes | Dataset], part_type: str = "application/dicom") -> tuple[bytes, str]:
    writer = MultipartWriter()
    chunks = []
    for part in parts:
        data = to_bytes(part) if isinstance(part, Dataset) else part
        chunks += [writer.part_header(part_type), data, writer.part_end()]
    chunks.append(writer.close())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={writer.boundary}'


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    media, params = parse_content_type(content_type)
    assert media == "multipart/related", content_type
    parser = MultipartParser(params["boundary"].encode())
    parts: list[tuple[dict[str, str], bytes]] = []
    for event in [*parser.feed(body), *parser.close()]:
        if isinstance(event, PartStart):
            parts.append((event.headers, b""))
        elif isinstance(event, PartData):
            headers, data = parts[-1]
            parts[-1] = (headers, data + event.data)
    return parts


def read_dataset(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))
