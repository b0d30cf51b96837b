"""Test-wide settings: nothing may reach the network; uploads to the loopback Hub must not use Xet.

Also the one `hub` fixture: a loopback Hub stand-in (tests/hub_server.py) of its own for each test, with the client
libraries pointed at it. pytest puts this folder on sys.path (rootdir-relative "prepend" import of conftest.py),
so test files import the server as `from hub_server import LocalHub`.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# datasets sleeps SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s) each time a Parquet stream ends, to let PyArrow's reader
# threads wind down; the tests' tiny streams end every few batches. A short pause keeps that courtesy.
import datasets  # noqa: E402

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.2

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # `import hub_server` also under --import-mode=importlib
    sys.path.insert(0, _TESTS)

from hub_server import LocalHub  # noqa: E402


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running LocalHub with huggingface_hub, transformers and datasets pointed at it (and a fresh HF_HOME)."""
    with LocalHub(tmp_path / "hub") as server:
        server.patch_env(monkeypatch, tmp_path / "hf_home")
        yield server
        # Nothing may have tried another host, nor a route the stand-in lacks.
        assert server.blocked == []
        assert server.unhandled == []


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: the detection tests' many small convolutions and polygon ops run much
    faster without thread spin-waits on a 2-core machine (about 20x under contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Skips: every skip says why, and in CI (CI=true) none is allowed, so a missing browser, extra or data file fails
# the run instead of shrinking it in silence. `pytest -m "not slow"` deselects; it does not skip.
# ----------------------------------------------------------------------------------------------------------------
_SKIPS: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "")
        _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ").strip()))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _refused_skips() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _SKIPS if _in_ci() or not reason]


def pytest_sessionfinish(session, exitstatus):
    if _refused_skips():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    refused = _refused_skips()
    if refused:
        what = "skipped in CI (CI=true), where no test may skip" if _in_ci() else "skipped without a reason"
        terminalreporter.section("refused skips", red=True)
        terminalreporter.write_line(f"{len(refused)} test(s) {what}; the run fails:")
        for nodeid, reason in refused:
            terminalreporter.write_line(f"  {nodeid}: {reason or '(no reason given)'}")
