"""Convert official S5 checkpoints (MiliLab/S5, mmseg-style key layout) into `save_pretrained` folders.

Handles the single-task S4P model (ViT + UperNet + iSAID head) and the four-dataset MoE-MDF model. The
architecture is inferred from tensor shapes; what shapes cannot tell (attention heads, which blocks feed the
neck) comes from the paper preset of the same width/depth or from arguments. Every official key must be
consumed and every key of our model filled, otherwise the conversion stops and names the offending keys.

    s5-convert-official checkpoint.pth output_dir/
    s5-convert-official --repo_id lianglyu/S5 --filename s5_vitb_mdf.pth output_dir/    (download from the Hub first)

In Python, `from_official(repo_id, filename)` downloads, converts and caches in one call (a second call loads the
cached conversion). The converted folder also holds `official_conversion.json`: where the weights came from and
`weights_sha256`, a digest of the converted tensors that ties the released models' cards to these weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from .cli import ArgumentParser
from .configuration_s5 import PRESETS, S5Config
from .files import (
    foreign_entries,
    sha256_file,
    staged_directory,
    write_json,
    write_manifest,
)
from .image_processing_s5 import S5ImageProcessor
from .label_sets import MDF_TASKS, get_label_set
from .modeling_s5 import S5ForSemanticSegmentation

# Official decoder/head name suffix -> our task name. The unsuffixed decoder is iSAID's in S4P checkpoints and
# Vaihingen's in MDF checkpoints (whose Vaihingen head is `semseghead_vaihingen`).
_SUFFIX_TO_TASK = {"vaihingen": "vaihingen", "potsdam": "potsdam", "OpenEarthMap": "openearthmap", "loveda": "loveda"}
# Keys the official model carries but never uses: the class token and mmseg's 1-class placeholder classifier.
_UNUSED = re.compile(r"^encoder\.cls_token$|^semsegdecoder(_\w+)?\.decode_head\.conv_seg\.(weight|bias)$")

_BLOCK_RULES = [
    (r"ln1\.(weight|bias)", r"layernorm_before.\1"),
    (r"ln2\.(weight|bias)", r"layernorm_after.\1"),
    (r"attn\.attn\.out_proj\.(weight|bias)", r"attention.o_proj.\1"),
    (r"ffn\.layers\.0\.0\.(weight|bias)", r"mlp.fc1.\1"),
    (r"ffn\.layers\.1\.(weight|bias)", r"mlp.fc2.\1"),
    (r"ffn\.experts\.(\d+)\.(weight|bias)", r"mlp.experts.\1.\2"),
]
_ENCODER_RULES = [
    (r"encoder\.pos_embed", "s5.embeddings.position_embeddings"),
    (r"encoder\.patch_embed\.projection\.(weight|bias)", r"s5.embeddings.projection.\1"),
    (r"encoder\.fpn1\.0\.(weight|bias)", r"s5.neck.to_stride4.0.\1"),
    (r"encoder\.fpn1\.1\.ln\.(weight|bias)", r"s5.neck.to_stride4.1.\1"),
    (r"encoder\.fpn1\.3\.(weight|bias)", r"s5.neck.to_stride4.3.\1"),
    (r"encoder\.fpn2\.0\.(weight|bias)", r"s5.neck.to_stride8.\1"),
]
_DECODER_RULES = [
    (r"psp_modules\.(\d+)\.1\.conv\.weight", r"psp_convs.\1.0.weight"),
    (r"psp_modules\.(\d+)\.1\.bn\.(\w+)", r"psp_convs.\1.1.\2"),
    (r"bottleneck\.conv\.weight", "psp_bottleneck.0.weight"),
    (r"bottleneck\.bn\.(\w+)", r"psp_bottleneck.1.\1"),
    (r"(lateral_convs|fpn_convs)\.(\d+)\.conv\.weight", r"\1.\2.0.weight"),
    (r"(lateral_convs|fpn_convs)\.(\d+)\.bn\.(\w+)", r"\1.\2.1.\3"),
    (r"fpn_bottleneck\.conv\.weight", "fpn_bottleneck.0.weight"),
    (r"fpn_bottleneck\.bn\.(\w+)", r"fpn_bottleneck.1.\1"),
]
# The same rules backwards (our name -> official name), to name missing weights as the checkpoint names them.
_ENCODER_INVERSE = [
    (r"s5\.embeddings\.position_embeddings", "encoder.pos_embed"),
    (r"s5\.embeddings\.projection\.(weight|bias)", r"encoder.patch_embed.projection.\1"),
    (r"s5\.neck\.to_stride4\.0\.(weight|bias)", r"encoder.fpn1.0.\1"),
    (r"s5\.neck\.to_stride4\.1\.(weight|bias)", r"encoder.fpn1.1.ln.\1"),
    (r"s5\.neck\.to_stride4\.3\.(weight|bias)", r"encoder.fpn1.3.\1"),
    (r"s5\.neck\.to_stride8\.(weight|bias)", r"encoder.fpn2.0.\1"),
]
_BLOCK_INVERSE = [
    (r"layernorm_before\.(weight|bias)", r"ln1.\1"),
    (r"layernorm_after\.(weight|bias)", r"ln2.\1"),
    (r"attention\.o_proj\.(weight|bias)", r"attn.attn.out_proj.\1"),
    (r"attention\.[qkv]_proj\.(weight|bias)", r"attn.attn.in_proj_\1"),  # one packed projection
    (r"mlp\.fc1\.(weight|bias)", r"ffn.layers.0.0.\1"),
    (r"mlp\.fc2\.(weight|bias)", r"ffn.layers.1.\1"),
    (r"mlp\.experts\.(\d+)\.(weight|bias)", r"ffn.experts.\1.\2"),
]
_DECODER_INVERSE = [
    (r"psp_convs\.(\d+)\.0\.weight", r"psp_modules.\1.1.conv.weight"),
    (r"psp_convs\.(\d+)\.1\.(\w+)", r"psp_modules.\1.1.bn.\2"),
    (r"psp_bottleneck\.0\.weight", "bottleneck.conv.weight"),
    (r"psp_bottleneck\.1\.(\w+)", r"bottleneck.bn.\1"),
    (r"(lateral_convs|fpn_convs)\.(\d+)\.0\.weight", r"\1.\2.conv.weight"),
    (r"(lateral_convs|fpn_convs)\.(\d+)\.1\.(\w+)", r"\1.\2.bn.\3"),
    (r"fpn_bottleneck\.0\.weight", "fpn_bottleneck.conv.weight"),
    (r"fpn_bottleneck\.1\.(\w+)", r"fpn_bottleneck.bn.\1"),
]
CONVERSION_RECORD = "official_conversion.json"
_MANIFEST_KIND = "s5-hf official checkpoint conversion"


class ConversionError(ValueError):
    """The checkpoint does not have the official S5 layout (or not one we can map); the message names the keys."""


def load_official_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint; unwrap `{"model": ...}`/`{"state_dict": ...}`
    and strip DistributedDataParallel's `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # SafetensorError (truncated or not safetensors) does not name the file
            raise ConversionError(f"Could not read {path} as safetensors (truncated or not a safetensors file): "
                                  f"{err}") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as err:  # torch raises several types for refused or corrupt pickles
            raise ConversionError(
                f"Could not read {path} as a weights-only PyTorch checkpoint ({err}). If the file is truncated, "
                "download it again; if you trust it and it holds other objects, pass --trust_pickle (it may "
                "execute code)."
            ) from err
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not contain a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _first(state: dict[str, torch.Tensor], pattern: str, what: str) -> torch.Tensor:
    """The first tensor (in key order) whose key fully matches `pattern`; a ConversionError naming `what` if none."""
    for key in sorted(state):
        if re.fullmatch(pattern, key):
            return state[key]
    raise ConversionError(f"The checkpoint has no {what}: not an official S5 checkpoint, or an incomplete one.")


def _require(state: dict[str, torch.Tensor], key: str, dims: int) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"The checkpoint lacks {key!r}: not an official S5 checkpoint, or an incomplete one.")
    if state[key].dim() != dims:
        raise ConversionError(f"{key} has shape {tuple(state[key].shape)}; an official checkpoint has a "
                              f"{dims}-dimensional tensor there.")
    return state[key]


def _infer_config(state: dict[str, torch.Tensor], num_attention_heads, out_indices, pool_scales) -> S5Config:
    # Shapes are read from whichever copy of a tensor is present, so that a missing key is reported by name by
    # the complete key check of `convert_official_state_dict`, not as a failure to infer the architecture.
    pos = _require(state, "encoder.pos_embed", 3)
    patch = _require(state, "encoder.patch_embed.projection.weight", 4)
    hidden, bands, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    grid = int(round(pos.shape[1] ** 0.5))
    if grid * grid != pos.shape[1]:
        raise ConversionError(f"encoder.pos_embed has {pos.shape[1]} positions, not a square grid.")
    blocks = _indices(state, r"encoder\.layers\.(\d+)\.")
    if not blocks:
        raise ConversionError("The checkpoint has no transformer blocks (no 'encoder.layers.<i>.*' keys): not an "
                              "official S5 checkpoint, or an incomplete one.")
    depth = blocks[-1] + 1
    absent = sorted(set(range(depth)) - set(blocks))
    if absent:
        raise ConversionError(f"The checkpoint lacks every key of blocks {absent} (encoder.layers.<i>.*) of its "
                              f"{depth} blocks.")
    preset = next((p for p in PRESETS.values() if p["hidden_size"] == hidden and p["num_hidden_layers"] == depth), None)
    if num_attention_heads is None:
        if preset is None:
            raise ConversionError(
                f"Width {hidden} and depth {depth} match no paper preset: pass num_attention_heads "
                "(--num_attention_heads), it cannot be read from the weights."
            )
        num_attention_heads = preset["num_attention_heads"]
    if out_indices is None:
        if preset is None:
            raise ConversionError(f"Depth {depth} matches no paper preset: pass out_indices (--out_indices).")
        out_indices = preset["out_indices"]

    decoders = sorted({m.group(1) for k in state if (m := re.match(r"(semsegdecoder\w*)\.decode_head\.", k))})
    heads = sorted({m.group(1) for k in state if (m := re.match(r"(semseghead\w*)\.1\.(weight|bias)$", k))})
    if not decoders or not heads:
        raise ConversionError(f"No decoder or head found (decoders {decoders}, heads {heads}): the checkpoint needs "
                              "'semsegdecoder*.decode_head.*' and 'semseghead*.1.weight' keys.")
    mdf = heads != ["semseghead"]
    if mdf:
        tasks = [_SUFFIX_TO_TASK.get(h.removeprefix("semseghead_"), h) for h in heads]
        unknown = [t for t in tasks if t not in MDF_TASKS]
        if unknown:
            raise ConversionError(f"Unknown official heads {unknown}; known: {[f'semseghead_{s}' for s in _SUFFIX_TO_TASK]}.")
        tasks = [t for t in MDF_TASKS if t in tasks]  # the official expert order
    else:
        tasks = ["isaid"]
    for task in tasks:
        head = "semseghead" if not mdf else f"semseghead_{_official_suffix(task)}"
        weight = state.get(f"{head}.1.weight", state.get(f"{head}.1.bias"))
        classes = weight.shape[0] if weight.dim() else 0
        expected = get_label_set(task).num_classes
        if classes != expected:
            raise ConversionError(f"{head} predicts {classes} classes but {task} has {expected}.")

    experts = _indices(state, r"encoder\.layers\.\d+\.ffn\.experts\.(\d+)\.")
    part_features = 0
    if experts:
        part_features = _first(state, r"encoder\.layers\.\d+\.ffn\.experts\.\d+\.(weight|bias)",
                               "expert weights").shape[0]
    psp = _indices(state, r"semsegdecoder\w*\.decode_head\.psp_modules\.(\d+)\.")
    if not psp:
        raise ConversionError("The checkpoint has no pyramid pooling branches (no "
                              "'semsegdecoder*.decode_head.psp_modules.<i>.*' keys).")
    if pool_scales is None:
        if len(psp) != 4 or psp[-1] != 3:
            raise ConversionError(f"The decoder has pooling branches {psp}, not the paper's 4: pass pool_scales "
                                  "(--pool_scales).")
        pool_scales = [1, 2, 3, 6]
    fc1 = _first(state, r"encoder\.layers\.\d+\.ffn\.layers\.0\.0\.(weight|bias)",
                 "FFN weights ('encoder.layers.<i>.ffn.layers.0.0.weight')")
    decoder_width = _first(state, r"semsegdecoder\w*\.decode_head\.(bottleneck|fpn_bottleneck)\.conv\.weight",
                           "decoder bottleneck ('semsegdecoder*.decode_head.bottleneck.conv.weight')")
    try:
        return _config(hidden, depth, num_attention_heads, fc1, grid, patch_size, bands, out_indices,
                       decoder_width, pool_scales, tasks, part_features)
    except ValueError as error:
        raise ConversionError(f"The checkpoint's shapes (width {hidden}, {depth} blocks {blocks}) give no valid "
                              f"configuration: {error}") from None


def _config(hidden, depth, num_attention_heads, fc1, grid, patch_size, bands, out_indices, decoder_width,
            pool_scales, tasks, part_features) -> S5Config:
    return S5Config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        mlp_ratio=fc1.shape[0] / hidden,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=bands,
        out_indices=list(out_indices),
        decoder_hidden_size=decoder_width.shape[0],
        pool_scales=list(pool_scales),
        tasks=tasks,
        part_features=part_features,
    )


def _official_suffix(task: str) -> str:
    return {v: k for k, v in _SUFFIX_TO_TASK.items()}[task]


def _rename(key: str, decoder_index: dict[str, int], head_index: dict[str, int]) -> str | None:
    for pattern, repl in _ENCODER_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
        for pattern, repl in _BLOCK_RULES:
            if re.fullmatch(pattern, m.group(2)):
                return f"s5.encoder.layer.{m.group(1)}." + re.sub(pattern, repl, m.group(2))
    if (m := re.fullmatch(r"(semsegdecoder\w*)\.decode_head\.(.+)", key)) and m.group(1) in decoder_index:
        for pattern, repl in _DECODER_RULES:
            if re.fullmatch(pattern, m.group(2)):
                return f"decoders.{decoder_index[m.group(1)]}." + re.sub(pattern, repl, m.group(2))
    if (m := re.fullmatch(r"(semseghead\w*)\.1\.(weight|bias)", key)) and m.group(1) in head_index:
        return f"classifiers.{head_index[m.group(1)]}.1.{m.group(2)}"
    return None


def _official_name(key: str, decoder_index: dict[str, int], head_index: dict[str, int]) -> str:
    """The official checkpoint key that `_rename` maps to our `key` (for messages about missing weights)."""
    decoders = {i: name for name, i in decoder_index.items()}
    heads = {i: name for name, i in head_index.items()}
    for pattern, repl in _ENCODER_INVERSE:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    if m := re.fullmatch(r"s5\.encoder\.layer\.(\d+)\.(.+)", key):
        for pattern, repl in _BLOCK_INVERSE:
            if re.fullmatch(pattern, m.group(2)):
                return f"encoder.layers.{m.group(1)}." + re.sub(pattern, repl, m.group(2))
    if (m := re.fullmatch(r"decoders\.(\d+)\.(.+)", key)) and int(m.group(1)) in decoders:
        for pattern, repl in _DECODER_INVERSE:
            if re.fullmatch(pattern, m.group(2)):
                return f"{decoders[int(m.group(1))]}.decode_head." + re.sub(pattern, repl, m.group(2))
    if (m := re.fullmatch(r"classifiers\.(\d+)\.1\.(weight|bias)", key)) and int(m.group(1)) in heads:
        return f"{heads[int(m.group(1))]}.1.{m.group(2)}"
    return key


def convert_official_state_dict(
    state: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    out_indices: list[int] | None = None,
    pool_scales: list[int] | None = None,
) -> tuple[S5Config, dict[str, torch.Tensor]]:
    """Map an official S5 state dict to our config and key layout. Raises `ConversionError` on any key that
    is neither mapped nor known to be unused, on any of our keys left unfilled (named as the official key), and
    on shape mismatches."""
    config = _infer_config(state, num_attention_heads, out_indices, pool_scales)
    names = config.task_names
    if names == ["isaid"]:
        decoder_index, head_index = {"semsegdecoder": 0}, {"semseghead": 0}
    else:
        decoder_index = {("semsegdecoder" if t == "vaihingen" else f"semsegdecoder_{_official_suffix(t)}"): i
                         for i, t in enumerate(names)}
        head_index = {f"semseghead_{_official_suffix(t)}": i for i, t in enumerate(names)}

    converted, unknown, wrong = {}, [], []
    for key, value in state.items():
        if _UNUSED.match(key):
            continue
        if m := re.fullmatch(r"encoder\.layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", key):
            layer, kind = m.groups()
            if value.dim() == 0 or value.shape[0] % 3:
                wrong.append(f"{key}: {tuple(value.shape)} (the packed q/k/v projection needs 3 x width rows)")
                continue
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"s5.encoder.layer.{layer}.attention.{name}.{kind}"] = part.clone()
            continue
        new_key = _rename(key, decoder_index, head_index)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ConversionError(f"{len(unknown)} keys of the checkpoint have no place in an S5 model: {unknown[:8]}")

    with torch.device("meta"):
        expected = S5ForSemanticSegmentation(config).state_dict()
    wrong += [f"{_official_name(k, decoder_index, head_index)}: {tuple(converted[k].shape)}, expected "
              f"{tuple(v.shape)}" for k, v in expected.items() if k in converted and converted[k].shape != v.shape]
    if wrong:
        raise ConversionError(f"Shape mismatches in the checkpoint (for the inferred model): {wrong[:8]}")
    missing = sorted(set(expected) - set(converted))
    if missing:
        named = sorted({_official_name(k, decoder_index, head_index) for k in missing})
        raise ConversionError(
            f"The checkpoint lacks {len(named)} weights of the inferred model: {named[:8]}"
            + (" ..." if len(named) > 8 else "") + f" (s5-hf names: {missing[:8]})"
        )
    return config, converted


# ----------------------------------------------------------------------------------------------------------------
# Weight digests: what ties a released model's card to the converted official weights
# ----------------------------------------------------------------------------------------------------------------
def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in key order: each key, dtype, shape and raw bytes. Independent of how the
    safetensors file was written (header order, metadata, sharding)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(folder: str | os.PathLike) -> str:
    """`tensors_sha256` of a saved model folder's safetensors weights (one file or shards)."""
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no safetensors weights.")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if key in tensors:
                        raise ValueError(f"{path}: tensor {key!r} is also in another weights file of {folder}.")
                    tensors[key] = handle.get_tensor(key)
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(f"Could not read {path} as safetensors: {err}") from err
    return tensors_sha256(tensors)


