"""Deployment export: one task of an MoE-MDF model as ONNX, run with onnxruntime, logits equal to PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from s5_hf import S5Config, S5ForSemanticSegmentation  # noqa: E402
from s5_hf.inference import export as export_module  # noqa: E402
from s5_hf.inference.export import ExportError, OnnxSegmenter, export_onnx, main, verify_onnx  # noqa: E402
from s5_hf.label_sets import MDF_TASKS  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64, out_indices=[1, 2, 3, 4],
            decoder_hidden_size=16, part_features=8)


def tiny_mdf_model(seed: int = 0) -> S5ForSemanticSegmentation:
    torch.manual_seed(seed)
    model = S5ForSemanticSegmentation(S5Config(**TINY, tasks=list(MDF_TASKS))).eval()
    # Fresh BatchNorm in eval mode is the identity and zero-initialised parts hide mistakes: randomise them.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        model.s5.embeddings.position_embeddings.copy_(
            torch.randn(model.s5.embeddings.position_embeddings.shape, generator=generator) * 0.02)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The CLI's export of the Potsdam head of a saved tiny MoE-MDF model (one export for the whole file)."""
    folder = tmp_path_factory.mktemp("export")
    model = tiny_mdf_model()
    model.save_pretrained(folder / "model")
    out = folder / "potsdam.onnx"
    programs = []
    real = export_module._export_program
    with pytest.MonkeyPatch.context() as patch:  # keep the ONNX program for the write/check test below
        patch.setattr(export_module, "_export_program", lambda *a, **k: programs.append(real(*a, **k)) or programs[-1])
        assert main([str(folder / "model"), str(out), "--task", "potsdam"]) == 0
    EXPORTED_PROGRAMS[:] = programs
    return model, out


EXPORTED_PROGRAMS: list = []


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_logits_equal_the_moe_models_task_logits(exported, batch):
    model, path = exported
    pixel_values = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(pixel_values, task="potsdam").logits.numpy()
    got = OnnxSegmenter(path)(pixel_values)
    assert got.shape == expected.shape == (batch, model.config.tasks[1].num_labels, 64, 64)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 1e-2  # the logits are not trivially zero


def test_the_graph_carries_the_task_its_labels_and_window_size(exported):
    model, path = exported
    segmenter = OnnxSegmenter(path)
    spec = model.config.get_task("potsdam")
    assert segmenter.metadata["s5_task"] == "potsdam"
    assert json.loads(segmenter.metadata["s5_id2label"]) == {str(k): v for k, v in spec.id2label.items()}
    assert segmenter.image_size == 64
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())  # no staging folder left behind


def test_other_window_sizes_are_refused_with_the_size_in_the_message(exported):
    _, path = exported
    with pytest.raises(ValueError, match=r"takes 64x64 windows, got 96x96"):
        OnnxSegmenter(path)(np.zeros((1, 3, 96, 96), np.float32))


def test_verification_measures_the_difference_to_the_model(exported):
    model, path = exported
    potsdam = model.extract_task("potsdam")
    assert verify_onnx(path, potsdam, size=64) <= 1e-4
    other = tiny_mdf_model(seed=5).extract_task("potsdam")
    assert verify_onnx(path, other, size=64) > 1e-2


def test_a_graph_that_differs_from_pytorch_is_an_error_and_nothing_is_written(exported, tmp_path):
    model, _ = exported
    (program,) = EXPORTED_PROGRAMS
    potsdam = model.extract_task("potsdam")
    real = export_module.verify_onnx
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "verify_onnx", lambda *a, **k: real(*a, **k) + 3e-3)
        with pytest.raises(ExportError, match=r"differ from PyTorch by 0.003 > atol 0.0001; nothing written"):
            export_module._write_checked(program, tmp_path / "bad.onnx", potsdam, size=64, batch=2, verify=True,
                                         atol=1e-4)
    assert list(tmp_path.iterdir()) == []
    export_module._write_checked(program, tmp_path / "good.onnx", potsdam, size=64, batch=2, verify=True, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["good.onnx"]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(), ValueError, r"has tasks \['vaihingen', 'potsdam', 'openearthmap', 'loveda'\]: choose one"),
    (dict(task="isaid"), ValueError, r"Unknown task 'isaid'"),
    (dict(task="potsdam", image_size=72), ValueError, r"multiple of the patch size 16, got 72"),
])
def test_bad_arguments_name_the_problem_and_write_nothing(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_onnx(tiny_mdf_model(), tmp_path / "x.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_output_must_be_an_onnx_file_in_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"must end in .onnx"):
        export_onnx(tiny_mdf_model(), tmp_path / "x.pt", task="potsdam")
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        export_onnx(tiny_mdf_model(), tmp_path / "missing" / "x.onnx", task="potsdam")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/missing-model", "{tmp}/x.onnx", "--task", "potsdam"], "missing-model: no such model folder"),
    (["{tmp}", "{tmp}/x.txt", "--task", "potsdam"], "x.txt: the output file must end in .onnx"),
])
def test_cli_names_a_bad_argument_before_loading_anything(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
