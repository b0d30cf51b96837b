"""Bad input at every public entry point: the error names the problem, and nothing is written or changed.

One section per entry point, each a parametrised test over its malformed inputs. Every case checks the words of
the error (what is wrong, and where) and, for entry points that write, that the output location is untouched.
"""

from __future__ import annotations

import pytest  # noqa: F401

# ================================================================================================================
# Model, configuration and image processor
# ================================================================================================================
def _tiny_s5(tasks=("potsdam", "loveda"), **overrides):
    import torch

    from s5_hf import S5Config, S5ForSemanticSegmentation

    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=8, tasks=list(tasks), **overrides)
    return S5ForSemanticSegmentation(config).eval()


def _pixels(batch=2, height=64, width=64, fill=None):
    import torch

    pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    if fill is not None:
        pixels[0, 1, :2, :3] = fill  # six bad values in band 1 of image 0
    return pixels


def _labels(value=0, dtype=None):
    import torch

    labels = torch.zeros(2, 64, 64, dtype=dtype or torch.long)
    labels[0, 0, 0] = value
    return labels


_MODEL_CASES = {
    "wrong band count": (dict(pixel_values=lambda: _pixels()[:, :2]), r"expects 3 input bands but pixel_values has 2"),
    "NaN input": (dict(pixel_values=lambda: _pixels(fill=float("nan"))), r"6 NaN/Inf values \(band 1: 6\)"),
    "Inf input": (dict(pixel_values=lambda: _pixels(fill=float("inf"))), r"6 NaN/Inf values \(band 1: 6\)"),
    "non-integer task tensor": (dict(task=lambda: __import__("torch").tensor([1.7, 0.2])),
                                r"integer task indices, got dtype torch.float32"),
    "task index out of range": (dict(task=lambda: __import__("torch").tensor([0, 5])), r"Task index 5 is out of range"),
    "unknown task name": (dict(task=lambda: "dota"), r"Unknown task 'dota'.*potsdam, loveda"),
    "too-small input 16x16": (dict(pixel_values=lambda: _pixels(height=16, width=16)),
                              r"16x16 is too small: S5 needs at least 32x32"),
    "too-small input 16x512": (dict(pixel_values=lambda: _pixels(height=16, width=512)),
                               r"16x512 is too small: S5 needs at least 32x32"),
    "not a multiple of the patch": (dict(pixel_values=lambda: _pixels(height=40)),
                                    r"not a multiple of the patch size 16"),
    "label out of range": (dict(labels=lambda: _labels(9)), r"potsdam: label ids \[9\] are outside the 5 classes"),
    "float labels": (dict(labels=lambda: _labels(dtype=__import__("torch").float32)),
                     r"labels must be an integer tensor of class ids, got dtype torch.float32"),
    "label batch mismatch": (dict(labels=lambda: _labels()[:1]), r"Got 1 label maps for 2 images"),
}


@pytest.mark.parametrize("case", sorted(_MODEL_CASES))
def test_model_forward_refuses_bad_input(case):
    arguments, message = _MODEL_CASES[case]
    call = {"pixel_values": _pixels(), "task": "potsdam", **{k: make() for k, make in arguments.items()}}
    with pytest.raises(ValueError, match=message):
        _tiny_s5()(**call)


_CONFIG_CASES = {
    "negative part_features": (dict(part_features=-4), r"part_features must be an integer >= 0"),
    "part_features not below hidden_size": (dict(part_features=32), r"part_features must be in \(0, hidden_size=32\)"),
    "hidden_size 0": (dict(hidden_size=0), r"hidden_size must be a positive integer, got 0"),
    "image_size 0": (dict(image_size=0), r"image_size must be a positive integer, got 0"),
    "patch_size 0": (dict(patch_size=0), r"patch_size must be a positive integer, got 0"),
    "heads do not divide width": (dict(num_attention_heads=3), r"divisible by num_attention_heads \(3\)"),
    "0-based out_indices": (dict(out_indices=[0, 1, 2, 3]),
                            r"out_indices must be stage numbers in 1..4.*\[0, 1, 2, 3\]"),
    "three out_indices": (dict(out_indices=[2, 3, 4]), r"exactly four feature stages"),
    "ignore_index is a class": (dict(tasks=[{"name": "roads", "id2label": {0: "road", 1: "other"}, "ignore_index": 1}]),
                                r"Task 'roads': ignore_index 1 is the id of the class 'other'"),
    "empty tasks": (dict(tasks=[]), r"tasks is empty"),
    "tasks missing, default_task given": (dict(tasks=None, default_task="potsdam"),
                                          r"tasks was not given, so it defaults to \['isaid'\]"),
    "unknown dataset name": (dict(tasks=["potsdam", "dota"]), r"Unknown task 'dota'"),
    "duplicate tasks": (dict(tasks=["potsdam", "potsdam"]), r"Task names must be unique"),
    "drop path rate 1": (dict(drop_path_rate=1.0), r"drop_path_rate must be a probability in \[0, 1\)"),
    "layer_norm_eps 0": (dict(layer_norm_eps=0.0), r"layer_norm_eps must be positive"),
    "empty pool_scales": (dict(pool_scales=[]), r"pool_scales must be a non-empty list of positive integers"),
}


