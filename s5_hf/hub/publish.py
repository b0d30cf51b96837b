"""Publishing S5 models and datasets on the Hugging Face Hub.

    s5-publish model outputs/mdf-vit-b  my-org/s5-vit-b-mdf  [--card s5-vit-b-mdf | --card README.md] [--private]
    s5-publish dataset outputs/rs4p/dataset  my-org/rs4p-1m
    s5-publish model FOLDER REPO --dry-run      (check the folder and print the card and the file list only)

A model folder is checked before anything is uploaded: it must hold safetensors weights only (no pickled
`.bin`/`.pth` files), `config.json`, `preprocessor_config.json` and the model code that `save_pretrained` copies
for `trust_remote_code` (with every relative import it needs); it must load with `from_pretrained`, have at
least one task, and run a forward pass for every task on a small dummy input. A model trained with LoRA
(`training/finetune_mdf.py --lora`) also has `lora/<task>/` adapters: one per task, each loading with PEFT and
running its task; they are uploaded too and the card says how to load them. A released model's card
(`--card s5-vit-b-mdf`, ...) is accepted only for the converted official weights: the folder's weight digest
must equal the one the converter recorded (`official_conversion.json`), or the released model's pinned one.
Then one commit uploads those files plus the model card (`README.md`). A dataset folder (Parquet shards under `data/` plus the `README.md`
card, as written by the RS4P pipeline) must load with `datasets` in streaming mode before it is uploaded.

The Hub endpoint and token come from the usual `HF_ENDPOINT` / `HF_TOKEN` settings, or pass an `HfApi`.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, DatasetCard, HfApi, ModelCard

from ..convert_official import CONVERSION_RECORD, read_conversion_record, weights_sha256
from .cards import (
    OFFICIAL_WEIGHTS_STATEMENT,
    RELEASED_MODELS,
    build_model_card,
    released_card,
    validate_card_text,
)

logger = logging.getLogger(__name__)

# Pickle-based formats execute code when loaded: never published.
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
MODEL_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
DATASET_PATTERNS = ["README.md", "data/**", "*.parquet", "*.json", "*.jsonl", "*.png"]
STALE_DATASET_PATTERNS = ["data/**", "*.parquet"]
# Hidden files are local bookkeeping (the ownership manifest, temporaries of an interrupted write), not data.
LOCAL_ONLY_PATTERNS = [".*", "**/.*"]
LORA_FOLDER = "lora"  # s5_hf.training.lora.ADAPTER_FOLDER (not imported here: that module needs peft)
LORA_FILES = ("adapter_config.json", "adapter_model.safetensors")


class PublishError(ValueError):
    """The folder cannot be published as it is; the message says what is wrong and how to fix it."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it ("name" or "namespace/name"); PublishError otherwise, before any check or
    upload starts."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise PublishError(f"Invalid Hub repo id {repo_id!r}: {error}") from None
    return repo_id


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------
def _pickles(folder: Path) -> list[str]:
    found = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)]
    return sorted(str(p.relative_to(folder)) for p in found)


