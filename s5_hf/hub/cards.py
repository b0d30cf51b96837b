"""Model cards of S5 models (segmentation and oriented detection): the released ones (`model_cards/*.md`) and any
trained folder being published.

    python -m s5_hf.hub.cards --out model_cards/            (regenerate the committed cards)
    python -m s5_hf.hub.cards --out model_cards/ --check    (exit 1 if they differ from a fresh render)

Cards are rendered with `huggingface_hub.ModelCard.from_template` from `model_card_template.md` beside this
file. Parameter counts are computed from the configurations on the `meta` device (`s5_hf.hub.params`). Every
`model-index` entry is built by `eval_result`, its metric the one the dataset's evaluation protocol reports: a
released model's card carries the paper's numbers (Table 1), marked as reported by the paper; a trained model's
card the numbers its run measured (`measured_eval_result`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from ..cli import ArgumentParser
from ..configuration_s5 import PRESETS, S5Config
from ..configuration_s5_detection import DETECTION_CLASS_SETS, S5DetectionConfig
from ..evaluation.protocols import protocol_for
from ..label_sets import MDF_TASKS, VOID_ID
from .params import PAPER_MILLIONS, count_parameters

TEMPLATE = Path(__file__).with_name("model_card_template.md")
DEFAULT_NAMESPACE = "s5"
PAPER_URL = "https://arxiv.org/abs/2508.12409"
PAPER_SOURCE = "S5 paper (arXiv 2508.12409), Table 1"
CITATION = """@inproceedings{lv2026s5,
  title         = {S5: Scalable Semi-Supervised Semantic Segmentation in Remote Sensing},
  author        = {Lv, Liang and Wang, Di and Zhang, Jing and Zhang, Lefei},
  booktitle     = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year          = {2026},
  eprint        = {2508.12409},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}"""

# Paper, Table 1: mIoU except Potsdam, which is mean F1; mAP for the detection benchmarks DIOR-R and DOTA-v2.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "vit-b": {"vaihingen": 79.85, "potsdam": 92.40, "openearthmap": 68.65, "loveda": 54.02, "dior": 72.95, "dota": 57.20},
    "vit-l": {"vaihingen": 80.72, "potsdam": 92.78, "openearthmap": 69.66, "loveda": 55.67, "dior": 75.21, "dota": 59.71},
    "vit-h": {"vaihingen": 80.85, "potsdam": 92.97, "openearthmap": 70.02, "loveda": 55.65, "dior": 75.30, "dota": 59.89},
}
# The splits the paper's numbers are on, where it states them: LoveDA and DOTA-v2 by their test servers, DIOR-R
# on its test set.
PAPER_SPLITS = {"loveda": "test", "dior": "test", "dota": "test"}
DATASETS = {  # task -> (dataset id used in the metadata, pretty name); neither detection set is on the Hub
    "isaid": ("isaid", "iSAID"),
    "vaihingen": ("isprs-vaihingen", "ISPRS Vaihingen"),
    "potsdam": ("isprs-potsdam", "ISPRS Potsdam"),
    "openearthmap": ("openearthmap", "OpenEarthMap"),
    "loveda": ("loveda", "LoveDA"),
    "dior": ("dior-r", "DIOR-R"),
    "dota": ("dota-v2", "DOTA-v2"),
}
# How `model-index` names each reported score: (metric type, display name). Segmentation tasks report their
# protocol's metric (`s5_hf.evaluation.protocols.protocol_for(task).metric`); detection tasks report DETECTION_METRIC.
METRICS = {"mean_iou": ("mean_iou", "mIoU"), "mean_f1": ("f1", "mF1"), "map": ("map", "mAP")}
# DIOR-R: VOC07 11-point AP at rotated IoU 0.5 (`s5_hf.detection.rotated_voc_map`); DOTA-v2: its server's mAP.
DETECTION_METRIC = "map"
RS4P_DATASET = "rs4p-1m"
# What a released model's card says of its weights; s5-publish accepts a card saying it only with those weights.
OFFICIAL_WEIGHTS_STATEMENT = "The weights are the official checkpoint converted"
ISPRS_NOTE = (
    "**About the ISPRS numbers.** The official evaluation code has ignore id 5 (clutter) equal to the class count, "
    "so its confusion histogram counts every clutter pixel as a correctly classified *car* pixel. This inflates "
    "the car IoU/F1 and therefore the Vaihingen mIoU and Potsdam mF1 above. The s5-hf metric excludes ignored "
    "pixels; expect lower values from it, not comparable one to one with the paper's."
)
BASE_TAGS = ["remote-sensing", "earth-observation", "semantic-segmentation", "aerial-imagery", "vision-transformer",
             "upernet", "s5"]
DETECTION_TAGS = ["remote-sensing", "earth-observation", "object-detection", "oriented-object-detection",
                  "aerial-imagery", "vision-transformer", "oriented-rcnn", "s5"]
COMMON_LIMITATIONS = [
    "RGB only: the patch embedding takes 3 bands of 8-bit imagery scaled to [0, 1] and ImageNet-normalised. "
    "Multispectral or 16-bit products need band selection (`s5-segment --bands`) and a matching rescale factor.",
    "Trained on 512 px crops at the ground sample distances of its training datasets; imagery at very different "
    "resolutions or from other sensors will be segmented worse. Keep the native resolution for large scenes.",
    "Other input sizes work (multiples of 16; position embeddings are interpolated), but large scenes should use "
    "sliding windows (`s5_hf.inference.segment_scene` / `s5-segment`) rather than one huge forward pass.",
    "Each head predicts only its dataset's classes; heads of different datasets are not calibrated against each "
    "other, and pixels outside every class get the most similar one.",
]
DETECTION_LIMITATIONS = [
    "RGB only: the patch embedding takes 3 bands of 8-bit imagery scaled to [0, 1] and ImageNet-normalized.",
    "Trained on 1024 px inputs (DIOR-R's 800 px images resized, DOTA-v2 cut into 1024 px patches); large scenes "
    "should go through overlapping tiles merged with rotated NMS (`s5-detect`), not one huge forward pass.",
    "Boxes are (cx, cy, w, h, angle) in pixels with the angle in radians in [-pi/2, pi/2) and w >= h (mmrotate's "
    "'le90'); `post_process_object_detection` also gives the 4 corner points.",
    "Each head detects only its dataset's classes; heads of different datasets are not calibrated against each "
    "other.",
]


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: S4P (pretrained, iSAID head), MoE-MDF (four dataset heads) or the oriented detector
    (DIOR-R and DOTA-v2 heads)."""

    preset: str  # "vit-b" | "vit-l" | "vit-h"
    stage: str  # "s4p" | "mdf" | "detection"
    # `s5_hf.convert_official.weights_sha256` of the converted official checkpoint, once recorded here. Until then
    # s5-publish ties the card to the digest that the converter wrote beside the weights (official_conversion.json).
    weights_sha256: str | None = None

    @property
    def name(self) -> str:
        return f"s5-{self.preset}-{self.stage}"

    def config(self) -> S5Config:
        if self.stage == "detection":
            return S5DetectionConfig.from_preset(self.preset)
        tasks = ["isaid"] if self.stage == "s4p" else list(MDF_TASKS)
        return S5Config.from_preset(self.preset, tasks=tasks)


