"""Large-scene inference: sliding windows match the model, blending, band/format handling, outputs, CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from s5_hf import S5ForSemanticSegmentation, S5ImageProcessor
from s5_hf.inference import (
    PngRowWriter,
    SceneError,
    SlidingWindow,
    hann_weights,
    iter_label_strips,
    main,
    open_scene,
    segment_file,
    segment_scene,
)
from s5_hf.data.patches import window_starts
from s5_hf.label_sets import get_label_set

try:
    import rasterio
    from rasterio.transform import from_origin
except ImportError:
    rasterio = None

TASKS = ["potsdam", "loveda"]


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    # larger weights than the default: confident, varied predictions
    config = tiny_config(part_features=8, tasks=TASKS, initializer_range=0.2)
    return S5ForSemanticSegmentation(config).eval()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    S5ImageProcessor().save_pretrained(path)
    return path


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB imagery (blocks of colour plus noise), so predictions vary across the scene."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    return np.clip(coarse + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def forward_probabilities(model, pixels: np.ndarray, task: str) -> torch.Tensor:
    """Softmax of one direct forward pass on the whole (padded) image, the way users call the model."""
    inputs = S5ImageProcessor(do_resize=False, do_pad=True)(Image.fromarray(pixels), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs, task=task).logits
    return torch.softmax(logits, dim=1)[0, :, : pixels.shape[0], : pixels.shape[1]]


@pytest.mark.parametrize("task", TASKS)
def test_one_window_equals_forward_and_argmax(model, task):
    pixels = rgb(64, 64)
    expected = forward_probabilities(model, pixels, task).argmax(0).numpy()
    np.testing.assert_array_equal(segment_scene(model, pixels, task, window=64), expected)


def test_scene_smaller_than_window_and_not_a_multiple_of_16(model):
    pixels = rgb(40, 50, seed=1)
    expected = forward_probabilities(model, pixels, "loveda").argmax(0).numpy()
    labels = segment_scene(model, pixels, "loveda", window=128)
    assert labels.shape == (40, 50)
    np.testing.assert_array_equal(labels, expected)


def test_tiled_pattern_without_overlap_repeats_the_window_prediction(model):
    tile = rgb(64, 64, seed=2)
    scene = np.tile(tile, (3, 2, 1))
    expected = np.tile(forward_probabilities(model, tile, "potsdam").argmax(0).numpy(), (3, 2))
    np.testing.assert_array_equal(segment_scene(model, scene, "potsdam", window=64, overlap=0.0), expected)


def test_half_overlap_blends_the_four_covering_windows(model):
    # A scene with period 32 seen through 64 px windows at stride 32: every window sees the same image, so an
    # interior pixel at offset (y, x) mod 32 blends the window prediction at offsets y or y+32 and x or x+32,
    # weighted by the Hann profile of the documented blending.
    tile = rgb(32, 32, seed=3)
    scene = np.tile(tile, (4, 5, 1))  # 128 x 160
    probabilities = forward_probabilities(model, np.tile(tile, (2, 2, 1)), "loveda").numpy()
    weight = np.sin(np.pi * (np.arange(64) + 0.5) / 64) ** 2
    blended = np.zeros((probabilities.shape[0], 32, 32))
    for dy in (0, 32):
        for dx in (0, 32):
            w = np.outer(weight[dy : dy + 32], weight[dx : dx + 32])
            blended += w * probabilities[:, dy : dy + 32, dx : dx + 32]
    expected = np.tile(blended.argmax(0), (4, 5))
    labels = segment_scene(model, scene, "loveda", window=64, overlap=0.5, batch_size=3)
    interior = (slice(32, 96), slice(32, 128))  # pixels covered by two windows along each axis
    assert (labels[interior] == expected[interior]).mean() > 0.999  # float summation order may flip exact ties
    # Pixels seen by a single window (the top-left corner) are exactly that window's argmax.
    np.testing.assert_array_equal(labels[:32, :32], probabilities[:, :32, :32].argmax(0))


def test_strips_equal_whole_scene_accumulation(model):
    """The bounded-memory strip loop gives the same labels as accumulating the whole scene at once."""
    pixels = rgb(150, 118, seed=4)
    window, stride = 64, 48  # overlap 0.25
    probabilities = np.zeros((5, 150, 118))
    weights = hann_weights(window, window)
    for top in window_starts(150, window, stride):
        for left in window_starts(118, window, stride):
            crop = pixels[top : top + window, left : left + window]
            predicted = forward_probabilities(model, crop, "potsdam").numpy()
            probabilities[:, top : top + window, left : left + window] += weights * predicted
    expected = probabilities.argmax(0)
    strips = list(iter_label_strips(model, open_scene(pixels), "potsdam", sliding=SlidingWindow(64, 0.25, 2)))
    tops = [top for top, _ in strips]
    ends = [top + len(block) for top, block in strips]
    assert tops[0] == 0 and ends == tops[1:] + [150]  # every row exactly once, in order
    assert max(len(block) for _, block in strips) <= window  # rows are written out as soon as they are final
    labels = np.concatenate([block for _, block in strips])
    assert labels.shape == (150, 118)
    assert (labels == expected).mean() > 0.999


def test_window_geometry():
    assert window_starts(100, 128, 96) == [0]
    assert window_starts(300, 128, 96) == [0, 96, 172]
    weights = hann_weights(4, 8)
    assert weights.shape == (4, 8) and (weights > 0).all() and weights.max() <= 1


def test_unknown_task_lists_the_valid_ones(model):
    with pytest.raises(ValueError, match="potsdam, loveda"):
        segment_scene(model, rgb(64, 64), "vaihingen", window=64)


def test_band_count_mismatch_and_selection(model, tmp_path):
    pixels = rgb(64, 64, seed=5)
    alpha = np.full((64, 64, 1), 255, dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([pixels, alpha], axis=-1)).save(path)
    with pytest.raises(SceneError, match=r"rgba\.png.*4 band.*expects 3.*--bands 1,2,3"):
        segment_scene(model, path, "loveda", window=64)
    selected = segment_scene(model, path, "loveda", window=64, bands=[1, 2, 3])
    np.testing.assert_array_equal(selected, segment_scene(model, pixels, "loveda", window=64))
    # Band order matters: the model sees the bands in the order given.
    swapped = segment_scene(model, path, "loveda", window=64, bands=[3, 2, 1])
    np.testing.assert_array_equal(swapped, segment_scene(model, pixels[..., ::-1], "loveda", window=64))
    with pytest.raises(SceneError, match=r"band\(s\) \[5\] do not exist"):
        segment_scene(model, path, "loveda", window=64, bands=[1, 2, 5])
    with pytest.raises(SceneError, match="1 band"):
        segment_scene(model, pixels[..., 0], "loveda", window=64)


def test_empty_and_corrupt_files_are_named(model, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(SceneError, match=r"empty\.png.*empty"):
        segment_scene(model, empty, "loveda")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(SceneError, match=r"corrupt\.png: cannot read"):
        segment_scene(model, corrupt, "loveda")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(rgb(64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(SceneError, match=r"truncated\.png"):
        segment_scene(model, truncated, "loveda")


def test_sixteen_bit_imagery_needs_a_rescale_factor(model):
    pixels16 = rgb(64, 64, seed=6).astype(np.uint16) * 257
    with pytest.raises(SceneError, match="uint16.*rescale_factor"):
        segment_scene(model, pixels16, "loveda", window=64)
    scaled = segment_scene(model, pixels16, "loveda", window=64, rescale_factor=1 / 65535)
    np.testing.assert_array_equal(scaled, segment_scene(model, rgb(64, 64, seed=6), "loveda", window=64))


def test_bad_settings(model):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        segment_scene(model, rgb(64, 64), "loveda", window=50)
    with pytest.raises(ValueError, match="overlap"):
        segment_scene(model, rgb(64, 64), "loveda", overlap=1.0)


def test_png_and_tiff_outputs_hold_the_labels(model, tmp_path):
    pixels = rgb(100, 90, seed=7)
    source = tmp_path / "scene.jpg"
    Image.fromarray(pixels).save(source, quality=95)
    expected = segment_scene(model, source, "potsdam", window=64)
    result = segment_file(model, source, tmp_path / "out" / "mask.png", "potsdam", color=tmp_path / "out" / "color.png",
                          window=64, progress=False)
    with Image.open(result.mask) as mask:
        assert mask.mode == "P"
        np.testing.assert_array_equal(np.asarray(mask), expected)
        assert mask.getpalette()[:15] == [c for color in get_label_set("potsdam").palette for c in color]
    with Image.open(result.color) as color:
        assert color.width > 90 and color.height >= 100
        blended = np.asarray(color.convert("RGB"))[:100, :90]
        assert not np.array_equal(blended, pixels)  # the mask is drawn over the scene
    assert sum(result.class_counts.values()) == 100 * 90
    tiff = segment_file(model, source, tmp_path / "mask.tif", "potsdam", window=64, progress=False)
    with Image.open(tiff.mask) as mask:
        np.testing.assert_array_equal(np.asarray(mask), expected)
    assert sorted(p.name for p in tmp_path.rglob(".*partial")) == []


def test_png_writer_leaves_nothing_when_incomplete(tmp_path):
    writer = PngRowWriter(tmp_path / "mask.png", 8, 4, palette=np.zeros((2, 3), dtype=np.uint8))
    writer.write(np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="2 of 4 rows"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(rasterio is None, reason="rasterio (extra `geo`) not installed")
def test_geotiff_keeps_crs_and_transform_and_nodata(model, tmp_path):
    pixels = rgb(96, 80, seed=8).transpose(2, 0, 1).copy()
    pixels[:, :4, :4] = 0  # declared nodata below
    source = tmp_path / "scene.tif"
    transform = from_origin(404211.9, 3285142.9, 0.1, 0.1)
    with rasterio.open(source, "w", driver="GTiff", width=80, height=96, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=transform, nodata=0) as dst:
        dst.write(pixels)
    result = segment_file(model, source, tmp_path / "mask.tif", "loveda", window=64, progress=False)
    with rasterio.open(result.mask) as mask:
        assert mask.crs.to_epsg() == 32617 and mask.transform == transform
        labels = mask.read(1)
        assert mask.colormap(1)[1][:3] == get_label_set("loveda").palette[1]
    assert (labels[:4, :4] == 255).all()
    expected = segment_scene(model, pixels.transpose(1, 2, 0), "loveda", window=64)
    np.testing.assert_array_equal(labels[4:], expected[4:])


def test_cli_folder_mode_reports_failures_and_continues(model_dir, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    Image.fromarray(rgb(70, 64, seed=9)).save(scenes / "a.png")
    Image.fromarray(rgb(64, 80, seed=10)).save(scenes / "b.jpg")
    (scenes / "empty.png").write_bytes(b"")
    (scenes / "broken.tif").write_bytes(b"II*\x00garbage")
    (scenes / "notes.txt").write_text("not an image")
    out = tmp_path / "masks"
    code = main([str(scenes), str(out), "--model", str(model_dir), "--task", "loveda", "--window", "64",
                 "--color", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 scene(s) written" in captured.out and "2 failed" in captured.out
    assert "empty.png" in captured.err and "broken.tif" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_color.png", "b.png", "b_color.png"]
    with Image.open(out / "a.png") as mask:
        assert mask.size == (64, 70)


def test_cli_single_file_and_unknown_task(model_dir, tmp_path, capsys, monkeypatch):
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 64, seed=11)).save(source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main([str(source), "--model", str(model_dir), "--task", "isaid", "--no-progress"]) == 2
    assert "potsdam, loveda" in capsys.readouterr().err
    assert main([str(source), "--model", str(model_dir), "--no-progress", "--window", "64"]) == 0
    assert (elsewhere / "scene_mask.png").is_file()  # the default output goes to the current folder
    assert main([str(source), "--model", str(model_dir), "--list-tasks"]) == 0
    assert "loveda: background, building" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------
# Where s5-segment writes: never over an input, an existing file (without --overwrite) or the installed package
# ------------------------------------------------------------------------------------------------------------
def snapshot(folder):
    """{relative path: bytes} of every file under `folder`, to prove a refused run changed nothing."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(model_dir, *args, window=64):
    return main([*map(str, args), "--model", str(model_dir), "--window", str(window), "--no-progress"])


