"""The README's main job: the whole S5 pipeline at toy scale, on bundled and synthetic data, in a few minutes.

    python -m s5_hf.quickstart --output_dir outputs/quickstart

1. Data: synthetic look-alikes of iSAID, Vaihingen, Potsdam, OpenEarthMap and LoveDA in their owners' layouts, and
   an unlabeled pool of 64 px patches cut from the bundled NEON aerial scenes plus synthetic iSAID-like and noise
   images.
2. Scoring model: a tiny S5 segmentation model trained (supervised) on the fake iSAID.
3. RS4P selection (`s5_hf.rs4p`, `training/select_rs4p.py`): score the pool, rank by foreground entropy, fill
   cluster quotas, write the selection with pseudo-labels as Parquet shards with a card.
4. S4P (`s5_hf.training.s4p`, `training/pretrain_s4p.py`): semi-supervised pretraining on the fake iSAID + the
   selection. At toy scale it starts from the scoring model (the paper starts from MAE weights, which cannot be
   downloaded here).
5. MoE-MDF (`s5_hf.training.mdf`, `training/finetune_mdf.py`): experts and decoders for the four datasets,
   initialised from S4P.
6. Evaluation table (each dataset's protocol), reload through the transformers Auto classes, and segmentation of
   the bundled scene with every dataset head (PNG masks and colour overlays with legends).

Everything is written under the output folder; `summary.json` lists the files. The tiny configuration learns the
synthetic tasks only roughly: the numbers show the pipeline works end to end, not the paper's accuracy. The table
puts each dataset's score beside the same model before MoE-MDF fine-tuning (its fresh classifiers), measured in the
same run on the same images: what fine-tuning adds.

Reader options: the synthetic ISPRS and iSAID tiles are 64-96 px, and those readers cut 512 px training patches by
default, which would leave the batches almost all padding (void, so nothing to train: the training loop warns and
then stops). The quickstart therefore cuts 64 px patches (`READER_OPTIONS`: patch_size 64, stride 64), passed to
the programs as `--reader_options` / `--labeled_options`. ISPRS model selection uses held-out training tiles and the
final scores are on the test split (see `s5_hf.data.registry`). Every stage may replace its own folder from an
earlier quickstart (`--overwrite_output_dir`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import datasets
import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from . import files, sample_data
from .cli import ArgumentParser
from .data import synthetic
from .inference.sliding_window import segment_scene
from .label_sets import MDF_TASKS
from .visualize import colorize, legend, overlay, task_palette, with_legend

TINY = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 64,
        "out_indices": [1, 2, 3, 4], "decoder_hidden_size": 32, "drop_path_rate": 0.0}
CROP = 64
# ISPRS readers cut 512 px patches by default; the synthetic tiles are 64-80 px.
READER_OPTIONS = {"vaihingen": {"patch_size": 64, "stride": 64}, "potsdam": {"patch_size": 64, "stride": 64},
                  "isaid": {"patch_size": 64, "stride": 64}}


def make_data(root: Path, seed: int) -> dict[str, Path]:
    paths = {
        "isaid": synthetic.make_fake_isaid(root / "isaid", num_images=(6, 2), size=96, seed=seed),
        "vaihingen": synthetic.make_fake_vaihingen(root / "vaihingen", seed=seed),
        "potsdam": synthetic.make_fake_potsdam(root / "potsdam", seed=seed),
        "openearthmap": synthetic.make_fake_openearthmap(root / "openearthmap", seed=seed),
        "loveda": synthetic.make_fake_loveda(root / "loveda", num_images=3, seed=seed),
    }
    pool = synthetic.make_fake_unlabeled_pool(root / "pool", num_images=48, size=CROP, seed=seed)
    # Real imagery in the pool: the bundled NEON scenes (10 cm RGB) cut into patches, as RS4P cuts large images.
    neon = pool / "neon"
    neon.mkdir(parents=True, exist_ok=True)
    for scene in sample_data.sample_files():
        with Image.open(scene) as image:
            rgb = np.asarray(image.convert("RGB"))
        for top in range(0, rgb.shape[0] - CROP + 1, 2 * CROP):
            for left in range(0, rgb.shape[1] - CROP + 1, 2 * CROP):
                Image.fromarray(rgb[top : top + CROP, left : left + CROP]).save(
                    neon / f"{scene.stem}_{top:04d}_{left:04d}.png")
    paths["pool"] = pool
    return paths


def labeled_parquet(isaid: Path, out: Path) -> Path:
    """The fake iSAID training patches as Parquet shards: the labeled set whose clusters set RS4P's quotas."""
    from .data import load_benchmark, to_parquet_shards

    rows = load_benchmark("isaid", isaid, "train", **READER_OPTIONS["isaid"])
    to_parquet_shards(rows, out, shard_size_mb=8, overwrite=True)
    return out / "data"


def stage_args(*extra: str, new_model: bool = False) -> list[str]:
    """Arguments every stage shares; `new_model` builds the tiny configuration instead of loading one."""
    config = ["--config_overrides", json.dumps(TINY)] if new_model else []
    # The quickstart owns its output folder: a second quickstart replaces the stages of the first.
    return [*config, "--crop_size", str(CROP), "--logging_steps", "10", "--overwrite_output_dir", *extra]


def evaluation_table(results: dict, baseline: dict) -> str:
    rows = ["| dataset | split (images) | mIoU | mF1 | OA | mIoU before MDF | reported in the paper as |",
            "|---|---|---|---|---|---|---|"]
    for task, result in results.items():
        s = result.scores
        rows.append(f"| {task} | {result.split} ({result.num_samples}) | {100 * s.mean_iou:.2f} | "
                    f"{100 * s.mean_f1:.2f} | {100 * s.overall_accuracy:.2f} | "
                    f"{100 * baseline[task].scores.mean_iou:.2f} | "
                    f"{'mF1' if result.protocol.metric == 'mean_f1' else 'mIoU'} |")
    return "\n".join(rows)