# Detection ("detection" stage, cards with the paper's DIOR-R/DOTA-v2 mAP) joins this list once the converter maps the
# official detection checkpoints: there is no key list of them yet to check a mapping against.
RELEASED_MODELS = [ReleasedModel(preset, stage) for stage in ("s4p", "mdf") for preset in PRESETS]
# Rendered and tested, but neither committed to model_cards/ nor publishable (publish_model takes RELEASED_MODELS).
PENDING_MODELS = [ReleasedModel(preset, "detection") for preset in PRESETS]


def is_detection(config: S5Config) -> bool:
    return isinstance(config, S5DetectionConfig)


def preset_of(config: S5Config) -> str | None:
    for name, preset in PRESETS.items():
        if all(getattr(config, key) == value for key, value in preset.items() if key != "out_indices"):
            return name
    return None


def _backbone_text(config: S5Config) -> str:
    preset = preset_of(config)
    label = f"ViT-{preset[-1].upper()}/{config.patch_size}" if preset else f"ViT/{config.patch_size}"
    blocks = ", ".join(str(i) for i in config.out_indices)
    text = (f"{label}: width {config.hidden_size}, {config.num_hidden_layers} blocks, "
            f"{config.num_attention_heads} heads, FFN {config.intermediate_size}; features after blocks {blocks} "
            f"(1-based) feed a neck giving strides 4, 8, 16, 32")
    if config.use_experts:
        text += (f"; in every block the FFN's last {config.part_features} of {config.hidden_size} output channels "
                 f"come from a per-task expert (hard routing by dataset, no router)")
    return text