@pytest.mark.parametrize("case", sorted(_CONFIG_CASES))
def test_config_refuses_bad_fields(case):
    from s5_hf import S5Config

    fields, message = _CONFIG_CASES[case]
    base = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, out_indices=[1, 2, 3, 4],
                decoder_hidden_size=16, part_features=8, tasks=["potsdam", "loveda"])
    with pytest.raises(ValueError, match=message):
        S5Config(**{**base, **fields})


_PROCESSOR_CASES = {
    "wrong band count": (lambda np: np.zeros((4, 16, 16), dtype=np.uint8), r"Image 0 has 4 bands but this processor"),
    "NaN band values": (lambda np: np.where(np.arange(3 * 16 * 16).reshape(3, 16, 16) % 50 == 7, np.nan, 0.5)
                        .astype(np.float32),
                        r"Image 0 has \d+ NaN/Inf values \(band 0: \d+, band 1: \d+, band 2: \d+\)"),
    "Inf value": (lambda np: np.pad(np.full((3, 1, 1), np.inf, np.float32), ((0, 0), (0, 15), (0, 15))),
                  r"Image 0 has 3 NaN/Inf values \(band 0: 1, band 1: 1, band 2: 1\)"),
}


@pytest.mark.parametrize("case", sorted(_PROCESSOR_CASES))
def test_image_processor_refuses_bad_images(case):
    import numpy as np

    from s5_hf import S5ImageProcessor

    make, message = _PROCESSOR_CASES[case]
    with pytest.raises(ValueError, match=message):
        S5ImageProcessor(do_resize=False)(make(np), input_data_format="channels_first")


@pytest.mark.parametrize("change", [
    {"num_attention_heads": 4}, {"layer_norm_eps": 1e-6}, {"hidden_act": "relu"}, {"neck_layer_norm_eps": 1e-3},
    {"logits_align_corners": False},
])
def test_from_pretrained_refuses_a_configuration_that_changes_the_function(change, tmp_path):
    # Same tensor shapes, so the weights would load; the outputs would not be the saved model's.
    from s5_hf import S5ForSemanticSegmentation

    _tiny_s5().save_pretrained(tmp_path / "model")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "model").iterdir())
    (field, value), = change.items()
    with pytest.raises(ValueError, match=rf"differs from the saved one in \{{'{field}': \("):
        S5ForSemanticSegmentation.from_pretrained(tmp_path / "model", **change)
    with pytest.raises(ValueError, match=rf"'{field}'"):
        config = S5ForSemanticSegmentation.config_class.from_pretrained(tmp_path / "model", **change)
        S5ForSemanticSegmentation.from_pretrained(tmp_path / "model", config=config)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "model").iterdir()) == before


# ================================================================================================================
# Official-checkpoint converter (s5-convert-official) and s5-publish
# ================================================================================================================
def _official_golden():
    from pathlib import Path

    return Path(__file__).resolve().parent / "data" / "golden" / "official-small"  # see tests/data/README.md


def _official_checkpoint(tmp_path, edit=None, suffix=".pth"):
    """The golden (tiny) official MDF checkpoint, edited by `edit(state)`, saved as the official `.pth` layout."""
    import torch
    from safetensors.torch import load_file

    state = load_file(_official_golden() / "mdf_official_state_dict.safetensors")
    if edit:
        edit(state)
    path = tmp_path / f"official{suffix}"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def _truncated_checkpoint(tmp_path):
    path = _official_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:20_000])
    return path


