"""`s5_hf.training.arguments`: the typed options of the training programs, the run files of `configs/` (the paper's
runs and the accelerate launch configurations), and a run read from a YAML file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from s5_hf.training.arguments import (
    DETECTION_ARGUMENTS, MDF_ARGUMENTS, S4P_ARGUMENTS, S5ArgumentParser,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PROGRAMS = {"s4p": S4P_ARGUMENTS, "mdf": MDF_ARGUMENTS, "detection": DETECTION_ARGUMENTS}


def program_of(path: Path):
    return PROGRAMS[path.stem.split("_")[0]]


def test_every_run_config_parses_with_its_programs_dataclasses():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in files} >= {"s4p_vit_b", "s4p_vit_l", "s4p_vit_h", "mdf_vit_b", "mdf_vit_l", "mdf_vit_h",
                                       "detection_vit_b"}
    for path in files:
        # transformers' own reader of a run file (unknown keys refused) and the programs' (file + flags) agree.
        groups = S5ArgumentParser(program_of(path)).parse_yaml_file(path)
        assert S5ArgumentParser(program_of(path)).parse([str(path)]) == groups, path
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= {name for group in groups for name in vars(group)}


@pytest.mark.parametrize("size,preset,layers", [("b", "vit-b", 12), ("l", "vit-l", 24), ("h", "vit-h", 32)])
def test_paper_runs_carry_the_official_hyper_parameters(size, preset, layers):
    from s5_hf import S5Config

    model, data, semi, training = S5ArgumentParser(S4P_ARGUMENTS).parse([str(CONFIGS / f"s4p_vit_{size}.yaml")])
    assert (model.preset, data.labeled.split("=")[0], data.batch_size, training.crop_size) == (preset, "isaid", 12, 512)
    assert (training.learning_rate, training.weight_decay, training.max_train_steps, training.eval_steps) == \
        (5e-5, 0.01, 120_000, 2000)
    assert (semi.conf_thresh, semi.cutmix_p, data.ratio_range, training.lr_scheduler_type) == \
        (0.95, 0.5, [0.5, 2.0], "cosine")
    assert S5Config.from_preset(model.preset, tasks=["isaid"]).num_hidden_layers == layers

    model, data, mdf, training = S5ArgumentParser(MDF_ARGUMENTS).parse([str(CONFIGS / f"mdf_vit_{size}.yaml")])
    assert [d.split("=")[0] for d in data.train_datasets] == ["vaihingen", "potsdam", "openearthmap", "loveda"]
    assert (mdf.part_features, mdf.loss_start, data.batch_size, model.model_name_or_path) == \
        (256, ["vaihingen=0.7"], 12, f"runs/s4p-vit-{size}/model")
    assert (training.learning_rate, training.weight_decay, training.layer_decay, training.max_train_steps) == \
        (5e-5, 0.05, None, 105_800)

    if size == "b":
        _, detection = S5ArgumentParser(DETECTION_ARGUMENTS).parse([str(CONFIGS / "detection_vit_b.yaml")])
        assert (detection.learning_rate, detection.weight_decay, detection.max_grad_norm, detection.warmup_steps,
                detection.warmup_ratio, detection.epochs, detection.decay_epochs, detection.per_dataset_batch,
                detection.image_size, detection.dota_overlap) == (1e-4, 0.05, 35.0, 500, 0.001, 12, [8, 11], 2, 1024,
                                                                   200)


def test_unknown_keys_in_a_run_file_are_refused(tmp_path, capsys):
    config = yaml.safe_load((CONFIGS / "mdf_vit_b.yaml").read_text())
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**config, "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="learning_rat"):
        S5ArgumentParser(MDF_ARGUMENTS).parse_yaml_file(tmp_path / "typo.yaml")
    with pytest.raises(SystemExit):
        S5ArgumentParser(MDF_ARGUMENTS).parse([str(tmp_path / "typo.yaml")])
    assert "typo.yaml: unknown keys ['learning_rat']" in capsys.readouterr().err
    # An S4P option is not an MoE-MDF one.
    (tmp_path / "s4p_key.json").write_text(json.dumps({**config, "conf_thresh": 0.9}))
    with pytest.raises(SystemExit):
        S5ArgumentParser(MDF_ARGUMENTS).parse([str(tmp_path / "s4p_key.json")])
    assert "unknown keys ['conf_thresh']" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("train_datasets: [a\n")
    for path, message in ((tmp_path / "missing.yaml", "missing.yaml does not exist"),
                          (tmp_path / "broken.yaml", "broken.yaml is not valid YAML")):
        with pytest.raises(SystemExit):
            S5ArgumentParser(MDF_ARGUMENTS).parse([str(path)])
        assert message in capsys.readouterr().err


def test_accelerate_config_files_load():
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = {p.stem: load_config_from_file(str(p)) for p in sorted((CONFIGS / "accelerate").glob("*.yaml"))}
    assert set(loaded) == {"cpu_2_processes", "one_gpu", "multi_gpu_bf16"}
    # accelerate 1.15 starts one process for MULTI_CPU on one machine; the multi-GPU launcher starts two.
    two = loaded["cpu_2_processes"]
    assert (two.distributed_type.value, two.use_cpu, two.num_processes) == ("MULTI_GPU", True, 2)
    assert (loaded["one_gpu"].num_processes, loaded["one_gpu"].mixed_precision) == (1, "fp16")
    assert loaded["multi_gpu_bf16"].mixed_precision == "bf16"


def test_flags_keep_their_names_spellings_and_defaults():
    required = ["--labeled", "isaid=x", "--unlabeled", "rs4p=y", "--output_dir", "out"]
    model, data, semi, training = S5ArgumentParser(S4P_ARGUMENTS).parse(required)
    assert (training.learning_rate, training.weight_decay, training.eval_steps, training.max_train_steps) == \
        (5e-5, 0.01, 2000, 120_000)
    assert (training.seed, training.checkpoints_total_limit, training.max_void_steps, training.logging_steps,
            training.gradient_accumulation_steps, training.report_to, training.sync_bn) == (42, 2, 50, 10, 1, "none",
                                                                                            True)
    assert (data.batch_size, data.ratio_range, data.labeled_options, semi.conf_thresh) == (12, [0.5, 2.0], {}, 0.95)
    for flag in ("--no-sync_bn", "--no_sync_bn", "--no-sync-bn"):
        assert S5ArgumentParser(S4P_ARGUMENTS).parse([*required, flag])[3].sync_bn is False
    *_, training = S5ArgumentParser(S4P_ARGUMENTS).parse([*required, "--max-train-steps", "7", "--overwrite_output_dir"])
    assert training.max_train_steps == 7 and training.overwrite_output_dir is True

    required = ["--train_datasets", "vaihingen=a", "potsdam=b", "--output_dir", "out"]
    model, data, mdf, training = S5ArgumentParser(MDF_ARGUMENTS).parse(required)
    assert (training.weight_decay, training.eval_steps, training.max_train_steps) == (0.05, 1000, 105_800)
    assert (mdf.loss_start, mdf.mixed_batch, mdf.part_features, mdf.lora_r) == (None, True, 256, 16)
    _, data, mdf, _ = S5ArgumentParser(MDF_ARGUMENTS).parse(
        [*required, "--loss_start", "--no-mixed_batch", "--validation_splits", "vaihingen=", "--ratio_range", "1",
         "2", "--reader_options", '{"potsdam": {"patch_size": 64}}'])
    assert (mdf.loss_start, mdf.mixed_batch, data.validation_splits) == ([], False, ["vaihingen="])
    assert data.ratio_range == [1.0, 2.0] and data.reader_options == {"potsdam": {"patch_size": 64}}


def test_a_run_from_a_yaml_file_with_overriding_flags(tmp_path):
    from s5_hf.data.synthetic import make_fake_vaihingen
    from s5_hf.files import read_manifest
    from s5_hf.training import mdf

    make_fake_vaihingen(tmp_path / "vaihingen")
    config = yaml.safe_load((CONFIGS / "mdf_vit_b.yaml").read_text())
    config.update(
        train_datasets=[f"vaihingen={tmp_path / 'vaihingen'}"], model_name_or_path=None, part_features=8,
        reader_options={"vaihingen": {"patch_size": 64, "stride": 64}}, loss_start=[], crop_size=64, batch_size=2,
        max_train_steps=1, eval_steps=0, output_dir=str(tmp_path / "run"), validation_splits=["vaihingen="],
        test_splits=["vaihingen="],
        config_overrides={"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
                          "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 16})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    mdf.main([str(tmp_path / "tiny.yaml"), "--max_train_steps", "2", "--learning_rate", "1e-3"])
    recorded = read_manifest(tmp_path / "run")["sessions"][0]["arguments"]
    assert (recorded["max_train_steps"], recorded["learning_rate"], recorded["weight_decay"]) == (2, 1e-3, 0.05)
    assert json.loads(recorded["config_overrides"]) == config["config_overrides"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 2