def _architecture_text(config: S5Config) -> str:
    if is_detection(config):
        experts = f" with {len(config.tasks)} per-dataset FFN experts" if config.use_experts else ""
        return f"S5 oriented detector: ViT{experts} + one Oriented R-CNN head stack per dataset"
    if len(config.tasks) == 1:
        return "single-task S5 (S4P model): ViT + UperNet"
    if config.use_experts:
        return f"S5 MoE-MDF: ViT with {len(config.tasks)} per-dataset FFN experts + {len(config.tasks)} UperNet heads"
    return f"S5, shared ViT backbone (no experts) + {len(config.tasks)} UperNet heads"


def _decoder_text(config: S5Config) -> str:
    if is_detection(config):
        return (f"per task: FPN ({config.fpn_channels} channels, {config.fpn_num_levels} levels), oriented RPN "
                f"(midpoint-offset boxes) and RoI head (rotated RoIAlign {config.roi_output_size}x"
                f"{config.roi_output_size}, {config.roi_fc_dim}-wide FCs), i.e. Oriented R-CNN")
    return (f"one UperNet ({config.decoder_hidden_size} channels, pool scales "
            f"{', '.join(str(s) for s in config.pool_scales)}) and classifier per task")


def _task_rows(config: S5Config) -> list[dict]:
    rows = []
    for spec in config.tasks:
        ignored = sorted({spec.ignore_index, VOID_ID})
        rows.append({
            "name": spec.name,
            "classes": [spec.id2label[k].replace("_", " ") for k in range(spec.num_labels)],
            "ignore_index": ", ".join(str(i) for i in ignored),
        })
    return rows


def reported_metric(task: str, detection: bool | None = None) -> str:
    """The metric the evaluation of `task` reports: its protocol's (`protocol_for(task).metric`) for segmentation,
    DETECTION_METRIC for detection (`detection` defaults to whether `task` is a known detection benchmark)."""
    detection = task in DETECTION_CLASS_SETS if detection is None else detection
    return DETECTION_METRIC if detection else protocol_for(task).metric


def eval_result(task: str, value: float, *, split: str | None, source_name: str, source_url: str,
                detection: bool | None = None) -> EvalResult:
    """The `model-index` entry of a score of `task` (in percent) with its source: the one place an `EvalResult`
    is built, its metric and task type from `reported_metric`."""
    metric = reported_metric(task, detection)
    metric_type, metric_name = METRICS[metric]
    dataset_id, dataset_name = DATASETS.get(task, (task, task))
    task_type, task_name = (("object-detection", "Oriented Object Detection") if metric == DETECTION_METRIC
                            else ("image-segmentation", "Semantic Segmentation"))
    return EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_id, dataset_name=dataset_name,
                      dataset_split=split, metric_type=metric_type, metric_name=metric_name,
                      metric_value=value, source_name=source_name, source_url=source_url)


def measured_eval_result(task: str, value: float, repo_id: str, scope: str, split: str | None = "test",
                         detection: bool | None = None) -> EvalResult:
    """A score (a fraction, 0-1) that a training run measured on `task`, e.g. `result.reported` of an evaluation;
    `scope` says what was scored ("DIOR-R test split, 400 images"). The model's own page is its source."""
    from huggingface_hub import constants

    return eval_result(task, round(100 * value, 2), split=split, detection=detection,
                       source_name=f"s5-hf training run ({scope}, this model)",
                       source_url=f"{constants.ENDPOINT}/{repo_id}")


def paper_eval_results(preset: str, tasks: Sequence[str] = MDF_TASKS) -> list[EvalResult]:
    """`model-index` entries of the paper's Table 1 for `preset` and `tasks`, with the paper as their source."""
    return [eval_result(task, PAPER_RESULTS[preset][task], split=PAPER_SPLITS.get(task), source_name=PAPER_SOURCE,
                        source_url=PAPER_URL) for task in tasks]


