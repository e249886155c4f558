"""Whole-instance transfer syntax conversion for WADO-RS instance retrieval.

See: PS3.18 §8.7.3.5.2 (default Explicit VR Little Endian; ``*`` = as stored), PS3.5 §8.2, Annex A.4.

Rules:
1. Never produce Implicit VR Little Endian or Explicit VR Big Endian; ``*`` keeps the stored syntax
   unless it is one of those two, which become Explicit VR Little Endian.
2. Native -> Explicit VR Little Endian always (bytes swapped from Big Endian). Compressed -> Explicit
   VR Little Endian when a decoder is installed. Native or decodable -> a lossless compressed syntax
   only when pydicom has an encoder plugin for it here (RLE Lossless always; JPEG-LS / JPEG 2000
   Lossless only with their plugins). Everything else is ``Unsupported``.
3. Memory: native pixels are copied in chunks; compressed frames are decoded and encoded one frame at a
   time; only the header and one frame are ever held. Exceptions, converted whole in memory: Deflated
   Explicit VR Little Endian (pydicom inflates it whole) and instances without (7FE0,0010) Pixel Data
   (reports, documents, Float Pixel Data). Big Endian OW/OF/OD/OL/OV values are byte-swapped too.
4. Identity is kept: SOP Instance UID never changes. Decompressing updates Photometric Interpretation
   (see ``frames.decoded_photometric``) and Planar Configuration (0); Lossy Image Compression stays,
   and is set to "01" when lossy JPEG input lacks it (PS3.3 C.7.6.1.1.5). Offset tables are dropped
   (native) or rebuilt (encapsulated). Trailing padding (FFFC,FFFC) and Digital Signatures
   (FFFA,FFFA), which a new encoding invalidates, are not copied.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from io import BytesIO
from typing import BinaryIO

import numpy as np
from pydicom import dcmread, dcmwrite, filereader
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import itemize_frame, parse_basic_offsets, parse_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from pacsbridge.domain.errors import CorruptData, NotFound, Unsupported
from pacsbridge.domain.model import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

from .frames import (
    LOSSY_JPEG,
    PixelInfo,
    Pixels,
    can_decode,
    can_encode,
    decode_frame,
    encode_frame,
    iter_frames,
    locate_pixel_data,
    read_dataset,
)

NEVER_ON_THE_WEB = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})
_CHUNK = 1 << 20  # a multiple of every sample size, so a byte swap never straddles two chunks
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_NOT_COPIED = frozenset({0xFFFCFFFC, 0xFFFAFFFA})
_LOSSY_METHOD = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1"}


def resolve(stored_ts: str, wanted_ts: str) -> str:
    """The transfer syntax actually sent for a request of ``wanted_ts`` (``*`` allowed)."""
    if wanted_ts == "*":
        return EXPLICIT_VR_LITTLE_ENDIAN if stored_ts in NEVER_ON_THE_WEB else stored_ts
    return wanted_ts


def needs_transcode(stored_ts: str, wanted_ts: str) -> bool:
    """True when the stored bytes cannot be sent as they are."""
    return resolve(stored_ts, wanted_ts) != stored_ts


def can_transcode(stored_ts: str, wanted_ts: str) -> bool:
    """True when ``transcode`` can produce ``wanted_ts`` from ``stored_ts`` here (module rule 2).

    Encoding to a compressed syntax may still fail for particular pixels (e.g. BitsAllocated 1), which
    ``transcode`` reports as Unsupported.
    """
    target = resolve(stored_ts, wanted_ts)
    if target in NEVER_ON_THE_WEB:
        return False
    if target == stored_ts:
        return True
    if target == EXPLICIT_VR_LITTLE_ENDIAN:
        return can_decode(stored_ts)
    if stored_ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return False
    return can_encode(target) and can_decode(stored_ts)


def transcode(src_fp: BinaryIO, dst_fp: BinaryIO, wanted_ts: str) -> None:
    """Write the Part 10 file in ``src_fp`` to ``dst_fp`` in transfer syntax ``wanted_ts``.

    ``src_fp`` must be seekable (the file starts at offset 0); ``dst_fp`` needs only ``write`` (a
    seekable one also gets a filled Basic Offset Table when encoding). Raises Unsupported (HTTP 406)
    before writing anything when the conversion is not offered.
    """
    dataset = read_dataset(src_fp)
    stored = str(dataset.file_meta.get("TransferSyntaxUID", "") or "")
    target = resolve(stored, wanted_ts)
    if not stored or not can_transcode(stored, target):
        raise Unsupported(f"an instance stored as {stored or 'unknown'} cannot be sent as {wanted_ts}")
    if target == stored:
        src_fp.seek(0)
        shutil.copyfileobj(src_fp, dst_fp, _CHUNK)
        return
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        _swap_binary_values(dataset)
    if stored == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        _convert_in_memory(src_fp, dst_fp, target)
        return
    try:
        info = locate_pixel_data(dataset, src_fp)
    except (NotFound, Unsupported):  # no Pixel Data (SR, documents) or Float Pixel Data: nothing to stream
        if target != EXPLICIT_VR_LITTLE_ENDIAN:
            raise Unsupported(f"only images with Pixel Data can be sent as {target}") from None
        _convert_in_memory(src_fp, dst_fp, target)
        return
    if not info.encapsulated and target == EXPLICIT_VR_LITTLE_ENDIAN:
        _write_header(dst_fp, dataset, target)
        _copy_native(src_fp, dst_fp, info)
        end = info.pixel_offset + (info.pixel_length or 0)
    elif target == EXPLICIT_VR_LITTLE_ENDIAN:
        _decompress(src_fp, dst_fp, dataset, info)
        end = _encapsulated_end(src_fp, info)
    else:
        if info.bits_allocated == 1:
            raise Unsupported("1-bit pixel data cannot be compressed here")
        _compress(src_fp, dst_fp, dataset, info, target)
        end = (
            _encapsulated_end(src_fp, info)
            if info.encapsulated
            else info.pixel_offset + (info.pixel_length or 0)
        )
    _copy_tail(src_fp, dst_fp, end, stored)


def _convert_in_memory(src_fp: BinaryIO, dst_fp: BinaryIO, target: str) -> None:
    src_fp.seek(0)
    dataset = dcmread(src_fp)
    if dataset.file_meta.get("TransferSyntaxUID") == EXPLICIT_VR_BIG_ENDIAN:
        _swap_binary_values(dataset)
    _write_header(dst_fp, dataset, target)


def _swap_binary_values(dataset: Dataset) -> None:
    """Byte-swap OW/OF/OL/OD/OV values, at any depth, for Big Endian -> Little Endian.

    pydicom re-encodes numbers and text when the byte order changes, but writes these binary
    values as they are (e.g. Overlay Data, LUT Data as OW, Float Pixel Data).
    """

    def swap(_: Dataset, element: DataElement) -> None:
        size = _WORD_SIZES.get(element.VR, 0)
        if size and isinstance(element.value, bytes) and element.tag != 0x7FE00010:
            element.value = _swap(element.value, size)

    dataset.walk(swap)


def _write_header(dst_fp: BinaryIO, dataset: Dataset, target: str) -> None:
    """Preamble, DICM, file meta and every element before Pixel Data, encoded as ``target``."""
    for tag in [tag for tag in list(dataset.keys()) if tag.element == 0]:
        del dataset[tag]  # group lengths (retired) would be wrong after re-encoding
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.file_meta.TransferSyntaxUID = UID(target)
    buffer = BytesIO()
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except (ValueError, AttributeError, KeyError) as exc:
        raise CorruptData(f"the header cannot be re-encoded as {target}") from exc
    dst_fp.write(buffer.getvalue())


def _copy_native(src_fp: BinaryIO, dst_fp: BinaryIO, info: PixelInfo) -> None:
    length = info.pixel_length or 0
    vr = b"OW" if info.bits_allocated > 8 else b"OB"
    dst_fp.write(_PIXEL_DATA_TAG + vr + b"\x00\x00" + struct.pack("<L", length))
    swap = _swap_size(info)
    src_fp.seek(info.pixel_offset)
    remaining = length
    while remaining:
        chunk = src_fp.read(min(_CHUNK, remaining))
        if not chunk:
            raise CorruptData("Pixel Data ends before its stated length")
        remaining -= len(chunk)
        dst_fp.write(_swap(chunk, swap) if swap else chunk)


def _swap_size(info: PixelInfo) -> int:
    """Bytes per swapped unit when converting to little endian; 0 when nothing is swapped."""
    if info.transfer_syntax != EXPLICIT_VR_BIG_ENDIAN or info.bits_allocated == 1:
        return 0  # pydicom, too, reads Big Endian 1-bit data as is
    if info.bits_allocated > 8:
        return info.bits_allocated // 8
    return 2 if info.pixel_vr == "OW" else 0  # 8-bit samples in OW are word-swapped (PS3.5 §8.2)


def _swap(chunk: bytes, size: int) -> bytes:
    whole = len(chunk) - len(chunk) % size  # only the odd padding byte of 8-bit data can be left over
    swapped = np.frombuffer(chunk, dtype=f">u{size}", count=whole // size).byteswap()
    return swapped.tobytes() + chunk[whole:]


def _decoded_frames(src_fp: BinaryIO, info: PixelInfo) -> Iterator[tuple[Pixels, str]]:
    for frame in iter_frames(src_fp, info):
        yield decode_frame(frame, info)


def _decompress(src_fp: BinaryIO, dst_fp: BinaryIO, dataset: Dataset, info: PixelInfo) -> None:
    length = info.decoded_frame_length * info.number_of_frames
    if length + length % 2 >= _UNDEFINED_LENGTH:  # PS3.18 §8.7.3.5.2: too large for EVRLE -> 406
        raise Unsupported("the decompressed Pixel Data would exceed the 4 GiB a defined length allows")
    frames = _decoded_frames(src_fp, info)
    first, photometric = next(frames)
    _update_pixel_module(dataset, info, photometric)
    _write_header(dst_fp, dataset, EXPLICIT_VR_LITTLE_ENDIAN)

    vr = b"OW" if info.bits_allocated > 8 else b"OB"
    dst_fp.write(_PIXEL_DATA_TAG + vr + b"\x00\x00" + struct.pack("<L", length + length % 2))
    _write_decoded(dst_fp, first, info)
    for pixels, _ in frames:
        _write_decoded(dst_fp, pixels, info)
    if length % 2:
        dst_fp.write(b"\x00")


def _write_decoded(dst_fp: BinaryIO, pixels: Pixels, info: PixelInfo) -> None:
    data = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(data) != info.decoded_frame_length:
        raise CorruptData("a decoded frame does not match Rows, Columns and Bits Allocated")
    dst_fp.write(data)


def _compress(src_fp: BinaryIO, dst_fp: BinaryIO, dataset: Dataset, info: PixelInfo, target: str) -> None:
    frames = _decoded_frames(src_fp, info)
    first, photometric = next(frames)
    encoded = encode_frame(first, info, photometric, target)
    _update_pixel_module(dataset, info, photometric)
    _write_header(dst_fp, dataset, target)

    dst_fp.write(_PIXEL_DATA_TAG + b"OB\x00\x00" + struct.pack("<L", _UNDEFINED_LENGTH))
    count = info.number_of_frames
    fill_table = dst_fp.seekable() and count > 1 and _fits_basic_offset_table(info)
    table_at = dst_fp.tell() + 8 if fill_table else 0
    dst_fp.write(_ITEM + struct.pack("<L", 4 * count if fill_table else 0))
    if fill_table:
        dst_fp.write(b"\x00" * 4 * count)
    offsets = [0]
    offsets.append(offsets[-1] + _write_items(dst_fp, encoded))
    for pixels, _ in frames:
        offsets.append(offsets[-1] + _write_items(dst_fp, encode_frame(pixels, info, photometric, target)))
    dst_fp.write(_SEQUENCE_DELIMITER)
    if fill_table:
        end = dst_fp.tell()
        dst_fp.seek(table_at)
        dst_fp.write(struct.pack(f"<{count}L", *offsets[:-1]))
        dst_fp.seek(end)


def _fits_basic_offset_table(info: PixelInfo) -> bool:
    """Whether every frame offset surely fits the table's 32 bits, bounding each encoded frame by its
    decoded size plus RLE's worst-case growth (1 byte in 128, a 64-byte header and item padding)."""
    worst = info.decoded_frame_length * 129 // 128 + 64 + 8 + 1
    return worst * (info.number_of_frames - 1) <= 0xFFFFFFFF


