"""Convert official S5 checkpoints (MiliLab/S5, mmseg-style key layout) into `save_pretrained` folders.

Handles the single-task S4P model (ViT + UperNet + iSAID head) and the four-dataset MoE-MDF model. The
architecture is inferred from tensor shapes; what shapes cannot tell (attention heads, which blocks feed the
neck) comes from the paper preset of the same width/depth or from arguments. Every official key must be
consumed and every key of our model filled, otherwise the conversion stops and names the offending keys.

    s5-convert-official checkpoint.pth output_dir/
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from .configuration_s5 import PRESETS, S5Config
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


class ConversionError(ValueError):
    """The checkpoint does not have the official S5 layout (or not one we can map)."""


def load_official_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt`/`.bin` or `.safetensors` checkpoint; unwrap `{"model": ...}`/`{"state_dict": ...}`
    and strip DistributedDataParallel's `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as err:  # torch raises several types for refused or corrupt pickles
            raise ConversionError(
                f"Could not read {path} as a weights-only PyTorch checkpoint ({err}). If you trust the file, "
                "pass --trust-pickle (it may execute code)."
            ) from err
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not contain a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _infer_config(state: dict[str, torch.Tensor], num_attention_heads, out_indices, pool_scales) -> S5Config:
    try:
        pos = state["encoder.pos_embed"]
        patch = state["encoder.patch_embed.projection.weight"]
    except KeyError as err:
        raise ConversionError(f"Missing {err.args[0]!r}: not an official S5 checkpoint.") from None
    hidden, bands, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    grid = int(round(pos.shape[1] ** 0.5))
    if grid * grid != pos.shape[1]:
        raise ConversionError(f"encoder.pos_embed has {pos.shape[1]} positions, not a square grid.")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    preset = next((p for p in PRESETS.values() if p["hidden_size"] == hidden and p["num_hidden_layers"] == depth), None)
    if num_attention_heads is None:
        if preset is None:
            raise ConversionError(
                f"Width {hidden} and depth {depth} match no paper preset: pass num_attention_heads "
                "(--num-attention-heads), it cannot be read from the weights."
            )
        num_attention_heads = preset["num_attention_heads"]
    if out_indices is None:
        if preset is None:
            raise ConversionError(f"Depth {depth} matches no paper preset: pass out_indices (--out-indices).")
        out_indices = preset["out_indices"]

    decoders = sorted({m.group(1) for k in state if (m := re.match(r"(semsegdecoder\w*)\.decode_head\.", k))})
    heads = sorted({m.group(1) for k in state if (m := re.match(r"(semseghead\w*)\.1\.weight$", k))})
    if not decoders or not heads:
        raise ConversionError(f"No decoder or head found (decoders {decoders}, heads {heads}).")
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
        classes = state[f"{head}.1.weight"].shape[0]
        expected = get_label_set(task).num_classes
        if classes != expected:
            raise ConversionError(f"{head} predicts {classes} classes but {task} has {expected}.")

    expert_key = "encoder.layers.0.ffn.experts.0.weight"
    part_features = state[expert_key].shape[0] if expert_key in state else 0
    psp = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"semsegdecoder\.decode_head\.psp_modules\.(\d+)\.", k)))
    if pool_scales is None:
        if psp != 4:
            raise ConversionError(f"The decoder has {psp} pooling branches: pass pool_scales (--pool-scales).")
        pool_scales = [1, 2, 3, 6]
    return S5Config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads,
        mlp_ratio=state["encoder.layers.0.ffn.layers.0.0.weight"].shape[0] / hidden,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=bands,
        out_indices=list(out_indices),
        decoder_hidden_size=state["semsegdecoder.decode_head.bottleneck.conv.weight"].shape[0],
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


def convert_official_state_dict(
    state: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    out_indices: list[int] | None = None,
    pool_scales: list[int] | None = None,
) -> tuple[S5Config, dict[str, torch.Tensor]]:
    """Map an official S5 state dict to our config and key layout. Raises `ConversionError` on any key that
    is neither mapped nor known to be unused, and on any of our keys left unfilled."""
    config = _infer_config(state, num_attention_heads, out_indices, pool_scales)
    names = config.task_names
    if names == ["isaid"]:
        decoder_index, head_index = {"semsegdecoder": 0}, {"semseghead": 0}
    else:
        decoder_index = {("semsegdecoder" if t == "vaihingen" else f"semsegdecoder_{_official_suffix(t)}"): i
                         for i, t in enumerate(names)}
        head_index = {f"semseghead_{_official_suffix(t)}": i for i, t in enumerate(names)}

    converted, unknown = {}, []
    for key, value in state.items():
        if _UNUSED.match(key):
            continue
        if key.endswith(".attn.attn.in_proj_weight") or key.endswith(".attn.attn.in_proj_bias"):
            layer = re.match(r"encoder\.layers\.(\d+)\.", key).group(1)
            kind = key.rsplit("_", 1)[-1]  # "weight" or "bias"
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
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ConversionError(f"The checkpoint lacks {len(missing)} weights of the inferred model: {missing[:8]}")
    wrong = [f"{k}: {tuple(converted[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if converted[k].shape != v.shape]
    if wrong:
        raise ConversionError(f"Shape mismatches: {wrong[:8]}")
    return config, converted


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    num_attention_heads: int | None = None,
    out_indices: list[int] | None = None,
    pool_scales: list[int] | None = None,
    trust_pickle: bool = False,
) -> S5ForSemanticSegmentation:
    """Convert `checkpoint` and write model (safetensors), config, image processor and code to `output_dir`."""
    state = load_official_state_dict(checkpoint, trust_pickle=trust_pickle)
    config, converted = convert_official_state_dict(state, num_attention_heads, out_indices, pool_scales)
    model = S5ForSemanticSegmentation(config)
    model.load_state_dict(converted, strict=True)
    model.eval()
    model.save_pretrained(output_dir)
    S5ImageProcessor().save_pretrained(output_dir)
    return model


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="official .pth/.safetensors checkpoint")
    parser.add_argument("output_dir", help="folder for the converted model")
    parser.add_argument("--num-attention-heads", type=int, help="needed when the width matches no paper preset")
    parser.add_argument("--out-indices", type=_int_list, help="stages feeding the neck, e.g. '4,6,8,12'")
    parser.add_argument("--pool-scales", type=_int_list, help="decoder pooling scales, default 1,2,3,6")
    parser.add_argument("--trust-pickle", action="store_true", help="allow arbitrary pickles (only trusted files)")
    args = parser.parse_args(argv)
    model = convert_official_checkpoint(
        args.checkpoint, args.output_dir, args.num_attention_heads, args.out_indices, args.pool_scales,
        args.trust_pickle,
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"Converted {args.checkpoint} -> {args.output_dir}: tasks {model.config.task_names}, "
          f"{params / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