def _truncated_safetensors(tmp_path):
    data = (_official_golden() / "mdf_official_state_dict.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 3])
    return path


def _wrong_shape(state):
    import torch

    state["encoder.layers.1.ffn.layers.1.weight"] = torch.zeros(48, 100)


def _unknown_key(state):
    import torch

    state["encoder.layers.0.gamma"] = torch.zeros(64)


_CONVERTER_CASES = {
    # case: (make the checkpoint, words the error must contain)
    "missing key": (lambda t: _official_checkpoint(t, lambda s: s.pop("encoder.layers.2.ffn.experts.1.bias")),
                    ["lacks 1 weights", "encoder.layers.2.ffn.experts.1.bias"]),
    "missing block": (lambda t: _official_checkpoint(t, lambda s: [s.pop(k) for k in list(s) if k.startswith(
        "encoder.layers.2.")]), ["encoder.layers.<i>", "blocks [2]"]),
    "missing last block": (lambda t: _official_checkpoint(t, lambda s: [s.pop(k) for k in list(s) if k.startswith(
        "encoder.layers.3.")]), ["3 blocks [0, 1, 2]", "out_indices"]),
    "missing pooling branches": (lambda t: _official_checkpoint(t, lambda s: [s.pop(k) for k in list(s)
                                                                             if ".psp_modules." in k]),
                                 ["no pyramid pooling branches", "psp_modules"]),
    "missing FFN weights": (lambda t: _official_checkpoint(t, lambda s: [s.pop(k) for k in list(s)
                                                                        if ".ffn.layers.0.0." in k]),
                            ["no FFN weights", "ffn.layers.0.0.weight"]),
    "truncated .pth": (_truncated_checkpoint, ["official.pth", "truncated"]),
    "truncated .safetensors": (_truncated_safetensors, ["cut.safetensors", "truncated"]),
    "unknown key": (lambda t: _official_checkpoint(t, _unknown_key), ["no place in an S5 model",
                                                                      "encoder.layers.0.gamma"]),
    "wrong shape": (lambda t: _official_checkpoint(t, _wrong_shape),
                    ["Shape mismatches", "encoder.layers.1.ffn.layers.1.weight: (48, 100), expected (48, 256)"]),
    "not a file": (lambda t: t / "absent.pth", ["No checkpoint at", "absent.pth"]),
}


@pytest.mark.parametrize("case", list(_CONVERTER_CASES))
def test_convert_official_bad_input(case, tmp_path, capsys):
    """s5-convert-official: one line `s5-convert-official: error: ...` naming the keys or file, exit status 2,
    no traceback, and no output folder."""
    from s5_hf.convert_official import main

    make, words = _CONVERTER_CASES[case]
    checkpoint = make(tmp_path)
    out = tmp_path / "converted"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), str(out), "--num-attention-heads", "2", "--out-indices", "1,2,3,4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("s5-convert-official: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_convert_official_keeps_a_foreign_output_folder(tmp_path, capsys):
    from s5_hf.convert_official import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as exit_info:
        main([str(_official_checkpoint(tmp_path)), str(out), "--num-attention-heads", "2", "--out-indices", "1,2,3,4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "notes.txt" in err and "did not write" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"


def _publish_folder(tmp_path, damage=None):
    import torch

    from s5_hf import S5ImageProcessor

    folder = tmp_path / "model"
    _tiny_s5().save_pretrained(folder)
    S5ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    if damage:
        damage(folder, torch)
    return folder


def _random_model_as_release(tmp_path, monkeypatch):
    """A random model of exactly the shape of a released one (here: the tiny golden official model converted,
    standing in for s5-vit-b-mdf), so only the weights digest can tell it is not the official checkpoint."""
    from s5_hf import S5ForSemanticSegmentation, S5ImageProcessor
    from s5_hf.hub import publish as hub_module
    from s5_hf.convert_official import convert_official_checkpoint
    from s5_hf.hub.cards import ReleasedModel

    official = convert_official_checkpoint(_official_golden() / "mdf_official_state_dict.safetensors",
                                           tmp_path / "converted", num_attention_heads=2, out_indices=[1, 2, 3, 4])

    class TinyRelease(ReleasedModel):
        def config(self):
            return official.config

    monkeypatch.setattr(hub_module, "RELEASED_MODELS", [TinyRelease("vit-b", "mdf")])
    folder = tmp_path / "random"
    S5ForSemanticSegmentation(official.config).save_pretrained(folder)
    S5ImageProcessor().save_pretrained(folder)
    return folder


_PUBLISH_CASES = {
    # case: (make the folder from (tmp_path, monkeypatch), extra arguments, repo id, words the error must contain)
    "missing folder": (lambda t, m: t / "absent", [], "local-user/s5", ["absent", "not a folder"]),
    "folder with pickles": (lambda t, m: _publish_folder(t, lambda f, torch: torch.save({}, f / "pytorch_model.bin")),
                            [], "local-user/s5", ["pickled weights", "pytorch_model.bin"]),
    "released card of another architecture": (lambda t, m: _publish_folder(t), ["--card", "s5-vit-b-mdf"],
                                              "local-user/s5", ["Card 's5-vit-b-mdf' describes",
                                                                "the folder's model is"]),
    "released card for other weights of its shape": (_random_model_as_release, ["--card", "s5-vit-b-mdf"],
                                                     "local-user/s5", ["official_conversion.json",
                                                                       "not converted official weights"]),
    "card file missing": (lambda t, m: _publish_folder(t), ["--card", "nowhere.md"], "local-user/s5",
                          ["nowhere.md", "neither a file nor a released model"]),
    "bad repo id": (lambda t, m: _publish_folder(t), [], "bad repo id!", ["Invalid Hub repo id 'bad repo id!'"]),
    "repo id with two slashes": (lambda t, m: _publish_folder(t), [], "a/b/c", ["Invalid Hub repo id 'a/b/c'"]),
    "dataset without card": (lambda t, m: _publish_folder(t), [], "local-user/data", ["no README.md"]),
}


@pytest.mark.parametrize("case", list(_PUBLISH_CASES))
def test_publish_bad_input(case, tmp_path, hub, capsys, monkeypatch):
    """s5-publish: `s5-publish: error: ...` naming the problem, exit status 1, nothing created or uploaded."""
    from s5_hf.hub.publish import main

    make, extra, repo_id, words = _PUBLISH_CASES[case]
    folder = make(tmp_path, monkeypatch)
    kind = "dataset" if case.startswith("dataset") else "model"
    capsys.readouterr()
    hub.clear_requests()
    assert main([kind, str(folder), repo_id, *extra]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.replace("\r", "\n").strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("s5-publish: error: ")
    for word in words:
        assert word in err, (word, err)
    assert hub.count("POST") == 0  # no repo created, nothing committed
    assert not list((tmp_path / "hub").rglob("repo.json"))


# ================================================================================================================
# Dataset readers, Parquet shards and RS4P
# ================================================================================================================
def _data_files(folder):
    """Every file below `folder` (hidden ones too) with its bytes; {} when the folder does not exist."""
    from pathlib import Path

    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _data_encode(array, fmt="PNG"):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _data_rows(masks, source="loveda", images=None):
    """A segmentation dataset of 8x8 rows with the given masks (arrays or encoded bytes)."""
    import datasets
    import numpy as np

    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "source": datasets.Value("string"), "id": datasets.Value("string")})
    encoded = [{"bytes": m if isinstance(m, bytes) else _data_encode(m), "path": None} for m in masks]
    images = images or [_data_encode(np.full((8, 8, 3), 7 * i, np.uint8)) for i in range(len(masks))]
    return datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "mask": encoded,
                                       "source": [source] * len(masks), "id": [f"row{i}" for i in range(len(masks))]},
                                      features=features)


