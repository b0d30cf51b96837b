"""Reading the image and label files of the benchmarks, with errors that name the file.

Pillow reports a truncated PNG as ``OSError: image file is truncated`` and a damaged TIFF with messages
about strips or tags, without the path. Every read here goes through `open_image`, which loads the pixels
at once (so damage shows up here, not later in a training loop) and turns any failure into a
`DataFileError` naming the file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..label_sets import VOID_ID

#: Largest image (in pixels) the readers open. Pillow's own guard against decompression bombs stops at
#: ~179 MP, below the biggest DOTA/iSAID scenes (up to 20000 x 20000), so the readers lift it to this.
MAX_PIXELS = 20_000 * 20_000

_PIXEL_LIMIT_LOCK = threading.Lock()
logger = logging.getLogger(__name__)


class DataFileError(ValueError):
    """A benchmark file that cannot be used as it is: unreadable, truncated, wrong size or unknown values.

    Attributes:
        path: the offending file.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _open_large(path: Path) -> Image.Image:
    """`Image.open` with Pillow's pixel limit raised to `MAX_PIXELS` (Pillow checks it only when opening;
    the limit is a module global, hence the lock)."""
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        if previous is not None:
            Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS, previous)
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


#: Modes of 8-bit images that convert to RGB exactly: RGB itself, grey-scale (replicated), palette (looked up),
#: and the same with an alpha band (dropped).
RGB_CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA")
_WIDE_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_WIDE_RAWMODE = re.compile(r";(16|32|64)[A-Z]?$")


