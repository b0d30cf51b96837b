"""Folder of the local `evaluate` metric `s5_miou.py` (load it with `s5_hf.evaluation.metrics.load_evaluate_metric()`).

The `__init__.py` makes the folder a package, so built wheels ship the script."""
