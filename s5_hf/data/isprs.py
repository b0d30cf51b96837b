"""ISPRS 2D semantic labelling benchmarks: Vaihingen and Potsdam.

Labels are colour-coded RGB tiles: impervious surface (white) 0, building (blue) 1, low vegetation (cyan) 2,
tree (green) 3, car (yellow) 4, and clutter/background (red) kept as id 5, the task's ignore index (the
official evaluation ignores it). The eroded ("noBoundary") ground truth marks boundary pixels black; they
become void (255). Any other colour is an error naming the file, the colour and its pixel count.

Tiles are large (Vaihingen ~2000 x 2500, Potsdam 6000 x 6000): by default the training split is cut into
512 x 512 patches with stride 512 (last row/column shifted inside the tile), the test split is read as
whole tiles for sliding-window evaluation. Only one tile is decoded at a time.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from ..label_sets import ISPRS_CLUTTER_COLOR, ISPRS_PALETTE, VOID_ID
from .base import BenchmarkReader, Tile, file_stamp, missing_files_error
from .images import DataFileError, colors_to_ids, read_color_mask

CLUTTER_ID = 5
BOUNDARY_COLOR = (0, 0, 0)


def official_split(dataset: str, split: str) -> list[str]:
    """Tile stems of an official ISPRS split, from the text files shipped in `s5_hf/data/splits/`."""
    text = resources.files("s5_hf.data").joinpath("splits", f"{dataset}_{split}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class IsprsReader(BenchmarkReader):
    """Shared logic of the two ISPRS readers; see `VaihingenReader` and `PotsdamReader`.

    Args:
        eroded: read the eroded ("noBoundary") ground truth, whose black boundary pixels become 255. Its
            folder must be present.
        unknown_colour: ``"raise"`` (default) or ``"void"`` (unknown colours become 255, with a warning).
        **kwargs: see `BenchmarkReader` (patch_size, stride, on_error, skip_log).
    """

    splits = ("train", "test")
    eval_split = "test"
    train_patch = (512, 512)
    eval_patch = None
    homepage = "https://www.isprs.org/education/benchmarks/UrbanSemLab/default.aspx"
    citation = (
        "@article{rottensteiner2012isprs,\n  title={The ISPRS benchmark on urban object classification and 3D building "
        "reconstruction},\n  author={Rottensteiner, Franz and Sohn, Gunho and Jung, Jaewook and Gerke, Markus and "
        "Baillard, Caroline and Benitez, Sebastien and Breitkopf, Uwe},\n  journal={ISPRS Annals},\n  volume={I-3},\n"
        "  year={2012}\n}"
    )
    license_note = "ISPRS benchmark terms: free for research, cite the benchmark; no redistribution of the data."
    # Folder and file name of image / full label / eroded label for a tile stem.
    image_dir: ClassVar[str]
    label_dir: ClassVar[str]
    eroded_dir: ClassVar[str]

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        eroded: bool = False,
        unknown_color: Literal["raise", "void"] = "raise",
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        if unknown_color not in ("raise", "void"):
            raise ValueError(f"unknown_colour must be 'raise' or 'void', got {unknown_color!r}")
        self.eroded = eroded
        self.unknown_color = unknown_color

    def image_name(self, stem: str) -> str:
        raise NotImplementedError

    def label_name(self, stem: str) -> str:
        raise NotImplementedError

    def tiles(self, split: str) -> list[Tile]:
        split = self.check_split(split)
        label_dir = self.eroded_dir if self.eroded else self.label_dir
        if self.eroded and not (self.root / label_dir).is_dir():
            raise FileNotFoundError(
                f"{self.name}: eroded=True but the eroded ground truth folder {self.root / label_dir} does not "
                f"exist. Expected layout:\n{self.layout}"
            )
        pairs = [
            (stem, self.root / self.image_dir / self.image_name(stem), self.root / label_dir / self.label_name(stem))
            for stem in official_split(self.name, split)
        ]
        missing = [path for _, image, label in pairs for path in (image, label) if not path.is_file()]
        if missing:
            raise missing_files_error(f"{self.name} {split}", missing, self.layout)
        return [Tile(stem, image, label, file_stamp(image, label)) for stem, image, label in pairs]

    def read_mask(self, path: Path) -> np.ndarray:
        color_to_id = {color: class_id for class_id, color in enumerate(ISPRS_PALETTE)}
        color_to_id[ISPRS_CLUTTER_COLOR] = CLUTTER_ID
        if self.eroded:
            color_to_id[BOUNDARY_COLOR] = VOID_ID
        try:
            return colors_to_ids(read_color_mask(path), color_to_id, path, self.unknown_color)
        except DataFileError as error:
            if not self.eroded and str(BOUNDARY_COLOR) in error.problem:
                raise DataFileError(
                    path,
                    error.problem + ". Black marks boundary pixels only in the eroded (noBoundary) ground truth; "
                    "this is the full one. Pass eroded=True to read the eroded labels.",
                ) from None
            raise


class VaihingenReader(IsprsReader):
    """ISPRS Vaihingen: 33 IRRG true orthophoto tiles (9 cm), 16 train / 17 test areas.

    The image bands are stored as they come (near-infrared, red, green in the three channels), as the
    official S5 code and mmsegmentation do.
    """

    name = "vaihingen"
    image_dir = "top"
    label_dir = "gts_for_participants"
    eroded_dir = "gts_eroded_for_participants"
    description = (
        "ISPRS 2D semantic labelling benchmark, Vaihingen: 9 cm IRRG true orthophotos of Vaihingen an der Enz."
    )
    layout = (
        "  <root>/top/top_mosaic_09cm_area{N}.tif                                  (IRRG image tiles)\n"
        "  <root>/gts_for_participants/top_mosaic_09cm_area{N}.tif                 (colour-coded labels)\n"
        "  <root>/gts_eroded_for_participants/top_mosaic_09cm_area{N}_noBoundary.tif  (eroded labels, eroded=True)\n"
        "  areas of each split: s5_hf/data/splits/vaihingen_{train,test}.txt"
    )

    def image_name(self, stem: str) -> str:
        return f"{stem}.tif"

    def label_name(self, stem: str) -> str:
        return f"{stem}_noBoundary.tif" if self.eroded else f"{stem}.tif"


class PotsdamReader(IsprsReader):
    """ISPRS Potsdam: 38 RGB true orthophoto tiles (5 cm, 6000 x 6000), 24 train / 14 test tiles."""

    name = "potsdam"
    image_dir = "2_Ortho_RGB"
    label_dir = "5_Labels_all"
    eroded_dir = "5_Labels_all_noBoundary"
    description = "ISPRS 2D semantic labelling benchmark, Potsdam: 5 cm RGB true orthophotos of Potsdam."
    layout = (
        "  <root>/2_Ortho_RGB/top_potsdam_{a}_{b}_RGB.tif                           (RGB image tiles)\n"
        "  <root>/5_Labels_all/top_potsdam_{a}_{b}_label.tif                        (colour-coded labels)\n"
        "  <root>/5_Labels_all_noBoundary/top_potsdam_{a}_{b}_label_noBoundary.tif  (eroded labels, eroded=True)\n"
        "  tiles of each split: s5_hf/data/splits/potsdam_{train,test}.txt"
    )

    def image_name(self, stem: str) -> str:
        return f"{stem}_RGB.tif"

    def label_name(self, stem: str) -> str:
        return f"{stem}_label_noBoundary.tif" if self.eroded else f"{stem}_label.tif"


__all__ = ["IsprsReader", "PotsdamReader", "VaihingenReader", "official_split"]