def stored_format(image: Image.Image) -> tuple[int, int | None]:
    """(bits per band, stored bands or None if the mode's own) of an opened image, read *before* `load()`.

    Pillow opens some files as a narrower mode than they store: 16-bit RGB PNG/TIFF as 8-bit "RGB" (keeping the
    high bytes) and 4-band TIFFs as "RGB" (dropping a band); only the decoder's raw mode tells.
    """
    bits, bands = _WIDE_MODES.get(image.mode, 8), None
    for tile in getattr(image, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if not isinstance(rawmode, str):
            continue
        if _WIDE_RAWMODE.search(rawmode) and not rawmode.startswith("BGR;"):  # BGR;15/16: packed 5-6-5 bits
            bits = max(bits, int(_WIDE_RAWMODE.search(rawmode)[1]))
        if rawmode.startswith("RGBX") and image.mode == "RGB":
            bands = 4
    return bits, bands


def pixel_format_problem(image: Image.Image, bits: int = 8, bands: int | None = None) -> str | None:
    """Why `image` cannot become 8-bit RGB without guessing a scaling or a band order; None when it can.

    `bits` and `bands` are what `stored_format` read before the pixels were loaded.
    """
    if bits > 8:
        return (
            f"unsupported pixel format: {bits}-bit {image.mode} image; expected 8 bits per band (rescale it to 8 bits "
            "first: the right scaling depends on the sensor, so it is not guessed)"
        )
    if image.mode not in RGB_CONVERTIBLE_MODES or bands is not None:
        count = bands or len(image.getbands())
        return (
            f"unsupported pixel format: mode {image.mode!r} with {count} band(s); expected 8-bit RGB, RGBA, "
            "grey-scale or palette images (convert other band layouts to RGB first)"
        )
    return None


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file; any failure becomes a `DataFileError` naming the file.

    The stored bits per band and band count (`stored_format`) are kept in ``image.info["s5_stored_format"]``.
    """
    path = Path(path)
    try:
        image = _open_large(path)
        image.info["s5_stored_format"] = stored_format(image)
        image.load()
    except FileNotFoundError:
        raise DataFileError(path, "file not found") from None
    except Image.DecompressionBombError as error:
        raise DataFileError(path, f"image larger than the readers' limit of {MAX_PIXELS} pixels ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as error:
        # Pillow raises all of these for damaged files (SyntaxError for some broken headers).
        raise DataFileError(path, f"cannot decode the image, the file is corrupt or truncated ({error})") from None
    return image


def read_rgb(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """The pixels of an image file as an (H, W, 3) uint8 array.

    RGB files are taken as they are (for the ISPRS IRRG tiles the three bands are IR, R, G); RGBA drops
    the alpha band; grey-scale and palette images are expanded to RGB (a few DOTA/iSAID scenes are
    grey-scale). Anything else (16-bit, float, CMYK) is an error, never a silent conversion.

    Returns:
        (pixels, unchanged): `unchanged` is True when the file already was plain 8-bit RGB, so its
        original bytes can be stored instead of a re-encoding.
    """
    image = open_image(path)
    problem = pixel_format_problem(image, *image.info.get("s5_stored_format", (8, None)))
    if problem is not None:
        raise DataFileError(path, problem)
    if image.mode == "RGB":
        return np.asarray(image), True
    return np.asarray(image.convert("RGB")), False


def read_index_mask(path: str | os.PathLike) -> np.ndarray:
    """A single-band label file (grey-scale or palette indices) as an (H, W) uint8 array of raw values."""
    image = open_image(path)
    if image.mode in ("L", "P"):
        return np.asarray(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataFileError(path, f"label values {values.min()}..{values.max()} do not fit in 0..255")
        return values.astype(np.uint8)
    raise DataFileError(path, f"unsupported label mode {image.mode!r}; expected a single-band 8-bit label image")


def read_color_mask(path: str | os.PathLike) -> np.ndarray:
    """A colour-coded label file as an (H, W, 3) uint8 array of colours."""
    image = open_image(path)
    if image.mode == "RGB":
        return np.asarray(image)
    if image.mode in ("RGBA", "P"):
        return np.asarray(image.convert("RGB"))
    raise DataFileError(path, f"unsupported colour label mode {image.mode!r}; expected an RGB colour-coded label image")


def _pack(colors: np.ndarray) -> np.ndarray:
    colors = colors.astype(np.uint32)
    return (colors[..., 0] << 16) | (colors[..., 1] << 8) | colors[..., 2]


def colors_to_ids(
    colors: np.ndarray,
    color_to_id: Mapping[tuple[int, int, int], int],
    path: str | os.PathLike,
    unknown: str = "raise",
) -> np.ndarray:
    """Map an (H, W, 3) colour-coded label to class ids.

    Args:
        colour_to_id: every colour the file may contain and its id.
        path: the file, for messages.
        unknown: ``"raise"`` (default): any other colour is a `DataFileError` listing each unknown colour
            and its pixel count. ``"void"``: such pixels become 255, and a warning lists them.
    """
    packed = _pack(colors)
    ids = np.full(packed.shape, VOID_ID, dtype=np.uint8)
    matched = np.zeros(packed.shape, dtype=bool)
    for color, class_id in color_to_id.items():
        hit = packed == int(_pack(np.asarray(color, dtype=np.uint8)))
        ids[hit] = class_id
        matched |= hit
    if not matched.all():
        found = describe_unknown_colors(packed[~matched])
        if unknown == "raise":
            raise DataFileError(path, f"unknown label colours (colour x pixel count): {found}")
        logger.warning("%s: unknown label colours set to void (%d) as unknown='void' asks: %s", path, VOID_ID, found)
    return ids


def describe_unknown_colors(packed: np.ndarray, limit: int = 10) -> str:
    """'(r, g, b) x count' for the most frequent of the given packed colours."""
    values, counts = np.unique(packed, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:limit]
    parts = [
        f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) x {c}" for v, c in zip(values[order], counts[order], strict=True)
    ]
    more = f", and {len(values) - limit} more colours" if len(values) > limit else ""
    return ", ".join(parts) + more


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) grey-scale or (H, W, 3) RGB uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_mask_bytes(data: bytes) -> np.ndarray:
    """The class ids stored in an encoded mask (single-band image)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"mask image has mode {image.mode!r}, expected a single-band 'L' image of class ids")
        return np.asarray(image)


# ----------------------------------------------------------------------------------------------------------------
# Band selection: one parser for `s5-segment --bands`, the training scripts and the folder readers
# ----------------------------------------------------------------------------------------------------------------
#: Band names Pillow gives to the bands of its modes, as the descriptions a GeoTIFF would carry.
PIL_BAND_DESCRIPTIONS = {"R": "red", "G": "green", "B": "blue", "A": "alpha", "L": "gray", "I": "gray", "F": "gray"}


