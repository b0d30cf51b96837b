"""Oriented object detection: fine-tune S5 on DIOR-R and DOTA-v2 at once (see `s5_hf.training.detection`).

    accelerate launch training/finetune_detection.py --model_name_or_path runs/s4p-vit-b/model \
        --dior_root /data/DIOR-R --dota_root /data/DOTA-v2 --output_dir runs/det-vit-b
    accelerate launch training/finetune_detection.py configs/detection_vit_b.yaml [--flag value ...]
"""

import sys

from s5_hf.training.detection import main

if __name__ == "__main__":
    main(sys.argv[1:])