def _training_text(stage: str | None) -> str:
    if stage == "s4p":
        return (
            "S4P, semi-supervised pretraining: iSAID (16 classes) as labelled data "
            "and RS4P-1M (one million unlabelled 512 px patches from MillionAID, SAMRS and STAR, selected by low "
            "prediction entropy with cluster-based diversity quotas) as unlabelled data; FixMatch/UniMatch-style "
            "consistency with online pseudo-labels of the same network on weak views (confidence threshold 0.95), "
            "strong colour augmentation and CutMix on the unlabelled batch. 120k iterations, crop 512, AdamW "
            "lr 5e-5, weight decay 0.01, cosine schedule; backbone initialised from MAE weights."
        )
    if stage == "mdf":
        return (
            "MoE-MDF, multi-dataset fine-tuning from the S4P model of the same size: every step takes one batch of "
            "each of Vaihingen, Potsdam, OpenEarthMap and LoveDA and sums their cross-entropy losses (each with its "
            "ignore index); the experts start as the last 256 rows of the pretrained FFN output layer, so every task "
            "starts at the pretrained function. Crop 512, AdamW lr 5e-5, weight decay 0.05, cosine schedule over "
            "100 epochs. Evaluation: Vaihingen and Potsdam on full images with sliding windows and horizontal-flip "
            "test-time augmentation; OpenEarthMap resized to 512; LoveDA on its test server."
        )
    if stage == "detection":
        return (
            "Detection fine-tuning from the S4P model of the same size, on DIOR-R and DOTA-v2 at once: each step "
            "takes 2 DIOR-R and 2 DOTA-v2 images per GPU (4 GPUs) and sums the two datasets' losses; the backbone's "
            "position table is interpolated to 1024 px and one FFN expert per dataset starts from the pretrained "
            "FFN. AdamW lr 1e-4, weight decay 0.05, gradient clipping 35, 500-step linear warm-up, step decay at "
            "epochs 8 and 11 of 12, mixed precision; random horizontal and vertical flips. Evaluation: DIOR-R "
            "test set (VOC07 11-point mAP at rotated IoU 0.5), DOTA-v2 by its evaluation server."
        )
    return "Trained with the s5-hf training scripts; see the repository's training configuration for details."