#: GDAL colour interpretations that name a band as a description would (rasterio's ColorInterp names).
_COLOR_INTERPRETATIONS = ("red", "green", "blue", "alpha", "gray")


def raster_band_names(descriptions, color_interpretations=()) -> tuple[str | None, ...]:
    """Per band, its GeoTIFF description, or else its colour interpretation when that names it (red, green,
    blue, alpha, gray: an RGB GeoTIFF without descriptions), else None."""
    colors = list(color_interpretations or []) + [None] * len(descriptions)
    out = []
    for description, color in zip(descriptions, colors):
        name = getattr(color, "name", color)
        out.append(description or (name if name in _COLOR_INTERPRETATIONS else None))
    return tuple(out)


class BandSelectionError(ValueError):
    """A band selection that does not fit an image; the reader prefixes the file's name."""


def parse_bands(value) -> tuple[int | str, ...] | None:
    """A band selection from ``"4,3,2"`` (1-based numbers, as GDAL counts), ``"red,green,blue"`` (band
    descriptions, case-insensitive), a mix of both, or a sequence of such items; None stays None.

    Numbers are kept as ints and names as stripped strings; `resolve_bands` maps them to a file's bands."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            number = int(item)
        else:
            text = str(item).strip()
            if not text:
                raise ValueError(f"--bands takes 1-based band numbers or band descriptions separated by commas, "
                                 f"e.g. 4,3,2 or red,green,blue; got an empty item in {value!r}.")
            if not text.lstrip("+-").isdigit():
                out.append(text)
                continue
            number = int(text)
        if number < 1:
            raise ValueError(f"--bands takes 1-based band numbers or band descriptions, e.g. 4,3,2 or "
                             f"red,green,blue; got {number} in {value!r} (the first band is 1).")
        out.append(number)
    if not out:
        raise ValueError("--bands selects no band.")
    return tuple(out)


def describe_bands(count: int, descriptions) -> str:
    """'1 "red", 2 "green", 3 (no description)': the available bands, for error messages."""
    descriptions = list(descriptions or []) + [None] * count
    return ", ".join(f'{b + 1} "{descriptions[b]}"' if descriptions[b] else f"{b + 1} (no description)"
                     for b in range(count))


def resolve_bands(selection, count: int, descriptions=None) -> list[int]:
    """0-based indices of `selection` (see `parse_bands`) in an image of `count` bands whose band descriptions are
    `descriptions` (GeoTIFF band descriptions; None for a band without one). A number out of range, a name no band
    has, or a name two bands share raises `BandSelectionError` listing the available bands."""
    selection = parse_bands(selection)
    if selection is None:
        return list(range(count))
    names = [(d or "").strip().lower() for d in (list(descriptions or []) + [None] * count)[:count]]
    missing = [item for item in selection if isinstance(item, int) and item > count]
    if missing:
        raise BandSelectionError(f"band(s) {missing} do not exist; the image has {count} band(s): "
                                 f"{describe_bands(count, descriptions)}")
    out = []
    for item in selection:
        if isinstance(item, int):
            out.append(item - 1)
            continue
        matches = [b for b, name in enumerate(names) if name and name == item.lower()]
        if not matches:
            raise BandSelectionError(f"no band is described as {item!r}; the image's bands: "
                                     f"{describe_bands(count, descriptions)} (select by 1-based number instead)")
        if len(matches) > 1:
            raise BandSelectionError(f"bands {[m + 1 for m in matches]} are all described as {item!r}; select by "
                                     "1-based number instead")
        out.append(matches[0])
    return out


__all__ = [
    "BandSelectionError",
    "DataFileError",
    "MAX_PIXELS",
    "PIL_BAND_DESCRIPTIONS",
    "colors_to_ids",
    "decode_mask_bytes",
    "describe_bands",
    "encode_png",
    "open_image",
    "parse_bands",
    "pixel_format_problem",
    "read_color_mask",
    "read_index_mask",
    "raster_band_names",
    "read_rgb",
    "resolve_bands",
    "stored_format",
]
