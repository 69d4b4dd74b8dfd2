"""How much memory an allocation may take: commands estimate what they will need (the data at its
size, a batch, an output grid) and refuse with the figure and the limit before they allocate, instead
of dying in the allocator half-way through."""
from __future__ import annotations

import os

from .errors import UsageError

SHARE = 0.8  # of the memory free now: the rest is for the interpreter, torch and the other allocations


def available_bytes(device=None) -> int:
    """Free memory of a CUDA device, or what this process may still take on this machine: the least of
    the free memory (MemAvailable on Linux), the room left under its address-space limit (`ulimit -v`)
    and the room left in its container's memory limit (cgroup v2 memory.max, or v1's limit)."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(device)[0]
    return min(_free_memory(), _room_under_rlimit(), _room_in_cgroup())


def _free_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _room_under_rlimit() -> int:
    """RLIMIT_AS less this process's virtual size (which counts what is mapped, not only what is used)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return _UNLIMITED
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, limit - size)
    except (ImportError, OSError, ValueError):
        return _UNLIMITED


def _room_in_cgroup() -> int:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text == "max" or int(text) >= 2**60:
                return _UNLIMITED
            with open(usage_file) as f:
                return max(0, int(text) - int(f.read().strip()))
        except (OSError, ValueError):
            continue
    return _UNLIMITED


_UNLIMITED = 2**62


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
