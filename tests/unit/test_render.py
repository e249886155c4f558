"""Rendering: parameter parsing, VOI maths, the grayscale/colour pipeline and the encoded output."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacsbridge.domain.errors import InvalidInput, NotFound, Unsupported
from pacsbridge.formats.render import (
    THUMBNAIL_VIEWPORT,
    RenderOptions,
    fit,
    parse_render_params,
    parse_wado_uri_params,
    render,
    voi_window,
)

from .pixel_builders import ramp, rgb_pattern, write_jpeg_baseline, write_native, write_rle


def rendered(path: Path, **options: Any) -> Image.Image:
    with path.open("rb") as fp:
        data = render(fp, RenderOptions(**options))
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(path: Path, **options: Any) -> np.ndarray[Any, Any]:
    return np.asarray(rendered(path, media_type="image/png", **options))


# --- parameters -------------------------------------------------------------------------------


def test_wado_rs_parameters() -> None:
    options = parse_render_params(
        {"quality": "80", "window": "100,50,linear_exact", "viewport": "64,32", "annotation": "patient"},
        media_type="image/png",
        frame=2,
    )
    assert options == RenderOptions(
        media_type="image/png", quality=80, window=(100.0, 50.0, "LINEAR_EXACT"), viewport=(32, 64), frame=2
    )
    assert parse_render_params({"window": "-600.5,1500"}).window == (-600.5, 1500.0, "LINEAR")
    assert parse_render_params({"viewport": "64,48,0,0,-32,16"}).viewport == (48, 64)  # source rect ignored
    assert parse_render_params({"viewport": "64,48,,,,"}).viewport == (48, 64)
    assert parse_render_params({}, thumbnail=True).viewport == THUMBNAIL_VIEWPORT
    assert parse_render_params({"iccprofile": "no", "charset": "utf-8"}) == RenderOptions()


@pytest.mark.parametrize(
    "params",
    [
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "high"},
        {"quality": ""},
        {"window": "40"},
        {"window": "40,400,LINEAR,x"},
        {"window": "a,b"},
        {"window": "40,nan"},
        {"window": "40,0.5"},
        {"window": "40,0,SIGMOID"},
        {"window": "40,400,CUBIC"},
        {"viewport": "0,10"},
        {"viewport": "10"},
        {"viewport": "10,10,1,2,3"},
        {"viewport": "10,10,-1,0,5,5"},
        {"viewport": "10,10,0,0,0,5"},
        {"viewport": "ten,10"},
        {"annotation": "name"},
    ],
)
def test_bad_wado_rs_parameters_are_invalid_input(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        parse_render_params(params)


def test_unrenderable_media_type_is_unsupported() -> None:
    with pytest.raises(Unsupported):
        parse_render_params({}, media_type="image/jp2")


def test_wado_uri_parameters() -> None:
    options = parse_wado_uri_params(
        {
            "contentType": "image/png, image/jpeg",
            "windowCenter": "40",
            "windowWidth": "400",
            "rows": "100",
            "imageQuality": "70",
            "frameNumber": "3",
            "region": "0,0.25,0.5,1",
        }
    )
    assert options == RenderOptions(
        media_type="image/png",
        quality=70,
        window=(40.0, 400.0, "LINEAR"),
        viewport=(100, 0),
        frame=3,
        region=(0.0, 0.25, 0.5, 1.0),
    )
    assert parse_wado_uri_params({}) == RenderOptions()
    assert parse_wado_uri_params({"columns": "64"}).viewport == (0, 64)


@pytest.mark.parametrize(
    "params",
    [
        {"windowCenter": "40"},
        {"windowWidth": "400"},
        {"rows": "0"},
        {"columns": "-3"},
        {"frameNumber": "0"},
        {"frameNumber": "one"},
        {"imageQuality": "0"},
        {"region": "0.5,0,0.5,1"},
        {"region": "0,0,1"},
        {"region": "0,0,1.5,1"},
    ],
)
def test_bad_wado_uri_parameters_are_invalid_input(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        parse_wado_uri_params(params)


def test_wado_uri_content_type_must_be_an_image() -> None:
    with pytest.raises(Unsupported):
        parse_wado_uri_params({"contentType": "application/dicom"})


# --- VOI maths (PS3.3 C.11.2.1.2-3) ----------------------------------------------------------


def test_linear_window_matches_the_standard_at_its_edges() -> None:
    x = np.arange(1024, dtype=np.float64)
    y = np.rint(voi_window(x, 512, 256, "LINEAR"))
    # x <= c - 0.5 - (w-1)/2 = 384 -> 0; x > c - 0.5 + (w-1)/2 = 639 -> 255
    assert (y[:385] == 0).all() and (y[639:] == 255).all()
    assert y[385] == 1 and y[638] == 254 and y[512] == 128
    assert np.all(np.diff(y) >= 0)
    threshold = voi_window(np.array([9.0, 9.5, 10.0]), 10, 1, "LINEAR")
    assert threshold.tolist() == [0.0, 0.0, 255.0]


@settings(max_examples=60, deadline=None)
@given(
    center=st.floats(-5000, 5000, allow_nan=False),
    width=st.floats(1, 5000, allow_nan=False),
    x=st.lists(st.floats(-10000, 10000, allow_nan=False), min_size=1, max_size=20),
)
def test_linear_window_follows_the_piecewise_definition(center: float, width: float, x: list[float]) -> None:
    values = np.array(sorted(x))
    y = voi_window(values, center, width, "LINEAR")
    assert ((y >= 0) & (y <= 255)).all() and (np.diff(y) >= -1e-9).all()
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    assert (y[values <= low] == 0).all() and (y[values > high] == 255).all()
    middle = (values > low) & (values <= high)
    if width > 1:
        expected = ((values[middle] - (center - 0.5)) / (width - 1) + 0.5) * 255
        assert y[middle] == pytest.approx(expected)


def test_linear_exact_and_sigmoid() -> None:
    x = np.array([383.0, 384.0, 512.0, 640.0, 641.0])
    assert voi_window(x, 512, 256, "LINEAR_EXACT").tolist() == [0.0, 0.0, 127.5, 255.0, 255.0]
    sigmoid = voi_window(np.array([-1e6, 512.0, 1e6]), 512, 256, "SIGMOID")
    assert sigmoid == pytest.approx([0.0, 127.5, 255.0])


def test_fit_keeps_the_aspect_ratio() -> None:
    assert fit(64, 32, (16, 16)) == (16, 8)
    assert fit(64, 32, (100, 0)) == (200, 100)
    assert fit(64, 32, (0, 32)) == (32, 16)
    assert fit(1000, 2, (10, 10)) == (10, 1)


# --- pipeline ---------------------------------------------------------------------------------


def ramp_image(tmp_path: Path, **extra: Any) -> Path:
    """32 x 32 pixels with values 0..1023 in raster order."""
    return write_native(tmp_path / "ramp.dcm", ramp(1, 32, 32, "u2"), bits_stored=10, extra=extra)


def test_requested_window_is_applied_to_the_stored_values(tmp_path: Path) -> None:
    out = pixels(ramp_image(tmp_path), window=(512.0, 256.0, "LINEAR")).ravel()
    assert (out[:385] == 0).all() and (out[639:] == 255).all()
    assert (out[385], out[512], out[638]) == (1, 128, 254)


def test_dataset_window_applies_after_rescale(tmp_path: Path) -> None:
    path = ramp_image(
        tmp_path, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=[-512, 0], WindowWidth=[256, 1]
    )
    out = pixels(path).ravel()
    assert (out[:385] == 0).all() and (out[639:] == 255).all() and out[512] == 128


def test_frame_functional_group_window(tmp_path: Path) -> None:
    def group(center: float, width: float) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = [voi]
        return item

    arr = ramp(2, 32, 32, "u2")
    path = write_native(
        tmp_path / "mf.dcm", arr, extra={"PerFrameFunctionalGroupsSequence": [group(1, 1), group(1536, 256)]}
    )
    first, second = pixels(path, frame=1).ravel(), pixels(path, frame=2).ravel()
    assert first[0] == 0 and (first[1:] == 255).all()
    assert (second[: 1408 - 1024 + 1] == 0).all() and second[1536 - 1024] == 128


def test_min_max_when_no_window_and_monochrome1_inverted(tmp_path: Path) -> None:
    out = pixels(ramp_image(tmp_path)).ravel()
    assert (out[0], out[-1]) == (0, 255)
    assert np.all(np.diff(out.astype(int)) >= 0)
    narrow = pixels(ramp_image(tmp_path, RescaleSlope=0.001, RescaleIntercept=0)).ravel()
    assert (narrow[0], narrow[512], narrow[-1]) == (0, 128, 255)
    arr = ramp(1, 32, 32, "i2", start=-512)
    inverted = pixels(write_native(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")).ravel()
    assert (inverted[0], inverted[-1]) == (255, 0)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.add_new(0x00283006, "US", [0, 100, 200, 255])  # LUT Data
    arr = np.array([[[0, 1, 2, 3]]], dtype=np.uint16)
    out = pixels(write_native(tmp_path / "v.dcm", arr, extra={"VOILUTSequence": [lut]}))
    assert out.ravel().tolist() == [0, 100, 200, 255]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_signed_big_and_implicit_data_render(tmp_path: Path, syntax: str) -> None:
    arr = ramp(1, 16, 16, "i2", start=-1000, step=8)
    path = write_native(tmp_path / "s.dcm", arr, transfer_syntax=syntax)
    out = pixels(path, window=(-996.0, 2.0, "LINEAR"))  # 0 up to -997, 255 above -996
    assert out.ravel()[0] == 0 and (out.ravel()[1:] == 255).all()


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_passes_through(tmp_path: Path, planar: int) -> None:
    arr = rgb_pattern(1, 12, 20)
    out = pixels(write_native(tmp_path / "rgb.dcm", arr, photometric="RGB", planar=planar))
    assert out.shape == (12, 20, 3) and np.array_equal(out, arr[0])


def test_sixteen_bit_rgb_is_scaled_to_eight(tmp_path: Path) -> None:
    arr = (rgb_pattern(1, 4, 4).astype(np.uint16) * 257).astype(np.uint16)
    out = pixels(write_native(tmp_path / "rgb16.dcm", arr, photometric="RGB"))
    assert np.array_equal(out, arr[0] // 257)


def test_palette_colour(tmp_path: Path) -> None:
    entries = np.arange(256, dtype=np.uint16) * 257
    arr = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    extra = {
        "RedPaletteColorLookupTableDescriptor": [256, 0, 16],
        "GreenPaletteColorLookupTableDescriptor": [256, 0, 16],
        "BluePaletteColorLookupTableDescriptor": [256, 0, 16],
        "RedPaletteColorLookupTableData": entries.tobytes(),
        "GreenPaletteColorLookupTableData": np.zeros(256, np.uint16).tobytes(),
        "BluePaletteColorLookupTableData": (65535 - entries).astype(np.uint16).tobytes(),
    }
    out = pixels(write_native(tmp_path / "p.dcm", arr, photometric="PALETTE COLOR", extra=extra))
    assert out[..., 0].ravel().tolist() == list(range(256))
    assert (out[..., 1] == 0).all() and out[..., 2].ravel().tolist() == list(range(255, -1, -1))


def test_compressed_colour_renders_as_rgb_jpeg_in_the_viewport(tmp_path: Path) -> None:
    arr = rgb_pattern(2, 32, 64)
    image = rendered(write_jpeg_baseline(tmp_path / "j.dcm", arr), viewport=(16, 16), frame=2, quality=85)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (16, 8))
    gif = rendered(write_jpeg_baseline(tmp_path / "j.dcm", arr), media_type="image/gif")
    assert (gif.format, gif.size) == ("GIF", (64, 32))


def test_quality_changes_the_jpeg(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(0, 4096, (1, 64, 64)).astype("u2")
    path = write_native(tmp_path / "n.dcm", noise)
    with path.open("rb") as fp:
        small = render(fp, RenderOptions(quality=5))
        large = render(fp, RenderOptions(quality=95))
    assert len(small) < len(large)
    assert Image.open(io.BytesIO(small)).size == (64, 64)


def test_rle_multi_frame_renders_the_requested_frame(tmp_path: Path) -> None:
    arr = np.stack([np.full((8, 8), 100, np.int16), np.full((8, 8), 300, np.int16)])
    path = write_rle(tmp_path / "r.dcm", arr)
    assert (pixels(path, frame=1, window=(200.0, 100.0, "LINEAR")) == 0).all()
    assert (pixels(path, frame=2, window=(200.0, 100.0, "LINEAR")) == 255).all()
    with pytest.raises(NotFound):
        pixels(path, frame=3)


def test_region_crops_before_the_viewport(tmp_path: Path) -> None:
    region = (0.0, 0.0, 0.5, 1.0)
    image = rendered(ramp_image(tmp_path), media_type="image/png", region=region, viewport=(64, 0))
    assert image.size == (32, 64)
    left = pixels(ramp_image(tmp_path), region=(0.0, 0.0, 0.5, 1.0))
    assert left.shape == (32, 16) and left[0, 0] == 0


def test_thumbnail_size(tmp_path: Path) -> None:
    arr = ramp(1, 256, 512, "u2")
    path = write_native(tmp_path / "t.dcm", arr)
    image = rendered(path, viewport=THUMBNAIL_VIEWPORT)
    assert image.size == (128, 64)
