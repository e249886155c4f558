"""Whole-instance transfer syntax conversion: negotiation answers and exact round trips."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileDataset
from pydicom.encaps import parse_basic_offsets
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from pacsbridge.domain.errors import Unsupported
from pacsbridge.formats.frames import can_encode, pixel_info
from pacsbridge.formats.transcode import can_transcode, needs_transcode, resolve, transcode

from .pixel_builders import (
    base_dataset,
    ramp,
    rgb_pattern,
    save,
    write_bits,
    write_dcmtk,
    write_jpeg_baseline,
    write_native,
    write_rle,
)


class Sink(io.RawIOBase):
    """A write-only, non-seekable destination (an HTTP response body)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.data += bytes(b)
        return len(b)


def run(path: Path, wanted: str, dst: Any = None) -> FileDataset:
    out = dst if dst is not None else io.BytesIO()
    with path.open("rb") as fp:
        transcode(fp, out, wanted)
    data = bytes(out.data) if isinstance(out, Sink) else out.getvalue()
    assert data[128:132] == b"DICM"
    return dcmread(io.BytesIO(data))


def test_negotiation_answers() -> None:
    assert resolve(ImplicitVRLittleEndian, "*") == ExplicitVRLittleEndian
    assert resolve(ExplicitVRBigEndian, "*") == ExplicitVRLittleEndian
    assert resolve(JPEGBaseline8Bit, "*") == JPEGBaseline8Bit
    assert not needs_transcode(JPEGBaseline8Bit, "*")
    assert not needs_transcode(ExplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert needs_transcode(ImplicitVRLittleEndian, "*")
    assert needs_transcode(RLELossless, ExplicitVRLittleEndian)

    assert can_transcode(ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert can_transcode(ExplicitVRBigEndian, "*")
    assert can_transcode(JPEGBaseline8Bit, ExplicitVRLittleEndian)
    assert can_transcode(JPEGLosslessSV1, ExplicitVRLittleEndian)
    assert can_transcode(RLELossless, ExplicitVRLittleEndian)
    assert can_transcode(ExplicitVRLittleEndian, RLELossless)
    assert can_transcode(JPEGBaseline8Bit, RLELossless)
    assert can_transcode(DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian)
    assert not can_transcode(DeflatedExplicitVRLittleEndian, RLELossless)
    # never on the web, even as stored
    assert not can_transcode(ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert not can_transcode(ImplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert not can_transcode(ExplicitVRLittleEndian, ExplicitVRBigEndian)
    # no lossy encoders, and nothing for unknown syntaxes
    assert not can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit)
    assert not can_transcode(ExplicitVRLittleEndian, "1.2.3.4")
    assert not can_transcode("1.2.3.4", ExplicitVRLittleEndian)
    # honest about the plugins installed here
    assert can_transcode(ExplicitVRLittleEndian, JPEGLSLossless) == can_encode(JPEGLSLossless)
    assert can_transcode(ExplicitVRLittleEndian, JPEG2000Lossless) == can_encode(JPEG2000Lossless)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("dtype", ["u1", "u2", "i2"])
def test_native_to_explicit_little_endian_is_exact(tmp_path: Path, syntax: str, dtype: str) -> None:
    arr = ramp(3, 5, 7, dtype, start=-500 if dtype == "i2" else 0, step=3)
    path = write_native(tmp_path / "n.dcm", arr, transfer_syntax=syntax, extra={"SmallestImagePixelValue": 0})
    source = dcmread(path, stop_before_pixels=True)
    out = run(path, "*")
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPInstanceUID == source.SOPInstanceUID
    assert out.PatientName == "Test^Pixels" and out.SmallestImagePixelValue == 0
    assert np.array_equal(out.pixel_array, arr)


def test_big_endian_8_bit_ow_and_rgb_planar_one(tmp_path: Path) -> None:
    arr = ramp(3, 3, 3, "u1")
    path = write_native(tmp_path / "be8.dcm", arr, transfer_syntax=ExplicitVRBigEndian, pixel_vr="OW")
    assert np.array_equal(run(path, ExplicitVRLittleEndian).pixel_array, arr)
    rgb = rgb_pattern(2, 4, 6)
    path = write_native(
        tmp_path / "rgb.dcm", rgb, photometric="RGB", planar=1, transfer_syntax=ImplicitVRLittleEndian
    )
    out = run(path, ExplicitVRLittleEndian)
    assert out.PlanarConfiguration == 1 and np.array_equal(out.pixel_array, rgb)


def test_as_stored_is_a_byte_copy(tmp_path: Path) -> None:
    path = write_rle(tmp_path / "r.dcm", ramp(2, 4, 4, "u2"))
    for wanted in ("*", RLELossless):
        out = io.BytesIO()
        with path.open("rb") as fp:
            transcode(fp, out, wanted)
        assert out.getvalue() == path.read_bytes()


def test_jpeg_baseline_colour_decompresses_to_rgb_and_stays_marked_lossy(tmp_path: Path) -> None:
    rgb = rgb_pattern(2, 16, 24)
    path = write_jpeg_baseline(tmp_path / "j.dcm", rgb, table="extended")
    out = run(path, ExplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", 0)
    assert out.LossyImageCompression == "01"
    assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
    assert np.abs(out.pixel_array.astype(int) - rgb).max() <= 10


def test_lossy_marking_is_added_when_missing(tmp_path: Path) -> None:
    path = write_jpeg_baseline(tmp_path / "j.dcm", ramp(1, 8, 8, "u1", step=4))
    ds = dcmread(path)
    del ds.LossyImageCompression
    ds.save_as(path)
    out = run(path, ExplicitVRLittleEndian)
    assert (out.LossyImageCompression, out.LossyImageCompressionMethod) == ("01", "ISO_10918_1")


def test_jpeg_lossless_from_dcmtk_decompresses_exactly(tmp_path: Path) -> None:
    arr = np.random.default_rng(5).integers(-2048, 2048, (3, 24, 20)).astype(np.int16)
    native = write_native(tmp_path / "n.dcm", arr, bits_stored=12)
    path = write_dcmtk(tmp_path / "c.dcm", native, "dcmcjpeg", "+e1", "+fs", "1", "-ot")
    out = run(path, ExplicitVRLittleEndian)
    assert out.PixelRepresentation == 1 and np.array_equal(out.pixel_array, arr)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "RGB"])
def test_rle_round_trip_is_exact_and_fills_the_offset_table(tmp_path: Path, photometric: str) -> None:
    arr = rgb_pattern(3, 8, 10) if photometric == "RGB" else ramp(3, 8, 10, "i2", start=-40, step=9)
    native = write_native(
        tmp_path / "n.dcm", arr, photometric=photometric, transfer_syntax=ExplicitVRBigEndian
    )
    compressed = run(native, RLELossless)
    assert compressed.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(compressed.pixel_array, arr)
    rle_path = tmp_path / "r.dcm"
    compressed.save_as(rle_path)
    with rle_path.open("rb") as fp:
        fp.seek(pixel_info(fp).pixel_offset)
        assert len(parse_basic_offsets(fp)) == 3
    assert np.array_equal(run(rle_path, ExplicitVRLittleEndian).pixel_array, arr)


def test_non_seekable_destination_gets_an_empty_offset_table(tmp_path: Path) -> None:
    arr = ramp(3, 6, 6, "u2", step=11)
    out = run(write_native(tmp_path / "n.dcm", arr), RLELossless, Sink())
    assert np.array_equal(out.pixel_array, arr)


def test_unsupported_targets_write_nothing(tmp_path: Path) -> None:
    path = write_native(tmp_path / "n.dcm", ramp(1, 4, 4, "u1"))
    for wanted in (JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRBigEndian, "1.2.3.4"):
        out = io.BytesIO()
        with path.open("rb") as fp, pytest.raises(Unsupported):
            transcode(fp, out, wanted)
        assert out.getvalue() == b""


def test_group_lengths_padding_and_elements_after_pixel_data(tmp_path: Path) -> None:
    arr = ramp(2, 4, 4, "u2")
    ds = base_dataset(
        arr, photometric="MONOCHROME2", bits_allocated=16, transfer_syntax=ImplicitVRLittleEndian
    )
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.add_new(0x00100000, "UL", 999)  # a stale group length
    ds.add_new(0x7FE10010, "LO", "ACME")  # private creator after Pixel Data
    ds.add_new(0x7FE11000, "LO", "kept")
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)  # Data Set Trailing Padding
    out = run(save(ds, tmp_path / "n.dcm"), ExplicitVRLittleEndian)
    assert 0x00100000 not in out and 0xFFFCFFFC not in out
    assert out[0x7FE11000].value == b"kept"  # implicit VR: an unknown private element becomes UN
    assert np.array_equal(out.pixel_array, arr)


def test_elements_after_encapsulated_pixel_data_are_kept(tmp_path: Path) -> None:
    arr = ramp(2, 4, 4, "u1", step=8)
    path = write_rle(tmp_path / "r.dcm", arr)
    ds = dcmread(path)
    ds.add_new(0x7FE10010, "LO", "ACME")
    ds.add_new(0x7FE11000, "LO", "kept")
    ds.save_as(path)
    out = run(path, ExplicitVRLittleEndian)
    assert out[0x7FE11000].value == "kept" and np.array_equal(out.pixel_array, arr)


def test_deflated_is_inflated(tmp_path: Path) -> None:
    arr = ramp(2, 4, 4, "u2")
    path = write_native(tmp_path / "d.dcm", arr, transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert run(path, "*").file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    out = run(path, ExplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and np.array_equal(out.pixel_array, arr)


def test_one_bit_data_is_copied_but_not_compressed(tmp_path: Path) -> None:
    bits = (np.random.default_rng(2).random((3, 3, 5)) > 0.5).astype(np.uint8)
    path = write_bits(tmp_path / "b.dcm", bits)
    with path.open("rb") as fp:
        info = pixel_info(fp)
    out = run(path, ExplicitVRLittleEndian)
    assert np.array_equal(out.pixel_array, bits) and info.bits_allocated == 1
    with path.open("rb") as fp, pytest.raises(Unsupported):
        transcode(fp, io.BytesIO(), RLELossless)


def test_big_endian_multi_frame_is_converted_in_bounded_memory(tmp_path: Path) -> None:
    arr = np.zeros((40, 512, 512), np.uint16)  # 20 MiB of pixels, copied in 1 MiB chunks
    arr[:, 0, 0] = np.arange(40)
    path = write_native(tmp_path / "big.dcm", arr, transfer_syntax=ExplicitVRBigEndian)
    out_path = tmp_path / "out.dcm"
    tracemalloc.start()
    try:
        with path.open("rb") as fp, out_path.open("wb") as out:
            transcode(fp, out, ExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < arr.nbytes / 4
    assert np.array_equal(dcmread(out_path).pixel_array[:, 0, 0], np.arange(40))


def test_big_endian_binary_values_are_swapped_too(tmp_path: Path) -> None:
    arr = ramp(1, 4, 4, "u2", step=300)
    overlay = np.array([0x0102, 0x0304], dtype=np.uint16)
    lut = Dataset()
    lut.add_new(0x00283006, "OW", np.array([1, 258, 65535], ">u2").tobytes())  # LUT Data
    extra = {"VOILUTSequence": [lut]}
    path = write_native(tmp_path / "be.dcm", arr, transfer_syntax=ExplicitVRBigEndian, extra=extra)
    ds = dcmread(path)
    ds.add_new(0x60000010, "US", 4)  # Overlay Rows: a number, re-encoded by pydicom itself
    ds.add_new(0x60003000, "OW", overlay.astype(">u2").tobytes())  # Overlay Data
    ds.save_as(path)
    out = run(path, ExplicitVRLittleEndian)
    assert np.frombuffer(out[0x60003000].value, "<u2").tolist() == overlay.tolist()
    assert np.frombuffer(out.VOILUTSequence[0][0x00283006].value, "<u2").tolist() == [1, 258, 65535]
    assert out[0x60000010].value == 4 and np.array_equal(out.pixel_array, arr[0])


def test_instances_without_pixel_data_are_converted_whole(tmp_path: Path) -> None:
    arr = ramp(1, 2, 2, "u1")
    ds = base_dataset(arr, photometric="MONOCHROME2", bits_allocated=8)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.ContentLabel = "REPORT"
    path = save(ds, tmp_path / "sr.dcm")
    out = run(path, "*")
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.ContentLabel == "REPORT"
    with path.open("rb") as fp, pytest.raises(Unsupported):
        transcode(fp, io.BytesIO(), RLELossless)


def test_compressed_multi_frame_is_decoded_frame_by_frame(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 4096, (32, 256, 256)).astype(np.uint16)  # 4 MiB decoded
    path = write_rle(tmp_path / "r.dcm", arr)
    tracemalloc.start()
    try:
        with path.open("rb") as fp, (tmp_path / "out.dcm").open("wb") as out:
            transcode(fp, out, ExplicitVRLittleEndian)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < arr.nbytes / 3
    assert np.array_equal(dcmread(tmp_path / "out.dcm").pixel_array, arr)
