"""Rendered images for WADO-RS ``rendered``/``thumbnail`` and WADO-URI: one frame to JPEG, PNG or GIF.

See: PS3.18 §8.3.5.1 (rendered query parameters), §10.4.1.1.4 (Rendered resources), §9.1.2 (WADO-URI
parameters); PS3.3 C.11.1 (Modality LUT), C.11.2.1.2-3 (VOI LUT functions), C.7.6.3.1.2 (photometric).

Rules:
1. Grayscale: Modality LUT (Rescale Slope/Intercept, else Modality LUT Sequence), then VOI: the
   requested window, else the first Window Center/Width of the data set (or its frame functional
   group), else the first VOI LUT Sequence item, else the frame's own min..max. MONOCHROME1 is inverted
   after the VOI step, so that its output, like MONOCHROME2's, is 0 = black.
2. Colour: RGB and YBR (converted to RGB by the decoder) are passed through, PALETTE COLOR goes
   through its palette; samples wider than 8 bits are scaled to 8. Windows apply to grayscale only.
3. The output is 8 bits per channel, resized with Pillow to fit the viewport keeping the aspect ratio
   (up or down). Nothing is ever burned in: ``annotation`` is validated and ignored, which PS3.18
   allows, and thumbnails carry no PHI.
4. WADO-RS ``viewport`` source rectangles (sx,sy,sw,sh) are validated and ignored; WADO-URI ``region``
   is applied (a crop in normalised coordinates, before resizing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from pacsbridge.domain.errors import InvalidInput, Unsupported

from .frames import PixelInfo, Pixels, decode_frame, read_frames, read_header

Floats = npt.NDArray[np.float64]

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
THUMBNAIL_VIEWPORT = (128, 128)
"""(rows, columns) a thumbnail fits in when the request names no viewport."""
DEFAULT_JPEG_QUALITY = 90
_ANNOTATIONS = frozenset({"patient", "technique"})
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


@dataclass(frozen=True)
class RenderOptions:
    """What to render and how. ``viewport`` is (rows, columns); 0 in one of them means "any"
    (WADO-URI ``rows`` without ``columns``). ``region`` is (xmin, ymin, xmax, ymax) in 0.0-1.0."""

    media_type: str = "image/jpeg"
    quality: int | None = None
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    frame: int = 1
    region: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.media_type not in RENDERED_MEDIA_TYPES:
            raise Unsupported(f"rendering to {self.media_type} is not offered")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise InvalidInput("quality must be between 1 and 100")
        if self.window is not None:
            _, width, function = self.window
            if function not in VOI_FUNCTIONS:
                raise InvalidInput(f"window function must be one of {', '.join(VOI_FUNCTIONS)}")
            if width < 1 if function == "LINEAR" else width <= 0:
                raise InvalidInput("window width must be >= 1 (LINEAR) or > 0 (LINEAR_EXACT, SIGMOID)")
        if self.viewport is not None:
            rows, columns = self.viewport
            if rows < 0 or columns < 0 or rows == columns == 0:
                raise InvalidInput("viewport sizes must be positive")
        if self.frame < 1:
            raise InvalidInput("frame numbers start at 1")
        if self.region is not None:
            xmin, ymin, xmax, ymax = self.region
            if not (0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1):
                raise InvalidInput("region must be xmin,ymin,xmax,ymax with 0 <= min < max <= 1")


def parse_render_params(
    params: Mapping[str, str], *, media_type: str = "image/jpeg", frame: int = 1, thumbnail: bool = False
) -> RenderOptions:
    """Parse WADO-RS rendered/thumbnail query parameters; ``media_type`` comes from negotiation.

    See: PS3.18 §8.3.5.1 (``quality``, ``window=c,w[,fn]``, ``viewport=vw,vh[,sx,sy,sw,sh]``,
    ``annotation``; ``iccprofile`` and ``charset`` are accepted and ignored).
    """
    _check_annotation(params.get("annotation"))
    quality = _integer(params["quality"], "quality") if "quality" in params else None
    window = None
    if "window" in params:
        parts = params["window"].split(",")
        if len(parts) not in (2, 3):
            raise InvalidInput("window must be center,width[,function]")
        function = parts[2].strip().upper() if len(parts) == 3 else "LINEAR"
        window = (_number(parts[0], "window center"), _number(parts[1], "window width"), function)
    viewport = THUMBNAIL_VIEWPORT if thumbnail else None
    if "viewport" in params:
        viewport = _parse_viewport(params["viewport"])
    return RenderOptions(
        media_type=media_type, quality=quality, window=window, viewport=viewport, frame=frame
    )


def parse_wado_uri_params(params: Mapping[str, str]) -> RenderOptions:
    """Parse the rendering parameters of a WADO-URI request for an image media type.

    See: PS3.18 §9.1.2 (``contentType``, ``windowCenter``+``windowWidth`` both or neither, ``rows``,
    ``columns``, ``region``, ``imageQuality``, ``frameNumber``, ``annotation``).
    """
    _check_annotation(params.get("annotation"))
    media_type = _pick_media_type(params.get("contentType"))
    has_center, has_width = "windowCenter" in params, "windowWidth" in params
    if has_center != has_width:
        raise InvalidInput("windowCenter and windowWidth must be given together")
    window = None
    if has_center:
        center = _number(params["windowCenter"], "windowCenter")
        window = (center, _number(params["windowWidth"], "windowWidth"), "LINEAR")
    rows = _integer(params["rows"], "rows") if "rows" in params else 0
    columns = _integer(params["columns"], "columns") if "columns" in params else 0
    if (("rows" in params) and rows < 1) or (("columns" in params) and columns < 1):
        raise InvalidInput("rows and columns must be positive")
    region = None
    if "region" in params:
        parts = params["region"].split(",")
        if len(parts) != 4:
            raise InvalidInput("region must be xmin,ymin,xmax,ymax")
        xmin, ymin, xmax, ymax = (_number(part, "region") for part in parts)
        region = (xmin, ymin, xmax, ymax)
    return RenderOptions(
        media_type=media_type,
        quality=_integer(params["imageQuality"], "imageQuality") if "imageQuality" in params else None,
        window=window,
        viewport=(rows, columns) if rows or columns else None,
        frame=_integer(params["frameNumber"], "frameNumber") if "frameNumber" in params else 1,
        region=region,
    )


def render(fp: BinaryIO, options: RenderOptions) -> bytes:
    """Render one frame of the Part 10 file in ``fp`` to the encoded image ``options`` ask for.

    Raises NotFound for a frame out of range and Unsupported for pixels we cannot decode or display.
    """
    dataset, info = read_header(fp)
    (frame,) = read_frames(fp, [options.frame], info)
    pixels, photometric = decode_frame(frame, info, rgb=True)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        display = _grayscale(pixels, dataset, info, options)
    else:
        display = _colour(pixels, photometric, dataset, info)
    image = Image.fromarray(display)
    if options.region is not None:
        image = _crop(image, options.region)
    if options.viewport is not None:
        size = fit(image.width, image.height, options.viewport)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _encode(image, options)


def voi_window(values: Floats, center: float, width: float, function: str = "LINEAR") -> Floats:
    """Map values to 0.0-255.0 with a VOI LUT function.

    See: PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.1 (SIGMOID), C.11.2.1.3.2 (LINEAR_EXACT).
    """
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow far below the center is 1/inf = 0, as wanted
            return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        low, high = center - width / 2, center + width / 2
        middle = ((values - center) / width + 0.5) * 255.0
    else:
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        # width <= 1 leaves no middle segment (a threshold at center - 0.5); any wider window, even
        # 1 < width < 2, divides by width - 1 as C.11.2.1.2.1 says.
        middle = ((values - (center - 0.5)) / (width - 1 if width > 1 else 1.0) + 0.5) * 255.0
    return np.where(values <= low, 0.0, np.where(values > high, 255.0, np.clip(middle, 0.0, 255.0)))


def fit(width: int, height: int, viewport: tuple[int, int]) -> tuple[int, int]:
    """(width, height) scaled to fit ``viewport`` (rows, columns; 0 = any) keeping the aspect ratio."""
    rows, columns = viewport
    scale = min(columns / width if columns else math.inf, rows / height if rows else math.inf)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _grayscale(pixels: Pixels, dataset: Dataset, info: PixelInfo, options: RenderOptions) -> Pixels:
    index = options.frame - 1
    values = _modality(pixels, dataset, index)
    window = options.window or _dataset_window(dataset, index)
    if window is not None:
        out = voi_window(values, *window)
    elif "VOILUTSequence" in dataset:
        out = _voi_lut(values, dataset)
    else:
        low, high = float(values.min()), float(values.max())
        # LINEAR_EXACT maps low..high exactly onto 0..255, also for ranges narrower than 1 (float slopes)
        span = high - low
        out = voi_window(values, low + span / 2, span, "LINEAR_EXACT") if span > 0 else np.zeros_like(values)
    if info.photometric == "MONOCHROME1":
        out = 255.0 - out
    return np.rint(out).astype(np.uint8)


def _modality(pixels: Pixels, dataset: Dataset, index: int) -> Floats:
    transform = _frame_item(dataset, index, "PixelValueTransformationSequence")
    source = dataset if "RescaleSlope" in dataset else transform
    if source is not None and "RescaleSlope" in source:
        slope = float(source.RescaleSlope)
        intercept = float(source.get("RescaleIntercept", 0) or 0)
        return pixels.astype(np.float64) * slope + intercept
    if "ModalityLUTSequence" in dataset:
        return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    return pixels.astype(np.float64)


def _dataset_window(dataset: Dataset, index: int) -> tuple[float, float, str] | None:
    source = dataset if "WindowCenter" in dataset else _frame_item(dataset, index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    function = str(source.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    function = function if function in VOI_FUNCTIONS else "LINEAR"
    if center is None or width is None or width < (1 if function == "LINEAR" else 1e-9):
        return None
    return center, width, function


def _voi_lut(values: Floats, dataset: Dataset) -> Floats:
    item = dataset.VOILUTSequence[0]
    bits = int(item.LUTDescriptor[2])
    mapped = apply_voi(np.rint(values).astype(np.int64), dataset, index=0)
    return np.asarray(mapped, dtype=np.float64) * (255.0 / float((1 << bits) - 1))


def _frame_item(dataset: Dataset, index: int, keyword: str) -> Dataset | None:
    """First item of ``keyword`` in the frame's Per-Frame, else the Shared Functional Group."""
    for groups_keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = dataset.get(groups_keyword)
        if not groups:
            continue
        group = groups[index] if groups_keyword.startswith("PerFrame") and index < len(groups) else groups[0]
        sequence = group.get(keyword)
        if sequence:
            item: Dataset = sequence[0]
            return item
    return None


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__getitem__"):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _colour(pixels: Pixels, photometric: str, dataset: Dataset, info: PixelInfo) -> Pixels:
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(pixels, dataset))
        bits = 8 * rgb.dtype.itemsize
    elif photometric == "RGB" and pixels.ndim == 3:
        rgb, bits = pixels, info.bits_stored
    else:
        raise Unsupported(f"rendering Photometric Interpretation {photometric} is not offered")
    if bits <= 8:
        return rgb.astype(np.uint8)
    return np.rint(rgb.astype(np.float64) * (255.0 / ((1 << bits) - 1))).astype(np.uint8)


