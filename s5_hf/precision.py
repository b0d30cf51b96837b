"""Does this device run bf16 / fp16 natively? If not, how much slower is it, and should we fall back to fp32?

Low precision only pays where the hardware has the matching units: on a CPU, AVX-512 BF16 or AMX (bf16) and
AMX-FP16 (fp16); on a GPU, tensor cores. Elsewhere PyTorch still runs bf16/fp16, but emulated, and a 2048^2 bf16
matmul on an AVX2-only CPU is about 500x slower than in fp32: a training run asked for `--mixed_precision bf16`
would silently take hours per step. `check_precision` makes that visible:

    dtype = check_precision("cpu", "bf16")          # "bf16" where native, else "no" plus a PrecisionWarning
    dtype = check_precision("cpu", torch.bfloat16, fallback=False)  # keep bf16, warn with the measured factor

The decision (native or not) depends only on the reported hardware capabilities (and on an ISA limit set for
oneDNN, `ONEDNN_MAX_CPU_ISA`, which keeps its kernels below the hardware), never on timings, so every
process of a distributed run decides the same. The timing probe (square matmuls of at most 512^2, bounded to
`budget_s`) only measures the factor that the message quotes.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Spellings accepted for a precision: accelerate's `--mixed_precision` values, dtype names and torch dtypes.
_ALIASES = {
    "no": torch.float32, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
#: The float32 spelling to return in each input style (so that the result can replace the option's value).
_FP32_SPELLING = {"no": "no", "fp32": "fp32", "bf16": "no", "fp16": "no", "float32": "float32", "float": "float32",
                  "bfloat16": "float32", "float16": "float32", "half": "float32"}

_PROC_CPUINFO = Path("/proc/cpuinfo")
_PROBE_SIZES = (128, 256, 512)


class PrecisionWarning(UserWarning):
    """A low-precision setting that is not native on this device (emulated: slow), or was replaced by fp32."""


@dataclass(frozen=True)
class PrecisionReport:
    """What `native_dtype_report` found for one device and dtype.

    `slowdown` is the measured time of a square matmul in `dtype` divided by the same matmul in float32 (size
    `probe_size`); above 1 the low precision is slower than fp32. None when not measured; inf when the matmul
    raised (`probe_error` says why).
    """

    device: str
    dtype: torch.dtype
    native: bool
    reason: str
    slowdown: float | None = None
    probe_size: int | None = None
    probe_error: str | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        text = f"{self.dtype_name} on {self.device}: {'native' if self.native else 'NOT native'} ({self.reason})"
        if self.probe_error:
            text += f"; a {self.dtype_name} matmul fails here: {self.probe_error}"
        elif self.slowdown is not None:
            text += (f"; measured: a {self.probe_size}x{self.probe_size} {self.dtype_name} matmul takes "
                     f"{self.slowdown:.3g}x the float32 time")
        return text


def resolve_dtype(precision: str | torch.dtype | None) -> torch.dtype:
    """torch dtype of a precision spelling (None and accelerate's "no" are float32)."""
    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype):
        return precision
    key = str(precision).strip().lower().removeprefix("torch.")
    if key not in _ALIASES:
        raise ValueError(f"Unknown precision {precision!r}: use one of {sorted(_ALIASES)} or a torch dtype.")
    return _ALIASES[key]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or the device a default run would use (CUDA, then MPS, then CPU) when None."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ---------------------------------------------------------------------------------------------------------------
# Hardware capabilities


def cpu_features() -> set[str]:
    """Lower-case CPU feature names (e.g. "avx2", "avx512_bf16", "amx_bf16", "amx_fp16") this CPU reports.

    Union of PyTorch's own detection (`torch.cpu.get_capabilities()`, cpuinfo library, any OS) and the Linux
    kernel's /proc/cpuinfo flags (which also names features newer than the torch build knows).
    """
    features: set[str] = set()
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        try:
            features |= {name.lower() for name, value in get_capabilities().items() if value is True}
        except Exception as error:  # noqa: BLE001 - detection is best effort; /proc/cpuinfo may still answer
            logger.debug("torch.cpu.get_capabilities() failed: %s", error)
    try:
        with _PROC_CPUINFO.open() as handle:
            for line in handle:
                if line.startswith("flags"):
                    features |= set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return features


