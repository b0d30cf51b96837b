"""Process memory readings shared by the benchmarks (Linux /proc; ru_maxrss as a fallback)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    # VmHWM (this process's own high-water mark), not ru_maxrss: on Linux a child started with fork+exec
    # inherits the parent's maximum in ru_maxrss, which would hide the step's own peak.
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20