@pytest.fixture(scope="module")
def rs4p_inputs(tmp_path_factory):
    """A tiny saved scoring model, a 6-image pool folder and a 5-image labeled Parquet set."""
    import numpy as np
    import torch

    from s5_hf import S5Config, S5ForSemanticSegmentation

    root = tmp_path_factory.mktemp("rs4p_bad_inputs")
    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=16,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, tasks=["isaid"])
    S5ForSemanticSegmentation(config).save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / "pool" / f"src{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "pool" / f"src{i % 2}" / f"{i}.png").write_bytes(_data_encode(rng.integers(0, 256, (32, 32, 3),
                                                                                               np.uint8)))
    import datasets

    images = [{"bytes": _data_encode(rng.integers(0, 256, (32, 32, 3), np.uint8)), "path": None} for _ in range(5)]
    datasets.Dataset.from_dict({"image": images, "source": ["isaid"] * 5},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "source": datasets.Value("string")})
                               ).to_parquet(str(root / "labeled.parquet"))
    return root


def _rs4p_arguments(inputs, output_dir, **overrides):
    from s5_hf.rs4p import SelectionArguments

    values = dict(pool=[str(inputs / "pool")], labeled=str(inputs / "labeled.parquet"), model=str(inputs / "model"),
                  output_dir=str(output_dir), target_size=4, num_clusters=2, batch_size=4, image_size=32,
                  chunk_size=4)
    return SelectionArguments(**{**values, **overrides})


def _rs4p_run(inputs, output_dir, **overrides):
    from s5_hf.rs4p import run_selection

    return lambda: run_selection(_rs4p_arguments(inputs, output_dir, **overrides))


def _case_rs4p_foreign_output_dir(tmp_path, inputs):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "selection.parquet").write_bytes(b"a file of mine with a name the run uses")
    return _rs4p_run(inputs, out), FileExistsError, r"did not write: notes\.txt, selection\.parquet", out


def _case_rs4p_foreign_dataset_folder(tmp_path, inputs):
    out = tmp_path / "run"
    (out / "dataset").mkdir(parents=True)
    (out / "dataset" / "README.md").write_text("# My dataset\n")
    return _rs4p_run(inputs, out), FileExistsError, r"run/dataset holds files that s5-hf did not write: README\.md", out


def _case_rs4p_default_sizes(tmp_path, inputs):
    # The defaults (1M images, 100 clusters) on a small pool: refused before any image is scored.
    out = tmp_path / "run"
    return (_rs4p_run(inputs, out, target_size=1_000_000, num_clusters=100), ValueError,
            r"(?s)pool holds 6 images, fewer than target_size=1000000.*labeled set holds 5 images, fewer than "
            r"num_clusters=100", out)


def _case_rs4p_bad_background(tmp_path, inputs):
    out = tmp_path / "run"
    return (_rs4p_run(inputs, out, background_id=16), ValueError, r"background_id=16 is not a class of task "
            r"'isaid' \(0\.\.15\)", out)


def _case_rs4p_image_size(tmp_path, inputs):
    out = tmp_path / "run"
    return _rs4p_run(inputs, out, image_size=40), ValueError, r"image_size=40 is not a multiple of .*patch size", out


def _case_rs4p_missing_pool(tmp_path, inputs):
    out = tmp_path / "run"
    return (_rs4p_run(inputs, out, pool=[str(tmp_path / "no_pool")]), FileNotFoundError,
            r"no_pool does not exist", out)


def _case_shards_foreign_readme(tmp_path, inputs):
    import numpy as np

    from s5_hf.data import to_parquet_shards

    out = tmp_path / "shards"
    out.mkdir()
    (out / "README.md").write_text("---\nlicense: mit\n---\n# My own card\n")
    rows = _data_rows([np.zeros((8, 8), np.uint8)])
    return lambda: to_parquet_shards(rows, out), FileExistsError, r"did not write: README\.md", out


