"""Per-image Gaussian noise: an image depends on its own seed only, whatever the batch it is drawn in
(NVlabs/edm's habit). A sampler's `generator` is None, one torch.Generator, or a list of them, one per image."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generator = None, device="cpu", dtype=torch.float32) -> Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i alone."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    return torch.stack(rows).to(device)


def generators(n: int, seed: int, device="cpu") -> list[torch.Generator]:
    """One generator per image: image i is seeded seed + i."""
    return [torch.Generator(device).manual_seed(seed + i) for i in range(n)]