def build_model_card(
    config: S5Config,
    repo_id: str,
    *,
    title: str | None = None,
    summary: str | None = None,
    stage: str | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    results_intro: str | None = None,
    base_model: str | None = None,
    extra_limitations: Sequence[str] = (),
    lora_adapters: Sequence[str] = (),
) -> ModelCard:
    """Render the card of an S5 model with configuration `config`, published as `repo_id`.

    A segmentation or, for an `S5DetectionConfig`, an oriented detection card. `eval_results` fill `model-index`
    and the results table; pass only measured or cited numbers (`measured_eval_result`, `paper_eval_results`).
    `stage` ("s4p" | "mdf" | "detection" | None) selects the training description.
    `lora_adapters`: the tasks whose PEFT LoRA adapters the repository holds in `lora/<task>/` (a model trained
    with `--lora`); the card then says that its results need them and how to load them.
    """
    preset = preset_of(config)
    count = count_parameters(config)
    detection = is_detection(config)
    multi = len(config.tasks) > 1
    datasets = [DATASETS.get(t, (t, t))[0] for t in config.task_names]
    if stage == "s4p":
        datasets.append(RS4P_DATASET)
    tags = (DETECTION_TAGS if detection else BASE_TAGS) + (["mixture-of-experts", "multi-dataset"]
                                                            if config.use_experts else [])
    if lora_adapters:
        tags = tags + ["lora", "peft"]
    eval_results = list(eval_results or [])
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="object-detection" if detection else "image-segmentation",
        tags=tags,
        datasets=datasets,
        base_model=base_model,
        model_name=repo_id.split("/")[-1] if eval_results else None,  # model-index needs a name
        eval_results=eval_results or None,
    )
    paper_millions = None
    if preset is not None and stage in ("s4p", "mdf"):
        paper_millions = PAPER_MILLIONS[preset]["single" if stage == "s4p" else "multiple"]
    parameter_note = None
    if paper_millions is not None:
        parameter_note = (
            "The parameter count is computed from this configuration. The official implementation also counts a "
            "class-token parameter and a 257-parameter placeholder classifier per decoder that it never uses "
            "(`python -m s5_hf.hub.params` shows both totals); with those it equals the paper's figure."
        )
    example_task = next((t for t in ("potsdam", "loveda", "dior") if t in config.task_names), config.default_task)
    kind = "oriented object detection" if detection else "semantic segmentation"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        detection=detection,
        title=title or repo_id.split("/")[-1],
        summary=summary or f"An S5 {kind} model for remote-sensing imagery with "
                           f"{len(config.tasks)} dataset head{'s' if multi else ''}.",
        architecture=_architecture_text(config),
        backbone=_backbone_text(config),
        decoder=_decoder_text(config),
        num_parameters=count,
        paper_parameters=paper_millions,
        parameter_note=parameter_note,
        num_channels=config.num_channels,
        patch_size=config.patch_size,
        image_size=config.image_size,
        tasks=_task_rows(config),
        default_task=config.default_task,
        example_task=example_task,
        results=[
            {"dataset_name": r.dataset_name, "metric_name": r.metric_name, "metric_value": r.metric_value}
            for r in eval_results
        ],
        results_intro=results_intro or "",
        isprs_note=ISPRS_NOTE if any(r.dataset_type.startswith("isprs-") for r in eval_results) else None,
        repo_id=repo_id,
        lora_adapters=list(lora_adapters),
        training=_training_text(stage),
        limitations=list(DETECTION_LIMITATIONS if detection else COMMON_LIMITATIONS) + list(extra_limitations),
        citation=CITATION,
    )


def released_card(model: ReleasedModel, repo_id: str | None = None, weights_sha256: str | None = None) -> ModelCard:
    """The card of a released (converted official) checkpoint published as `repo_id` (default
    `s5/<model.name>`); an MDF card names the S4P model of the same size in that namespace as its base.
    `weights_sha256` (the published weights' digest, checked by s5-publish) is stated in the card."""
    repo_id = repo_id or f"{DEFAULT_NAMESPACE}/{model.name}"
    namespace = repo_id.split("/")[0] if "/" in repo_id else DEFAULT_NAMESPACE
    size = model.preset[-1].upper()
    if model.stage == "detection":
        converted = f"{OFFICIAL_WEIGHTS_STATEMENT} to the s5-hf format (key renaming; no retraining)."
    else:
        converted = (
            f"{OFFICIAL_WEIGHTS_STATEMENT} with `s5-convert-official` (key renaming and the split "
            "of the packed attention projection; no retraining). The converter's tests reproduce the official "
            "implementation's logits."
        )
    if weights_sha256:
        converted += (f" Digest of the converted weights (`s5_hf.convert_official.weights_sha256`, also in "
                      f"`official_conversion.json`): `{weights_sha256}`.")
    if model.stage == "detection":
        config = model.config()
        return build_model_card(
            config,
            repo_id,
            title=f"S5 ViT-{size} oriented detector (DIOR-R, DOTA-v2)",
            summary=(
                f"The S5 ViT-{size} oriented object detector: one backbone with per-dataset FFN experts and one "
                "Oriented R-CNN head stack for each of DIOR-R (20 classes) and DOTA-v2 (18 classes). " + converted
            ),
            stage="detection",
            eval_results=paper_eval_results(model.preset, config.task_names),
            results_intro=(
                "As reported by the paper (Table 1) for the official model these weights were converted from; not "
                "re-measured here. Mean average precision in percent: DIOR-R VOC07 11-point AP at rotated IoU 0.5 "
                "on its test set, DOTA-v2 from its evaluation server."
            ),
            base_model=f"{namespace}/s5-{model.preset}-s4p",
        )
    if model.stage == "s4p":
        return build_model_card(
            model.config(),
            repo_id,
            title=f"S5 ViT-{size} S4P (pretrained, iSAID head)",
            summary=(
                f"The S4P-pretrained S5 ViT-{size} + UperNet model with its iSAID head (16 classes). It is the "
                "starting point for fine-tuning (`S5ForSemanticSegmentation.from_single_task` builds the MoE-MDF "
                "model from it) and a 16-class iSAID segmenter as it is. " + converted
            ),
            stage="s4p",
            extra_limitations=["These are pretraining weights: the paper reports no standalone results for them."],
        )
    return build_model_card(
        model.config(),
        repo_id,
        title=f"S5 ViT-{size} MoE-MDF (Vaihingen, Potsdam, OpenEarthMap, LoveDA)",
        summary=(
            f"The S5 ViT-{size} multi-dataset model: one backbone with per-dataset FFN experts and one UperNet head "
            "for each of ISPRS Vaihingen, ISPRS Potsdam, OpenEarthMap and LoveDA. " + converted
        ),
        stage="mdf",
        eval_results=paper_eval_results(model.preset),
        results_intro=(
            "As reported by the paper (Table 1) for the official model these weights were converted from; not "
            "re-measured here. Potsdam is the mean F1 score, the others the mean IoU, in percent."
        ),
        base_model=f"{namespace}/s5-{model.preset}-s4p",
        extra_limitations=[
            "LoveDA was trained on its train and validation splits together, so there is no clean LoveDA "
            "validation score for this model.",
        ],
    )