def _case_shards_foreign_file_in_data(tmp_path, inputs):
    import numpy as np

    from s5_hf.data import to_parquet_shards

    out = tmp_path / "shards"
    rows = _data_rows([np.zeros((8, 8), np.uint8)])
    to_parquet_shards(rows, out)
    (out / "data" / "train-extra.parquet").write_bytes(b"someone else's shard")
    return (lambda: to_parquet_shards(rows, out, overwrite=True), FileExistsError,
            r"did not write: data/train-extra\.parquet", out)


def _case_shards_mask_ids_out_of_range(tmp_path, inputs):
    import numpy as np

    from s5_hf.data import to_parquet_shards

    out = tmp_path / "shards"
    rows = _data_rows([np.zeros((8, 8), np.uint8), np.full((8, 8), 9, np.uint8)])
    return (lambda: to_parquet_shards(rows, out), ValueError,
            r"Row 'row1' \(source 'loveda'\): mask ids outside the label set 'loveda'.*9 x 64", out)


def _case_shards_corrupt_mask(tmp_path, inputs):
    import numpy as np

    from s5_hf.data import to_parquet_shards

    out = tmp_path / "shards"
    rows = _data_rows([np.zeros((8, 8), np.uint8), _data_encode(np.zeros((8, 8), np.uint8))[:40]])
    return lambda: to_parquet_shards(rows, out), ValueError, r"Row 'row1': the mask cannot be decoded", out


def _openearthmap_with(tmp_path, image):
    """A fake OpenEarthMap whose first training image is replaced by `image` (bytes)."""
    from s5_hf.data import synthetic

    root = synthetic.make_fake_openearthmap(tmp_path / "oem", size=32, seed=0)
    (root / "aachen" / "images" / "aachen_1.tif").write_bytes(image)
    return root


def _read_openearthmap(root):
    from s5_hf.data import load_benchmark

    return lambda: list(load_benchmark("openearthmap", root, "train", streaming=True))


def _case_reader_four_bands(tmp_path, inputs):
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()  # RGB + near-infrared: Pillow would open it as RGB and drop a band
    Image.frombytes("RGBX", (32, 32), np.random.default_rng(0).bytes(32 * 32 * 4)).save(buffer, "TIFF")
    root = _openearthmap_with(tmp_path, buffer.getvalue())
    return (_read_openearthmap(root), ValueError, r"aachen_1\.tif: unsupported pixel format: mode 'RGB' with 4 "
            r"band\(s\)", root)


def _case_reader_16_bit(tmp_path, inputs):
    import numpy as np

    root = _openearthmap_with(tmp_path, _data_encode(np.full((32, 32), 4000, np.uint16), "TIFF"))
    return _read_openearthmap(root), ValueError, r"aachen_1\.tif: unsupported pixel format: 16-bit I;16 image", root


def _case_reader_48_bit_rgb(tmp_path, inputs):
    import struct
    import zlib

    import numpy as np

    # A 16-bit-per-band RGB PNG, which Pillow opens as 8-bit "RGB" (high bytes only: 12-bit data turns black).
    raw = b"".join(b"\0" + np.full((32, 3), 4000, ">u2").tobytes() for _ in range(32))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    root = _openearthmap_with(tmp_path, png)
    return _read_openearthmap(root), ValueError, r"aachen_1\.tif: unsupported pixel format: 16-bit RGB image", root


def _case_reader_corrupt_image(tmp_path, inputs):
    import numpy as np

    root = _openearthmap_with(tmp_path, _data_encode(np.zeros((32, 32, 3), np.uint8), "TIFF")[:100])
    return _read_openearthmap(root), ValueError, r"aachen_1\.tif: cannot decode the image", root


def _case_reader_label_out_of_range(tmp_path, inputs):
    import numpy as np

    from s5_hf.data import synthetic

    root = synthetic.make_fake_loveda(tmp_path / "loveda", num_images=2, size=32, seed=0)
    mask = next((root / "Train").rglob("masks_png/*.png"))
    mask.write_bytes(_data_encode(np.full((32, 32), 8, np.uint8)))
    from s5_hf.data import load_benchmark

    return (lambda: list(load_benchmark("loveda", root, "train", streaming=True)), ValueError,
            rf"{mask.name}.*outside 0\.\.7.*8 x 1024", root)


def _case_reader_missing_folder(tmp_path, inputs):
    from s5_hf.data import load_benchmark

    return (lambda: load_benchmark("potsdam", tmp_path / "Potsdam", "train"), FileNotFoundError,
            r"Potsdam does not exist", tmp_path)


_DATA_CASES = {name.removeprefix("_case_"): case for name, case in dict(globals()).items()
               if name.startswith("_case_") and name.removeprefix("_case_").split("_")[0] in ("rs4p", "shards",
                                                                                              "reader")}


@pytest.mark.parametrize("case", sorted(_DATA_CASES))
def test_data_and_rs4p_refuse_bad_input(case, tmp_path, rs4p_inputs):
    """The error names the problem (file, value, option) and the folder written to, or read, is unchanged."""
    call, error, words, watched = _DATA_CASES[case](tmp_path, rs4p_inputs)
    existed, before = watched.exists(), _data_files(watched)
    with pytest.raises(error, match=words):
        call()
    assert watched.exists() == existed and _data_files(watched) == before
    assert not [p for p in tmp_path.parent.glob(".*.partial")]  # no staged folder left beside it


