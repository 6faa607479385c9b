"""A series preview as PNG, rendered on the server from the pixel data.

The instance is read with pydicom; its pixels are scaled by Rescale Slope and Intercept,
then windowed with the image's own Window Center and Width (PS3.3 C.11.2, the linear
function of C.11.2.1.2), else between the image's minimum and maximum. MONOCHROME1 is
inverted; RGB is shown as it is; the middle frame of a multi-frame image is shown. An
image whose transfer syntax this server cannot decode (or whose file cannot be read)
gets a placeholder saying so, never an error page.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger("gateway.http.preview")

#: Longest side of a preview, in pixels.
SIZE = 256


def _png(image: Image.Image) -> bytes:
    scale = SIZE / max(image.size)
    if scale != 1:  # small images are enlarged with their pixels kept square, large ones smoothed down
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def placeholder(text: str) -> bytes:
    """A grey PNG with ``text`` on it (e.g. why there is no preview)."""
    image = Image.new("L", (SIZE, SIZE), 64)
    draw = ImageDraw.Draw(image)
    y = SIZE // 2 - 24
    for line in _wrap(text, 34):
        draw.text((10, y), line, fill=230)
        y += 14
    return _png(image)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def windowed(pixels: np.ndarray, center: float | None, width: float | None) -> np.ndarray:
    """8-bit grey levels of ``pixels`` through the window (PS3.3 C.11.2.1.2), else min-max."""
    pixels = pixels.astype(np.float64)
    if center is not None and width is not None and width >= 1:
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        scaled = ((pixels - (center - 0.5)) / (width - 1) + 0.5) * 255
        scaled[pixels <= low] = 0
        scaled[pixels > high] = 255
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.rint((pixels - low) / (high - low) * 255).astype(np.uint8)


def render(path: Path) -> bytes:
    """The PNG preview of one instance file, or a placeholder saying why there is none."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # missing, unreadable: the page still shows
        log.warning("preview: cannot read %s: %s", path.name, exc)
        return placeholder("No preview: the file cannot be read.")
    if "PixelData" not in ds:
        return placeholder("No preview: this instance has no pixel data.")
    syntax = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for the transfer syntax (JPEG 2000, video, ...)
        name = getattr(syntax, "name", str(syntax)) or "unknown"
        log.info("preview: no decoder for %s (%s): %s", name, syntax, exc)
        return placeholder(f"No preview: images in {name} cannot be decoded here. The images are stored "
                           "as received.")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if samples == 3:
        if str(getattr(ds, "PhotometricInterpretation", "")).startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB")
        return _png(Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB"))
    slope = _first(getattr(ds, "RescaleSlope", None)) or 1.0
    intercept = _first(getattr(ds, "RescaleIntercept", None)) or 0.0
    grey = windowed(pixels * slope + intercept, _first(getattr(ds, "WindowCenter", None)),
                    _first(getattr(ds, "WindowWidth", None)))
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return _png(Image.fromarray(grey, "L"))