def validate_card_text(text: str) -> dict:
    """Offline check of a card: YAML front matter parses, licence/tags/pipeline are set, `model-index` entries
    are complete and parse back into `EvalResult`s. Returns the metadata; raises ValueError naming the problem.

    (`ModelCard.validate` posts the card to the Hub's validation endpoint, which needs the network.)
    """
    if not text.startswith("---\n"):
        raise ValueError("The card must start with a YAML block ('---').")
    try:
        _, front, _ = text.split("---\n", 2)
        metadata = yaml.safe_load(front)
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"The card's YAML block does not parse: {error}") from error
    for key in ("license", "library_name", "pipeline_tag", "tags"):
        if not metadata.get(key):
            raise ValueError(f"The card's metadata has no {key!r}.")
    if "model-index" in metadata:
        index = metadata["model-index"]
        if not isinstance(index, list) or len(index) != 1 or "name" not in index[0]:
            raise ValueError("model-index must be a list with one entry that has a 'name'.")
        for result in index[0].get("results", []):
            for path in (("task", "type"), ("dataset", "type"), ("dataset", "name"), ("source", "url")):
                if not result.get(path[0], {}).get(path[1]):
                    raise ValueError(f"A model-index result has no {'.'.join(path)}: {result}")
            for metric in result.get("metrics", []):
                if "type" not in metric or not isinstance(metric.get("value"), (int, float)):
                    raise ValueError(f"A model-index metric needs a type and a numeric value: {metric}")
        model_index_to_eval_results(index)
    return metadata


def write_cards(out_dir: str | Path, namespace: str = DEFAULT_NAMESPACE) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for model in RELEASED_MODELS:
        path = out_dir / f"{model.name}.md"
        path.write_text(str(released_card(model, f"{namespace}/{model.name}")) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="model_cards", help="folder for the released models' cards")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="Hub user/organisation of the repos")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    if not args.check:
        for path in write_cards(args.out, args.namespace):
            print(path)
        return 0
    stale = []
    for model in RELEASED_MODELS:
        path = Path(args.out) / f"{model.name}.md"
        if not path.is_file() or path.read_text() != str(released_card(model, f"{args.namespace}/{model.name}")) + "\n":
            stale.append(str(path))
    if stale:
        print("Out of date (run python -m s5_hf.hub.cards --out " + args.out + "): " + ", ".join(stale))
        return 1
    print(f"{len(RELEASED_MODELS)} cards up to date.")
    return 0


__all__ = [
    "DATASETS",
    "METRICS",
    "OFFICIAL_WEIGHTS_STATEMENT",
    "RELEASED_MODELS",
    "ReleasedModel",
    "build_model_card",
    "eval_result",
    "is_detection",
    "measured_eval_result",
    "paper_eval_results",
    "released_card",
    "reported_metric",
    "validate_card_text",
    "write_cards",
]


if __name__ == "__main__":
    sys.exit(main())

