"""The arithmetic a network runs in: the one place that decides it, and the autocast every pass enters.

bf16 autocast keeps the weights in fp32 and runs the matrix products and convolutions in bfloat16
(fp32's range, 8 bits of mantissa). Hardware with bf16 units runs those several times faster than
fp32: CPUs with Intel AMX or AVX512-BF16 (Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and
later), Arm CPUs with the BF16 extension, CUDA GPUs from Ampere on. Elsewhere bf16 is emulated and
slower than fp32. The master weights, the optimizer state, the EMA, the loss and the guidance blend
stay fp32: the network's output is cast back before anything is computed from it.

`--precision auto` (the default everywhere) is decided by `choose`:
- CUDA: bf16 where the GPU has native bf16, else fp32.
- CPU without bf16 units (its flags say so): fp32, without timing anything.
- CPU with bf16 units, or flags that cannot be read: the caller's own workload (a training step,
  a sampling pass of the model at hand) is timed in fp32 and in bf16, alternately, and bf16 is kept
  only when it runs at least MARGIN times as fast. The probe, not the flags, has the last word: a
  small model whose products are too small to gain keeps fp32.
An explicit fp32, bf16 or fp16 always wins, and fp16 on a CPU is timed against fp32: when slower
(it is on every CPU measured so far) it is allowed with a warning that carries the measurement. The
environment variable UNDIFFUSE_PRECISION, when set, says what auto means on this machine (fp32 for
runs repeatable bit for bit across machines; the test suite sets it, so that two runs of one test
never differ by a probe's verdict).
"""
from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MARGIN = 1.1  # bf16 must time this much faster than fp32 to be chosen: the probe is short, and noisy
PROBE_REPEATS = 3  # timed runs of the workload in each precision, after one untimed
ENVIRONMENT = "UNDIFFUSE_PRECISION"  # what auto means here, when set
CPU_UNITS = ("amx_bf16", "avx512_bf16", "bf16")  # /proc/cpuinfo flags (x86) or features (Arm) of bf16 units


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    reason: str  # why it was chosen, in the user's words
    warning: str | None = None  # said once to the user: a choice that is slower than fp32 here
    probed: bool = False  # chosen by timing the caller's workload (auto on a CPU with bf16 units)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self, device_type: str):
        """The context a forward pass runs in: autocast to the reduced type, or nothing for fp32."""
        return torch.autocast(device_type, dtype=self.dtype, enabled=self.name != "fp32")

    def to_json(self) -> dict:
        return {"name": self.name, "reason": self.reason}


FP32 = Precision("fp32", "full precision")

# workload(precision): one unit of the caller's work (a training step, a forward pass), under that precision
Workload = Callable[[Precision], object]
# timer(workload, names) -> {name: seconds}: `measure`, or a test's stand-in
Timer = Callable[[Workload, tuple[str, ...]], dict[str, float]]


def choose(requested: str, device: torch.device, workload: Workload | None = None, *,
           units: tuple[str, ...] | None | bool = False, timer: Timer | None = None) -> Precision:
    """The precision to run in: `requested` (PRECISIONS) on `device`, timing `workload` where auto
    (or fp16 on a CPU) needs a measurement. units: the CPU's bf16 units (default: read from the
    machine; None: unknown); timer: measures the workload (default `measure`)."""
    if requested not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    timer = timer or measure
    if requested == "auto" and os.environ.get(ENVIRONMENT):
        return _from_environment(os.environ[ENVIRONMENT])
    if device.type == "cuda":
        return _on_cuda(requested, device)
    units = cpu_bf16_units() if units is False else units
    if requested == "auto":
        return _auto_on_cpu(units, workload, timer)
    if requested == "fp16" and workload is not None:
        times = timer(workload, ("fp32", "fp16"))
        ratio = times["fp32"] / times["fp16"]
        if ratio < 1:
            return Precision("fp16", "asked for", f"precision fp16 ran at {ratio:.2f}x the speed of fp32 on this "
                             "CPU (timed on this model): bf16 or auto is faster here")
    if requested == "bf16" and units == ():
        return Precision("bf16", "asked for", "this CPU has no bf16 units, so bf16 is emulated: expect it "
                         "slower than fp32 (auto would pick fp32 here)")
    return Precision(requested, "asked for")


def _from_environment(value: str) -> Precision:
    if value not in DTYPES:
        raise UsageError(f"{ENVIRONMENT} must be one of {', '.join(DTYPES)} (or unset for auto), got {value!r}")
    return Precision(value, f"{ENVIRONMENT}={value}")


def _on_cuda(requested: str, device: torch.device) -> Precision:
    if requested != "auto":
        return Precision(requested, "asked for")
    if torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability(device)
        return Precision("bf16", f"CUDA GPU with native bf16 (compute capability {major}.{minor})")
    return Precision("fp32", "this CUDA GPU has no native bf16")


def _auto_on_cpu(units: tuple[str, ...] | None, workload: Workload | None, timer: Timer) -> Precision:
    if units == ():
        return Precision("fp32", f"this CPU has no bf16 units (none of the flags {', '.join(CPU_UNITS)})")
    has = f"bf16 units ({', '.join(units)})" if units else "unknown CPU flags"
    if workload is None:
        return Precision("fp32", f"{has}, but nothing was timed")
    times = timer(workload, ("fp32", "bf16"))
    ratio = times["fp32"] / times["bf16"]
    if ratio >= MARGIN:
        return Precision("bf16", f"{has}; a probe of this model ran bf16 at {ratio:.2f}x the speed of fp32",
                         probed=True)
    return Precision("fp32", f"{has}, but a probe of this model ran bf16 at only {ratio:.2f}x the speed of "
                     f"fp32 (under the {MARGIN}x it takes)", probed=True)


@functools.cache
def cpu_bf16_units() -> tuple[str, ...] | None:
    """This CPU's bf16 units by their /proc/cpuinfo flags: () for none, None where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return units_in_cpuinfo(f.read())
    except OSError:
        return None


def units_in_cpuinfo(text: str) -> tuple[str, ...] | None:
    """The bf16 units named by the first 'flags' (x86) or 'Features' (Arm) line of a /proc/cpuinfo."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return tuple(u for u in CPU_UNITS if u in flags)
    return None


def measure(workload: Workload, names: tuple[str, ...], repeats: int = PROBE_REPEATS,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """The median seconds of `workload` in each precision of `names` (time_alternately)."""
    return time_alternately({n: functools.partial(workload, Precision(n, "probe")) for n in names}, repeats, clock)


def time_alternately(workloads: dict[str, Callable[[], object]], repeats: int = PROBE_REPEATS,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """The median seconds of each workload, timed in alternation (so that a change in the machine's
    load hits all alike), after one untimed run of each."""
    times = {name: [] for name in workloads}
    for work in workloads.values():
        work()
    for _ in range(repeats):
        for name, work in workloads.items():
            start = clock()
            work()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}