def test_cli_refuses_to_write_the_mask_over_the_input_file(model_dir, tmp_path, capsys):
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 64, seed=12)).save(source)
    before = snapshot(tmp_path)
    for output in (source, tmp_path, tmp_path / "." / "scene.png"):  # the file itself, or its own folder
        assert cli(model_dir, source, output, "--overwrite") == 2
        assert f"{source}" in capsys.readouterr().err
    link = tmp_path / "link.png"
    link.symlink_to(source)
    assert cli(model_dir, source, link, "--overwrite") == 2  # a symlink to the input
    assert "scene.png" in capsys.readouterr().err
    hard = tmp_path / "hard.png"
    os.link(source, hard)
    assert cli(model_dir, source, hard, "--overwrite") == 2  # a hard link: the same bytes on disk
    assert "hard.png" in capsys.readouterr().err
    hard.unlink()
    # --color writes <mask stem>_color.png: refused too when that is the input
    assert cli(model_dir, source, tmp_path / "scene_color_mask.png", "--color", "--overwrite") == 0
    capsys.readouterr()
    painted = tmp_path / "x.png"
    Image.fromarray(rgb(64, 64, seed=13)).save(painted)
    color_input = tmp_path / "x_color.png"
    Image.fromarray(rgb(64, 64, seed=14)).save(color_input)
    kept = color_input.read_bytes()
    assert cli(model_dir, color_input, tmp_path / "x.tif", "--color", "--overwrite") == 2
    assert "x_color.png" in capsys.readouterr().err
    assert color_input.read_bytes() == kept and not (tmp_path / "x.tif").exists()
    link.unlink()
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data


