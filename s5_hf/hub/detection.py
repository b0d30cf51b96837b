"""Publish a trained `S5ForOrientedDetection` folder with a card stating the run's own DIOR-R mAP.

`s5_hf.hub.publish_model` checks folders by loading them as semantic segmentation models, so detection folders
are checked and uploaded here with the same rules: safetensors only, the remote code present, the folder loads
through the Auto classes without missing or unexpected weights, one commit that also deletes weight files of an
earlier upload this one does not replace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, EvalResult, HfApi, ModelCard, ModelCardData

from .publish import (MODEL_FILES, PICKLE_SUFFIXES, WEIGHT_SUFFIXES, PublishError, check_repo_id,  # noqa: F401 (re-exported)
                   load_model_folder, remote_code_files)
from .cards import validate_card_text

# The model-index names of the detection datasets (no Hub dataset ids are claimed: neither is on the Hub officially).
DETECTION_DATASETS = {"dior": ("dior-r", "DIOR-R"), "dota": ("dota-v2", "DOTA-v2")}


def check_detection_folder(folder: str | os.PathLike):
    """Load a saved detection model folder as the Hub would (Auto classes); PublishError naming what is wrong."""
    from transformers import AutoModelForObjectDetection

    from .. import S5ForOrientedDetection  # noqa: F401  (registers the Auto classes)

    return load_model_folder(folder, AutoModelForObjectDetection, "S5DetectionImageProcessor").eval()


def detection_eval_result(task: str, value: float, repo_id: str, scope: str) -> EvalResult:
    """A model-index entry for an mAP (0-1) this run measured on `task` ("dior" -> DIOR-R)."""
    from huggingface_hub import constants

    dataset_id, dataset_name = DETECTION_DATASETS.get(task, (task, task))
    return EvalResult(task_type="object-detection", task_name="Oriented Object Detection", dataset_type=dataset_id,
                      dataset_name=dataset_name, dataset_split="test", metric_type="map", metric_name="mAP",
                      metric_value=round(100 * value, 2),
                      source_name=f"s5-hf training run ({scope}, this model)", source_url=f"{constants.ENDPOINT}/{repo_id}")


def build_detection_card(config, repo_id: str, eval_results: Sequence[EvalResult], summary: str) -> ModelCard:
    data = ModelCardData(library_name="transformers", pipeline_tag="object-detection", license="apache-2.0",
                         tags=["s5", "remote-sensing", "oriented-object-detection", "mixture-of-experts"],
                         model_name=repo_id, eval_results=list(eval_results) or None)
    rows = "\n".join(f"| {r.dataset_name} | {r.dataset_split} | {r.metric_name} | {r.metric_value:.2f} |"
                     for r in eval_results)
    classes = "; ".join(f"{t}: {len(config.get_task(t)['id2label'])} classes" for t in config.task_names)
    text = f"""---
{data.to_yaml()}
---

# {repo_id}

S5 oriented object detector (Oriented R-CNN heads per dataset on a ViT backbone with one FFN expert per dataset;
arXiv 2508.12409, section 6), {config.num_hidden_layers} blocks of width {config.hidden_size}, {config.image_size} px
input. Heads: {classes}. Boxes are (cx, cy, w, h, angle) in pixels, angle in radians ("le90").

```python
import torch
from transformers import AutoModelForObjectDetection

model = AutoModelForObjectDetection.from_pretrained("{repo_id}", trust_remote_code=True).eval()
out = model(pixel_values, task="{config.task_names[0]}")  # out.boxes[i], out.scores[i], out.labels[i]
```

## Results

{summary}

| Dataset | Split | Metric | Value |
|---|---|---|---|
{rows}
"""
    card = ModelCard(text)
    validate_card_text(str(card))
    return card


def publish_detection_model(folder: str | os.PathLike, repo_id: str, card: ModelCard, *, private: bool = False,
                            api: HfApi | None = None) -> str:
    """Check `folder` and upload it with `card` to the model repo `repo_id` in one commit; returns the commit URL."""
    check_repo_id(repo_id)
    folder = Path(folder)
    model = check_detection_folder(folder)
    names = sorted({p.name for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)} | set(MODEL_FILES)
                   | set(remote_code_files(folder)))
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    operations: list = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(folder / n)) for n in names]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    stale = [n for n in api.list_repo_files(repo_id, repo_type="model")
             if n not in names and n.endswith(WEIGHT_SUFFIXES + PICKLE_SUFFIXES)]
    operations += [CommitOperationDelete(path_in_repo=n) for n in stale]
    commit = api.create_commit(repo_id, operations, repo_type="model",
                               commit_message=f"Upload S5 oriented detector ({', '.join(model.config.task_names)})")
    return commit.commit_url
