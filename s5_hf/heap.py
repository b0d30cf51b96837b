"""The process's C heap on CPU: glibc settings for runs whose tensors are many and large.

glibc serves a forward's many 1-30 MB activations from a heap that freeing fragments, so the process keeps growing;
allocating blocks of 128 KiB and more with mmap returns them on free. The price is page faults: every new tensor
starts on fresh pages the kernel zeroes. Measured (benchmarks/TRAINING_MEMORY.md, third measurement): the ViT-B MDF
training step in `block` checkpointing peaks at 2,874 MB instead of 3,371 MB, at 11.8-12.0 s instead of 10.9 s; the
S4P step peaks 1.0 GB lower without checkpointing. Memory comes first here (an out-of-memory run is lost; a slower one
is not). The training programs and `s5-segment` set it on CPU; a library call never does (it is process-wide).
Setting `MALLOC_MMAP_THRESHOLD_` (bytes) yourself keeps your choice, e.g. 33554432 for speed over memory.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024


def limit_heap_fragmentation() -> int | None:
    """Set glibc's mmap threshold to `MMAP_THRESHOLD`; returns it, or None where it does not apply (not glibc) or
    the user chose their own (the `MALLOC_MMAP_THRESHOLD_` environment variable)."""
    import ctypes
    import platform

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return None
    m_mmap_threshold = -3  # mallopt's parameter number, from glibc's malloc.h
    if ctypes.CDLL(None).mallopt(m_mmap_threshold, MMAP_THRESHOLD) != 1:
        logger.warning("glibc refused mallopt(M_MMAP_THRESHOLD, %d); the heap keeps its default.", MMAP_THRESHOLD)
        return None
    return MMAP_THRESHOLD


__all__ = ["MMAP_THRESHOLD", "limit_heap_fragmentation"]
