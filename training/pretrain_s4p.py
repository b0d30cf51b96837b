"""S4P: semi-supervised segmentation pretraining of S5 (see `s5_hf.training.s4p`).

    accelerate launch training/pretrain_s4p.py --labeled isaid=/data/iSAID --unlabeled rs4p=/data/rs4p-1m \
        --output_dir runs/s4p-vit-b
    accelerate launch training/pretrain_s4p.py configs/s4p_vit_b.yaml [--flag value ...]
"""

import sys

from s5_hf.training.s4p import main

if __name__ == "__main__":
    main(sys.argv[1:])
