"""Official checkpoints: conversion reproduces the official implementation's logits (golden vectors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf import convert_official
from s5_hf.convert_official import (
    ConversionError,
    _official_name,
    _rename,
    convert_official_checkpoint,
    convert_official_state_dict,
    from_official,
    load_official_state_dict,
    main,
    read_conversion_record,
    tensors_sha256,
    weights_sha256,
)
from s5_hf.label_sets import MDF_TASKS

_TESTS = Path(__file__).resolve().parent
# The official implementation's test vectors and key lists, kept in the repository (tests/data/README.md).
GOLDEN = _TESTS / "data" / "golden" / "official-small"
SPEC = _TESTS / "data" / "spec"


def golden_config() -> dict:
    return json.loads((GOLDEN / "config.json").read_text())


def small_kwargs() -> dict:
    config = golden_config()
    return {"num_attention_heads": config["num_heads"], "out_indices": [i + 1 for i in config["out_indices"]]}


def converted_model(kind: str) -> S5ForSemanticSegmentation:
    state = load_file(GOLDEN / f"{kind}_official_state_dict.safetensors")
    config, weights = convert_official_state_dict(state, **small_kwargs())
    model = S5ForSemanticSegmentation(config)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def test_s4p_reproduces_official_logits():
    model = converted_model("s4p")
    io = load_file(GOLDEN / "s4p_io.safetensors")
    assert model.config.task_names == ["isaid"]
    with torch.no_grad():
        logits = model(io["pixel_values"]).logits
    assert logits.shape == io["logits"].shape
    assert (logits - io["logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("task", MDF_TASKS)
def test_mdf_reproduces_official_logits_per_task(task):
    model = converted_model("mdf")
    io = load_file(GOLDEN / "mdf_io.safetensors")
    with torch.no_grad():
        logits = model(io["pixel_values"], task=task).logits
    reference = io[f"logits_{task}"]
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max().item() <= 1e-4


def test_mdf_mixed_batch_reproduces_official_logits():
    model = converted_model("mdf")
    io = load_file(GOLDEN / "mdf_io.safetensors")
    batch = io["pixel_values"].repeat(4, 1, 1, 1)
    with torch.no_grad():
        logits = model(batch, task=list(MDF_TASKS)).logits
    for row, task in enumerate(MDF_TASKS):
        reference = io[f"logits_{task}"][0]
        assert (logits[row, : reference.shape[0]] - reference).abs().max().item() <= 1e-4


def test_s4p_conversion_starts_every_mdf_expert_at_the_official_s4p_function():
    # Spec 1.2: converted S4P checkpoint -> MoE-MDF model whose experts are the tail rows of the pretrained fc2.
    s4p = converted_model("s4p")
    config = golden_config()
    mdf_config = S5Config(**{k: getattr(s4p.config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "out_indices",
        "decoder_hidden_size", "pool_scales")}, tasks=config["tasks"], part_features=config["part_features"])
    mdf = S5ForSemanticSegmentation.from_single_task(s4p, mdf_config).eval()
    split = config["hidden_size"] - config["part_features"]
    fc2 = s4p.s5.encoder.layer[0].mlp.fc2
    for expert in mdf.s5.encoder.layer[0].mlp.experts:
        assert torch.equal(expert.weight, fc2.weight[split:]) and torch.equal(expert.bias, fc2.bias[split:])
    io = load_file(GOLDEN / "s4p_io.safetensors")
    with torch.no_grad():
        reference = s4p.decoders[0](s4p.s5(io["pixel_values"]).feature_maps)
        for task in config["tasks"]:
            decoded = mdf.decoders[mdf.config.task_index(task)](mdf.s5(io["pixel_values"], task=task).feature_maps)
            torch.testing.assert_close(decoded, reference, atol=1e-5, rtol=1e-5)


def _official_layout(name: str) -> dict[str, torch.Tensor]:
    """The full-size ViT-B official key layout (spec files) as meta tensors: shapes only, no memory."""
    state = {}
    for line in (SPEC / f"official_keys_vit_b_{name}.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            state[key] = torch.empty(tuple(int(x) for x in re.findall(r"\d+", shape)), device="meta")
    return state


@pytest.mark.parametrize("name,tasks,part_features", [
    ("s4p", ["isaid"], 0),
    ("moe_mdf", list(MDF_TASKS), 256),
])
def test_full_size_official_key_layouts_convert_to_the_vit_b_preset(name, tasks, part_features):
    config, weights = convert_official_state_dict(_official_layout(name))  # nothing passed: all inferred
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.out_indices == [4, 6, 8, 12] and config.image_size == 512 and config.pool_scales == [1, 2, 3, 6]
    assert config.task_names == tasks and config.part_features == part_features
    with torch.device("meta"):
        model = S5ForSemanticSegmentation(config)
    assert set(weights) == set(model.state_dict())
    expected = {"s4p": 103_157_264, "moe_mdf": 160_400_410}[name]  # = the official totals minus unused keys
    assert sum(p.numel() for p in model.parameters()) == expected


def test_inferred_config_matches_the_official_small_config():
    config = golden_config()
    model = converted_model("mdf")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.image_size, c.decoder_hidden_size, c.part_features) == (
        config["hidden_size"], config["num_layers"], config["image_size"], config["decoder_channels"],
        config["part_features"])
    assert c.task_names == config["tasks"]
    assert [t.num_labels for t in c.tasks] == [config["num_classes"][t] for t in config["tasks"]]


def test_cli_writes_a_loadable_folder_from_a_wrapped_pth(tmp_path):
    state = load_file(GOLDEN / "s4p_official_state_dict.safetensors")
    checkpoint = tmp_path / "s4p.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, checkpoint)
    out = tmp_path / "converted"
    main([str(checkpoint), str(out), "--num-attention-heads", "2", "--out-indices", "1,2,3,4"])
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "preprocessor_config.json").is_file()
    model = S5ForSemanticSegmentation.from_pretrained(out).eval()
    io = load_file(GOLDEN / "s4p_io.safetensors")
    with torch.no_grad():
        assert (model(io["pixel_values"]).logits - io["logits"]).abs().max().item() <= 1e-4


def test_loader_unwraps_state_dict_key(tmp_path):
    state = {"encoder.pos_embed": torch.zeros(1, 4, 8)}
    torch.save({"state_dict": state}, tmp_path / "x.pth")
    assert set(load_official_state_dict(tmp_path / "x.pth")) == {"encoder.pos_embed"}


def test_unknown_key_is_refused():
    state = load_file(GOLDEN / "s4p_official_state_dict.safetensors")
    state["encoder.layers.0.gamma"] = torch.zeros(64)
    with pytest.raises(ConversionError, match="encoder.layers.0.gamma"):
        convert_official_state_dict(state, **small_kwargs())


def test_missing_key_is_refused():
    state = load_file(GOLDEN / "mdf_official_state_dict.safetensors")
    del state["encoder.layers.2.ffn.experts.1.bias"]
    with pytest.raises(ConversionError, match=r"s5\.encoder\.layer\.2\.mlp\.experts\.1\.bias"):
        convert_official_state_dict(state, **small_kwargs())


def test_head_with_wrong_class_count_is_refused():
    state = load_file(GOLDEN / "mdf_official_state_dict.safetensors")
    state["semseghead_potsdam.1.weight"] = torch.zeros(6, 32, 1, 1)
    state["semseghead_potsdam.1.bias"] = torch.zeros(6)
    with pytest.raises(ConversionError, match="semseghead_potsdam predicts 6 classes but potsdam has 5"):
        convert_official_state_dict(state, **small_kwargs())


def test_non_preset_width_needs_the_head_count():
    state = load_file(GOLDEN / "s4p_official_state_dict.safetensors")
    with pytest.raises(ConversionError, match="num_attention_heads"):
        convert_official_state_dict(state)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_official_state_dict(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ConversionError, match="junk.pth"):
        load_official_state_dict(tmp_path / "junk.pth")


# ----------------------------------------------------------------------------------------------------------------
# Incomplete or damaged checkpoints: errors name the missing keys or the file; the CLI prints one line
# ----------------------------------------------------------------------------------------------------------------
def golden_state(kind: str) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / f"{kind}_official_state_dict.safetensors")


@pytest.mark.parametrize("kind", ["s4p", "mdf"])
def test_missing_weights_are_named_by_their_official_keys(kind):
    # _official_name inverts _rename for every key of both official layouts.
    config, _ = convert_official_state_dict(golden_state(kind), **small_kwargs())
    if kind == "s4p":
        decoders, heads = {"semsegdecoder": 0}, {"semseghead": 0}
    else:
        decoders = {("semsegdecoder" if t == "vaihingen" else f"semsegdecoder_{convert_official._official_suffix(t)}"): i
                    for i, t in enumerate(config.task_names)}
        heads = {f"semseghead_{convert_official._official_suffix(t)}": i for i, t in enumerate(config.task_names)}
    for key in golden_state(kind):
        new = _rename(key, decoders, heads)
        if new is not None:
            assert _official_name(new, decoders, heads) == key


@pytest.mark.parametrize("kind,drop,expected", [
    # Formerly "max() arg is an empty sequence".
    ("s4p", r"encoder\.layers\.", "no transformer blocks"),
    ("mdf", r"encoder\.layers\.2\.", r"lacks every key of blocks \[2\]"),
    ("s4p", r"semsegdecoder\.decode_head\.psp_modules\.", "no pyramid pooling branches"),
    ("mdf", r"semsegdecoder\w*\.decode_head\.psp_modules\.3\.", "pooling branches \\[0, 1, 2\\]"),
    # Formerly a bare KeyError.
    ("s4p", r"encoder\.layers\.0\.ffn\.layers\.0\.0\.weight$", r"lacks 1 weights.*'encoder\.layers\.0\.ffn\.layers\.0\.0\.weight'"),
    ("mdf", r"encoder\.layers\.\d\.ffn\.layers\.0\.0\.", "no FFN weights"),
    ("s4p", r"semsegdecoder\.decode_head\.bottleneck\.conv\.weight$", r"'semsegdecoder\.decode_head\.bottleneck\.conv\.weight'"),
    ("mdf", r"encoder\.layers\.1\.attn\.attn\.in_proj_bias$", r"'encoder\.layers\.1\.attn\.attn\.in_proj_bias'"),
    ("s4p", r"encoder\.pos_embed$", "lacks 'encoder.pos_embed'"),
    ("mdf", r"semseghead_loveda\.1\.weight$", r"'semseghead_loveda\.1\.weight'"),
])
def test_incomplete_checkpoints_name_what_is_missing(kind, drop, expected):
    state = {k: v for k, v in golden_state(kind).items() if not re.match(drop, k)}
    with pytest.raises(ConversionError, match=expected):
        convert_official_state_dict(state, **small_kwargs())


def test_wrong_shapes_are_named():
    state = golden_state("mdf")
    state["encoder.layers.1.ffn.layers.1.weight"] = torch.zeros(48, 100)
    state["encoder.layers.3.attn.attn.in_proj_weight"] = torch.zeros(191, 64)
    with pytest.raises(ConversionError, match=r"Shape mismatches.*in_proj_weight: \(191, 64\).*") as error:
        convert_official_state_dict(state, **small_kwargs())
    assert "encoder.layers.1.ffn.layers.1.weight: (48, 100), expected (48, 256)" in str(error.value)
    state = golden_state("s4p")
    state["encoder.pos_embed"] = torch.zeros(64, 64)
    with pytest.raises(ConversionError, match=r"encoder.pos_embed has shape \(64, 64\)"):
        convert_official_state_dict(state, **small_kwargs())


def test_truncated_safetensors_file_is_named(tmp_path):
    data = (GOLDEN / "s4p_official_state_dict.safetensors").read_bytes()
    truncated = tmp_path / "s4p_truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="s4p_truncated.safetensors"):
        load_official_state_dict(truncated)


def cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("s5-convert-official: error: ") and err.count("\n") == 1, err  # one line
    assert "Traceback" not in err
    return err


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    state = golden_state("mdf")
    del state["encoder.layers.2.ffn.experts.1.bias"]
    broken = tmp_path / "broken.pth"
    torch.save({"model": state}, broken)
    out = tmp_path / "out"
    assert "encoder.layers.2.ffn.experts.1.bias" in cli_error([str(broken), str(out)] + _cli_kwargs(), capsys)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(broken.read_bytes()[:5000])
    assert "cut.pth" in cli_error([str(truncated), str(out)] + _cli_kwargs(), capsys)
    assert "missing.pth" in cli_error([str(tmp_path / "missing.pth"), str(out)], capsys)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["broken.pth", "cut.pth"]


def _cli_kwargs() -> list[str]:
    return ["--num-attention-heads", "2", "--out-indices", "1,2,3,4"]


def test_conversion_record_holds_the_weights_digest(tmp_path):
    out = tmp_path / "converted"
    model = convert_official_checkpoint(GOLDEN / "mdf_official_state_dict.safetensors", out, **small_kwargs())
    record = read_conversion_record(out)
    assert record["weights_sha256"] == weights_sha256(out) == tensors_sha256(model.state_dict())
    assert record["source"] == {"file": "mdf_official_state_dict.safetensors"} and record["tasks"] == list(MDF_TASKS)
    # One changed value changes the digest.
    state = model.state_dict()
    state["classifiers.0.1.bias"] = state["classifiers.0.1.bias"] + 1e-6
    assert tensors_sha256(state) != record["weights_sha256"]
    # Converting again replaces the folder; a folder holding anyone else's files is refused, untouched.
    convert_official_checkpoint(GOLDEN / "s4p_official_state_dict.safetensors", out, **small_kwargs())
    assert read_conversion_record(out)["tasks"] == ["isaid"]
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConversionError, match=r"notes\.txt"):
        convert_official_checkpoint(GOLDEN / "mdf_official_state_dict.safetensors", out, **small_kwargs())
    assert sorted(p.name for p in out.iterdir()) == before and read_conversion_record(out)["tasks"] == ["isaid"]


# ----------------------------------------------------------------------------------------------------------------
# from_official: download from a Hub repo, convert, cache (against the loopback Hub)
# ----------------------------------------------------------------------------------------------------------------
def test_from_official_downloads_converts_and_caches(hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("lianglyu/S5")
    state = golden_state("mdf")
    checkpoint = tmp_path / "s5_small_mdf.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 100}, checkpoint)
    commit = api.upload_file(path_or_fileobj=str(checkpoint), path_in_repo="s5_small_mdf.pth",
                             repo_id="lianglyu/S5").oid

    conversions = []
    original = convert_official.convert_official_checkpoint
    monkeypatch.setattr(convert_official, "convert_official_checkpoint",
                        lambda *a, **k: conversions.append(a) or original(*a, **k))
    hub.clear_requests()
    model = from_official("lianglyu/S5", "s5_small_mdf.pth", **small_kwargs())
    assert len(conversions) == 1 and hub.count("GET", "/resolve/") == 1
    io = load_file(GOLDEN / "mdf_io.safetensors")
    with torch.no_grad():
        for task in MDF_TASKS:
            logits = model(io["pixel_values"], task=task).logits
            assert (logits - io[f"logits_{task}"]).abs().max().item() <= 1e-4
    folder = convert_official.converted_cache_folder("lianglyu/S5", "s5_small_mdf.pth", commit, **{
        "num_attention_heads": 2, "out_indices": [1, 2, 3, 4]})
    assert read_conversion_record(folder)["source"] == {"repo_id": "lianglyu/S5", "filename": "s5_small_mdf.pth",
                                                        "commit": commit}

    # Second call: the cached conversion, without converting or downloading the checkpoint again.
    hub.clear_requests()
    again = from_official("lianglyu/S5", "s5_small_mdf.pth", **small_kwargs())
    assert len(conversions) == 1 and hub.count("GET", "/resolve/") == 0  # (a HEAD resolves the commit)
    from_official("lianglyu/S5", "s5_small_mdf.pth", revision=commit, **small_kwargs())
    assert len(conversions) == 1 and hub.count("GET", "/resolve/") == 0
    with torch.no_grad():
        torch.testing.assert_close(again(io["pixel_values"], task="loveda").logits,
                                   model(io["pixel_values"], task="loveda").logits, rtol=0, atol=0)

    # The command line: the same download into a folder of the user's choice.
    out = tmp_path / "cli"
    main(["--repo-id", "lianglyu/S5", "--filename", "s5_small_mdf.pth", str(out), *_cli_kwargs()])
    assert read_conversion_record(out)["weights_sha256"] == read_conversion_record(folder)["weights_sha256"]
    capsys.readouterr()  # progress bars so far
    assert "missing.pth" in cli_error(["--repo-id", "lianglyu/S5", "--filename", "missing.pth",
                                       str(tmp_path / "none")], capsys)
    assert not (tmp_path / "none").exists()


def test_cli_flags_are_snake_case_and_the_kebab_case_spelling_still_parses(capsys):
    from s5_hf.convert_official import build_parser

    snake = ["--repo_id", "o/r", "--filename", "f.pth", "--num_attention_heads", "2", "--out_indices", "1,2,3,4",
             "--pool_scales", "1,2", "--trust_pickle", "out"]
    kebab = [flag.replace("_", "-") if flag.startswith("--") else flag for flag in snake]
    parsed = vars(build_parser().parse_args(snake))
    assert parsed == vars(build_parser().parse_args(kebab))
    assert parsed["out_indices"] == [1, 2, 3, 4] and parsed["trust_pickle"] is True
    defaults = vars(build_parser().parse_args(["ckpt.pth", "out"]))
    assert defaults["trust_pickle"] is False and defaults["num_attention_heads"] is None
    help_text = build_parser().format_help()
    assert "--num_attention_heads" in help_text and "--num-attention-heads" not in help_text