# oneDNN's ISA levels as the bit masks of its `dnnl_cpu_isa_t`: a limit allows every level whose bits it contains.
# PyTorch's bf16/fp16 matmuls and convolutions run in oneDNN, so a limit below the bf16 level sends them to slow
# kernels even on a CPU that has the units (measured: 2.2 GFLOP/s bf16 against 305 fp32 under
# ONEDNN_MAX_CPU_ISA=AVX2 on an AMX machine).
_ONEDNN_ISA_BITS = {
    "sse41": 0x1, "avx": 0x3, "avx2": 0x7, "avx2_vnni": 0xF, "avx2_vnni_2": 0x1F, "avx512_core": 0x27,
    "avx512_core_vnni": 0x67, "avx512_core_bf16": 0xE7, "avx10_1_512": 0x1EF, "avx512_core_fp16": 0x1EF,
    "avx10_1_512_amx": 0xFEF, "avx512_core_amx": 0xFEF, "avx10_1_512_amx_fp16": 0x1FEF,
    "avx512_core_amx_fp16": 0x1FEF,
}
_ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # the second is oneDNN's older name


def onednn_isa_limit() -> tuple[str, str] | None:
    """`(variable, value)` of the ISA limit the environment sets for oneDNN, or None when there is none ("ALL",
    "DEFAULT", unset, or a value oneDNN does not know, which it ignores)."""
    for variable in _ONEDNN_ISA_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value.lower() in _ONEDNN_ISA_BITS:
            return variable, value
        if value:
            return None
    return None


def _cpu_decision(dtype: torch.dtype, features: set[str]) -> tuple[bool, str]:
    native, reason = _cpu_units_decision(dtype, features)
    limit = onednn_isa_limit()
    if native and limit is not None:
        needed = "avx512_core_bf16" if dtype == torch.bfloat16 else "avx512_core_amx_fp16"
        bits = _ONEDNN_ISA_BITS[needed]
        if _ONEDNN_ISA_BITS[limit[1].lower()] & bits != bits:
            variable, value = limit
            return False, (f"{reason} is here, but {variable}={value} keeps oneDNN below {needed.upper()}: "
                           f"{str(dtype).removeprefix('torch.')} matmuls run on slow kernels")
    return native, reason


def _cpu_units_decision(dtype: torch.dtype, features: set[str]) -> tuple[bool, str]:
    if dtype == torch.bfloat16:
        if "amx_bf16" in features:
            return True, "AMX-BF16"
        if "avx512_bf16" in features:
            return True, "AVX-512 BF16"
        return False, "this CPU has neither AVX-512 BF16 nor AMX: bfloat16 matmuls are emulated"
    if dtype == torch.float16:
        if "amx_fp16" in features:
            return True, "AMX-FP16"
        if "avx512_fp16" in features:
            hint = "; bfloat16 is native here" if {"amx_bf16", "avx512_bf16"} & features else ""
            return False, f"AVX-512 FP16 but no AMX-FP16: float16 matmuls run at about the float32 rate{hint}"
        return False, "this CPU has no AMX-FP16 (nor AVX-512 FP16): float16 matmuls are emulated"
    return True, "float32"


