"""Evaluation: confusion-matrix metrics, the per-benchmark protocols (sliding window, flips, splits), and the
local `evaluate` modules."""
