"""Class names, ignore ids and colour codes of the datasets S5 trains and evaluates on.

One table shared by the model configurations (task heads) and the data readers, so a task called
``"vaihingen"`` means the same classes everywhere. The value 255 is the universal "void" id in every
mask this package produces; a dataset may declare one more id that is ignored by loss and metrics
(ISPRS clutter, id 5, as the official S5 evaluation does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VOID_ID = 255


@dataclass(frozen=True)
class LabelSet:
    name: str
    class_names: tuple[str, ...]
    ignore_index: int = VOID_ID
    # RGB colour per class id, used by colour-coded label files and by mask rendering.
    palette: tuple[tuple[int, int, int], ...] = field(default=())
    # Names of ids that exist in the label files but are not predicted (e.g. ISPRS clutter).
    extra_ids: dict[int, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))


ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car")
# ISPRS 2D semantic labelling colour code; clutter/background (red) is id 5 and ignored.
ISPRS_PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0))
ISPRS_CLUTTER_COLOR = (255, 0, 0)

LABEL_SETS: dict[str, LabelSet] = {
    "isaid": LabelSet(
        name="isaid",
        class_names=(
            "background", "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
            "ground_track_field", "bridge", "large_vehicle", "small_vehicle", "helicopter", "swimming_pool",
            "roundabout", "soccer_ball_field", "plane", "harbor",
        ),
        palette=(
            (0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
            (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127),
            (0, 127, 191), (0, 127, 255), (0, 100, 155),
        ),
    ),
    "vaihingen": LabelSet(
        name="vaihingen",
        class_names=ISPRS_CLASSES,
        ignore_index=5,
        palette=ISPRS_PALETTE,
        extra_ids={5: "clutter"},
    ),
    "potsdam": LabelSet(
        name="potsdam",
        class_names=ISPRS_CLASSES,
        ignore_index=5,
        palette=ISPRS_PALETTE,
        extra_ids={5: "clutter"},
    ),
    "openearthmap": LabelSet(
        name="openearthmap",
        class_names=(
            "other", "bareland", "grass", "pavement", "road", "tree", "water", "agriculture_land", "building",
        ),
        palette=(
            (0, 0, 0), (128, 0, 0), (0, 255, 36), (148, 148, 148), (255, 255, 255), (34, 97, 38),
            (0, 69, 255), (75, 181, 73), (222, 31, 7),
        ),
    ),
    "loveda": LabelSet(
        name="loveda",
        class_names=("background", "building", "road", "water", "barren", "forest", "agriculture"),
        palette=(
            (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0),
            (255, 195, 128),
        ),
    ),
}

# The four segmentation datasets of the released MoE-MDF model, in the official expert order.
MDF_TASKS = ("vaihingen", "potsdam", "openearthmap", "loveda")


def get_label_set(name: str) -> LabelSet:
    """Return the label set called ``name`` (case-insensitive); the error lists the known names."""
    key = name.lower()
    if key not in LABEL_SETS:
        raise KeyError(f"Unknown dataset/task name {name!r}. Known: {', '.join(sorted(LABEL_SETS))}.")
    return LABEL_SETS[key]