def _write_items(dst_fp: BinaryIO, frame: bytes) -> int:
    written = 0
    for item in itemize_frame(frame, 1):
        dst_fp.write(item)
        written += len(item)
    return written


def _update_pixel_module(dataset: Dataset, info: PixelInfo, photometric: str) -> None:
    dataset.PhotometricInterpretation = photometric
    if info.samples_per_pixel > 1:
        dataset.PlanarConfiguration = 0
    if info.transfer_syntax in LOSSY_JPEG and "LossyImageCompression" not in dataset:
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = _LOSSY_METHOD[info.transfer_syntax]


def _encapsulated_end(src_fp: BinaryIO, info: PixelInfo) -> int:
    """File offset just after the Sequence Delimitation Item of the encapsulated Pixel Data."""
    src_fp.seek(info.pixel_offset)
    parse_basic_offsets(src_fp)
    count, offsets = parse_fragments(src_fp)
    end = src_fp.tell()
    if count:
        src_fp.seek(offsets[-1] + 4)
        (length,) = struct.unpack("<L", src_fp.read(4))
        end = offsets[-1] + 8 + length
    src_fp.seek(end)
    return end + 8 if src_fp.read(4) == _SEQUENCE_DELIMITER[:4] else end


def _copy_tail(src_fp: BinaryIO, dst_fp: BinaryIO, end: int, stored: str) -> None:
    """Copy the elements that follow Pixel Data (rare), re-encoded as Explicit VR Little Endian."""
    src_fp.seek(end)
    if not src_fp.read(1):
        return
    src_fp.seek(end)
    try:
        tail = filereader.read_dataset(
            src_fp,
            is_implicit_VR=stored == IMPLICIT_VR_LITTLE_ENDIAN,
            is_little_endian=stored != EXPLICIT_VR_BIG_ENDIAN,
        )
    except (EOFError, ValueError, struct.error) as exc:
        raise CorruptData("the elements after Pixel Data cannot be read") from exc
    for tag in [tag for tag in list(tail.keys()) if tag in _NOT_COPIED]:
        del tail[tag]
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        _swap_binary_values(tail)
    if not len(tail):
        return
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, tail)
    dst_fp.write(buffer.getvalue())
