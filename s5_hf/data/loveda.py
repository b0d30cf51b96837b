"""LoveDA (Wang et al., 2021): 0.3 m Google Earth images of urban and rural scenes, 1024 x 1024 PNG.

Raw mask values: 0 = no-data, 1..7 = background, building, road, water, barren, forest, agriculture. As the
official code does, no-data becomes void (255) and 1..7 shift to ids 0..6. The test split is published
without masks (scored on the owners' server): its rows have ``mask = None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ..label_sets import VOID_ID
from .base import BenchmarkReader, Tile, file_stamp, missing_files_error
from .images import DataFileError, read_index_mask

DOMAINS = ("rural", "urban")
_SPLIT_FOLDERS = {"train": "Train", "val": "Val", "test": "Test"}
# raw value -> id: 0 (no-data) -> void, 1..7 -> 0..6.
_RAW_TO_ID = np.array([VOID_ID, 0, 1, 2, 3, 4, 5, 6], dtype=np.uint8)


def _numeric_first(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


class LoveDAReader(BenchmarkReader):
    """LoveDA reader.

    Args:
        domain: ``"urban"``, ``"rural"`` or ``"both"`` (default).
        **kwargs: see `BenchmarkReader`. Images are read whole by default (they are 1024 px).

    Ids are ``<domain>/<file stem>``, e.g. ``urban/1366``.
    """

    name = "loveda"
    splits = ("train", "val", "test")
    eval_split = "val"
    license = "cc-by-nc-sa-4.0"
    homepage = "https://github.com/Junjue-Wang/LoveDA"
    description = (
        "LoveDA: a remote sensing land-cover dataset for domain adaptive semantic segmentation (urban and rural)."
    )
    citation = (
        "@inproceedings{wang2021loveda,\n  title={LoveDA: A Remote Sensing Land-Cover Dataset for Domain Adaptive "
        "Semantic Segmentation},\n  author={Wang, Junjue and Zheng, Zhuo and Ma, Ailong and Lu, Xiaoyan and Zhong, "
        "Yanfei},\n  booktitle={NeurIPS Datasets and Benchmarks},\n  year={2021}\n}"
    )
    layout = (
        "  <root>/{Train,Val,Test}/{Urban,Rural}/images_png/<n>.png\n"
        "  <root>/{Train,Val}/{Urban,Rural}/masks_png/<n>.png   (same file names; Test has no masks)"
    )

    def __init__(self, root: str | os.PathLike, *, domain: Literal["urban", "rural", "both"] = "both", **kwargs):
        super().__init__(root, **kwargs)
        if domain not in (*DOMAINS, "both"):
            raise ValueError(f"domain must be 'urban', 'rural' or 'both', got {domain!r}")
        self.domains = DOMAINS if domain == "both" else (domain,)

    def tiles(self, split: str) -> list[Tile]:
        split = self.check_split(split)
        tiles: list[Tile] = []
        missing: list[Path] = []
        for domain in self.domains:
            folder = self.root / _SPLIT_FOLDERS[split] / domain.capitalize()
            image_dir, mask_dir = folder / "images_png", folder / "masks_png"
            if not image_dir.is_dir():
                missing.append(image_dir)
                continue
            # The published test split has no masks; a copy that has them gets them read.
            labelled = split != "test" or mask_dir.is_dir()
            if labelled and not mask_dir.is_dir():
                missing.append(mask_dir)
                continue
            for image in sorted(image_dir.glob("*.png"), key=_numeric_first):
                mask = mask_dir / image.name if labelled else None
                if mask is not None and not mask.is_file():
                    missing.append(mask)
                    continue
                tiles.append(Tile(f"{domain}/{image.stem}", image, mask, file_stamp(image, mask)))
        if missing:
            raise missing_files_error(f"{self.name} {split}", missing, self.layout)
        return tiles

    def read_mask(self, path: Path) -> np.ndarray:
        raw = read_index_mask(path)
        if raw.size and raw.max() >= len(_RAW_TO_ID):
            bad, counts = np.unique(raw[raw >= len(_RAW_TO_ID)], return_counts=True)
            found = ", ".join(f"{v} x {c}" for v, c in zip(bad, counts, strict=True))
            raise DataFileError(path, f"mask values outside 0..7 (value x pixel count): {found}")
        return _RAW_TO_ID[raw]


__all__ = ["DOMAINS", "LoveDAReader"]
