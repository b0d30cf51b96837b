"""iSAID (Waqas Zamir et al., 2019): instance segmentation of the DOTA v1.0 aerial scenes, used by S5 as
the labeled set of its semi-supervised pretraining (15 object classes + background = 16 classes).

Semantic masks are colour-coded PNGs ``<stem>_instance_color_RGB.png`` (colours in `s5_hf.label_sets`);
any other colour is an error naming the file (or void with ``unknown_colour="void"``).

Scenes are 800 to 20000 px. Both splits are cut into 896 x 896 patches with stride 512 (overlap 384), the
preparation of mmsegmentation that UniMatch-style iSAID training uses; last patches are shifted inside the
scene, and scenes smaller than a patch are padded (image 0, mask 255). The official S4P list (38,936
training crops = 9,734 patches x 4 from 1,409 scenes) was made with unpublished settings; set
`patch_size`/`stride` to reproduce another cutting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ..label_sets import get_label_set
from .base import BenchmarkReader, Tile, file_stamp, missing_files_error
from .images import colors_to_ids, read_color_mask

MASK_SUFFIX = "_instance_color_RGB.png"
#: Where a scene's semantic mask is looked for, relative to ``<root>/<split>``, in this order: the layout of
#: the iSAID download (``Semantic_masks/images``) and masks unpacked beside the images.
MASK_FOLDERS = ("Semantic_masks/images", "images")


class ISAIDReader(BenchmarkReader):
    """iSAID reader (train and val; the test split has no public masks).

    Args:
        unknown_colour: ``"raise"`` (default) or ``"void"``.
        **kwargs: see `BenchmarkReader`. Default patching: 896 px, stride 512, both splits.

    Ids are ``<scene>_y<top>_x<left>``, e.g. ``P0001_y00512_x00000``.
    """

    name = "isaid"
    splits = ("train", "val")
    eval_split = "val"
    train_patch = (896, 512)
    eval_patch = (896, 512)
    homepage = "https://captain-whu.github.io/iSAID/"
    license_note = "iSAID/DOTA terms: academic use only (Google Earth imagery)."
    description = "iSAID: a large-scale dataset for instance segmentation in aerial images (DOTA v1.0 scenes)."
    citation = (
        "@inproceedings{waqas2019isaid,\n  title={iSAID: A Large-scale Dataset for Instance Segmentation in Aerial "
        "Images},\n  author={Waqas Zamir, Syed and Arora, Aditya and Gupta, Akshita and Khan, Salman and Sun, Guolei "
        "and Shahbaz Khan, Fahad and Zhu, Fan and Shao, Ling and Xia, Gui-Song and Bai, Xiang},\n  booktitle={CVPR "
        "Workshops},\n  year={2019}\n}"
    )
    layout = (
        "  <root>/{train,val}/images/P<nnnn>.png                                   (DOTA scenes)\n"
        "  <root>/{train,val}/Semantic_masks/images/P<nnnn>_instance_color_RGB.png  (colour-coded masks;\n"
        "      also accepted beside the images in <root>/{train,val}/images/)"
    )

    def __init__(self, root: str | os.PathLike, *, unknown_color: Literal["raise", "void"] = "raise", **kwargs):
        super().__init__(root, **kwargs)
        if unknown_color not in ("raise", "void"):
            raise ValueError(f"unknown_colour must be 'raise' or 'void', got {unknown_color!r}")
        self.unknown_color = unknown_color

    def tiles(self, split: str) -> list[Tile]:
        split = self.check_split(split)
        image_dir = self.root / split / "images"
        if not image_dir.is_dir():
            raise missing_files_error(f"{self.name} {split}", [image_dir], self.layout)
        images = sorted(p for p in image_dir.glob("*.png") if "_instance_" not in p.name)
        tiles, missing = [], []
        for image in images:
            candidates = [self.root / split / folder / f"{image.stem}{MASK_SUFFIX}" for folder in MASK_FOLDERS]
            mask = next((path for path in candidates if path.is_file()), None)
            if mask is None:
                missing.append(candidates[0])
                continue
            tiles.append(Tile(image.stem, image, mask, file_stamp(image, mask)))
        if missing:
            raise missing_files_error(f"{self.name} {split}", missing, self.layout)
        return tiles

    def read_mask(self, path: Path) -> np.ndarray:
        palette = get_label_set("isaid").palette
        color_to_id = {color: class_id for class_id, color in enumerate(palette)}
        return colors_to_ids(read_color_mask(path), color_to_id, path, self.unknown_color)


__all__ = ["ISAIDReader", "MASK_FOLDERS", "MASK_SUFFIX"]
