"""Scene readers: one interface over NumPy arrays, Pillow images (PNG/JPEG/TIFF) and rasterio rasters (GeoTIFF),
read in horizontal strips so that memory does not grow with the scene."""


from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import PIL_BAND_DESCRIPTIONS, raster_band_names


logger = logging.getLogger(__name__)




IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# TIFF tags that georeference an image (GeoKeyDirectory, ModelPixelScale, ModelTiepoint, ModelTransformation).
GEOTIFF_TAGS = (34735, 33550, 33922, 34264)

try:  # optional extra `geo`
    import rasterio
    from rasterio.windows import Window
except ImportError:  # pragma: no cover - exercised where rasterio is not installed
    rasterio = None



class SceneError(ValueError):
    """A scene cannot be read or does not fit the model; the message names the file."""


class Scene:
    """A raster read by window: `read(top, left, height, width)` -> (bands, height, width) array."""

    name: str
    height: int
    width: int
    bands: int
    dtype: np.dtype
    crs = None
    transform = None
    #: Band descriptions (GeoTIFF band descriptions, Pillow's band names as red/green/blue...), None where absent;
    #: `--bands red,green,blue` selects by them.
    descriptions: tuple[str | None, ...] = ()
    # GeoTIFF tags Pillow saw but cannot turn into a CRS (rasterio missing): such a scene cannot keep them.
    unreadable_georeferencing = False

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def valid(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        """Boolean (height, width) mask of pixels holding data, or None when every pixel does."""
        return None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def close(self) -> None:
        pass


class ArrayScene(Scene):
    """A scene already in memory: (height, width, bands) or (height, width) array, or a PIL image."""

    def __init__(self, array: np.ndarray, name: str = "<array>"):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise SceneError(f"{name}: expected an image of shape (height, width[, bands]), got {array.shape}.")
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise SceneError(f"{name}: the image is empty ({array.shape[0]}x{array.shape[1]} pixels).")
        self.array, self.name = array, name
        self.height, self.width, self.bands = array.shape
        self.dtype = array.dtype

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return np.moveaxis(self.array[top : top + height, left : left + width], -1, 0)


def _usable(image: Image.Image, name: str) -> Image.Image:
    """`image` in a mode whose pixels are band values (palette images become RGB/RGBA)."""
    if image.mode == "P":  # indexed colour: its colours are the image
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        raise SceneError(f"{name}: colour mode {image.mode} is not supported; convert the image to RGB first.")
    return image


class PILScene(Scene):
    """A PIL image (PNG, JPEG, TIFF files are decoded whole by Pillow), cut into windows with `crop`."""

    def __init__(self, image: Image.Image, name: str = "<PIL image>"):
        self.image, self.name = _usable(image, name), name
        self.width, self.height = self.image.size
        if not self.width or not self.height:
            raise SceneError(f"{name}: the image is empty ({self.height}x{self.width} pixels).")
        self.bands = len(self.image.getbands())
        self.descriptions = tuple(PIL_BAND_DESCRIPTIONS.get(b) for b in self.image.getbands())
        self.dtype = np.asarray(self.image.crop((0, 0, 1, 1))).dtype

    @classmethod
    def from_path(cls, path: Path) -> PILScene:
        try:
            with Image.open(path) as image:
                image.load()
                scene = cls(image, str(path))
                scene.unreadable_georeferencing = bool(set(GEOTIFF_TAGS) & set(getattr(image, "tag_v2", {}) or {}))
        except Image.DecompressionBombError as error:
            raise SceneError(
                f"{path}: too large for Pillow to decode safely ({error}). Convert it to a (tiled) GeoTIFF, which is "
                f"read by window with rasterio (pip install 's5-hf[geo]'), or raise PIL.Image.MAX_IMAGE_PIXELS."
            ) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise SceneError(f"{path}: cannot read the image ({type(error).__name__}: {error}).") from error
        return scene

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        window = np.asarray(self.image.crop((left, top, left + width, top + height)))
        return window[None] if window.ndim == 2 else np.moveaxis(window, -1, 0)


#: Prefixes of GDAL virtual file systems (read through rasterio, never as local paths).
REMOTE_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/", "/vsihdfs/",
                   "/vsiwebhdfs/", "http://", "https://", "s3://", "gs://")


def is_remote(source) -> bool:
    """Whether `source` is a URL or GDAL virtual path (``/vsicurl/https://...``) rather than a local file."""
    return isinstance(source, str) and source.startswith(REMOTE_PREFIXES)


def gdal_path(source: str) -> str:
    """A URL as the GDAL path rasterio opens: http(s) URLs go through /vsicurl/ (range requests, so only the
    windows read are downloaded)."""
    if source.startswith(("http://", "https://")):
        return "/vsicurl/" + source
    return source


class RasterioScene(Scene):
    """A GeoTIFF (or any GDAL raster, including remote ones such as ``/vsicurl/https://...``) read window by window
    with rasterio."""

    def __init__(self, path: Path | str):
        try:
            self.dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise SceneError(f"{path}: cannot read the raster ({error}).") from error
        self.name = path if isinstance(path, str) else str(path)
        self.height, self.width, self.bands = self.dataset.height, self.dataset.width, self.dataset.count
        if len(set(self.dataset.dtypes)) != 1:
            raise SceneError(f"{path}: bands of different data types ({self.dataset.dtypes}) are not supported.")
        self.dtype = np.dtype(self.dataset.dtypes[0])
        self.descriptions = raster_band_names(self.dataset.descriptions, self.dataset.colorinterp)
        self.crs, self.transform = self.dataset.crs, self.dataset.transform
        # Only declared nodata (or an internal/alpha mask) makes pixels void; plain imagery has no mask.
        self.has_mask = any(
            rasterio.enums.MaskFlags.all_valid not in flags for flags in self.dataset.mask_flag_enums
        )

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        try:
            return self.dataset.read(window=Window(left, top, width, height))
        except rasterio.errors.RasterioIOError as error:
            raise SceneError(f"{self.name}: reading rows {top}..{top + height} failed ({error}).") from error

    def valid(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        if not self.has_mask:
            return None
        return self.dataset.dataset_mask(window=Window(left, top, width, height)) > 0

    def close(self) -> None:
        self.dataset.close()


def open_scene(source: str | os.PathLike | np.ndarray | Image.Image | Scene) -> Scene:
    """A `Scene` for a path (PNG/JPEG/TIFF; TIFFs through rasterio when installed), a URL or GDAL virtual path
    (``https://...``, ``/vsicurl/...``, ``/vsis3/...``: rasterio), an array or a PIL image.
    A `Scene` (e.g. your own reader for another format) is returned as it is."""
    if isinstance(source, Scene):
        return source
    if isinstance(source, Image.Image):
        return PILScene(source)
    if isinstance(source, np.ndarray):
        return ArrayScene(source)
    if is_remote(source):
        if rasterio is None:
            raise SceneError(f"{source}: reading remote scenes needs rasterio: pip install 's5-hf[geo]'.")
        return RasterioScene(gdal_path(source))
    path = Path(source)
    if not path.is_file():
        raise SceneError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise SceneError(f"{path}: the file is empty (0 bytes).")
    if path.suffix.lower() in TIFF_SUFFIXES and rasterio is not None:
        return RasterioScene(path)
    return PILScene.from_path(path)


# ----------------------------------------------------------------------------------------------------------------
# Compiled forward
# ----------------------------------------------------------------------------------------------------------------
