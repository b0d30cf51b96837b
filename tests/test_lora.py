"""`training/finetune_mdf.py --lora` and `s5_hf.training.lora`: per-dataset PEFT LoRA adapters on a frozen S5 backbone,
trained on synthetic data, saved in PEFT's format and reloaded with PEFT; resume; two processes; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from s5_hf import S5ForSemanticSegmentation
from s5_hf.data.streams import DataSource
from s5_hf.data.synthetic import make_fake_potsdam, make_fake_vaihingen
from s5_hf.evaluation.protocols import evaluate_sources
from s5_hf.training import mdf as finetune
from s5_hf.training.lora import S5LoRAModel, add_lora_adapters

ROOT = Path(__file__).resolve().parents[1]
ISPRS_64 = {"vaihingen": {"patch_size": 64, "stride": 64}, "potsdam": {"patch_size": 64, "stride": 64}}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

TASKS = ("vaihingen", "potsdam")
# peft calls transformers' deprecated `is_gradient_checkpointing`.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
STEPS = 9


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config) -> Path:
    root = tmp_path_factory.mktemp("lora-data")
    make_fake_vaihingen(root / "vaihingen")
    make_fake_potsdam(root / "potsdam")
    torch.manual_seed(0)
    # The S4P model the run starts from (a single task, as `finetune_mdf.py` expects).
    S5ForSemanticSegmentation(tiny_config(drop_path_rate=0.0, tasks=["isaid"])).save_pretrained(root / "s4p")
    return root


def lora_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--train_datasets", *(f"{t}={data / t}" for t in TASKS), "--reader_options", json.dumps(ISPRS_64),
            "--model_name_or_path", str(data / "s4p"), "--output_dir", str(out), "--lora", "--lora_r", "8",
            "--lora_alpha", "16", "--crop_size", "64", "--batch_size", "2", "--learning_rate", "2e-2",
            "--lr_scheduler_type", "constant", "--loss_start", "--logging_steps", "3", "--eval_steps", "0",
            "--max_eval_samples", "2",
            # Every training tile (the ISPRS default holds 1/8 out for model selection, which these runs skip).
            "--train_splits", *(f"{t}=train" for t in TASKS), "--validation_splits", *(f"{t}=" for t in TASKS),
            *extra]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lora-run")
    args = lora_args(data, out, "--max_train_steps", str(STEPS), "--checkpointing_steps", "3")
    torch.manual_seed(42)  # the script seeds 42 too: `initial` is the model it starts from
    initial = finetune.build_model(finetune.parse_args(args))
    outcome = finetune.main(args)
    # The trained model itself, not through any PEFT loading: the accelerate state of the last checkpoint.
    trained = finetune.build_model(finetune.parse_args(args))
    trained.load_state_dict(load_file(out / f"checkpoint-{STEPS:06d}" / "model.safetensors"))
    return {"out": out, "args": args, "initial": initial, "trained": trained.eval(), "outcome": outcome}


def lora_weights(model: S5LoRAModel, task: str) -> dict[str, torch.Tensor]:
    return {k.replace(f".{task}.", "."): v for k, v in model.state_dict().items() if f"lora_A.{task}." in k
            or f"lora_B.{task}." in k}


def test_loss_falls_and_only_adapters_and_heads_train(data, run):
    losses = [r["loss"] for r in records(run["out"]) if "loss" in r]  # means over steps 1-3, 4-6, 7-9
    assert len(losses) == 3 and losses[-1] < 0.95 * losses[0], losses

    start = S5ForSemanticSegmentation.from_pretrained(data / "s4p").state_dict()
    saved = load_file(run["out"] / "model" / "model.safetensors")  # the plain S5 model, no LoRA weights
    assert not [k for k in saved if "lora" in k]
    backbone = [k for k in saved if k.startswith("s5.")]
    assert backbone and all(torch.equal(saved[k], start[k]) for k in backbone)  # the backbone is untouched
    initial = run["initial"].plain_state_dict()
    for head in ("decoders", "classifiers"):
        weights = [k for k in saved if k.startswith(f"{head}.") and k.endswith(".weight")]
        changed = [k for k in weights if not torch.equal(saved[k], initial[k])]
        assert len(changed) == len(weights), (head, sorted(set(weights) - set(changed))[:5])

    trainable = {n for n, p in run["initial"].named_parameters() if p.requires_grad}
    assert all(".lora_" in n or ".decoders." in n or ".classifiers." in n for n in trainable)
    for task in TASKS:
        before, after = lora_weights(run["initial"], task), lora_weights(run["trained"], task)
        # 4 blocks x (q, k, v, o, fc1, fc2) x (A, B), all trained
        assert len(after) == 48 and all(not torch.equal(before[k], after[k]) for k in after), task
    vaihingen, potsdam = lora_weights(run["trained"], "vaihingen"), lora_weights(run["trained"], "potsdam")
    assert all(not torch.allclose(vaihingen[k], potsdam[k]) for k in vaihingen)


def test_saved_adapters_load_with_peft_and_reproduce_each_task(data, run):
    out = run["out"]
    assert {p.name for p in (out / "lora").iterdir() if p.is_dir()} == set(TASKS)
    for task in TASKS:
        config = json.loads((out / "lora" / task / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
        assert (out / "lora" / task / "adapter_model.safetensors").is_file()
        assert (out / "model" / "lora" / task / "adapter_model.safetensors").is_file()

    base = S5ForSemanticSegmentation.from_pretrained(out / "model")
    model = PeftModel.from_pretrained(base, out / "lora" / "vaihingen", adapter_name="vaihingen")
    model.load_adapter(out / "lora" / "potsdam", adapter_name="potsdam")
    model.eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = {}
    with torch.no_grad():
        for task in TASKS:
            model.set_adapter(task)
            logits[task] = model(pixels, task=task).logits
            torch.testing.assert_close(logits[task], run["trained"](pixels, task=task).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(logits["vaihingen"], logits["potsdam"], atol=1e-3)

    # The run's validation used each task's adapter: a reloaded model scores the same.
    reloaded = S5LoRAModel.from_pretrained(out / "model")
    sources = {t: DataSource.parse(f"{t}={data / t}") for t in TASKS}
    again = evaluate_sources(reloaded, sources, "test", crop_size=64, reader_options=ISPRS_64, max_samples=2)
    for task in TASKS:
        assert again[task].scores.mean_iou == pytest.approx(run["outcome"]["results"][task].scores.mean_iou)


def test_resume_in_lora_mode_reaches_the_same_adapters(run, tmp_path):
    out = tmp_path / "resumed"
    args = run["args"][:]
    args[args.index("--output_dir") + 1] = str(out)
    finetune.main([*args, "--max_train_steps", str(STEPS), "--checkpointing_steps", "0",
                   "--resume_from_checkpoint", str(run["out"] / "checkpoint-000006")])
    for task in TASKS:
        full = load_file(run["out"] / "lora" / task / "adapter_model.safetensors")
        resumed = load_file(out / "lora" / task / "adapter_model.safetensors")
        assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full), task
    full, resumed = load_file(run["out"] / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


DDP_SCRIPT = """
import torch
from accelerate import Accelerator
from s5_hf import S5Config, S5ForSemanticSegmentation
from s5_hf.training.lora import add_lora_adapters
from s5_hf.training.losses import mdf_losses