def test_cli_folder_mode_refuses_outputs_that_are_inputs(model_dir, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    Image.fromarray(rgb(64, 64, seed=15)).save(scenes / "a.png")
    Image.fromarray(rgb(64, 64, seed=16)).save(scenes / "b.tif")
    before = snapshot(tmp_path)
    assert cli(model_dir, scenes, scenes, "--overwrite") == 2  # same folder: a.png -> a.png
    assert "a.png" in capsys.readouterr().err
    alias = tmp_path / "alias"
    alias.symlink_to(scenes, target_is_directory=True)
    assert cli(model_dir, scenes, alias, "--overwrite") == 2  # the same folder through a symlink
    assert "a.png" in capsys.readouterr().err
    assert cli(model_dir, scenes, scenes, "--format", "tif", "--overwrite") == 2  # a.png -> a.tif, b.tif -> b.tif
    assert "b.tif" in capsys.readouterr().err
    alias.unlink()
    assert snapshot(tmp_path) == before


def test_cli_never_overwrites_an_existing_output_without_the_flag(model_dir, tmp_path, capsys):
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 64, seed=17)).save(source)
    existing = tmp_path / "mask.png"
    existing.write_bytes(b"precious")
    assert cli(model_dir, source, existing) == 2
    assert f"{existing}" in capsys.readouterr().err and existing.read_bytes() == b"precious"
    assert cli(model_dir, source, existing, "--overwrite") == 0
    with Image.open(existing) as mask:
        assert mask.size == (64, 64)
    # Folder mode checks every output before writing any.
    scenes, masks = tmp_path / "scenes", tmp_path / "masks"
    scenes.mkdir()
    masks.mkdir()
    Image.fromarray(rgb(64, 64, seed=18)).save(scenes / "a.png")
    Image.fromarray(rgb(64, 64, seed=19)).save(scenes / "b.png")
    (masks / "b.png").write_bytes(b"older mask")
    assert cli(model_dir, scenes, masks) == 2
    err = capsys.readouterr().err
    assert "b.png" in err and "--overwrite" in err
    assert sorted(p.name for p in masks.iterdir()) == ["b.png"] and (masks / "b.png").read_bytes() == b"older mask"
    assert cli(model_dir, scenes, masks, "--overwrite") == 0
    assert sorted(p.name for p in masks.iterdir()) == ["a.png", "b.png"]