def read_conversion_record(folder: str | os.PathLike) -> dict | None:
    """The `official_conversion.json` the converter wrote into `folder`, or None."""
    path = Path(folder) / CONVERSION_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("weights_sha256"), str):
        raise ValueError(f"{path} has no 'weights_sha256'.")
    return record




def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    num_attention_heads: int | None = None,
    out_indices: list[int] | None = None,
    pool_scales: list[int] | None = None,
    trust_pickle: bool = False,
    source: dict | None = None,
) -> S5ForSemanticSegmentation:
    """Convert `checkpoint` and write model (safetensors), config, image processor, code and the conversion
    record (`official_conversion.json`: source, `weights_sha256`) to `output_dir`.

    The folder appears complete or not at all (written beside it, then renamed). An existing `output_dir` is
    replaced only if it holds nothing but an earlier conversion; anything else stops with a ConversionError naming
    the files, before the checkpoint is read. `source` (e.g. the Hub repo, file and commit) goes into the record.
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir} exists and is not a folder.")
    foreign = foreign_entries(output_dir, _MANIFEST_KIND)
    if foreign:
        raise ConversionError(f"{output_dir} holds files this converter did not write ({foreign[:5]}); choose an "
                              "empty or new folder.")
    state = load_official_state_dict(checkpoint, trust_pickle=trust_pickle)
    config, converted = convert_official_state_dict(state, num_attention_heads, out_indices, pool_scales)
    model = S5ForSemanticSegmentation(config)
    model.load_state_dict(converted, strict=True)
    model.eval()
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        S5ImageProcessor().save_pretrained(staging)
        record = {
            "source": source or {"file": checkpoint.name},
            "source_sha256": sha256_file(checkpoint),
            "weights_sha256": weights_sha256(staging),
            "tasks": config.task_names,
        }
        write_json(staging / CONVERSION_RECORD, record, indent=2)
        write_manifest(staging, _MANIFEST_KIND, [p.relative_to(staging).as_posix() for p in staging.rglob("*")
                                                 if p.is_file()])
    return model


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints on the Hub: download, convert, cache
# ----------------------------------------------------------------------------------------------------------------
def _snapshot_commit(path: str) -> str:
    """The commit of a file that hf_hub_download placed in the cache (`.../snapshots/<commit>/<filename>`)."""
    parts = Path(path).parts
    if "snapshots" not in parts[:-1]:
        raise ConversionError(f"Cannot tell the commit of {path}: not a Hugging Face cache path.")
    return parts[len(parts) - 1 - parts[::-1].index("snapshots") + 1]


def converted_cache_folder(repo_id: str, filename: str, commit: str, cache_dir: str | os.PathLike | None = None,
                           **conversion: object) -> Path:
    """Where `from_official` keeps the conversion of `filename` of `repo_id` at `commit`: under the Hugging Face
    cache (`HF_HOME/s5_hf/converted`, or `cache_dir/s5_hf-converted`), one folder per repo, file, commit and
    conversion options."""
    from huggingface_hub import constants

    root = Path(cache_dir) / "s5_hf-converted" if cache_dir else Path(constants.HF_HOME) / "s5_hf" / "converted"
    options = {k: v for k, v in conversion.items() if v is not None}
    name = filename.replace("/", "--")
    if options:
        name += "-" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"models--{repo_id.replace('/', '--')}" / commit / name


def from_official(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    *,
    num_attention_heads: int | None = None,
    out_indices: list[int] | None = None,
    pool_scales: list[int] | None = None,
    trust_pickle: bool = False,
    **hub_kwargs,
) -> S5ForSemanticSegmentation:
    """Download the official checkpoint `filename` of the Hub repo `repo_id` (e.g. "lianglyu/S5"), convert it
    and return the model (eval mode). The conversion is cached under the Hugging Face cache, keyed by repo, file,
    resolved commit and conversion options: a later call loads it without converting (or downloading) again.

    `hub_kwargs` go to `huggingface_hub.hf_hub_download` (token, endpoint, local_files_only, ...); the other
    options are those of `convert_official_checkpoint`.
    """
    from huggingface_hub import hf_hub_download

    if "local_dir" in hub_kwargs:
        raise TypeError("from_official caches in the Hugging Face cache; local_dir is not supported (use "
                        "s5-convert-official --repo_id ... OUTPUT_DIR for a folder of your choice).")
    path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, **hub_kwargs)
    commit = _snapshot_commit(path)
    options = {"num_attention_heads": num_attention_heads, "out_indices": out_indices, "pool_scales": pool_scales}
    folder = converted_cache_folder(repo_id, filename, commit, cache_dir, **options)
    if not (folder / CONVERSION_RECORD).is_file():  # written last: the folder is complete
        convert_official_checkpoint(path, folder, trust_pickle=trust_pickle,
                                    source={"repo_id": repo_id, "filename": filename, "commit": commit}, **options)
    return S5ForSemanticSegmentation.from_pretrained(folder).eval()


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="s5-convert-official", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="[CHECKPOINT] OUTPUT_DIR",
                        help="official .pth/.safetensors checkpoint (omit with --repo_id) and the output folder")
    parser.add_argument("--repo_id", help="Hub repo of the official checkpoints (e.g. lianglyu/S5)")
    parser.add_argument("--filename", help="checkpoint file in --repo_id")
    parser.add_argument("--revision", help="branch, tag or commit of --repo_id (default: main)")
    parser.add_argument("--num_attention_heads", type=int, help="needed when the width matches no paper preset")
    parser.add_argument("--out_indices", type=_int_list, help="stages feeding the neck, e.g. '4,6,8,12'")
    parser.add_argument("--pool_scales", type=_int_list, help="decoder pooling scales, default 1,2,3,6")
    parser.add_argument("--trust_pickle", action="store_true", help="allow arbitrary pickles (only trusted files)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repo_id or args.filename:
        if not (args.repo_id and args.filename) or len(args.paths) != 1:
            parser.error("--repo_id and --filename go together, with one positional argument: the output folder")
    elif len(args.paths) != 2:
        parser.error("expected CHECKPOINT OUTPUT_DIR (or --repo_id REPO --filename FILE OUTPUT_DIR)")
    output_dir = args.paths[-1]
    try:
        if args.repo_id:
            from huggingface_hub import hf_hub_download

            checkpoint = hf_hub_download(args.repo_id, args.filename, revision=args.revision)
            source = {"repo_id": args.repo_id, "filename": args.filename, "commit": _snapshot_commit(checkpoint)}
        else:
            checkpoint, source = args.paths[0], None
        model = convert_official_checkpoint(
            checkpoint, output_dir, args.num_attention_heads, args.out_indices, args.pool_scales,
            args.trust_pickle, source=source,
        )
    except (ConversionError, OSError, ValueError) as error:
        # One line, no traceback: these are problems with the input, not with the program.
        message = " ".join(str(error).split())
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    except Exception as error:  # e.g. a Hub error (repository or file not found, no connection)
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        if not isinstance(error, (HfHubHTTPError, LocalEntryNotFoundError)):
            raise
        message = " ".join(str(error).split())
        parser.exit(2, f"{parser.prog}: error: {type(error).__name__}: {message}\n")
    params = sum(p.numel() for p in model.parameters())
    print(f"Converted {checkpoint} -> {output_dir}: tasks {model.config.task_names}, "
          f"{params / 1e6:.1f}M parameters")


__all__ = [
    "CONVERSION_RECORD",
    "ConversionError",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "from_official",
    "load_official_state_dict",
    "read_conversion_record",
    "tensors_sha256",
    "weights_sha256",
]


if __name__ == "__main__":
    main(sys.argv[1:])
