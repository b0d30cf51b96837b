"""The README's main job: the S5 model family end to end on the bundled sample scene.

    python -m s5_hf.quickstart --output-dir outputs/quickstart

Builds a tiny four-dataset MoE-MDF model, predicts the bundled NEON aerial scene with every dataset head, saves
the model (safetensors + code), reloads it through the transformers Auto classes, checks the reloaded model
predicts the same masks, and writes the masks as PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from . import S5Config, S5ForSemanticSegmentation, S5ImageProcessor, sample_data
from .label_sets import MDF_TASKS, get_label_set

TINY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=256, out_indices=[1, 2, 3, 4],
            decoder_hidden_size=32, part_features=16)


def colourise(mask: np.ndarray, task: str) -> Image.Image:
    palette = np.array(get_label_set(task).palette, dtype=np.uint8)
    return Image.fromarray(palette[mask])


def predict(model, processor, image: Image.Image, task: str) -> np.ndarray:
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, task=task)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0].numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    model = S5ForSemanticSegmentation(S5Config(**TINY, tasks=list(MDF_TASKS))).eval()
    processor = S5ImageProcessor(size={"height": TINY["image_size"], "width": TINY["image_size"]})
    scene = Image.open(sample_data.path(sample_data.SCENE)).convert("RGB")
    before = {task: predict(model, processor, scene, task) for task in MDF_TASKS}

    model_dir = out / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    reloaded_processor = AutoImageProcessor.from_pretrained(model_dir)

    summary = {"model_dir": str(model_dir), "parameters": sum(p.numel() for p in reloaded.parameters()), "masks": {}}
    for task in MDF_TASKS:
        mask = predict(reloaded, reloaded_processor, scene, task)
        if not np.array_equal(mask, before[task]):
            raise RuntimeError(f"The reloaded model predicts a different {task} mask than the saved one.")
        path = out / f"mask_{task}.png"
        colourise(mask, task).save(path)
        summary["masks"][task] = str(path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