tasks = ["vaihingen", "potsdam"]
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = add_lora_adapters(S5ForSemanticSegmentation(S5Config.from_dict({tiny})), r=4)
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
model, optimizer = accelerator.prepare(model, optimizer)
generator = torch.Generator().manual_seed(accelerator.process_index)  # each process its own data
for step in range(2):
    batches = {{t: (torch.randn(2, 3, 64, 64, generator=generator), torch.randint(0, 5, (2, 64, 64), generator=generator))
               for t in tasks}}
    losses, _ = mdf_losses(model, batches, {{t: 5 for t in tasks}}, {{t: 1.0 for t in tasks}}, mixed_batch=False)
    accelerator.backward(losses["loss"])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert not [n for n, p in named if p.grad is None], [n for n, p in named if p.grad is None][:5]
    for task in tasks:  # every adapter got a gradient (lora_A only once lora_B is no longer 0)
        for part in ("lora_B",) if step == 0 else ("lora_A", "lora_B"):
            grads = [p.grad for n, p in named if f"{{part}}.{{task}}." in n]
            assert len(grads) == 24 and all(g.abs().sum() > 0 for g in grads), (step, task, part)
    # DDP averaged them: both processes hold the same gradients although their data differ.
    flat = torch.cat([p.grad.flatten() for _, p in named])
    gathered = accelerator.gather(flat[None])
    assert torch.allclose(gathered[0], gathered[1], atol=1e-6), (gathered[0] - gathered[1]).abs().max()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
print("ddp-ok", accelerator.process_index, flush=True)
accelerator.end_training()  # destroys the process group: gloo's threads otherwise may abort the exit
"""


@pytest.mark.slow
def test_two_processes_give_every_adapter_its_gradient(tmp_path, tiny_config):
    script = tmp_path / "ddp_lora.py"
    config = tiny_config(tasks=["vaihingen", "potsdam"], part_features=0).to_dict()
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tiny=repr(config))))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("ddp-ok") == 2


def test_bad_lora_input_is_a_clear_error(data, tmp_path, tiny_config):
    with pytest.raises(ValueError, match=r"\['qkv'\] match no linear layer of the backbone encoder .*'fc1'.*'q_proj'"):
        finetune.main(lora_args(data, tmp_path / "run", "--max_train_steps", "1", "--lora_target_modules",
                                "q_proj", "qkv"))
    with pytest.raises(ValueError, match="--gradient_checkpointing / --activation_checkpointing cannot be combined with --lora"):
        finetune.parse_args(lora_args(data, tmp_path / "run", "--gradient_checkpointing"))
    experts = S5ForSemanticSegmentation(tiny_config(tasks=list(TASKS), part_features=8))
    with pytest.raises(ValueError, match="LoRA adapters replace the MoE experts"):
        add_lora_adapters(experts)
    model = add_lora_adapters(S5ForSemanticSegmentation(tiny_config(tasks=list(TASKS), part_features=0)),
                              target_modules=["attention.q_proj", "mlp.fc2"], r=2)
    adapted = {n.split(".lora_A.")[0] for n, _ in model.named_parameters() if ".lora_A.vaihingen." in n}
    assert len(adapted) == 8 and all(n.endswith((".attention.q_proj", ".mlp.fc2")) for n in adapted), adapted
    with pytest.raises(ValueError, match="one task per forward"):
        model(torch.zeros(2, 3, 64, 64), task=["vaihingen", "potsdam"])
