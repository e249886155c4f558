"""Frame access for WADO-RS ``frames``: find, read, decode and re-encode single frames of a Part 10 file.

See: PS3.18 §10.4.1.1.3 (Frames resource), §8.7.3.3 (frame media types and transfer syntaxes);
PS3.5 §8.1.1, §8.2 and Annex A.4 (native and encapsulated Pixel Data).

Rules:
1. Functions take a seekable binary file object opened by the caller; the Part 10 file starts at
   offset 0 of it. Only the header (everything before Pixel Data) is parsed; a frame is read by
   seeking to it, so memory holds one frame, never the whole object.
2. Native frames are returned as stored (sample byte order of the stored transfer syntax) with two
   normalisations: BitsAllocated=1 frames are re-packed to start at bit 0 of their first byte
   (PS3.5 §8.1.1 packs frames back to back, so frame N may start mid-byte), and 8-bit samples stored
   as OW in Explicit VR Big Endian are un-swapped (that word swap crosses frame boundaries).
3. Encapsulated frames are the concatenation of the frame's fragments, located by pydicom.encaps:
   Extended Offset Table, else Basic Offset Table, else fragment walking.
4. Decoding compressed frames: lossy JPEG (.50/.51) colour and YBR_FULL_422 come out as RGB (the
   decoder has up-sampled the chroma already), YBR_ICT/YBR_RCT as RGB (the codec's own transform);
   other colour spaces stay as stored so that lossless paths stay exact. Decoded colour frames are
   always colour-by-pixel (Planar Configuration 0). ``decoded_photometric`` predicts the result.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
)

from pacsbridge.domain.errors import CorruptData, NotFound, Unsupported
from pacsbridge.domain.model import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_TRANSFER_SYNTAXES,
)

Pixels = npt.NDArray[Any]

LOSSY_JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
ENCODE_CANDIDATES = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
"""Lossless syntaxes we may encode to, when pydicom has a working encoder plugin for them."""

_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009})
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class PixelInfo:
    """The Image Pixel attributes of one instance and where its Pixel Data value sits in the file.

    ``pixel_offset`` is the file offset of the first byte of the value (for encapsulated data: of the
    Basic Offset Table item); ``pixel_length`` is None for undefined length (encapsulated).
    """

    transfer_syntax: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    number_of_frames: int
    encapsulated: bool
    pixel_offset: int
    pixel_length: int | None
    pixel_vr: str = "OB"
    extended_offsets: tuple[tuple[int, ...], tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def frame_bits(self) -> int:
        """Bits of one native frame (YBR_FULL_422 stores two samples per pixel, PS3.3 C.7.6.3.1.2)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples_per_pixel
        return self.rows * self.columns * samples * self.bits_allocated

    @property
    def frame_length(self) -> int:
        """Bytes of one native frame as ``read_frames`` returns it (1-bit frames rounded up)."""
        return (self.frame_bits + 7) // 8

    @property
    def decoded_frame_length(self) -> int:
        """Bytes of one frame after decoding a compressed frame (full chroma, no bit packing)."""
        return self.rows * self.columns * self.samples_per_pixel * max(1, self.bits_allocated // 8)


def read_header(fp: BinaryIO) -> tuple[Dataset, PixelInfo]:
    """Parse everything before Pixel Data and locate the Pixel Data value.

    See: PS3.10 §7.1 (file format), PS3.5 §7.1 (element encoding).
    """
    dataset = read_dataset(fp)
    return dataset, locate_pixel_data(dataset, fp)


def layout_to_json(info: PixelInfo) -> str:
    """A PixelInfo as JSON text, to be kept in the index at ingest."""
    return json.dumps(dataclasses.asdict(info), separators=(",", ":"))


def layout_from_json(text: str) -> PixelInfo:
    """The PixelInfo kept by ``layout_to_json``."""
    values = json.loads(text)
    eot = values.pop("extended_offsets", None)
    return PixelInfo(**values, extended_offsets=None if eot is None else (tuple(eot[0]), tuple(eot[1])))


def pixel_info(fp: BinaryIO) -> PixelInfo:
    """Return the Image Pixel attributes and Pixel Data location of the Part 10 file in ``fp``."""
    return read_header(fp)[1]


def read_dataset(fp: BinaryIO) -> Dataset:
    """Read the file meta information and the data set up to (not including) Pixel Data."""
    fp.seek(0)
    try:
        return dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise CorruptData("not a readable DICOM Part 10 file") from exc


def locate_pixel_data(dataset: Dataset, fp: BinaryIO) -> PixelInfo:
    """Read the Pixel Data element header at the position where ``read_dataset`` stopped."""
    ts = str(dataset.file_meta.get("TransferSyntaxUID", "") or "")
    if not ts:
        raise CorruptData("the file meta information has no (0002,0010) Transfer Syntax UID")
    if ts == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        raise Unsupported("frame access is not offered for Deflated Explicit VR Little Endian")
    little = ts != EXPLICIT_VR_BIG_ENDIAN
    implicit = ts == IMPLICIT_VR_LITTLE_ENDIAN
    endian = "<" if little else ">"

    tag_offset = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        raise NotFound("the instance has no Pixel Data")
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag in _FLOAT_PIXEL_DATA:
        raise Unsupported("frames of Float Pixel Data are not offered")
    if tag != _PIXEL_DATA:
        raise NotFound("the instance has no Pixel Data")
    if implicit:
        vr = "OW"
        (length,) = struct.unpack("<L", head[4:8])
        value_offset = tag_offset + 8
    else:
        vr = head[4:6].decode("ascii", "replace")
        (length,) = struct.unpack(f"{endian}L", fp.read(4))
        value_offset = tag_offset + 12

    try:
        encapsulated = UID(ts).is_encapsulated
    except ValueError:
        raise Unsupported(f"{ts} is not a transfer syntax known here") from None
    if encapsulated != (length == _UNDEFINED):
        raise CorruptData("Pixel Data length does not match the transfer syntax (PS3.5 §A.4)")

    def number(keyword: str, default: int | None = None) -> int:
        value = dataset.get(keyword, default)
        if value is None or value == "":
            if default is None:
                raise CorruptData(f"the image has no {keyword}")
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CorruptData(f"{keyword} is not an integer") from None

    eot = None
    if "ExtendedOffsetTable" in dataset and "ExtendedOffsetTableLengths" in dataset:
        raw_offsets = bytes(dataset.ExtendedOffsetTable)
        raw_lengths = bytes(dataset.ExtendedOffsetTableLengths)
        if len(raw_offsets) == len(raw_lengths) and raw_offsets and len(raw_offsets) % 8 == 0:
            count = len(raw_offsets) // 8
            eot = (struct.unpack(f"<{count}Q", raw_offsets), struct.unpack(f"<{count}Q", raw_lengths))

    info = PixelInfo(
        transfer_syntax=ts,
        rows=number("Rows"),
        columns=number("Columns"),
        samples_per_pixel=number("SamplesPerPixel", 1),
        bits_allocated=number("BitsAllocated"),
        bits_stored=number("BitsStored", number("BitsAllocated")),
        pixel_representation=number("PixelRepresentation", 0),
        photometric=str(dataset.get("PhotometricInterpretation", "") or "").strip(),
        planar_configuration=number("PlanarConfiguration", 0),
        number_of_frames=max(1, number("NumberOfFrames", 1)),
        encapsulated=encapsulated,
        pixel_offset=value_offset,
        pixel_length=None if encapsulated else length,
        pixel_vr=vr,
        extended_offsets=eot,
    )
    if info.bits_allocated != 1 and info.bits_allocated % 8:
        raise CorruptData("Bits Allocated must be 1 or a multiple of 8 (PS3.5 §8.1.1)")
    return info


def read_frames(fp: BinaryIO, numbers: Sequence[int], info: PixelInfo) -> Iterator[bytes]:
    """Yield the stored bytes of the 1-based frames ``numbers``, in the order given.

    All numbers are checked before anything is read, so a response never starts and then fails on a
    bad number. Native frames follow module rule 2, encapsulated frames rule 3.
    See: PS3.18 §10.4.1.1.3.
    """
    wanted = list(numbers)
    for number in wanted:
        if not 1 <= number <= info.number_of_frames:
            raise NotFound(f"frame {number} does not exist (the instance has {info.number_of_frames})")
    if info.encapsulated:
        return (_read_encapsulated(fp, info, number) for number in wanted)
    return (_read_native(fp, info, number) for number in wanted)


def iter_frames(fp: BinaryIO, info: PixelInfo) -> Iterator[bytes]:
    """Yield every frame in order, reading each once (for whole-object work such as transcoding)."""
    return read_frames(fp, range(1, info.number_of_frames + 1), info)


def _read_native(fp: BinaryIO, info: PixelInfo, number: int) -> bytes:
    bits = info.frame_bits
    start_bit = (number - 1) * bits
    first, shift = divmod(start_bit, 8)
    size = (shift + bits + 7) // 8
    raw = _read_span(fp, info, first, size)
    if info.bits_allocated != 1 or (shift == 0 and bits % 8 == 0):
        return raw
    unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    return np.packbits(unpacked[shift : shift + bits], bitorder="little").tobytes()


def _read_span(fp: BinaryIO, info: PixelInfo, start: int, size: int) -> bytes:
    """Read ``size`` bytes at ``start`` within the native Pixel Data value."""
    if info.pixel_length is not None and start + size > info.pixel_length:
        raise CorruptData("Pixel Data is shorter than Number of Frames implies")
    if not _is_word_swapped(info):
        fp.seek(info.pixel_offset + start)
        data = fp.read(size)
    else:
        low = start - start % 2
        high = start + size + (start + size) % 2
        fp.seek(info.pixel_offset + low)
        words = fp.read(high - low)
        swapped = bytearray(len(words))
        swapped[0::2], swapped[1::2] = words[1::2], words[0::2]
        data = bytes(swapped[start - low : start - low + size])
    if len(data) != size:
        raise CorruptData("Pixel Data is shorter than Number of Frames implies")
    return data


def _is_word_swapped(info: PixelInfo) -> bool:
    # PS3.5 §8.2 (and pydicom): 8-bit samples in an OW value are swapped per 16-bit word in Big Endian.
    return (
        info.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN and info.bits_allocated == 8 and info.pixel_vr == "OW"
    )


def _read_encapsulated(fp: BinaryIO, info: PixelInfo, number: int) -> bytes:
    fp.seek(info.pixel_offset)
    eot = info.extended_offsets
    try:
        return get_frame(
            fp,
            number - 1,
            number_of_frames=info.number_of_frames,
            extended_offsets=(list(eot[0]), list(eot[1])) if eot else None,
        )
    except (ValueError, struct.error) as exc:
        raise CorruptData(f"frame {number} cannot be located in the encapsulated Pixel Data") from exc


def can_decode(transfer_syntax: str) -> bool:
    """True when frames stored in ``transfer_syntax`` can be turned into native pixels here."""
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        return True
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(transfer_syntax: str) -> bool:
    """True when native pixels can be encoded to ``transfer_syntax`` here (lossless syntaxes only)."""
    if transfer_syntax not in ENCODE_CANDIDATES:
        return False
    try:
        return bool(get_encoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def decoded_photometric(info: PixelInfo) -> str:
    """Photometric Interpretation of the pixels ``decode_frame`` returns (module rule 4)."""
    if not info.encapsulated:
        return info.photometric
    if info.photometric in ("YBR_ICT", "YBR_RCT", "YBR_FULL_422"):
        return "RGB"
    if info.transfer_syntax in LOSSY_JPEG and info.photometric.startswith("YBR"):
        return "RGB"
    return info.photometric


def decode_frame(frame: bytes, info: PixelInfo, *, rgb: bool = False) -> tuple[Pixels, str]:
    """Decode one frame to an array (rows, columns[, samples]) in native byte order.

    Returns the array and its Photometric Interpretation. ``rgb`` also converts YBR_FULL and
    YBR_FULL_422 to RGB (for display). BitsAllocated=1 frames decode to one uint8 0/1 per pixel.
    """
    try:
        decoder = get_decoder(info.transfer_syntax)
    except NotImplementedError as exc:
        raise Unsupported(f"no decoder exists for transfer syntax {info.transfer_syntax}") from exc
    if not decoder.is_available:
        raise Unsupported(f"no decoder is installed for transfer syntax {info.transfer_syntax}")
    to_rgb = rgb or (
        info.encapsulated and (info.transfer_syntax in LOSSY_JPEG or info.photometric == "YBR_FULL_422")
    )
    options: dict[str, Any] = {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric,
        "planar_configuration": info.planar_configuration,
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
        # read_frames has already undone the Big Endian word swap of 8-bit OW data
        "pixel_vr": "OB" if _is_word_swapped(info) else info.pixel_vr,
        "as_rgb": to_rgb,
    }
    if info.samples_per_pixel == 1:
        del options["planar_configuration"]
    try:
        if info.encapsulated:
            array, properties = decoder.as_array(encapsulate([frame]), index=0, **options)
        else:
            array, properties = decoder.as_array(frame, **options)
    except (RuntimeError, ValueError, NotImplementedError, KeyError, AttributeError) as exc:
        raise Unsupported(f"the frame cannot be decoded from transfer syntax {info.transfer_syntax}") from exc
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, str(properties.get("photometric_interpretation", info.photometric))


def native_little_endian(frame: bytes, info: PixelInfo) -> bytes:
    """A native frame from ``read_frames`` as Explicit VR Little Endian bytes."""
    if info.transfer_syntax != EXPLICIT_VR_BIG_ENDIAN or info.bits_allocated <= 8:
        return frame
    itemsize = info.bits_allocated // 8
    return np.frombuffer(frame, dtype=f">u{itemsize}").astype(f"<u{itemsize}").tobytes()


def encode_frame(pixels: Pixels, info: PixelInfo, photometric: str, transfer_syntax: str) -> bytes:
    """Encode one decoded frame (planar configuration 0) to a lossless compressed syntax."""
    if not can_encode(transfer_syntax):
        raise Unsupported(f"no encoder is installed for transfer syntax {transfer_syntax}")
    options: dict[str, Any] = {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": photometric,
        "planar_configuration": 0,
        "number_of_frames": 1,
    }
    if transfer_syntax == JPEG2000Lossless:
        options["use_mct"] = False  # keeps RGB as RGB; with MCT the photometric would turn YBR_RCT
    try:
        return bytes(get_encoder(transfer_syntax).encode(pixels, **options))
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        raise Unsupported(f"these pixels cannot be encoded as {transfer_syntax}") from exc


def frame_as(frame: bytes, info: PixelInfo, target_ts: str) -> bytes:
    """Return ``frame`` (from ``read_frames``) in transfer syntax ``target_ts``.

    ``*`` means "as stored", except that native frames always come out as Explicit VR Little Endian
    (PS3.18 §8.7.3: never Implicit VR or Big Endian on the web), the only native target offered.
    Compressed stored frames are decoded (module rule 4 gives the colour space, as does
    ``decoded_photometric``). A lossless compressed target is encoded when ``can_encode`` says so.
    Anything else raises Unsupported.
    See: PS3.18 §8.7.3.3.
    """
    stored = info.transfer_syntax
    if target_ts == "*":
        if info.encapsulated:
            return frame
        target_ts = EXPLICIT_VR_LITTLE_ENDIAN
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        if not info.encapsulated:
            return native_little_endian(frame, info)
        pixels, _ = decode_frame(frame, info)
        return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    if target_ts == stored and info.encapsulated:
        return frame
    if target_ts in NATIVE_TRANSFER_SYNTAXES:
        raise Unsupported("uncompressed frames are sent as Explicit VR Little Endian only")
    if can_encode(target_ts) and info.bits_allocated != 1:
        pixels, photometric = decode_frame(frame, info)
        return encode_frame(pixels, info, photometric, target_ts)
    raise Unsupported(f"frames stored as {stored} cannot be sent as {target_ts}")
