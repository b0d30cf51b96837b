"""MoE-MDF: multi-dataset fine-tuning of S5 with per-dataset experts and decoders (see `s5_hf.training.mdf`).

    accelerate launch training/finetune_mdf.py --model_name_or_path runs/s4p-vit-b/model \
        --train_datasets vaihingen=/data/Vaihingen potsdam=/data/Potsdam --output_dir runs/mdf-vit-b
    accelerate launch training/finetune_mdf.py configs/mdf_vit_b.yaml [--flag value ...]
"""

import sys

from s5_hf.training.mdf import main

if __name__ == "__main__":
    main(sys.argv[1:])