def test_rs4p_names_why_labeled_images_failed(tmp_path, rs4p_inputs, caplog):
    """Too few labeled images scored for num_clusters: the error itself counts the reasons (and the warning
    that lists them is logged), rather than pointing at warnings elsewhere."""
    import datasets
    import numpy as np

    from s5_hf.rs4p import run_selection

    good = _data_encode(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
    features = datasets.Features({"image": datasets.Image(), "source": datasets.Value("string")})
    cells = [{"bytes": good, "path": None}] + [{"bytes": b"not an image", "path": None}] * 3
    datasets.Dataset.from_dict({"image": cells, "source": ["isaid"] * 4}, features=features).to_parquet(
        str(tmp_path / "labeled.parquet"))
    arguments = _rs4p_arguments(rs4p_inputs, tmp_path / "run", labeled=str(tmp_path / "labeled.parquet"))
    with caplog.at_level("WARNING"), pytest.raises(
            ValueError, match=r"Only 1 of 4 labeled images could be scored, fewer than num_clusters=2; the others "
                              r"failed with: 3 x 'cannot decode image: UnidentifiedImageError"):
        run_selection(arguments)
    assert "3 labeled images could not be scored" in caplog.text
    assert not (tmp_path / "run" / "dataset").exists()


def test_rs4p_skips_a_corrupt_image_in_a_pool_shard(tmp_path, rs4p_inputs):
    """The pool's policy: an image that does not decode is recorded with its reason and skipped, not fatal."""
    import datasets
    import numpy as np

    from s5_hf import S5ForSemanticSegmentation
    from s5_hf.rs4p import ChunkScorer, ScoringOptions, open_pool

    good = _data_encode(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
    features = datasets.Features({"image": datasets.Image(), "source": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [{"bytes": good, "path": None}, {"bytes": good[:60], "path": None}],
                                "source": ["star", "star"]}, features=features).to_parquet(str(tmp_path / "p.parquet"))
    pool = open_pool([str(tmp_path / "p.parquet")])
    scorer = ChunkScorer(S5ForSemanticSegmentation.from_pretrained(rs4p_inputs / "model"),
                         ScoringOptions(image_size=32, batch_size=2))
    rows = scorer.score(pool.read_chunk(pool.chunks(2)[0])).to_pylist()
    assert [r["id"] for r in rows] == ["p/0", "p/1"] and rows[0]["error"] is None
    assert rows[1]["error"].startswith("cannot decode image: ") and rows[1]["entropy"] is None




# ================================================================================================================
# Training command lines (pretrain_s4p.py, finetune_mdf.py)
# ================================================================================================================
_TRAINING_TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
                  "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16}


def _training_script(name):
    import importlib

    return importlib.import_module({"pretrain_s4p": "s5_hf.training.s4p", "finetune_mdf": "s5_hf.training.mdf"}[name])


def _training_s4p_args(inputs, out, *extra):
    import json

    return ["--labeled", f"isaid={inputs / 'isaid'}", "--labeled_options", '{"patch_size": 64, "stride": 64}',
            "--unlabeled", f"rs4p={inputs / 'rs4p'}", "--output_dir", str(out),
            "--config_overrides", json.dumps(_TRAINING_TINY), "--crop_size", "64", "--batch_size", "2",
            "--max_train_steps", "2", "--eval_steps", "0", "--checkpointing_steps", "1", "--validation_split", "",
            "--test_split", "", *extra]


def _training_mdf_args(inputs, out, *datasets_, extra=()):
    import json

    return ["--train_datasets", *datasets_, "--output_dir", str(out), "--config_overrides",
            json.dumps(_TRAINING_TINY), "--part_features", "8", "--crop_size", "64", "--batch_size", "2",
            "--max_train_steps", "1", "--eval_steps", "0", *extra]


def _training_shards(folder, masks):
    import datasets
    from PIL import Image

    from s5_hf.data import to_parquet_shards

    rows = datasets.Dataset.from_dict({
        "image": [Image.new("RGB", m.size, (90, 120, 60)) for m in masks], "mask": masks,
        "id": [f"s{i}" for i in range(len(masks))]}).cast_column("image", datasets.Image()).cast_column(
        "mask", datasets.Image())
    to_parquet_shards(rows, folder, shard_size_mb=1, validate=False)
    return folder


@pytest.fixture(scope="module")
def training_inputs(tmp_path_factory):
    """Fake iSAID and Vaihingen, an unlabeled shard folder, and a finished 2-step S4P run with checkpoints."""
    from PIL import Image

    from s5_hf.data.synthetic import make_fake_isaid, make_fake_vaihingen

    root = tmp_path_factory.mktemp("training-inputs")
    make_fake_isaid(root / "isaid", num_images=(2, 1), size=96)
    make_fake_vaihingen(root / "vaihingen")
    _training_shards(root / "rs4p", [Image.new("L", (64, 64), 0) for _ in range(4)])
    _training_script("pretrain_s4p").main(_training_s4p_args(root, root / "run"))
    return root


def _training_tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _case_training_unknown_dataset(inputs, tmp_path):
    (tmp_path / "mystery").mkdir()
    (tmp_path / "mystery" / "a.png").write_bytes(b"")
    return ("mdf", _training_mdf_args(inputs, tmp_path / "out", f"mystery={tmp_path / 'mystery'}"), ValueError,
            r"'mystery' is not a benchmark with a known layout", tmp_path / "out")


def _case_training_unknown_task_in_option(inputs, tmp_path):
    return ("mdf", _training_mdf_args(inputs, tmp_path / "out", f"vaihingen={inputs / 'vaihingen'}",
                                      extra=("--loss_weights", "loveda=2")), ValueError,
            r"--loss_weights names \['loveda'\], which are not among --train_datasets \['vaihingen'\]",
            tmp_path / "out")


def _case_training_missing_data_folder(inputs, tmp_path):
    return ("mdf", _training_mdf_args(inputs, tmp_path / "out", f"vaihingen={tmp_path / 'nowhere'}"),
            FileNotFoundError, r"Data source 'vaihingen': .*nowhere is not a folder", tmp_path / "out")


def _case_training_label_ids_out_of_range(inputs, tmp_path):
    from PIL import Image

    shards = _training_shards(tmp_path / "labels", [Image.new("L", (64, 64), 40) for _ in range(4)])
    args = _training_s4p_args(inputs, tmp_path / "out", "--labeled_options", "{}")
    args[args.index("--labeled") + 1] = f"isaid={shards}"
    return ("s4p", args, ValueError, r"sample '\w+': mask value\(s\) 40 \(\d+ px\) outside the classes 0..15",
            tmp_path / "out")


def _case_training_output_dir_of_another_run(inputs, tmp_path):
    import shutil

    shutil.copytree(inputs / "run", tmp_path / "run")
    return ("s4p", _training_s4p_args(inputs, tmp_path / "run"), FileExistsError,
            r"holds the training run \w+ of .*--resume_from_checkpoint latest.*--overwrite_output_dir",
            tmp_path / "run")


def _case_training_output_dir_of_something_else(inputs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    return ("s4p", _training_s4p_args(inputs, tmp_path / "out", "--overwrite_output_dir"), FileExistsError,
            r"not empty \(thesis.tex\) and holds no s5-hf training run", tmp_path / "out")


def _case_training_checkpoint_fails_integrity(inputs, tmp_path):
    import shutil

    shutil.copytree(inputs / "run", tmp_path / "run")
    state = tmp_path / "run" / "checkpoint-000002" / "trainer_state.json"
    state.write_text(state.read_text().replace('"step": 2', '"step": 1'))
    return ("s4p", _training_s4p_args(inputs, tmp_path / "run", "--max_train_steps", "3",
                                      "--resume_from_checkpoint", "latest"), ValueError,
            r"checkpoint-000002 fails its integrity check \(changed trainer_state.json\)", tmp_path / "run")


@pytest.mark.parametrize("case", [
    _case_training_unknown_dataset, _case_training_unknown_task_in_option, _case_training_missing_data_folder,
    _case_training_label_ids_out_of_range, _case_training_output_dir_of_another_run,
    _case_training_output_dir_of_something_else, _case_training_checkpoint_fails_integrity,
], ids=lambda case: case.__name__.removeprefix("_case_training_"))
def test_training_refuses_bad_input(case, training_inputs, tmp_path):
    script, argv, error, message, output_dir = case(training_inputs, tmp_path)
    before = _training_tree(output_dir) if output_dir.exists() else None
    with pytest.raises(error, match=message):
        _training_script({"s4p": "pretrain_s4p", "mdf": "finetune_mdf"}[script]).main(argv)
    # Nothing written or changed: the output folder is as it was (or still absent).
    assert (_training_tree(output_dir) if output_dir.exists() else None) == before


# ================================================================================================================
# s5-segment and s5-params
# ================================================================================================================
import numpy as _np  # noqa: E402  (the s5-segment section's own imports; other sections keep theirs)
from PIL import Image as _Image  # noqa: E402


@pytest.fixture(scope="module")
def segment_model_dir(tmp_path_factory):
    """A tiny saved two-head model for the s5-segment cases."""
    import torch

    from s5_hf import S5Config, S5ForSemanticSegmentation, S5ImageProcessor

    torch.manual_seed(0)
    config = S5Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                      out_indices=[1, 2, 3, 4], decoder_hidden_size=16, part_features=8,
                      tasks=["potsdam", "loveda"])
    path = tmp_path_factory.mktemp("segment_model")
    S5ForSemanticSegmentation(config).save_pretrained(path)
    S5ImageProcessor().save_pretrained(path)
    return path


def _segment_workspace(root):
    """Input scenes a user could point s5-segment at, plus one earlier mask."""
    rng = _np.random.default_rng(0)
    scenes = root / "scenes"
    scenes.mkdir()
    _Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=_np.uint8)).save(scenes / "scene.png")
    _Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=_np.uint8)).save(root / "rgba.png")
    _Image.fromarray(rng.integers(0, 255, (64, 64), dtype=_np.uint8)).save(root / "gray.png")
    _Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=_np.uint16)).save(root / "deep16.png")
    (root / "earlier_mask.png").write_bytes(b"an earlier mask")
    return scenes


