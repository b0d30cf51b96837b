"""Select an RS4P-style pretraining subset from an unlabeled image pool (S5 spec, section 4).

Scores every pool image with an S5 segmentation model, ranks by ascending foreground entropy, fills
per-cluster quotas proportional to the labeled set's K-Means clusters, and writes the selected images
with their pseudo-labels as a Parquet dataset with a card. Resumable: run the same command again after
an interruption and only the unscored chunks are scored.

    # one process
    python training/select_rs4p.py --pool /data/pool --labeled /data/isaid_train --model ./s4p-vit-h \
        --output_dir runs/rs4p --target_size 1000000
    # several processes (GPUs; on CPU add ACCELERATE_USE_CPU=true)
    torchrun --nproc_per_node 2 training/select_rs4p.py ...   # or: accelerate launch --multi_gpu --num_processes 2

On CPU, torchrun sets OMP_NUM_THREADS=1 unless it is set: scores are then equal to a single-process run with
1 thread, and differ in the last bits from one with another thread count (the merge warns, the card records
the environments). Set OMP_NUM_THREADS explicitly for bit-identical reruns.

The output folder must be new, empty or one this command wrote: files it did not write are never deleted
or overwritten (the run stops first and names them). Pool images that are not 8-bit RGB (16-bit, float, other
band counts) or are constant are reported in failures.jsonl with the reason and skipped.

Pool inputs: image folders with one subfolder per source, SOURCE=FOLDER, Parquet files or folders of them
(`image` and `source` columns), datasets saved with save_to_disk, or Hub dataset ids.
"""

import sys

from s5_hf.rs4p.cli import main

if __name__ == "__main__":
    sys.exit(main())