def _cuda_decision(dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if dtype == torch.bfloat16:
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation; sm_80 is the first with bf16 tensor cores
            native = major >= 8
        return native, f"{name}, compute capability {major}.{minor}" + ("" if native else ": no bf16 tensor cores")
    # fp16 tensor cores arrived with Volta (7.0); most 6.x parts run fp16 at a fraction of the fp32 rate.
    native = major >= 7
    return native, f"{name}, compute capability {major}.{minor}" + ("" if native else ": no fp16 tensor cores")


def _decide(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    if dtype == torch.float32:
        return True, "float32"
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"check_precision handles float32, bfloat16 and float16, got {dtype}.")
    if device.type == "cpu":
        return _cpu_decision(dtype, cpu_features())
    if device.type == "cuda":
        return _cuda_decision(dtype, device)
    if device.type == "mps" and dtype == torch.float16:
        return True, "Apple GPU (fp16 is its native half type)"
    return False, f"no capability table for {device.type} {dtype}; judged by the measured probe only"


# ---------------------------------------------------------------------------------------------------------------
# Timing probe

_PROBE_CACHE: dict[tuple[str, torch.dtype], tuple[float, int, str | None]] = {}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _best_matmul_seconds(size: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    generator = torch.Generator().manual_seed(size)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernel selection, one-off packing
    _synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_slowdown(device: str | torch.device, dtype: torch.dtype, *, budget_s: float = 0.5,
                     repeats: int = 5) -> tuple[float, int, str | None]:
    """(time of a `dtype` matmul / time of the float32 one, matrix size, error or None), within about `budget_s`.

    Sizes grow 128 -> 256 -> 512 while the next size is predicted (8x the FLOPs of the last) to fit the budget,
    so an emulated type that runs at 0.3 GFLOP/s still returns in well under a second; the factor is taken at
    the largest size measured. Cached per (device, dtype) for the life of the process.
    """
    device = resolve_device(device)
    key = (str(device), dtype)
    if key in _PROBE_CACHE:
        return _PROBE_CACHE[key]
    start = time.perf_counter()
    factor, measured, error = math.inf, _PROBE_SIZES[0], None
    with torch.no_grad():
        for size in _PROBE_SIZES:
            try:
                low = _best_matmul_seconds(size, dtype, device, repeats)
            except (RuntimeError, TypeError, NotImplementedError) as caught:  # type not implemented on the device
                error = f"{type(caught).__name__}: {str(caught).splitlines()[0] if str(caught) else ''}"
                factor = math.inf
                break
            high = _best_matmul_seconds(size, torch.float32, device, repeats)
            factor, measured = low / max(high, 1e-9), size
            predicted = 8 * (low + high) * (repeats + 1)
            if time.perf_counter() - start + predicted > budget_s:
                break
    _PROBE_CACHE[key] = (factor, measured, error)
    return _PROBE_CACHE[key]


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def native_dtype_report(device: str | torch.device | None, dtype: str | torch.dtype | None, *,
                        measure: bool | None = None, budget_s: float = 0.5) -> PrecisionReport:
    """Whether `device` runs `dtype` natively, why, and (when `measure`, by default only when not native) the
    measured slowdown against float32."""
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    native, reason = _decide(device, dtype)
    if measure is None:
        measure = not native
    if not measure or dtype == torch.float32:
        return PrecisionReport(str(device), dtype, native, reason)
    factor, size, error = measure_slowdown(device, dtype, budget_s=budget_s)
    return PrecisionReport(str(device), dtype, native, reason, factor, size, error)


def check_precision(device: str | torch.device | None, dtype: str | torch.dtype | None, *, fallback: bool = True,
                    budget_s: float = 0.5):
    """The precision to run with: `dtype` where `device` runs it natively; otherwise float32 with a
    `PrecisionWarning` (``fallback=True``), or `dtype` kept with a warning quoting the measured slowdown
    (``fallback=False``; a dtype whose matmul fails on the device is an error then).

    The result is spelled like the input, so it can replace an option's value: accelerate's "bf16"/"fp16" fall
    back to "no", dtype names ("bfloat16") to "float32", torch dtypes to `torch.float32`. None and float32 spellings
    are returned as given, without any check.
    """
    resolved = resolve_dtype(dtype)
    if resolved == torch.float32:
        return dtype
    report = native_dtype_report(device, resolved, budget_s=budget_s)
    if report.native:
        logger.info("Precision check: %s", report.describe())
        return dtype
    if fallback:
        warnings.warn(f"{report.describe()}. Falling back to float32.", PrecisionWarning, stacklevel=2)
        if isinstance(dtype, torch.dtype):
            return torch.float32
        return _FP32_SPELLING[str(dtype).strip().lower().removeprefix("torch.")]
    if report.probe_error:
        raise RuntimeError(f"{report.describe()}. Use float32 on this device.")
    warnings.warn(f"{report.describe()}. Keeping {report.dtype_name} as asked: expect every step to be about "
                  f"{report.slowdown:.3g}x slower than in float32.", PrecisionWarning, stacklevel=2)
    return dtype


def check_accelerate_precision(mixed_precision: str | None, *, fallback: bool = True) -> str | None:
    """`check_precision` for the value given to `Accelerator(mixed_precision=...)`, on the device accelerate will
    use: when `mixed_precision` is None, the one `accelerate launch` passes on from its configuration
    (ACCELERATE_MIXED_PRECISION); the CPU when ACCELERATE_USE_CPU is set or no GPU is visible. Returns the value to
    pass on (None when nothing was configured)."""
    if mixed_precision is None:
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION") or None
    if mixed_precision is None:
        return None
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes", "y", "on")
    return check_precision("cpu" if use_cpu else None, mixed_precision, fallback=fallback, budget_s=0.5)


__all__ = [
    "PrecisionReport",
    "PrecisionWarning",
    "check_accelerate_precision",
    "check_precision",
    "cpu_features",
    "measure_slowdown",
    "native_dtype_report",
    "resolve_device",
    "resolve_dtype",
]