# (case id, arguments after `s5-segment` with {root} and {model} filled in, exit code, words of the message)
SEGMENT_CASES = [
    ("output-is-the-input", ["{root}/scenes/scene.png", "{root}/scenes/scene.png", "--overwrite"], 2,
     r"scenes/scene\.png: is the input file"),
    ("output-is-the-input-folder", ["{root}/scenes", "{root}/scenes", "--overwrite"], 2,
     r"scenes/scene\.png: is the input file"),
    ("output-folder-of-the-input-file", ["{root}/scenes/scene.png", "{root}/scenes", "--overwrite"], 2,
     r"scene\.png: is the input file"),
    ("existing-output-without-overwrite", ["{root}/scenes/scene.png", "{root}/earlier_mask.png"], 2,
     r"earlier_mask\.png: already exists; pass --overwrite"),
    ("output-inside-the-package", ["{root}/scenes/scene.png", "{package}/mask.png"], 2,
     r"mask\.png: inside the installed package"),
    ("unknown-task", ["{root}/scenes/scene.png", "{root}/new/mask.png", "--task", "isaid"], 2,
     r"isaid.*potsdam, loveda"),
    ("four-band-scene", ["{root}/rgba.png", "{root}/new/mask.png"], 1,
     r"rgba\.png: has 4 band\(s\) but the model expects 3.*--bands 1,2,3"),
    ("one-band-scene", ["{root}/gray.png", "{root}/new/mask.png"], 1, r"gray\.png: has 1 band"),
    ("missing-band", ["{root}/rgba.png", "{root}/new/mask.png", "--bands", "1,2,7"], 1,
     r"rgba\.png: band\(s\) \[7\] do not exist"),
    ("sixteen-bit-without-rescale", ["{root}/deep16.png", "{root}/new/mask.png", "--bands", "1,1,1"], 1,
     r"deep16\.png: holds uint16 values.*--rescale_factor"),
    ("missing-input", ["{root}/nothing.png", "{root}/new/mask.png"], 2, r"nothing\.png: no such file"),
    ("folder-mode-output-is-a-file", ["{root}/scenes", "{root}/earlier_mask.png"], 2,
     r"earlier_mask\.png: is a file; folder mode"),
    ("missing-model-folder", ["{root}/scenes/scene.png", "{root}/new/mask.png", "--model", "{root}/no-model"], 2,
     r"--model .*no-model: no such folder"),
    ("folder-that-is-not-a-model", ["{root}/scenes/scene.png", "{root}/new/mask.png", "--model", "{root}/scenes"],
     2, r"--model .*scenes: cannot load an S5 model"),
]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=[case[0] for case in SEGMENT_CASES])
def test_s5_segment_refuses_bad_input(case, segment_model_dir, tmp_path, capsys, monkeypatch):
    import re

    from s5_hf import sample_data
    from s5_hf.inference import main

    _, arguments, code, message = case
    root = tmp_path / "work"
    root.mkdir()
    _segment_workspace(root)
    package = sample_data.path("SOAP_031.png").parent.parent
    monkeypatch.chdir(root)

    def snapshot(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot(root)
    # The only package files a case names (others may appear in a shared checkout while the test runs).
    package_outputs = [package / "mask.png", package / "mask_color.png"]
    assert not any(path.exists() for path in package_outputs)
    argv = [a.format(root=root, package=package) for a in arguments]
    if "--model" not in argv:
        argv += ["--model", str(segment_model_dir)]
    try:
        assert main(argv + ["--window", "64", "--no-progress"]) == code
    finally:
        written = [path for path in package_outputs if path.exists()]
        for path in written:
            path.unlink()  # a regression must not leave masks inside the package
    error = capsys.readouterr().err
    assert re.search(message, error, re.S), error
    assert snapshot(root) == before, "inputs changed or an output was written"
    assert not (root / "new").exists()  # not even the output's folder
    assert written == []


@pytest.mark.parametrize("argv,code,message", [
    (["--list-tasks"], 2, r"--model"),  # the model is what --list-tasks lists
    (["in.png", "--model", "m", "--window", "many"], 2, r"--window: invalid int value: 'many'"),
    (["in.png", "--model", "m", "--bands", "0,1,2"], 2, r"--bands takes 1-based band numbers or band descriptions"),
    (["in.png", "--model", "m", "--format", "jpeg"], 2, r"--format: invalid choice: 'jpeg'"),
], ids=["list-tasks-without-model", "window-not-a-number", "bands-not-numbers", "unknown-format"])
def test_s5_segment_rejects_bad_options(argv, code, message, tmp_path, capsys, monkeypatch):
    import re

    from s5_hf.inference import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == code and re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,message", [
    (["--preset", "vit-x"], r"--preset: invalid choice: 'vit-x'"),
    (["--bogus"], r"unrecognized arguments: --bogus"),
    (["vit-b"], r"unrecognized arguments: vit-b"),
], ids=["unknown-preset", "unknown-option", "stray-argument"])
def test_s5_params_rejects_bad_options(argv, message, capsys):
    import re

    from s5_hf.hub.params import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and re.search(message, captured.err) and "paper (M)" not in captured.out