def mdf_baseline(finetune, arguments: list[str]) -> dict:
    """The MoE-MDF stage's starting model (S4P backbone and decoders, fresh classifiers: the script seeds and builds
    it the same way), scored on the splits the stage reports."""
    import torch

    from .evaluation.protocols import evaluate_sources

    run = finetune.parse_args(arguments)
    torch.manual_seed(run.training.seed)
    model = finetune.build_model(run)
    return evaluate_sources(model, run.sources, run.test_splits, crop_size=run.training.crop_size,
                            max_samples=run.training.max_eval_samples, reader_options=run.data.reader_options)


def segment_bundled_scene(model_dir: Path, out: Path) -> dict[str, str]:
    """Reload the MDF model through the Auto classes and segment the bundled scene with every head."""
    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    scene_path = sample_data.path(sample_data.SCENE)
    scene = Image.open(scene_path).convert("RGB")
    written = {}
    for task in model.config.task_names:
        labels = segment_scene(model, scene_path, task, processor=processor, window=4 * CROP, overlap=0.25)
        spec = model.config.get_task(task)
        palette = task_palette(spec)
        panel = legend(list(spec.id2label.values()), palette, title=task, present=np.unique(labels))
        for path, image in ((out / f"mask_{task}.png", colorize(labels, palette)),
                            (out / f"overlay_{task}.png", with_legend(overlay(scene, labels, palette), panel))):
            with files.atomic_path(path) as temporary:
                image.save(temporary, format="PNG")
        written[task] = str(out / f"overlay_{task}.png")
    return written


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="Training steps of each stage (MDF: twice as many).")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("s5_hf.quickstart")
    from .training import mdf as finetune, s4p as pretrain

    # datasets pauses 5 s whenever a Parquet stream ends (PyArrow thread shutdown); the toy RS4P selection ends every
    # few batches, so the pause would dominate the S4P stage.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.2

    log.info("1/6 synthetic benchmarks and the unlabeled pool -> %s", out / "data")
    data = make_data(out / "data", args.seed)

    log.info("2/6 scoring model: supervised on the fake iSAID")
    finetune.main(stage_args("--train_datasets", f"isaid={data['isaid']}",
                             "--reader_options", json.dumps({"isaid": READER_OPTIONS["isaid"]}),
                            "--output_dir", str(out / "scorer"), "--batch_size", "4", "--learning_rate", "3e-3",
                            "--max_train_steps", str(args.steps), "--eval_steps", "0", "--seed", str(args.seed),
                             new_model=True))

    log.info("3/6 RS4P selection from %s", data["pool"])
    from .rs4p.cli import main as select_rs4p

    select_rs4p(["--pool", str(data["pool"]), "--labeled", str(labeled_parquet(data["isaid"], out / "isaid-labeled")),
                 "--model", str(out / "scorer" / "model"), "--output_dir", str(out / "rs4p"), "--target_size", "96",
                 "--num_clusters", "4", "--batch_size", "16", "--image_size", str(CROP), "--chunk_size", "64",
                 "--min_shards", "2", "--dataset_name", "rs4p-quickstart",
                 # Each quickstart trains a new scorer, so an earlier quickstart's scores are stale: score again.
                 "--no_resume"])

    log.info("4/6 S4P: semi-supervised pretraining on the fake iSAID + the RS4P selection")
    pretrain.main(stage_args("--labeled", f"isaid={data['isaid']}", "--labeled_options", json.dumps(READER_OPTIONS["isaid"]),
                            "--unlabeled", f"rs4p={out / 'rs4p' / 'dataset'}", "--model_name_or_path",
                            str(out / "scorer" / "model"), "--output_dir", str(out / "s4p"), "--batch_size", "4",
                            "--learning_rate", "1e-3", "--max_train_steps", str(args.steps), "--eval_steps", "0",
                             "--seed", str(args.seed)))

    log.info("5/6 MoE-MDF: fine-tuning on %s", ", ".join(MDF_TASKS))
    mdf_arguments = stage_args(
        "--model_name_or_path", str(out / "s4p" / "model"), "--part_features", "16",
        "--train_datasets", *[f"{task}={data[task]}" for task in MDF_TASKS],
        "--reader_options", json.dumps({t: o for t, o in READER_OPTIONS.items() if t in MDF_TASKS}),
        "--output_dir", str(out / "mdf"), "--batch_size", "2", "--learning_rate", "3e-3",
        "--max_train_steps", str(2 * args.steps), "--eval_steps", "0", "--seed", str(args.seed))
    baseline = mdf_baseline(finetune, mdf_arguments)
    mdf = finetune.main(mdf_arguments)

    log.info("6/6 evaluation, reload through the Auto classes, segmentation of the bundled scene")
    table = evaluation_table(mdf["results"], baseline)
    files.write_text(out / "results.md", table + "\n")
    overlays = segment_bundled_scene(out / "mdf" / "model", out)
    summary = {
        "rs4p_dataset": str(out / "rs4p" / "dataset"),
        "s4p_model": str(out / "s4p" / "model"),
        "mdf_model": str(out / "mdf" / "model"),
        "results": {task: r.describe() for task, r in mdf["results"].items()},
        "before_mdf": {task: r.describe() for task, r in baseline.items()},
        "curves": [str(p) for p in (out / stage / "curves.png" for stage in ("scorer", "s4p", "mdf")) if p.is_file()],
        "overlays": overlays,
    }
    files.write_json(out / "summary.json", summary, indent=2)
    print(table)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