def test_segment_file_refuses_its_own_input(model, tmp_path):
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 64, seed=20)).save(source)
    kept = source.read_bytes()
    with pytest.raises(ValueError, match=r"scene\.png.*input"):
        segment_file(model, source, source, "loveda", window=64, progress=False, overwrite=True)
    with pytest.raises(ValueError, match=r"mask\.png.*exists.*overwrite"):
        (tmp_path / "mask.png").write_bytes(b"x")
        segment_file(model, source, tmp_path / "mask.png", "loveda", window=64, progress=False)
    assert source.read_bytes() == kept and (tmp_path / "mask.png").read_bytes() == b"x"


def test_cli_default_output_goes_to_the_current_folder_never_into_the_package(model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    from s5_hf import sample_data

    sample = sample_data.path("SOAP_031.png")
    package = sample.parent
    kept = sample.read_bytes()
    # The only package files these runs could write (others may appear in a shared checkout meanwhile).
    candidates = [package / "SOAP_031_mask.png", package / "mask.png"]
    assert not any(path.exists() for path in candidates)
    try:
        monkeypatch.chdir(tmp_path)
        assert cli(model_dir, sample, window=400) == 0  # the 400 px sample in one window
        assert (tmp_path / "SOAP_031_mask.png").is_file()
        # An explicit output inside the installed package is refused, naming it.
        monkeypatch.chdir(package)
        assert cli(model_dir, sample, package / "mask.png") == 2
        assert "mask.png" in capsys.readouterr().err
        assert cli(model_dir, sample) == 2  # the default (current folder) is inside the package here
    finally:
        written = [path for path in candidates if path.exists()]
        for path in written:
            path.unlink()  # a failing run must not leave masks inside the package
    assert written == [] and sample.read_bytes() == kept


def test_cli_list_tasks_needs_no_input_and_flags_have_snake_case_aliases(model_dir, tmp_path, capsys):
    assert main(["--list-tasks", "--model", str(model_dir)]) == 0
    assert "potsdam: " in capsys.readouterr().out
    assert main(["--list_tasks", "--model", str(model_dir)]) == 0
    assert "loveda: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(model_dir)])
    assert exit_.value.code == 2 and "input" in capsys.readouterr().err
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 64, seed=21)).save(source)
    assert main([str(source), str(tmp_path / "m.png"), "--model", str(model_dir), "--batch_size", "2",
                 "--no_progress", "--window", "64", "--rescale_factor", "1/255"]) == 0


