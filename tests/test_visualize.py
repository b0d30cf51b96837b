"""Chart primitives of s5_hf.visualize: sizes, where the marks land, and no failure on NaN or empty input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from s5_hf.visualize import (
    CURVE_COLOR,
    NAN_COLOR,
    PLOT_MARGINS,
    SERIES_COLORS,
    bar_chart,
    heat_map,
    line_chart,
    save_png,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def mask_of(image: Image.Image, color) -> np.ndarray:
    return (pixels(image) == np.array(color, dtype=np.uint8)).all(axis=-1)


def bounding_box(mask: np.ndarray, min_run: int = 20) -> tuple[int, int, int, int]:
    """Of the rows and columns with at least `min_run` pixels of the mask (so anti-aliased text does not count)."""
    xs, ys = np.nonzero(mask.sum(axis=0) >= min_run)[0], np.nonzero(mask.sum(axis=1) >= min_run)[0]
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def plot_area(panel=(360, 220), index=0, columns=3):
    left, top, right, bottom = PLOT_MARGINS
    x0, y0 = (index % columns) * panel[0], (index // columns) * panel[1]
    return x0 + left, y0 + top, x0 + panel[0] - right, y0 + panel[1] - bottom


# ---- line_chart ---------------------------------------------------------------------------------------------------
def test_line_chart_grid_size():
    one = {"loss": [(0, 1.0), (10, 0.5)]}
    assert line_chart(one).size == (360, 220)
    four = {f"s{i}": [(0, 1.0), (10, 0.5)] for i in range(4)}
    assert line_chart(four).size == (3 * 360, 2 * 220)
    assert line_chart(four, panel=(200, 100), columns=2).size == (2 * 200, 2 * 100)


def test_curves_land_on_their_points():
    rising, falling = [(0, 0.0), (10, 1.0)], [(0, 1.0), (10, 0.0)]
    image = line_chart({"rising": rising, "falling": falling})
    curve = mask_of(image, CURVE_COLOR)
    # Rising: from the bottom-left to the top-right corner of the first plot area, through its center.
    left, top, right, bottom = plot_area(index=0)
    center = ((left + right) // 2, (top + bottom) // 2)
    assert curve[center[1] - 2 : center[1] + 3, center[0] - 2 : center[0] + 3].any()
    assert curve[bottom - 3 : bottom + 3, left : left + 4].any() and curve[top - 3 : top + 4, right - 4 : right + 3].any()
    assert not curve[top + 5 : top + 40, left + 5 : left + 40].any()  # nothing in the empty top-left corner
    # Falling, in the second panel: from the top-left to the bottom-right.
    left, top, right, bottom = plot_area(index=1)
    assert curve[top - 3 : top + 4, left : left + 4].any() and curve[bottom - 3 : bottom + 3, right - 4 : right + 3].any()
    assert not curve[bottom - 40 : bottom - 5, left + 5 : left + 40].any()
    # x is scaled to the series' own steps: a curve over steps 100-200 draws the same as one over 0-10.
    shifted = line_chart({"rising": [(100, 0.0), (200, 1.0)]})
    assert (mask_of(shifted, CURVE_COLOR) == curve[:, :360]).mean() > 0.999


def test_line_chart_skips_nan_and_draws_empty_series():
    clean = line_chart({"loss": [(0, 0.0), (10, 1.0)]})
    with_nan = line_chart({"loss": [(0, 0.0), (5, math.nan), (7, math.inf), (10, 1.0)]})
    assert np.array_equal(pixels(clean), pixels(with_nan))
    for empty in ({}, {"loss": []}, {"loss": [(0, math.nan), (1, math.nan)]}):
        image = line_chart(empty)
        assert image.size == (360, 220) and not mask_of(image, CURVE_COLOR).any()
    single = line_chart({"loss": [(3, 0.25)]})  # one point: a dot, no division by zero
    assert mask_of(single, CURVE_COLOR).any()


# ---- bar_chart ----------------------------------------------------------------------------------------------------
def test_bars_land_in_their_bins_at_their_heights():
    size, margin = (600, 400), 50
    image = bar_chart({"pool": [1.0, 0.0], "selected": [0.0, 0.5]}, [0.0, 1.0, 2.0], size=size, margin=margin,
                      title="t", x_label="x", y_label="share")
    assert image.size == size
    plot_w, plot_h = size[0] - 2 * margin, size[1] - 2 * margin
    bin_w = plot_w / 2
    pool, selected = mask_of(image, SERIES_COLORS[0]), mask_of(image, SERIES_COLORS[1])
    # The tallest bar (pool, bin 0, left half of the bin) reaches the top of the plot.
    x = int(margin + bin_w / 4)
    assert pool[margin + 2, x] and pool[margin + plot_h - 2, x]
    # selected, bin 1 (right half), at half the height.
    x = int(margin + bin_w + 3 * bin_w / 4)
    assert selected[int(margin + plot_h * 0.75), x] and not selected[int(margin + plot_h * 0.25), x]
    # No pool bar in bin 1, no selected bar in bin 0.
    assert not pool[margin + 5 : margin + plot_h - 5, int(margin + bin_w) + 2 :].any()
    assert not selected[margin + 5 : margin + plot_h - 5, : int(margin + bin_w) - 2].any()


def test_bar_chart_tolerates_nan_and_empty_input():
    image = bar_chart({"a": [math.nan, 1.0, math.inf]}, [0, 1, 2, 3])
    assert image.size == (900, 420) and mask_of(image, SERIES_COLORS[0]).any()
    assert bar_chart({"a": []}, [0.0]).size == (900, 420)
    assert bar_chart({}, [0.0, 1.0]).size == (900, 420)
    assert bar_chart({"a": [0.0, 0.0]}, [0, 1, 2]).size == (900, 420)  # all zero: no division by zero
    with pytest.raises(ValueError, match="2 heights for 3 bins"):
        bar_chart({"a": [1, 2]}, [0, 1, 2, 3])


# ---- heat_map -----------------------------------------------------------------------------------------------------
def test_heat_map_cells_land_in_their_rows_and_columns():
    color = (8, 48, 107)
    image = heat_map(np.array([[1.0, 0.0], [math.nan, 0.2]]), ["road", "tree"], ["road", "tree"], title="toy",
                     row_title="target", column_title="predicted", color=color)
    full, missing = bounding_box(mask_of(image, color)), bounding_box(mask_of(image, NAN_COLOR))
    full_w, full_h = full[2] - full[0], full[3] - full[1]
    assert full_w == full_h and full_w >= 50  # a square cell
    # The NaN cell is the one below the full cell: same column, the next row.
    assert missing[0] == full[0] and missing[1] == full[3] + 3
    bigger = heat_map(np.zeros((5, 5)), list("abcde"), list("abcde"))
    assert bigger.size[0] > image.size[0] and bigger.size[1] > image.size[1]


def test_heat_map_tolerates_extreme_values_and_checks_its_shape():
    image = heat_map(np.array([[math.nan, math.nan], [2.0, -1.0]]), ["a", "b"], ["c", "d"])
    assert mask_of(image, NAN_COLOR).any()
    assert heat_map(np.zeros((0, 0)), [], []).size[0] > 0
    with pytest.raises(ValueError, match="2 rows and 3 columns"):
        heat_map(np.zeros((2, 2)), ["a", "b"], ["c", "d", "e"])


def test_save_png_writes_a_complete_file(tmp_path):
    image = line_chart({"loss": [(0, 1.0), (1, 0.5)]})
    path = save_png(image, tmp_path / "plots" / "curves.png")
    assert path == tmp_path / "plots" / "curves.png"
    assert np.array_equal(pixels(Image.open(path)), pixels(image))
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # no temporary left
