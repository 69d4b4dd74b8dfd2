"""How much memory an allocation may take: commands estimate what they will need (the data at its
size, a batch, an output grid) and refuse with the figure and the limit before they allocate, instead
of dying in the allocator half-way through."""
from __future__ import annotations

import os

from .errors import UsageError

SHARE = 0.8  # of the memory free now: the rest is for the interpreter, torch and the other allocations


def available_bytes(device=None) -> int:
    """Free memory of a CUDA device, or of this machine (MemAvailable on Linux)."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def require(what: str, need: int, device=None, hint: str = "") -> None:
    """Refuse (UsageError, one line) when `need` bytes exceed the share of free memory allowed."""
    limit = int(SHARE * available_bytes(device))
    if need > limit:
        where = "this GPU" if device is not None and str(device).startswith("cuda") else "this machine"
        raise UsageError(f"{what} needs about {_size(need)}, more than the {_size(limit)} {where} can spare"
                         + (f"; {hint}" if hint else ""))


def _size(n: int) -> str:
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} kB"
