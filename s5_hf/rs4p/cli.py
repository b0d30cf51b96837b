"""Command line of the RS4P selection (`training/select_rs4p.py`, `python -m s5_hf.rs4p`)."""

from __future__ import annotations

import logging
import sys

from accelerate import PartialState
from transformers import HfArgumentParser

from .pipeline import SelectionArguments, run_selection


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(
        SelectionArguments,
        prog="s5-select-rs4p",
        description="Select an RS4P-style pretraining subset from an unlabeled image pool (S5 spec, section 4).",
    )
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    outcome = run_selection(args)
    PartialState().destroy_process_group()
    if not outcome.complete:
        print(f"Stopped with {outcome.missing_chunks} of {outcome.chunks_total} chunks unscored: run the same command "
              "again to resume.")
    elif outcome.dataset_dir is not None:
        stats = outcome.stats
        print(f"Selected {stats.num_selected} images ({stats.num_failed} failed) -> {outcome.dataset_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
