"""Builders of small Part 10 test objects with known pixels: native (any byte order, 1-bit, planar 0/1),
JPEG baseline (Pillow), JPEG lossless / JPEG-LS (DCMTK), RLE (pydicom).

Arrays are shaped (frames, rows, columns[, samples]) and hold the exact stored values.
"""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import pack_bits
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

Array = npt.NDArray[Any]


def ramp(frames: int, rows: int, columns: int, dtype: str = "u2", start: int = 0, step: int = 1) -> Array:
    """Distinct values per pixel and frame: frame f, pixel i -> start + (f * rows * columns + i) * step."""
    count = frames * rows * columns
    return (start + np.arange(count, dtype=np.int64) * step).astype(dtype).reshape(frames, rows, columns)


def rgb_pattern(frames: int, rows: int, columns: int) -> Array:
    """Smooth colour gradients (JPEG-friendly), different in every frame."""
    y, x = np.mgrid[0:rows, 0:columns]
    out = np.empty((frames, rows, columns, 3), dtype=np.uint8)
    for frame in range(frames):
        out[frame, ..., 0] = x * 200 // max(1, columns - 1) + 20 * frame
        out[frame, ..., 1] = y * 255 // max(1, rows - 1)
        out[frame, ..., 2] = 128
    return out


def base_dataset(
    arr: Array,
    *,
    photometric: str,
    bits_allocated: int,
    bits_stored: int | None = None,
    planar: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Image Pixel module and identifiers for ``arr`` (no Pixel Data yet)."""
    frames, rows, columns = arr.shape[:3]
    samples = arr.shape[3] if arr.ndim == 4 else 1
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Pixels"
    ds.PatientID = "PX1"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=ts == ImplicitVRLittleEndian,
        little_endian=ts != ExplicitVRBigEndian,
    )
    return path


def native_bytes(arr: Array, *, planar: int = 0, big_endian: bool = False, word_swap: bool = False) -> bytes:
    """Stored bytes of native pixels (PS3.5 §8.1.1; planar 1 = colour-by-plane per frame)."""
    if arr.ndim == 4 and planar == 1:
        arr = arr.transpose(0, 3, 1, 2)
    data = arr.astype(arr.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    if word_swap:  # 8-bit samples in an OW value, Big Endian: swapped per 16-bit word
        padded = bytearray(data + b"\x00" * (len(data) % 2))
        padded[0::2], padded[1::2] = padded[1::2], padded[0::2]
        data = bytes(padded)
    return data


def write_native(
    path: Path,
    arr: Array,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    planar: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_vr: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A native instance holding ``arr`` (any native transfer syntax)."""
    bits_allocated = arr.dtype.itemsize * 8
    ds = base_dataset(
        arr,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        planar=planar,
        transfer_syntax=transfer_syntax,
    )
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    big = transfer_syntax == ExplicitVRBigEndian
    vr = pixel_vr or ("OW" if bits_allocated > 8 else "OB")
    ds.PixelData = native_bytes(
        arr, planar=planar, big_endian=big, word_swap=big and vr == "OW" and bits_allocated == 8
    )
    ds["PixelData"].VR = vr
    return save(ds, path)


def write_bits(path: Path, bits: Array) -> Path:
    """A BitsAllocated=1 MONOCHROME2 instance; frames packed back to back (PS3.5 §8.1.1)."""
    ds = base_dataset(bits.astype(np.uint8), photometric="MONOCHROME2", bits_allocated=1)
    ds.PixelData = pack_bits(bits.astype(np.uint8).ravel())
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def jpeg_frame(frame: Array, quality: int = 95) -> bytes:
    """One frame as a baseline JPEG; colour is YCbCr 4:2:2 (YBR_FULL_422)."""
    buffer = BytesIO()
    if frame.ndim == 3:
        Image.fromarray(frame, "RGB").save(buffer, "JPEG", quality=quality, subsampling=1)
    else:
        Image.fromarray(frame, "L").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_jpeg_baseline(
    path: Path, arr: Array, *, quality: int = 95, table: str = "basic", fragments: int = 1
) -> Path:
    """JPEG baseline, each frame encoded by Pillow; ``table``: basic | empty | extended."""
    photometric = "YBR_FULL_422" if arr.ndim == 4 else "MONOCHROME2"
    ds = base_dataset(arr, photometric=photometric, bits_allocated=8, transfer_syntax=JPEGBaseline8Bit)
    frames = [jpeg_frame(frame, quality) for frame in arr]
    if table == "extended":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=table == "basic")
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    return save(ds, path)


def write_rle(
    path: Path, arr: Array, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None
) -> Path:
    """RLE Lossless encoded by pydicom, one fragment per frame."""
    bits_allocated = arr.dtype.itemsize * 8
    ds = base_dataset(
        arr,
        photometric=photometric,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        transfer_syntax=RLELossless,
    )
    encoder = get_encoder(RLELossless)
    options = {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": ds.SamplesPerPixel,
        "bits_allocated": bits_allocated,
        "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation,
        "photometric_interpretation": photometric,
        "planar_configuration": 0,
        "number_of_frames": 1,
    }
    frames = [encoder.encode(frame, **options) for frame in arr]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return save(ds, path)


def write_j2k_lossless(path: Path, arr: Array) -> Path:
    """JPEG 2000 Lossless (reversible 5/3) grayscale frames encoded by Pillow's OpenJPEG codec."""
    frames = []
    for frame in arr:
        mode = "L" if arr.dtype.itemsize == 1 else "I;16"
        image = Image.frombytes(
            mode, (arr.shape[2], arr.shape[1]), frame.astype(f"<u{arr.dtype.itemsize}").tobytes()
        )
        buffer = BytesIO()
        image.save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
        frames.append(buffer.getvalue())
    ds = base_dataset(
        arr,
        photometric="MONOCHROME2",
        bits_allocated=arr.dtype.itemsize * 8,
        transfer_syntax=JPEG2000Lossless,
    )
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return save(ds, path)


def dcmtk(tool: str, *args: str | Path) -> None:
    """Run a DCMTK tool, skipping the test with a clear reason when it is not installed."""
    if shutil.which(tool) is None:
        pytest.skip(f"DCMTK {tool} is not installed (Debian package dcmtk)")
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True, timeout=60)


def write_dcmtk(path: Path, native: Path, tool: str, *options: str) -> Path:
    """Compress a native file with a DCMTK tool (dcmcjpeg, dcmcjpls, dcmcrle)."""
    dcmtk(tool, *options, native, path)
    return path
