"""No silent slow path: bf16/fp16 only where the device runs them natively, else a measured warning or fp32.

Also the benchmarks' shared measuring helpers (benchmarks/machine.py): FLOP counting and the report line.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from s5_hf import precision
from s5_hf.precision import PrecisionWarning, check_precision, native_dtype_report

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}
GRANITE_RAPIDS = SAPPHIRE_RAPIDS | {"amx_fp16"}


@pytest.fixture(autouse=True)
def fresh_probe_cache():
    precision._PROBE_CACHE.clear()
    yield
    precision._PROBE_CACHE.clear()


def fake_cpu(monkeypatch, features: set[str], slowdown: float | None = 500.0):
    """A CPU reporting `features`; with `slowdown`, a probe that reports that factor (and counts its calls)."""
    monkeypatch.setattr(precision, "cpu_features", lambda: set(features))
    calls = []
    if slowdown is not None:
        def probe(device, dtype, **kwargs):
            calls.append((str(device), dtype))
            return slowdown, 512, None
        monkeypatch.setattr(precision, "measure_slowdown", probe)
    return calls


@pytest.mark.parametrize("spelling, fp32", [("bf16", "no"), ("bfloat16", "float32"), (torch.bfloat16, torch.float32)])
def test_avx2_only_cpu_falls_back_to_fp32_with_the_measured_factor(monkeypatch, spelling, fp32):
    calls = fake_cpu(monkeypatch, AVX2_ONLY)
    with pytest.warns(PrecisionWarning) as record:
        assert check_precision("cpu", spelling) == fp32
    message = str(record[0].message)
    assert "bfloat16 on cpu: NOT native" in message and "AVX-512 BF16 nor AMX" in message
    assert "500x the float32 time" in message and "Falling back to float32" in message
    assert calls == [("cpu", torch.bfloat16)]


def test_avx2_only_cpu_keeps_bf16_with_a_warning_when_fallback_is_off(monkeypatch):
    fake_cpu(monkeypatch, AVX512_NO_BF16)
    with pytest.warns(PrecisionWarning, match=r"Keeping bfloat16 as asked: expect every step to be about 500x slower"):
        assert check_precision("cpu", "bf16", fallback=False) == "bf16"


@pytest.mark.parametrize("features, reason", [(SAPPHIRE_RAPIDS, "AMX-BF16"),
                                              (AVX512_NO_BF16 | {"avx512_bf16"}, "AVX-512 BF16")])
def test_amx_or_avx512_bf16_cpu_runs_bf16_natively_without_probing(monkeypatch, features, reason):
    calls = fake_cpu(monkeypatch, features)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        assert check_precision("cpu", "bf16") == "bf16"
        assert check_precision(torch.device("cpu"), torch.bfloat16) is torch.bfloat16
    report = native_dtype_report("cpu", "bf16")
    assert report.native and report.reason == reason and report.slowdown is None
    assert calls == []  # the decision never depends on timing


def test_fp16_on_cpu_is_native_only_with_amx_fp16(monkeypatch):
    fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    report = native_dtype_report("cpu", "fp16")
    assert not report.native and "no AMX-FP16" in report.reason and "bfloat16 is native here" in report.reason
    assert report.slowdown == 500.0  # measured because not native
    with pytest.warns(PrecisionWarning, match="float16 on cpu: NOT native"):
        assert check_precision("cpu", "fp16") == "no"
    fake_cpu(monkeypatch, GRANITE_RAPIDS)
    assert native_dtype_report("cpu", "fp16").native
    assert check_precision("cpu", "float16") == "float16"


@pytest.mark.parametrize("spelling", [None, "no", "fp32", "float32", torch.float32])
def test_float32_is_returned_unchanged_without_any_check(monkeypatch, spelling):
    calls = fake_cpu(monkeypatch, AVX2_ONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_precision("cpu", spelling) is spelling
    assert calls == []


@pytest.mark.parametrize("env, argument, expected", [
    ({}, None, None),  # nothing configured: accelerate's default (no AMP), no check
    ({"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_CPU": "true"}, None, "no"),  # from `accelerate launch`
    ({"ACCELERATE_USE_CPU": "1"}, "bf16", "no"),
    ({"ACCELERATE_USE_CPU": "1"}, "no", "no"),
])
def test_accelerate_setting_is_checked_on_the_device_accelerate_uses(monkeypatch, env, argument, expected):
    from s5_hf.precision import check_accelerate_precision

    calls = fake_cpu(monkeypatch, AVX2_ONLY)
    for name in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_accelerate_precision(argument) == expected
    slow = expected == "no" and argument != "no"
    assert [str(w.message).split(":")[0] for w in caught] == (["bfloat16 on cpu"] if slow else [])
    assert calls == ([("cpu", torch.bfloat16)] if slow else [])


def test_unknown_precision_names_the_value():
    with pytest.raises(ValueError, match=r"Unknown precision 'bf17'"):
        check_precision("cpu", "bf17")
    with pytest.raises(ValueError, match="float32, bfloat16 and float16, got torch.int8"):
        check_precision("cpu", torch.int8)


def test_a_dtype_whose_matmul_fails_falls_back_or_raises(monkeypatch):
    fake_cpu(monkeypatch, AVX2_ONLY, slowdown=None)

    def broken(size, dtype, device, repeats):
        if dtype != torch.float32:
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'BFloat16\'')
        return 1e-3

    monkeypatch.setattr(precision, "_best_matmul_seconds", broken)
    with pytest.warns(PrecisionWarning, match="matmul fails here: RuntimeError"):
        assert check_precision("cpu", "bf16") == "no"
    with pytest.raises(RuntimeError, match="Use float32 on this device"):
        check_precision("cpu", "bf16", fallback=False)


def test_cuda_decision_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)  # T4: emulated only
    monkeypatch.setattr(precision, "measure_slowdown", lambda device, dtype, **kw: (3.0, 512, None))
    t4 = torch.device("cuda", 0)
    assert native_dtype_report(t4, "fp16").native
    report = native_dtype_report(t4, "bf16")
    assert not report.native and "no bf16 tensor cores" in report.reason and report.slowdown == 3.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert native_dtype_report(t4, "bf16").native
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert not native_dtype_report(t4, "fp16").native


def test_cpu_features_read_proc_cpuinfo_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx2 avx512_bf16 amx_bf16\n\n")
    monkeypatch.setattr(precision, "_PROC_CPUINFO", cpuinfo)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "amx_fp16": False})
    features = precision.cpu_features()
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= features and "amx_fp16" not in features


def test_the_probe_runs_within_its_budget():
    start = time.perf_counter()
    factor, size, error = precision.measure_slowdown("cpu", torch.bfloat16, budget_s=0.3)
    elapsed = time.perf_counter() - start
    assert error is None and size in (128, 256, 512)
    assert math.isfinite(factor) and factor > 0
    assert elapsed < 2.0  # budget 0.3 s plus one overshooting size at most; generous for a loaded machine
    assert precision.measure_slowdown("cpu", torch.bfloat16) == (factor, size, error)  # cached


def test_the_real_decision_on_this_machine_matches_torch():
    report = native_dtype_report("cpu", "bf16", measure=False)
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps:
        assert report.native == bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


# ---------------------------------------------------------------------------------------------------------------
# benchmarks/machine.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import machine  # noqa: E402


def test_flop_counter_counts_two_flops_per_multiply_add():
    linear = torch.nn.Linear(64, 32, bias=False)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert machine.count_flops(lambda: linear(torch.randn(8, 64))) == 2 * 8 * 64 * 32
    assert machine.count_flops(lambda: conv(torch.randn(1, 3, 16, 16))) == 2 * 16 * 16 * 8 * 3 * 9


def test_case_line_reports_wall_flops_fraction_of_rates_and_memory():
    rates = machine.MatmulRates(float32=100.0, bfloat16=400.0, size=2048, device="cpu")
    line = machine.case_line("case", 2.0, 100e9, rates, torch.float32, 1234.4)
    assert line == "case: wall 2 s, 100 GFLOP, 50.0% of fp32 matmul rate (100 GFLOP/s), peak RSS 1234 MB"
    line = machine.case_line("bf16", 0.5, 100e9, rates, torch.bfloat16)
    assert "200.0% of fp32 matmul rate" in line and "50.0% of bf16 matmul rate (400 GFLOP/s)" in line
    assert machine.case_line("x", 1.0, None, None) == "x: wall 1 s"
    per_cpu_second = machine.MatmulRates(float32=100.0, bfloat16=None, size=2048, device="cpu", clock="cpu")
    assert machine.case_line("y", 2.0, 100e9, per_cpu_second).startswith("y: CPU 2 s, 100 GFLOP, 50.0% of fp32")


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_matmul_rate_is_measured(clock):
    rate = machine.matmul_rate(torch.float32, size=128, repeats=2, clock=clock)
    assert math.isfinite(rate) and rate > 0.01


@pytest.mark.parametrize("variables, native", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, False),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),  # oneDNN's older name
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}, True),  # the newer name wins, as in oneDNN
    ({"ONEDNN_MAX_CPU_ISA": "NOT_AN_ISA"}, True),  # oneDNN ignores values it does not know
])
def test_a_onednn_isa_limit_below_bf16_makes_bf16_not_native_on_a_cpu_that_has_the_units(
        monkeypatch, variables, native):
    calls = fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    report = native_dtype_report("cpu", "bf16")
    assert report.native == native
    if native:
        assert calls == [] and report.reason == "AMX-BF16"
        return
    variable, value = next(iter(variables.items()))
    assert f"{variable}={value} keeps oneDNN below AVX512_CORE_BF16" in report.reason
    with pytest.warns(PrecisionWarning, match=f"{variable}={value}.*Falling back to float32"):
        assert check_precision("cpu", "bf16") == "no"


def test_the_onednn_limit_is_measured_for_real_in_a_fresh_process():
    # oneDNN reads its ISA limit once, when it starts: a fresh interpreter with the limit set, on the real probe.
    code = ("from s5_hf.precision import native_dtype_report; r = native_dtype_report('cpu', 'bf16'); "
            "print(r.native, r.slowdown)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    native, slowdown = out.stdout.split()
    assert native == "False"
    assert float(slowdown) > 5  # AVX2 kernels for bf16: far slower than fp32 (measured: about 140x on AMX)
