"""`s5_hf.heap`: glibc's mmap threshold and the CPU block cache (C++, compiled on first use). The cache replaces
PyTorch's CPU allocator for the whole process, so its tests run in fresh interpreters."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from s5_hf import heap

linux_only = pytest.mark.skipif(platform.system() != "Linux", reason="the block cache maps memory with mmap (Linux)")


def test_cpu_training_limits_heap_fragmentation(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    expected = heap.MMAP_THRESHOLD if platform.libc_ver()[0] == "glibc" else None
    assert heap.limit_heap_fragmentation() == expected
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own choice stays
    assert heap.limit_heap_fragmentation() is None


@pytest.fixture(scope="module")
def build_cache(tmp_path_factory):
    """One cache folder for the fresh interpreters of this module, so the library is compiled once."""
    return str(tmp_path_factory.mktemp("xdg-cache"))


def run_fresh(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@linux_only
def test_block_cache_gives_the_same_results_reuses_blocks_and_keeps_its_idle_limit(build_cache):
    # A small training step (convolutions through oneDNN, which allocates with the raw API, linear layers, attention,
    # AdamW) gives bit-identical results before and after the cache is installed; the second run reuses freed
    # blocks; idle blocks stay under the limit.
    out = run_fresh("""
        import torch
        from s5_hf import heap

        torch.set_num_threads(2)

        def run():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32),
                                        torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2, padding=1))
            head = torch.nn.Linear(64, 64)
            optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
            losses = []
            for _ in range(3):
                x = torch.randn(4, 3, 64, 64)
                tokens = model(x).flatten(2).transpose(1, 2)  # (4, 1024, 64): 1 MB blocks and more
                q = head(tokens).view(4, 1024, 4, 16).transpose(1, 2)
                loss = torch.nn.functional.scaled_dot_product_attention(q, q, q).square().mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
            return losses, [p.detach().clone() for p in model.parameters()]

        before = run()
        assert heap.cache_cpu_blocks(idle_limit_mb=8)
        assert heap.cache_cpu_blocks(idle_limit_mb=8)  # a second call keeps the first install
        after = run()
        assert before[0] == after[0], (before[0], after[0])
        assert all(torch.equal(a, b) for a, b in zip(before[1], after[1]))
        stats = heap.block_cache_stats()
        assert stats["hits"] > stats["misses"] > 0, stats
        assert 0 < stats["idle_bytes"] <= 8 * 2**20, stats
        heap.release_cached_blocks()
        assert heap.block_cache_stats()["idle_bytes"] == 0
        print("ok", stats)
    """, XDG_CACHE_HOME=build_cache)
    assert out.startswith("ok")


@linux_only
def test_block_cache_under_threads_and_fork(build_cache):
    # Threads allocate, fill and check blocks of the same sizes at once (the ops release the GIL); a fork while they
    # run gives a child that can still allocate (the cache's lock is never inherited held).
    out = run_fresh("""
        import os, threading
        import torch
        from s5_hf import heap

        assert heap.cache_cpu_blocks(idle_limit_mb=4)
        errors = []

        def work(value):
            try:
                for i in range(300):
                    t = torch.full((1 + i % 3, 256, 1024), float(value))  # 1-3 MB: shared sizes across threads
                    if not bool((t == value).all()):
                        errors.append(value)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(repr(error))

        threads = [threading.Thread(target=work, args=(v,)) for v in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(5):
            pid = os.fork()
            if pid == 0:
                ok = bool((torch.ones(512, 1024) * 2).sum() == 2 * 512 * 1024)
                os._exit(0 if ok else 1)
            assert os.waitpid(pid, 0)[1] == 0
        for thread in threads:
            thread.join()
        assert not errors, errors[:5]
        stats = heap.block_cache_stats()
        assert stats["hits"] > 0 and stats["idle_bytes"] <= 4 * 2**20, stats
        print("ok")
    """, XDG_CACHE_HOME=build_cache)
    assert out.startswith("ok")


def test_block_cache_settings_and_fallbacks(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(heap, "_library", None)  # whatever an earlier test installed in this process
    monkeypatch.setenv(heap.CACHE_ENV, "0")
    assert heap.cache_cpu_blocks() is False  # off by the user's choice
    monkeypatch.setenv(heap.CACHE_ENV, "lots")
    with pytest.raises(ValueError, match="S5_CPU_BLOCK_CACHE_MB='lots'"):
        heap.cache_cpu_blocks()
    with pytest.raises(ValueError, match=">= 0 MB"):
        heap.cache_cpu_blocks(-1)
    if platform.system() != "Linux":
        return
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with caplog.at_level(logging.WARNING, logger="s5_hf.heap"):
        assert heap.cache_cpu_blocks(16) is False
    assert "No C++ compiler" in caplog.text
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s5_hf.heap"):
        assert heap.cache_cpu_blocks(16) is False
    assert "Could not compile" in caplog.text
    assert not list((tmp_path / "s5_hf").iterdir())  # no half-written library left behind
    monkeypatch.delenv("CXX")
    read_only = tmp_path / "read-only"
    read_only.write_text("a file, not a folder")  # the cache folder cannot be made under it
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s5_hf.heap"):
        assert heap.cache_cpu_blocks(16) is False
    assert "Cannot write the CPU block cache's library" in caplog.text
    assert heap.block_cache_stats() == dict.fromkeys(("hits", "misses", "idle_bytes", "idle_blocks", "live_blocks"), 0)