class RecordingModel(torch.nn.Module):
    """Passes every call to `model` and keeps each window's logits, in the order the predictor sent them."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.windows, self.batches = model, model.config, [], []
        self.train(model.training)  # the predictor restores the wrapper's mode, and with it the model's

    def forward(self, pixel_values, task=None):
        output = self.model(pixel_values, task=task)
        self.batches.append(pixel_values.shape[0])
        self.windows.extend(output.logits.float())
        return output


def test_batched_windows_equal_one_window_at_a_time(model):
    """Batching windows (also across window rows) changes neither the windows' logits nor the labels."""
    pixels = rgb(200, 150, seed=5)  # 4 window rows x 3 windows of 64 px at overlap 0.25
    runs = {}
    for batch_size in (1, 2, 5, 64):
        recorder = RecordingModel(model)
        strips = list(iter_label_strips(recorder, open_scene(pixels), "potsdam",
                                        sliding=SlidingWindow(64, 0.25, batch_size)))
        tops = [top for top, _ in strips]
        ends = [top + len(block) for top, block in strips]
        assert tops[0] == 0 and ends == tops[1:] + [200]  # every row exactly once, in order
        runs[batch_size] = (np.concatenate([block for _, block in strips]), torch.stack(recorder.windows))
        assert recorder.batches == [min(batch_size, 12 - i) for i in range(0, 12, batch_size)]  # full batches
    labels, logits = runs[1]
    assert logits.shape[0] == 12
    # The backbone is bit-identical; oneDNN may pick another convolution kernel for the decoder at another batch
    # size, so the logits agree to float rounding: within 1e-6 of their magnitude (this fixture's reach ~170).
    scale = float(logits.abs().max())
    for batch_size in (2, 5, 64):
        torch.testing.assert_close(runs[batch_size][1], logits, atol=1e-6 * scale, rtol=0)
        np.testing.assert_array_equal(runs[batch_size][0], labels)


def test_compiled_forward_agrees_with_eager_and_has_no_graph_break(model):
    """`--torch-compile`: the captured graph (fullgraph=True: no graph break, no fallback to Python) computes the
    eager logits. The aot_eager backend checks the capture in seconds; inductor's code generation (the default
    backend, which the CLI uses) takes about two minutes of C++ compilation even for this tiny model on 2 cores,
    so its effect is measured in benchmarks/bench_inference.py --compare_compile instead."""
    from s5_hf.inference import CompiledSegmenter

    compiled = CompiledSegmenter(model, backend="aot_eager", fullgraph=True)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for task in TASKS:
            eager = model(pixels, task=task).logits
            # Decomposed ops round differently: within 1e-5 of the logits' magnitude (this fixture's reach ~190;
            # measured differences up to 1.2e-6 of it, a wrong graph differs by its whole size).
            torch.testing.assert_close(compiled(pixels, task=task).logits, eager,
                                       atol=1e-5 * float(eager.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="NaN/Inf"):  # the input checks still run (eagerly, before the graph)
        compiled(torch.full((1, 3, 64, 64), float("nan")), task="loveda")
    labels = segment_scene(compiled, rgb(100, 90, seed=2), "potsdam", window=64, batch_size=2)
    np.testing.assert_array_equal(labels, segment_scene(model, rgb(100, 90, seed=2), "potsdam", window=64,
                                                        batch_size=2))


def test_cli_torch_compile_flag_wraps_the_model(model_dir, tmp_path, monkeypatch):
    import s5_hf.inference.cli as inference

    wrapped = []

    def recording(model, **options):  # what compiles is tested above; here: the flag wraps the loaded model
        wrapped.append(model)
        return model

    monkeypatch.setattr(inference, "CompiledSegmenter", recording)
    source = tmp_path / "scene.png"
    Image.fromarray(rgb(64, 80)).save(source)
    assert main([str(source), str(tmp_path / "m.png"), "--model", str(model_dir), "--torch_compile",
                 "--no-progress"]) == 0
    assert len(wrapped) == 1 and (tmp_path / "m.png").exists()
