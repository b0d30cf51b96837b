"""Label-map writers that take a scene row strip by row strip: streamed PNG (our minimal encoder), GeoTIFF by
window with rasterio, in-memory TIFF through Pillow, and the colour composite with a legend."""


from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .. import files
from ..label_sets import VOID_ID
from ..visualize import blend_rows, legend

logger = logging.getLogger(__name__)



from .scenes import TIFF_SUFFIXES, RasterioScene, Scene, SceneError, Window, rasterio

class RowWriter:
    """Writes an image top to bottom, a block of rows at a time, to a temporary file renamed on `close()`; an
    incomplete image is never left under the final name."""

    def __init__(self, path: Path, width: int, height: int):
        self.path, self.width, self.height = Path(path), width, height
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        if block.shape[1] != self.width or self.rows + block.shape[0] > self.height:
            raise ValueError(f"{self.path}: block of shape {block.shape} does not fit the remaining rows.")
        self._write(block)
        self.rows += block.shape[0]

    def close(self) -> Path:
        if self.rows != self.height:
            self.abort()
            raise RuntimeError(f"{self.path}: only {self.rows} of {self.height} rows were written.")
        self._finish()
        files.fsync_file(self.tmp)  # on disk before the rename makes it visible (a crash never leaves a torn mask)
        os.replace(self.tmp, self.path)
        files.fsync_directory(self.path.parent)
        return self.path

    def abort(self) -> None:
        self._release()
        self.tmp.unlink(missing_ok=True)

    def _write(self, block: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngRowWriter(RowWriter):
    """Streaming 8-bit PNG: palette (`palette` given, pixel values = indices) or RGB (blocks of shape (h, w, 3))."""

    def __init__(self, path: Path, width: int, height: int, palette: np.ndarray | None = None):
        super().__init__(path, width, height)
        self.channels = 1 if palette is not None else 3
        self.file = open(self.tmp, "wb")
        self.compressor = zlib.compressobj(6)
        color_type = 3 if palette is not None else 2
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self.file.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        if palette is not None:
            # All 256 entries, so the void id 255 (black) is a valid index too.
            table = np.zeros((256, 3), dtype=np.uint8)
            table[: len(palette)] = palette
            self.file.write(_png_chunk(b"PLTE", table.tobytes()))

    def _write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.uint8).reshape(block.shape[0], -1)
        filtered = np.zeros((block.shape[0], 1 + self.width * self.channels), dtype=np.uint8)  # filter 0 per row
        filtered[:, 1:] = block
        data = self.compressor.compress(filtered.tobytes())
        if data:
            self.file.write(_png_chunk(b"IDAT", data))

    def _finish(self) -> None:
        self.file.write(_png_chunk(b"IDAT", self.compressor.flush()))
        self.file.write(_png_chunk(b"IEND", b""))
        self.file.close()

    def _release(self) -> None:
        self.file.close()


#: Block size of Cloud-Optimized GeoTIFF output (GDAL's COG driver default).
COG_BLOCK = 512


def has_cog_driver() -> bool:
    """Whether the GDAL under rasterio has the COG driver (GDAL >= 3.1)."""
    with rasterio.Env() as env:
        return "COG" in env.drivers()


def overview_factors(width: int, height: int, block: int = COG_BLOCK) -> list[int]:
    """2, 4, 8, ... until the smallest overview fits in one block (GDAL's own rule for COG overviews)."""
    factors, factor = [], 2
    while max(width, height) / (factor // 2) > block:
        factors.append(factor)
        factor *= 2
    return factors


def write_cog(source: Path, target: Path) -> None:
    """Copy the label GeoTIFF `source` to `target` as a Cloud-Optimized GeoTIFF: tiled 512 x 512, deflate,
    overviews by the majority class (MODE: a class map must not be averaged), CRS, transform, nodata, colour map
    and tags kept. With GDAL's COG driver when present; otherwise the classic layout written by rasterio (a tiled
    GeoTIFF, overviews built into the source, copied with COPY_SRC_OVERVIEWS so they come first in the file)."""
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as raster_copy

    if has_cog_driver():
        raster_copy(source, target, driver="COG", BLOCKSIZE=COG_BLOCK, COMPRESS="DEFLATE",
                    OVERVIEW_RESAMPLING="MODE", OVERVIEWS="AUTO")
        return
    with rasterio.open(source, "r+") as dataset:
        factors = overview_factors(dataset.width, dataset.height)
        if factors:
            dataset.build_overviews(factors, Resampling.mode)
    raster_copy(source, target, driver="GTiff", TILED="YES", BLOCKXSIZE=COG_BLOCK, BLOCKYSIZE=COG_BLOCK,
                COMPRESS="DEFLATE", COPY_SRC_OVERVIEWS="YES")


class GeoTiffRowWriter(RowWriter):
    """Single-band uint8 GeoTIFF written by row windows with rasterio; keeps the scene's CRS and transform.

    With `cog`, the rows go to an intermediate tiled GeoTIFF that `close()` converts to a Cloud-Optimized GeoTIFF
    (`write_cog`); the final name appears only once the conversion is complete."""

    def __init__(self, path: Path, scene: Scene, palette: np.ndarray, class_names: Sequence[str],
                 cog: bool = False):
        super().__init__(path, scene.width, scene.height)
        self.cog = cog
        block = COG_BLOCK if cog else 256
        profile = dict(driver="GTiff", width=scene.width, height=scene.height, count=1, dtype="uint8",
                       nodata=VOID_ID, compress="deflate", tiled=True, blockxsize=block, blockysize=block)
        if scene.transform is not None:  # a Pillow scene (cog output) has none
            profile.update(crs=scene.crs, transform=scene.transform)
        if scene.width < block or scene.height < block:
            profile.update(tiled=False, blockxsize=None, blockysize=None)
            profile = {k: v for k, v in profile.items() if v is not None}
        self.target = self.tmp
        if cog:
            self.target = self.path.with_name(f".{self.path.name}.rows.tif")
        self.dataset = rasterio.open(self.target, "w", **profile)
        self.dataset.write_colormap(1, {k: (*map(int, palette[k]), 255) for k in range(len(palette))})
        self.dataset.update_tags(1, class_names=json.dumps(list(class_names)))

    def _write(self, block: np.ndarray) -> None:
        self.dataset.write(block, 1, window=Window(0, self.rows, self.width, block.shape[0]))

    def _finish(self) -> None:
        self.dataset.close()
        if self.cog:
            try:
                write_cog(self.target, self.tmp)
            finally:
                self.target.unlink(missing_ok=True)

    def _release(self) -> None:
        self.dataset.close()
        if self.cog:
            self.target.unlink(missing_ok=True)


class InMemoryRowWriter(RowWriter):
    """Any format Pillow writes (used for TIFF without rasterio): assembled as one uint8 palette image."""

    def __init__(self, path: Path, width: int, height: int, palette: np.ndarray):
        super().__init__(path, width, height)
        self.array = np.empty((height, width), dtype=np.uint8)
        self.palette = palette

    def _write(self, block: np.ndarray) -> None:
        self.array[self.rows : self.rows + block.shape[0]] = block

    def _finish(self) -> None:
        image = Image.fromarray(self.array).convert("P")  # "L" -> "P" keeps the values as palette indices
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(self.palette)] = self.palette
        image.putpalette(table.tobytes())
        image.save(self.tmp, format="TIFF", compression="tiff_deflate")