def _crop(image: Image.Image, region: tuple[float, float, float, float]) -> Image.Image:
    xmin, ymin, xmax, ymax = region
    left, top = math.floor(xmin * image.width), math.floor(ymin * image.height)
    right = max(left + 1, math.ceil(xmax * image.width))
    bottom = max(top + 1, math.ceil(ymax * image.height))
    return image.crop((left, top, right, bottom))


def _encode(image: Image.Image, options: RenderOptions) -> bytes:
    buffer = BytesIO()
    if options.media_type == "image/jpeg":
        image.save(buffer, "JPEG", quality=options.quality or DEFAULT_JPEG_QUALITY)
    else:
        image.save(buffer, _PIL_FORMATS[options.media_type])
    return buffer.getvalue()


def _parse_viewport(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) not in (2, 6):
        raise InvalidInput("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    width, height = _integer(parts[0], "viewport width"), _integer(parts[1], "viewport height")
    if width < 1 or height < 1:
        raise InvalidInput("viewport width and height must be positive")
    if len(parts) == 6:
        sx, sy, sw, sh = (_integer(part, "viewport source") if part.strip() else None for part in parts[2:])
        if (sx is not None and sx < 0) or (sy is not None and sy < 0):
            raise InvalidInput("viewport sx and sy must not be negative")
        if sw == 0 or sh == 0:
            raise InvalidInput("viewport sw and sh must not be zero")
    return height, width


def _pick_media_type(value: str | None) -> str:
    if not value:
        return "image/jpeg"
    for entry in value.split(","):
        media_type = entry.split(";")[0].strip().lower()
        if media_type in RENDERED_MEDIA_TYPES:
            return media_type
    raise Unsupported("none of the requested contentType values can be rendered")


def _check_annotation(value: str | None) -> None:
    if value is not None and any(token.strip().lower() not in _ANNOTATIONS for token in value.split(",")):
        raise InvalidInput("annotation must be a list of patient and technique")


def _integer(value: str, name: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None


def _number(value: str, name: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise InvalidInput(f"{name} must be a number") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be a finite number")
    return number
