"""A distilled student's guidance scale (Meng et al. 2023): guidance built into the network, which
takes the scale w as an input (embedded like the step) and gives the guided prediction in one pass,
where a teacher runs two branches and blends them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# w is embedded as the step is (unet.sinusoidal_embedding), after this stretch: the guidance range
# [0, 20] spans the embedding's periods as t's [0, 1000) does.
EMBED_STRETCH = 50.0


def guidance_range(default: float) -> tuple[float, float]:
    """The scales a student learns: from 1 (the conditional model, unguided) to twice its run's default."""
    return 1.0, max(2.0, 2 * default)


@dataclass(frozen=True)
class GuidanceScale:
    """One guidance scale per image, (B,) float."""
    value: Tensor

    @classmethod
    def of(cls, w: float, n: int, device=None) -> "GuidanceScale":
        return cls(torch.full((n,), float(w), device=device))

    def rows(self, index, device=None) -> "GuidanceScale":
        """The rows `index` (a slice or row numbers): a part of a Condition (condition.py)."""
        return GuidanceScale(self.value[index].to(device))

    def cat(self, other: "GuidanceScale") -> "GuidanceScale":
        return GuidanceScale(torch.cat([self.value, other.value]))

    def against(self) -> "GuidanceScale":
        return self

    @property
    def steers(self) -> bool:
        return False  # the network applies it: nothing for the two-branch blend to do