class ColorComposer:
    """Writes `<name>_color.png`: the colour mask blended over the scene, with the legend to the right."""

    def __init__(self, path: Path, scene: Scene, channels: list[int], scale: float, palette: np.ndarray,
                 class_names: Sequence[str], title: str, alpha: float):
        self.scene, self.channels, self.scale, self.palette, self.alpha = scene, channels, scale, palette, alpha
        self.legend = np.asarray(legend(class_names, palette, title=title))
        self.height = max(scene.height, self.legend.shape[0])
        self.writer = PngRowWriter(path, scene.width + self.legend.shape[1], self.height)
        self.top = 0

    def _display_rgb(self, top: int, rows: int) -> np.ndarray:
        raw = self.scene.read(top, 0, rows, self.scene.width)[self.channels].astype(np.float32)
        raw = raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)
        return np.clip(raw * (self.scale * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def _legend_rows(self, top: int, rows: int) -> np.ndarray:
        block = np.full((rows, self.legend.shape[1], 3), 255, dtype=np.uint8)
        visible = max(0, min(rows, self.legend.shape[0] - top))
        block[:visible] = self.legend[top : top + visible]
        return block

    def write(self, labels: np.ndarray) -> None:
        rows = labels.shape[0]
        blended = blend_rows(self._display_rgb(self.top, rows), labels, self.palette, self.alpha)
        self.writer.write(np.concatenate([blended, self._legend_rows(self.top, rows)], axis=1))
        self.top += rows

    def close(self) -> Path:
        if self.top < self.height:  # the legend is taller than the scene: white rows below it
            extra = self.height - self.top
            blank = np.full((extra, self.scene.width, 3), 255, dtype=np.uint8)
            self.writer.write(np.concatenate([blank, self._legend_rows(self.top, extra)], axis=1))
        return self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def _label_writer(path: Path, scene: Scene, palette: np.ndarray, class_names: Sequence[str],
                  cog: bool = False) -> RowWriter:
    suffix = path.suffix.lower()
    if cog:
        if suffix not in TIFF_SUFFIXES:
            raise ValueError(f"{path}: a Cloud-Optimized GeoTIFF needs a .tif output, not {suffix!r}.")
        if rasterio is None:
            raise SceneError("Cloud-Optimized GeoTIFF output needs rasterio: pip install 's5-hf[geo]'.")
        return GeoTiffRowWriter(path, scene, palette, class_names, cog=True)
    if suffix == ".png":
        if scene.georeferenced or scene.unreadable_georeferencing:
            logger.warning("%s: a PNG drops the georeferencing of %s; write a .tif to keep it.", path, scene.name)
        return PngRowWriter(path, scene.width, scene.height, palette=palette)
    if suffix in TIFF_SUFFIXES:
        if isinstance(scene, RasterioScene):
            return GeoTiffRowWriter(path, scene, palette, class_names)
        if scene.unreadable_georeferencing:
            raise SceneError(
                f"{scene.name}: keeping its georeferencing needs rasterio: pip install 's5-hf[geo]' "
                f"(or write a PNG mask instead)."
            )
        return InMemoryRowWriter(path, scene.width, scene.height, palette)
    raise ValueError(f"{path}: unsupported output format {suffix!r}; use .png or .tif.")