def remote_code_files(folder: Path) -> list[str]:
    """The `.py` files the folder's `auto_map` entries name, plus the modules they import relatively (recursively).

    Raises PublishError if `auto_map` is missing or a needed module is not in the folder.
    """
    needed: list[str] = []
    for name in MODEL_FILES:
        path = folder / name
        auto_map = json.loads(path.read_text()).get("auto_map") if path.is_file() else None
        if not auto_map:
            raise PublishError(
                f"{path} has no auto_map, so the model would not load with trust_remote_code. Re-save the model "
                f"and processor with s5_hf imported (model.save_pretrained / processor.save_pretrained)."
            )
        for reference in auto_map.values():
            reference = reference[0] if isinstance(reference, list) else reference
            needed.append(reference.split(".")[0] + ".py")
    found: list[str] = []
    while needed:
        module = needed.pop()
        if module in found:
            continue
        path = folder / module
        if not path.is_file():
            raise PublishError(
                f"{folder} lacks {module}, which the remote code needs. Re-save with s5_hf imported so "
                f"save_pretrained copies the code."
            )
        found.append(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                needed.append(node.module.split(".")[0] + ".py")
    return sorted(found)


def load_model_folder(folder: str | os.PathLike, auto_class, processor: str):
    """Load a saved model folder as the Hub's users would (`auto_class` and AutoImageProcessor) after the checks
    every published model must pass: safetensors only, config/processor/code present, no weight left unfilled.
    PublishError naming the problem otherwise. `processor` names the processor class for the message."""
    from transformers import AutoImageProcessor

    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a folder.")
    pickles = _pickles(folder)
    if pickles:
        raise PublishError(
            f"{folder} holds pickled weights {pickles}: only safetensors are published. Remove them (re-save with "
            f"save_pretrained, which writes model.safetensors)."
        )
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(f"{folder} lacks {missing}; save the model and its {processor} there first.")
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise PublishError(f"{folder} has no safetensors weights (model.safetensors).")
    remote_code_files(folder)
    try:
        model, info = auto_class.from_pretrained(folder, output_loading_info=True)
        AutoImageProcessor.from_pretrained(folder)
    except Exception as error:  # any loading failure means the repo would be broken
        raise PublishError(f"{folder} does not load: {type(error).__name__}: {error}") from error
    # from_pretrained only warns about weights it could not fill and initialises them randomly: refuse that.
    problems = {kind: sorted(info.get(kind) or [])[:5] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        raise PublishError(f"{folder}: the weights do not match the configuration: "
                           + "; ".join(f"{kind} {keys}" for kind, keys in problems.items() if keys))
    return model


def check_model_folder(folder: str | os.PathLike):
    """Check a saved S5 model folder can be published; returns the loaded model (eval mode).

    Raises PublishError naming the problem (pickled weights, missing files or code, no tasks, failing forward).
    """
    from transformers import AutoModelForSemanticSegmentation

    from .. import S5ForSemanticSegmentation  # noqa: F401  (registers the Auto classes)

    model = load_model_folder(folder, AutoModelForSemanticSegmentation, "S5ImageProcessor")
    model.eval()
    config = model.config
    if not getattr(config, "tasks", None):
        raise PublishError(f"{folder}: the model has no tasks.")
    size = 4 * config.patch_size
    dummy = torch.zeros(1, config.num_channels, size, size)
    with torch.no_grad():
        for spec in config.tasks:
            logits = model(dummy, task=spec["name"]).logits
            expected = (1, len(spec["id2label"]), size, size)
            if tuple(logits.shape) != expected or not torch.isfinite(logits).all():
                raise PublishError(
                    f"{folder}: task {spec['name']!r} gives logits of shape {tuple(logits.shape)} "
                    f"(expected {expected}) or non-finite values."
                )
    return model


def lora_adapter_files(folder: str | os.PathLike) -> list[str]:
    """The adapter files of a LoRA-trained model folder (`lora/<task>/adapter_config.json` and
    `adapter_model.safetensors`, paths relative to `folder`); [] when it has no `lora/` folder."""
    root = Path(folder) / LORA_FOLDER
    if not root.is_dir():
        return []
    return sorted(f"{LORA_FOLDER}/{task.name}/{name}" for task in root.iterdir() if task.is_dir() for name in LORA_FILES
                  if (task / name).is_file())


def check_lora_adapters(folder: str | os.PathLike, config) -> list[str]:
    """Check the `lora/<task>/` adapters of a model folder: exactly one per task of `config`, each with its config
    and safetensors weights, all loading with PEFT onto the folder's model and running their task. Returns the
    task names ([] without a `lora/` folder); raises PublishError naming the problem."""
    folder = Path(folder)
    root = folder / LORA_FOLDER
    if not root.exists():
        return []
    adapters = sorted(p.name for p in root.iterdir() if p.is_dir())
    tasks = list(config.task_names)
    if sorted(adapters) != sorted(tasks):
        raise PublishError(
            f"{root} has adapters {adapters} but the model's tasks are {tasks}: every task needs exactly one "
            f"adapter (lora/<task>/), as training/finetune_mdf.py --lora writes them."
        )
    incomplete = [f"{LORA_FOLDER}/{task}/{name}" for task in tasks for name in LORA_FILES
                  if not (root / task / name).is_file()]
    if incomplete:
        raise PublishError(f"{folder} lacks the adapter files {incomplete}.")
    try:
        from ..training.lora import S5LoRAModel

        model = S5LoRAModel.from_pretrained(folder)
        size = 4 * config.patch_size
        dummy = torch.zeros(1, config.num_channels, size, size)
        with torch.no_grad():
            for spec in config.tasks:
                logits = model(dummy, task=spec["name"]).logits
                if tuple(logits.shape) != (1, len(spec["id2label"]), size, size) or not torch.isfinite(logits).all():
                    raise ValueError(f"task {spec['name']!r} gives logits of shape {tuple(logits.shape)} or "
                                     f"non-finite values")
    except Exception as error:  # any failure means the published adapters would not load or run
        raise PublishError(f"{root}: the LoRA adapters do not load and run with the model: "
                           f"{type(error).__name__}: {error}") from error
    return tasks


def _architecture(config) -> dict:
    """A short description of a model for messages."""
    return {"hidden_size": config.hidden_size, "layers": config.num_hidden_layers, "tasks": config.task_names,
            "expert_features": config.part_features if config.use_experts else 0}


def check_official_weights(folder: str | os.PathLike, model) -> str:
    """Check that `folder` holds the converted official weights of the released model `model` (a ReleasedModel);
    returns their digest (`weights_sha256`). A released card states the paper's results and that the weights are
    the official checkpoint: any other weights of the same shape (random, fine-tuned) are refused."""
    folder = Path(folder)
    digest = weights_sha256(folder)
    name = model.name
    if getattr(model, "weights_sha256", None):
        if digest != model.weights_sha256:
            raise PublishError(
                f"Card {name!r} is the card of the released official checkpoint, whose converted weights have "
                f"digest {model.weights_sha256}; the weights in {folder} have {digest}. Publish them with a card of "
                f"their own (omit --card, or pass a Markdown file)."
            )
        return digest
    try:
        record = read_conversion_record(folder)
    except ValueError as error:
        raise PublishError(str(error)) from None
    if record is None:
        raise PublishError(
            f"Card {name!r} says the weights are the official checkpoint converted, but {folder} has no "
            f"{CONVERSION_RECORD} (written by s5-convert-official): these are not converted official weights. "
            f"Publish them with a card of their own (omit --card, or pass a Markdown file)."
        )
    if record["weights_sha256"] != digest:
        raise PublishError(
            f"Card {name!r} needs the converted official weights, but the weights in {folder} (digest {digest}) "
            f"are not those {CONVERSION_RECORD} records ({record['weights_sha256']}): they were changed or "
            f"replaced after the conversion."
        )
    return digest


def resolve_card(card: str | os.PathLike | ModelCard | None, config, repo_id: str,
                 folder: str | os.PathLike | None = None, lora_adapters: Sequence[str] = ()) -> ModelCard:
    """The card to publish: a `ModelCard`, a released model's name (`s5-vit-b-mdf`, ...), a Markdown file, or None
    for a card generated from the configuration (without results).

    A released model's card needs `folder`, whose weights must be the converted official ones (see
    `check_official_weights`). With `lora_adapters` (tasks), a generated card describes the adapters, a released
    card is refused (the official models have none) and a given card must mention them (`lora/`).
    """
    if isinstance(card, ModelCard) or card is None or str(card) not in {m.name for m in RELEASED_MODELS}:
        if isinstance(card, ModelCard):
            resolved = card
        elif card is None:
            resolved = build_model_card(config, repo_id, lora_adapters=lora_adapters)
        else:
            path = Path(card)
            if not path.is_file():
                raise PublishError(f"Card {card!r} is neither a file nor a released model "
                                   f"({', '.join(m.name for m in RELEASED_MODELS)}).")
            resolved = ModelCard.load(path)
        if OFFICIAL_WEIGHTS_STATEMENT in str(resolved):
            # A released model's card given as a file (e.g. model_cards/s5-vit-b-mdf.md): the same weights check.
            same = [m for m in RELEASED_MODELS if not m.config().architecture_differences(config)]
            if not same:
                raise PublishError(
                    f"The given card says {OFFICIAL_WEIGHTS_STATEMENT.lower()!r}, but no released model has this "
                    f"model's architecture {_architecture(config)}."
                )
            if folder is None:
                raise PublishError("A card about the official weights can only be checked against a model folder.")
            check_official_weights(folder, same[0])
        if lora_adapters and f"{LORA_FOLDER}/" not in str(resolved):
            raise PublishError(
                f"The model has LoRA adapters ({', '.join(lora_adapters)}) but the given card "
                f"does not mention them (no '{LORA_FOLDER}/'): say that results need the adapters and how to load "
                f"them, or let s5-publish generate the card."
            )
        return resolved
    released = {m.name: m for m in RELEASED_MODELS}
    model = released[str(card)]
    differences = model.config().architecture_differences(config)
    if differences:
        raise PublishError(f"Card {card!r} describes {_architecture(model.config())} but the folder's model is "
                           f"{_architecture(config)}: {differences} (card, folder).")
    if lora_adapters:
        raise PublishError(f"Card {card!r} is the card of the released official checkpoint, which has no LoRA "
                           f"adapters; this folder has adapters for {list(lora_adapters)}.")
    if folder is None:
        raise PublishError(f"Card {card!r} can only be checked against a model folder's weights.")
    digest = check_official_weights(folder, model)
    return released_card(model, repo_id, weights_sha256=digest)


def publish_model(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: str | os.PathLike | ModelCard | None = None,
    private: bool = False,
    commit_message: str | None = None,
    api: HfApi | None = None,
    dry_run: bool = False,
) -> dict:
    """Check `folder` (see `check_model_folder`) and upload it with its card to the model repo `repo_id` in one
    commit. Earlier weight files of the repo that this upload does not replace are deleted in the same commit.

    Returns `{"repo_id", "files", "commit_url"}` (`commit_url` is None with `dry_run`).
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    model = check_model_folder(folder)
    adapters = check_lora_adapters(folder, model.config)
    model_card = resolve_card(card, model.config, repo_id, folder=folder, lora_adapters=adapters)
    try:
        validate_card_text(str(model_card))
    except ValueError as error:
        raise PublishError(f"The model card is not valid: {error}") from None
    record = [CONVERSION_RECORD] if (folder / CONVERSION_RECORD).is_file() else []
    files = sorted(
        {p.name for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)}
        | set(MODEL_FILES)
        | set(remote_code_files(folder))
        | set(record)
    ) + lora_adapter_files(folder)
    skipped = sorted(p.name for p in folder.iterdir()
                     if p.name not in files and p.name not in ("README.md", LORA_FOLDER))
    if skipped:
        logger.info("Not uploaded (not part of a model repo): %s", skipped)
    result = {"repo_id": repo_id, "files": files + ["README.md"], "commit_url": None, "card": str(model_card)}
    if dry_run:
        return result
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    operations: list = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(model_card).encode()))
    # Weights, and adapters of an earlier LoRA upload, that this upload does not replace would load with it.
    stale = [
        name for name in api.list_repo_files(repo_id, repo_type="model")
        if name not in files and (name.endswith(WEIGHT_SUFFIXES) or name.endswith(PICKLE_SUFFIXES)
                                  or name.startswith(f"{LORA_FOLDER}/") or name == CONVERSION_RECORD)
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    commit = api.create_commit(
        repo_id, operations, repo_type="model",
        commit_message=commit_message or f"Upload S5 model ({', '.join(model.config.task_names)})",
    )
    result["commit_url"] = commit.commit_url
    return result


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def check_dataset_folder(folder: str | os.PathLike) -> dict[str, int]:
    """Check a Parquet dataset folder with its card loads in streaming mode; returns {split: columns} of the first row.

    Raises PublishError when the card is missing or unparsable, pickles are present, or a split does not stream.
    """
    import datasets

    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder}: not a folder.")
    pickles = _pickles(folder)
    if pickles:
        raise PublishError(f"{folder} holds pickled files {pickles}; datasets are published as Parquet only.")
    readme = folder / "README.md"
    if not readme.is_file():
        raise PublishError(f"{folder} has no README.md (the dataset card).")
    try:
        DatasetCard.load(readme)
    except Exception as error:
        raise PublishError(f"{readme}: the dataset card does not parse: {error}") from error
    if not list(folder.rglob("*.parquet")):
        raise PublishError(f"{folder} holds no Parquet files.")
    try:
        streams = datasets.load_dataset(str(folder), streaming=True)
        columns = {split: len(next(iter(stream))) for split, stream in streams.items()}
    except StopIteration:
        raise PublishError(f"{folder}: a split has no rows.") from None
    except Exception as error:
        raise PublishError(f"{folder} does not load with datasets: {type(error).__name__}: {error}") from error
    return columns


def publish_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
    api: HfApi | None = None,
    dry_run: bool = False,
) -> dict:
    """Check `folder` (see `check_dataset_folder`) and upload its card, Parquet shards and reports (JSON/PNG) to the
    dataset repo `repo_id` in one commit, which also deletes the repo's data files this upload does not replace.
    Returns `{"repo_id", "splits", "commit_url"}`."""
    check_repo_id(repo_id)
    splits = check_dataset_folder(folder)
    result = {"repo_id": repo_id, "splits": sorted(splits), "commit_url": None}
    if dry_run:
        return result
    api = api or HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    # Shards of an earlier upload that this one does not replace would still be read as data (e.g. a re-export
    # with another shard count): the same commit deletes them.
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=str(folder), allow_patterns=DATASET_PATTERNS,
        delete_patterns=STALE_DATASET_PATTERNS, commit_message=commit_message or "Upload dataset",
        ignore_patterns=LOCAL_ONLY_PATTERNS,
    )
    result["commit_url"] = commit.commit_url
    return result


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s5-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["model", "dataset"])
    parser.add_argument("folder")
    parser.add_argument("repo_id", help="namespace/name on the Hub")
    parser.add_argument("--card", help="models: a released model's name (e.g. s5-vit-b-mdf) or a Markdown card; "
                                       "default: generated from the config, without results")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="check and show what would be uploaded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.kind == "model":
            result = publish_model(args.folder, args.repo_id, card=args.card, private=args.private,
                                   commit_message=args.message, dry_run=args.dry_run)
            if args.dry_run:
                print(result.pop("card"))
            else:
                result.pop("card")
        else:
            if args.card:
                parser.error("--card is for models; a dataset folder carries its card as README.md")
            result = publish_dataset(args.folder, args.repo_id, private=args.private,
                                     commit_message=args.message, dry_run=args.dry_run)
    except PublishError as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except Exception as error:  # the Hub refused (no token, no permission, ...): one line, no traceback
        from huggingface_hub.errors import HfHubHTTPError

        if not isinstance(error, HfHubHTTPError):
            raise
        print(f"{parser.prog}: error: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


__all__ = [
    "PublishError",
    "check_dataset_folder",
    "check_lora_adapters",
    "check_model_folder",
    "check_official_weights",
    "check_repo_id",
    "lora_adapter_files",
    "publish_dataset",
    "publish_model",
    "remote_code_files",
    "resolve_card",
]


if __name__ == "__main__":
    sys.exit(main())
