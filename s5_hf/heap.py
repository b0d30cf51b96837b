"""The process's memory on CPU: how runs whose tensors are many and large allocate them.

Two settings, both process-wide, so the training programs and `s5-segment` make them on CPU and a library call never
does (`configure_cpu_memory`):

1. glibc's heap serves a forward's many 1-30 MB activations from memory that freeing fragments, so the process keeps
   growing; allocating blocks of 128 KiB and more with mmap returns them on free (`limit_heap_fragmentation`). The
   price is page faults: every new block starts on fresh pages the kernel zeroes.
2. So PyTorch's CPU tensors of 128 KiB and more come from a cache that keeps freed blocks for reuse by the next
   tensor of the same size, up to `IDLE_LIMIT_MB` of idle blocks (`cache_cpu_blocks`; C++ in
   `csrc/cpu_block_cache.cpp`, compiled once with the system's C++ compiler). Where it cannot be built, runs keep
   setting 1 alone.

Measured (benchmarks/TRAINING_MEMORY.md, fourth measurement), the ViT-B MDF training step in `block` checkpointing:
glibc's default heap peaks at 3,227 MB; setting 1 alone at 2,774 MB, but with 1.9 M page faults per step and about
1 s more per step (9.98-11.08 s); both settings at 2,839 MB with 0.6 M faults (9.06-9.99 s, same runs).

Choices stay the user's: `MALLOC_MMAP_THRESHOLD_` (bytes) set in the environment keeps setting 1 out, and
`S5_CPU_BLOCK_CACHE_MB` sets the idle limit of setting 2 (0: no cache).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024
IDLE_LIMIT_MB = 128  # measured against 64 (faults back up by half) and 192-1024 (peak +130 MB and more)
CACHE_ENV = "S5_CPU_BLOCK_CACHE_MB"
SOURCE = Path(__file__).parent / "csrc" / "cpu_block_cache.cpp"
_library: ctypes.CDLL | None = None


def configure_cpu_memory() -> None:
    """Both settings of this module, for a CPU run about to allocate its model and data."""
    limit_heap_fragmentation()
    cache_cpu_blocks()


def limit_heap_fragmentation() -> int | None:
    """Set glibc's mmap threshold to `MMAP_THRESHOLD`; returns it, or None where it does not apply (not glibc) or
    the user chose their own (the `MALLOC_MMAP_THRESHOLD_` environment variable)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return None
    m_mmap_threshold = -3  # mallopt's parameter number, from glibc's malloc.h
    if ctypes.CDLL(None).mallopt(m_mmap_threshold, MMAP_THRESHOLD) != 1:
        logger.warning("glibc refused mallopt(M_MMAP_THRESHOLD, %d); the heap keeps its default.", MMAP_THRESHOLD)
        return None
    return MMAP_THRESHOLD


def cache_cpu_blocks(idle_limit_mb: int | None = None) -> bool:
    """Make PyTorch's CPU allocator keep freed blocks of `MMAP_THRESHOLD` bytes and more for reuse, at most
    `idle_limit_mb` (default: `S5_CPU_BLOCK_CACHE_MB`, else `IDLE_LIMIT_MB`) of them idle at any time.

    Returns whether the cache is in place (also when an earlier call installed it: the first call's limit stays).
    False, with the reason logged, on a limit of 0, off Linux, or where the C++ source cannot be compiled."""
    if idle_limit_mb is None:
        value = os.environ.get(CACHE_ENV, "").strip()
        try:
            idle_limit_mb = int(value) if value else IDLE_LIMIT_MB
        except ValueError:
            raise ValueError(f"{CACHE_ENV}={value!r}: expected a whole number of MB (0 turns the cache off).") from None
    if idle_limit_mb < 0:
        raise ValueError(f"The CPU block cache's idle limit must be >= 0 MB, got {idle_limit_mb}.")
    if idle_limit_mb == 0:
        return False
    if platform.system() != "Linux":
        logger.info("No CPU block cache off Linux (it maps memory with mmap); allocations stay PyTorch's own.")
        return False
    library = _load_library()
    if library is None:
        return False
    library.s5_block_cache_install(ctypes.c_uint64(MMAP_THRESHOLD), ctypes.c_uint64(idle_limit_mb * 2**20))
    return True


def block_cache_stats() -> dict[str, int]:
    """Counters of the CPU block cache (all 0 when it is not installed in this process)."""
    values = (ctypes.c_uint64 * 5)()
    if _library is not None:
        _library.s5_block_cache_stats(values)
    return dict(zip(("hits", "misses", "idle_bytes", "idle_blocks", "live_blocks"), (int(v) for v in values)))


def release_cached_blocks() -> None:
    """Return the cache's idle blocks to the system (e.g. before a phase that needs the memory elsewhere)."""
    if _library is not None:
        _library.s5_block_cache_release()


def _load_library() -> ctypes.CDLL | None:
    global _library
    if _library is None:
        path = _build()
        if path is not None:
            _library = ctypes.CDLL(str(path))
            _library.s5_block_cache_install.restype = ctypes.c_int
    return _library


def _build() -> Path | None:
    """The compiled library, built on first use into the user's cache folder (keyed by the source, torch's version
    and ABI, so an upgrade rebuilds it). None, with the reason logged, where no compiler works."""
    import torch

    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        logger.warning("No C++ compiler (c++ or $CXX) found: no CPU block cache, so CPU runs take more page faults "
                       "(see s5_hf.heap).")
        return None
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
               f"-I{torch_dir / 'include'}", str(SOURCE), f"-L{torch_dir / 'lib'}", "-lc10",
               f"-Wl,-rpath,{torch_dir / 'lib'}"]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([torch.__version__, *command]).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "s5_hf"
    target = folder / f"cpu_block_cache-{key}.so"
    if target.exists():
        return target
    logger.info("Compiling the CPU block cache into %s (once per torch version).", target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: processes starting together (one per rank) never load a
        # half-written file.
        handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    except OSError as error:
        logger.warning("Cannot write the CPU block cache's library to %s (%s); CPU runs take more page faults. Set "
                       "XDG_CACHE_HOME to a writable folder to build it.", folder, error)
        return None
    os.close(handle)
    try:
        result = subprocess.run([*command, "-o", partial], capture_output=True, text=True)
        if result.returncode != 0:
            logger.warning("Could not compile the CPU block cache (%s); CPU runs take more page faults. %s",
                           " ".join(command[:2]), result.stderr[-2000:])
            return None
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


__all__ = ["CACHE_ENV", "IDLE_LIMIT_MB", "MMAP_THRESHOLD", "block_cache_stats", "cache_cpu_blocks",
           "configure_cpu_memory", "limit_heap_fragmentation", "release_cached_blocks"]
