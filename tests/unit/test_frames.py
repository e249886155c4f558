"""Frame access: locating Pixel Data, reading native/encapsulated frames, decoding, frame_as."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import features
from pydicom import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.pixels import pack_bits
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pacsbridge.domain.errors import CorruptData, NotFound, Unsupported
from pacsbridge.formats.frames import (
    PixelInfo,
    can_decode,
    can_encode,
    decode_frame,
    decoded_photometric,
    frame_as,
    iter_frames,
    pixel_info,
    read_frames,
)

from .pixel_builders import (
    base_dataset,
    jpeg_frame,
    ramp,
    rgb_pattern,
    save,
    write_bits,
    write_dcmtk,
    write_j2k_lossless,
    write_jpeg_baseline,
    write_native,
    write_rle,
)

NATIVE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def frames_of(path: Path, numbers: list[int] | None = None) -> tuple[list[bytes], PixelInfo]:
    with path.open("rb") as fp:
        info = pixel_info(fp)
        wanted = numbers or list(range(1, info.number_of_frames + 1))
        return list(read_frames(fp, wanted, info)), info


@pytest.mark.parametrize("syntax", NATIVE_SYNTAXES)
@pytest.mark.parametrize("dtype", ["u1", "u2", "i2"])
def test_native_frames_are_read_by_seeking_and_come_out_little_endian(
    tmp_path: Path, syntax: str, dtype: str
) -> None:
    arr = ramp(4, 6, 7, dtype, start=-300 if dtype == "i2" else 0, step=3)
    path = write_native(tmp_path / "n.dcm", arr, transfer_syntax=syntax)
    with path.open("rb") as fp:
        info = pixel_info(fp)
        assert (info.rows, info.columns, info.number_of_frames) == (6, 7, 4)
        assert info.transfer_syntax == syntax and not info.encapsulated
        assert info.pixel_length is not None and info.pixel_length >= arr.nbytes
        frames = list(read_frames(fp, [3, 1, 4], info))
    for frame, index in zip(frames, [2, 0, 3], strict=True):
        native = frame_as(frame, info, ExplicitVRLittleEndian)
        assert native == frame_as(frame, info, "*")
        little = np.frombuffer(native, dtype=arr.dtype.newbyteorder("<")).reshape(6, 7)
        assert np.array_equal(little, arr[index])
        pixels, photometric = decode_frame(frame, info)
        assert photometric == "MONOCHROME2"
        assert np.array_equal(pixels, arr[index])


def test_big_endian_frames_are_stored_big_endian_until_converted(tmp_path: Path) -> None:
    arr = ramp(2, 3, 3, "u2", step=257)
    (frame, _), info = frames_of(write_native(tmp_path / "be.dcm", arr, transfer_syntax=ExplicitVRBigEndian))
    assert frame == arr[0].astype(">u2").tobytes()
    assert frame_as(frame, info, ExplicitVRLittleEndian) == arr[0].astype("<u2").tobytes()
    for never in (ExplicitVRBigEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        with pytest.raises(Unsupported):
            frame_as(frame, info, never)


def test_big_endian_8_bit_ow_frames_are_unswapped_across_odd_frame_boundaries(tmp_path: Path) -> None:
    arr = ramp(3, 3, 3, "u1")  # 9-byte frames: the word swap crosses every frame boundary
    path = write_native(tmp_path / "be8.dcm", arr, transfer_syntax=ExplicitVRBigEndian, pixel_vr="OW")
    frames, info = frames_of(path)
    assert [np.frombuffer(f, np.uint8).reshape(3, 3).tolist() for f in frames] == arr.tolist()
    assert np.array_equal(decode_frame(frames[1], info)[0], arr[1])


def test_one_bit_frames_are_repacked_to_start_at_bit_zero(tmp_path: Path) -> None:
    bits = (np.random.default_rng(7).random((5, 3, 3)) > 0.5).astype(np.uint8)  # 9 bits per frame
    frames, info = frames_of(write_bits(tmp_path / "bits.dcm", bits))
    for index, frame in enumerate(frames):
        assert frame == pack_bits(bits[index].ravel())
        assert np.array_equal(decode_frame(frame, info)[0], bits[index])


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_frames_keep_their_stored_layout_and_decode_colour_by_pixel(tmp_path: Path, planar: int) -> None:
    arr = rgb_pattern(2, 4, 5)
    frames, info = frames_of(write_native(tmp_path / "rgb.dcm", arr, photometric="RGB", planar=planar))
    stored = arr[1].transpose(2, 0, 1) if planar else arr[1]
    assert frames[1] == stored.tobytes()
    pixels, photometric = decode_frame(frames[1], info)
    assert photometric == "RGB" and np.array_equal(pixels, arr[1])


def test_signed_12_bit_values_are_sign_extended_when_decoded(tmp_path: Path) -> None:
    arr = ramp(1, 4, 4, "i2", start=-2048, step=255)
    frames, info = frames_of(write_native(tmp_path / "s.dcm", arr, bits_stored=12))
    assert np.array_equal(decode_frame(frames[0], info)[0], arr[0])


def test_frame_numbers_out_of_range_fail_before_anything_is_read(tmp_path: Path) -> None:
    path = write_native(tmp_path / "n.dcm", ramp(2, 2, 2, "u1"))
    with path.open("rb") as fp:
        info = pixel_info(fp)
        for numbers in ([0], [3], [1, 3]):
            with pytest.raises(NotFound):
                read_frames(fp, numbers, info)


def test_missing_pixel_data_and_non_dicom_input(tmp_path: Path) -> None:
    ds = base_dataset(ramp(1, 2, 2, "u1"), photometric="MONOCHROME2", bits_allocated=8)
    with save(ds, tmp_path / "nopixels.dcm").open("rb") as fp, pytest.raises(NotFound):
        pixel_info(fp)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 20)
    with (tmp_path / "junk.dcm").open("rb") as fp, pytest.raises(CorruptData):
        pixel_info(fp)


def test_truncated_native_pixel_data_is_invalid_input(tmp_path: Path) -> None:
    arr = ramp(3, 4, 4, "u1")
    path = write_native(tmp_path / "n.dcm", arr, extra={"NumberOfFrames": 4})
    with path.open("rb") as fp:
        info = pixel_info(fp)
        with pytest.raises(CorruptData):
            list(read_frames(fp, [4], info))


def test_deflated_files_are_not_offered_frame_access(tmp_path: Path) -> None:
    arr = ramp(1, 4, 4, "u1")
    path = write_native(tmp_path / "d.dcm", arr, transfer_syntax=DeflatedExplicitVRLittleEndian)
    with path.open("rb") as fp, pytest.raises(Unsupported):
        pixel_info(fp)


def test_nested_icon_pixel_data_is_not_taken_for_the_image(tmp_path: Path) -> None:
    arr = ramp(1, 4, 4, "u1", start=10)
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = b"\x01\x02\x03\x04"
    path = write_native(tmp_path / "icon.dcm", arr, extra={"IconImageSequence": [icon]})
    (frame,), _ = frames_of(path)
    assert frame == arr[0].tobytes()


@pytest.mark.parametrize("table", ["basic", "empty", "extended"])
def test_jpeg_baseline_frames_are_the_encoded_frames_under_every_offset_table(
    tmp_path: Path, table: str
) -> None:
    arr = ramp(3, 16, 16, "u1", step=1)
    frames, info = frames_of(write_jpeg_baseline(tmp_path / "j.dcm", arr, table=table), [2, 3])
    for frame, index in zip(frames, [1, 2], strict=True):
        encoded = jpeg_frame(arr[index])
        assert frame.rstrip(b"\x00") == encoded.rstrip(b"\x00")  # items are padded to even length
        assert frame_as(frame, info, JPEGBaseline8Bit) == frame == frame_as(frame, info, "*")
        native = np.frombuffer(frame_as(frame, info, ExplicitVRLittleEndian), np.uint8).reshape(16, 16)
        assert np.abs(native.astype(int) - arr[index]).max() <= 3


def test_jpeg_baseline_with_several_fragments_per_frame(tmp_path: Path) -> None:
    arr = ramp(2, 16, 16, "u1")
    frames, _ = frames_of(write_jpeg_baseline(tmp_path / "j.dcm", arr, fragments=3))
    assert [f.rstrip(b"\x00") for f in frames] == [jpeg_frame(a).rstrip(b"\x00") for a in arr]


def test_jpeg_ybr_full_422_decodes_to_rgb(tmp_path: Path) -> None:
    arr = rgb_pattern(2, 16, 24)
    frames, info = frames_of(write_jpeg_baseline(tmp_path / "c.dcm", arr))
    assert info.photometric == "YBR_FULL_422" and decoded_photometric(info) == "RGB"
    for index, frame in enumerate(frames):
        pixels, photometric = decode_frame(frame, info)
        assert photometric == "RGB" and pixels.shape == (16, 24, 3)
        assert np.abs(pixels.astype(int) - arr[index]).max() <= 10
        raw = frame_as(frame, info, ExplicitVRLittleEndian)
        assert raw == pixels.tobytes()


@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70"),
        ("dcmcjpeg", ["+el", "+sv", "6"], "1.2.840.10008.1.2.4.57"),
        ("dcmcjpeg", ["+e1", "+fs", "1", "-ot"], "1.2.840.10008.1.2.4.70"),
        ("dcmcjpls", [], JPEGLSLossless),
    ],
)
@pytest.mark.parametrize("count", [1, 3])
def test_lossless_jpeg_frames_decode_exactly(
    tmp_path: Path, tool: str, options: list[str], syntax: str, count: int
) -> None:
    # noise does not compress: 1 KB fragments (+fs 1) split every frame into several fragments
    arr = np.random.default_rng(3).integers(0, 4096, (count, 48, 40)).astype(np.uint16)
    native = write_native(tmp_path / "n.dcm", arr, bits_stored=12)
    path = write_dcmtk(tmp_path / "c.dcm", native, tool, *options)
    frames, info = frames_of(path)
    assert info.transfer_syntax == syntax and info.encapsulated
    if "+fs" in options:  # the hard case: empty Basic Offset Table, several fragments per frame
        with path.open("rb") as fp:
            fp.seek(info.pixel_offset)
            assert parse_basic_offsets(fp) == [] and parse_fragments(fp)[0] > count
    if not can_decode(syntax):
        pytest.skip(f"no decoder installed for {syntax}")
    for index, frame in enumerate(frames):
        raw = frame_as(frame, info, ExplicitVRLittleEndian)
        assert np.array_equal(np.frombuffer(raw, "<u2").reshape(48, 40), arr[index])


@pytest.mark.parametrize("dtype", ["u1", "u2"])
def test_jpeg_2000_lossless_decodes_exactly(tmp_path: Path, dtype: str) -> None:
    if not features.check_codec("jpg_2000"):
        pytest.skip("Pillow was built without OpenJPEG")
    top = 255 if dtype == "u1" else 65535
    arr = np.random.default_rng(4).integers(0, top + 1, (2, 24, 20)).astype(dtype)
    frames, info = frames_of(write_j2k_lossless(tmp_path / "j2k.dcm", arr))
    assert can_decode(info.transfer_syntax)
    for index, frame in enumerate(frames):
        raw = frame_as(frame, info, ExplicitVRLittleEndian)
        assert np.array_equal(np.frombuffer(raw, arr.dtype.newbyteorder("<")).reshape(24, 20), arr[index])


def test_jpeg_extended_12_bit_decodes_within_tolerance(tmp_path: Path) -> None:
    y, x = np.mgrid[0:32, 0:40]
    arr = np.stack([x * 90 + y * 10 + frame * 50 for frame in range(2)]).astype(np.uint16)  # < 4096
    native = write_native(tmp_path / "n.dcm", arr, bits_stored=12)
    frames, info = frames_of(write_dcmtk(tmp_path / "e.dcm", native, "dcmcjpeg", "+ee", "+q", "95"))
    assert info.transfer_syntax == "1.2.840.10008.1.2.4.51"
    if not can_decode(info.transfer_syntax):
        pytest.skip("no 12-bit JPEG decoder installed")
    for index, frame in enumerate(frames):
        raw = np.frombuffer(frame_as(frame, info, ExplicitVRLittleEndian), "<u2").reshape(32, 40)
        assert np.abs(raw.astype(int) - arr[index]).max() <= 16


@pytest.mark.parametrize(
    ("dtype", "photometric", "start"),
    [("i2", "MONOCHROME2", -2000), ("u1", "RGB", 0), ("u1", "MONOCHROME1", 0)],
)
def test_rle_frames_decode_exactly(tmp_path: Path, dtype: str, photometric: str, start: int) -> None:
    arr = rgb_pattern(3, 8, 6) if photometric == "RGB" else ramp(3, 8, 6, dtype, start=start, step=13)
    frames, info = frames_of(write_rle(tmp_path / "r.dcm", arr, photometric=photometric), [3, 2])
    for frame, index in zip(frames, [2, 1], strict=True):
        pixels, decoded = decode_frame(frame, info)
        assert decoded == photometric and np.array_equal(pixels, arr[index])


def test_frames_can_be_encoded_to_rle_and_back(tmp_path: Path) -> None:
    arr = ramp(2, 5, 7, "i2", start=-100, step=7)
    frames, info = frames_of(write_native(tmp_path / "n.dcm", arr, transfer_syntax=ExplicitVRBigEndian))
    assert can_encode(RLELossless) and not can_encode(JPEGBaseline8Bit)
    encoded = frame_as(frames[1], info, RLELossless)
    _, rle_info = frames_of(write_rle(tmp_path / "r.dcm", arr), [1])
    assert np.array_equal(decode_frame(encoded, rle_info)[0], arr[1])
    with pytest.raises(Unsupported):
        frame_as(frames[1], info, JPEGBaseline8Bit)
    with pytest.raises(Unsupported):
        frame_as(frames[1], info, "1.2.3.4")


def test_reading_one_frame_of_a_large_object_holds_one_frame(tmp_path: Path) -> None:
    arr = np.zeros((64, 256, 256), np.uint16)  # 8 MiB of pixels, 128 KiB per frame
    path = write_native(tmp_path / "big.dcm", arr)
    del arr
    with path.open("rb") as fp:
        info = pixel_info(fp)
        tracemalloc.start()
        try:
            for frame in iter_frames(fp, info):
                assert len(frame) == 256 * 256 * 2
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * 256 * 256 * 2


@pytest.mark.parametrize("table", ["basic", "empty", "extended"])
def test_the_layout_kept_at_ingest_is_the_one_read_from_the_file(tmp_path: Path, table: str) -> None:
    """part10.pixel_layout (ingest) and frames.pixel_info (read time) agree, through JSON and back,
    extended offset tables included; frames read with the kept layout are the file's frames."""
    from pacsbridge.formats.frames import layout_from_json, layout_to_json
    from pacsbridge.formats.part10 import pixel_layout, read_header

    arr = ramp(3, 16, 16, "u1", step=1)
    path = write_jpeg_baseline(tmp_path / "j.dcm", arr, table=table)
    with path.open("rb") as fp:
        ds, pixel_vr = read_header(fp)
        layout = pixel_layout(ds, fp)
    assert pixel_vr is not None and layout is not None
    kept = layout_from_json(layout)
    expected, info = frames_of(path)
    assert kept == info and layout_to_json(kept) == layout
    with path.open("rb") as fp:
        assert list(read_frames(fp, [1, 2, 3], kept)) == expected
