"""OpenEarthMap (Xia et al., 2023): 0.25-0.5 m images of 97 regions in 44 countries, GeoTIFF.

Masks hold 9 classes, raw values 0..8 kept as ids (0 = other/unknown counts as a class, as the S5
evaluation does). The split files ``train.txt``, ``val.txt``, ``test.txt`` at the root list file names
(``<region>_<n>.tif``). The test labels are withheld by the owners: a test split whose labels are all
absent has ``mask = None``; a split with only some labels missing is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BenchmarkReader, Tile, file_stamp, missing_files_error
from .images import DataFileError, read_index_mask

NUM_CLASSES = 9


def region_of(file_name: str) -> str:
    """``aachen_12.tif`` -> ``aachen`` (region names may contain underscores)."""
    return Path(file_name).stem.rsplit("_", 1)[0]


class OpenEarthMapReader(BenchmarkReader):
    """OpenEarthMap reader. Images are read whole by default (most are 1024 px). Ids are file stems."""

    name = "openearthmap"
    splits = ("train", "val", "test")
    eval_split = "val"
    license = "cc-by-nc-sa-4.0"
    homepage = "https://open-earth-map.org"
    description = "OpenEarthMap: a benchmark dataset for global high-resolution land cover mapping."
    citation = (
        "@inproceedings{xia2023openearthmap,\n  title={OpenEarthMap: A Benchmark Dataset for Global High-Resolution "
        "Land Cover Mapping},\n  author={Xia, Junshi and Yokoya, Naoto and Adriano, Bruno and Broni-Bediako, Clifford},"
        "\n  booktitle={WACV},\n  year={2023}\n}"
    )
    layout = (
        "  <root>/{train,val,test}.txt                  (file names, one a line: <region>_<n>.tif)\n"
        "  <root>/<region>/images/<region>_<n>.tif      (RGB GeoTIFF)\n"
        "  <root>/<region>/labels/<region>_<n>.tif      (class ids 0..8; absent for the test split)"
    )

    def split_names(self, split: str) -> list[str]:
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise missing_files_error(f"{self.name} {split}", [split_file], self.layout)
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        # Some copies list stems without the extension.
        return [name if Path(name).suffix else f"{name}.tif" for name in names]

    def tiles(self, split: str) -> list[Tile]:
        split = self.check_split(split)
        entries = []
        for name in self.split_names(split):
            region = self.root / region_of(name)
            entries.append((Path(name).stem, region / "images" / name, region / "labels" / name))
        missing = [image for _, image, _ in entries if not image.is_file()]
        labels_missing = [label for _, _, label in entries if not label.is_file()]
        if split == "test" and len(labels_missing) == len(entries):
            labels_missing, unlabelled = [], True  # the published test split has no labels
        else:
            unlabelled = False
        if missing or labels_missing:
            raise missing_files_error(f"{self.name} {split}", missing + labels_missing, self.layout)
        return [
            Tile(stem, image, None if unlabelled else label, file_stamp(image, None if unlabelled else label))
            for stem, image, label in entries
        ]

    def read_mask(self, path: Path) -> np.ndarray:
        ids = read_index_mask(path)
        if ids.size and ids.max() >= NUM_CLASSES:
            bad, counts = np.unique(ids[ids >= NUM_CLASSES], return_counts=True)
            found = ", ".join(f"{v} x {c}" for v, c in zip(bad, counts, strict=True))
            raise DataFileError(path, f"label values outside 0..{NUM_CLASSES - 1} (value x pixel count): {found}")
        return ids


__all__ = ["NUM_CLASSES", "OpenEarthMapReader", "region_of"]
