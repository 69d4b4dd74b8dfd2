"""One value for what a batch of images is told to draw, from the request to the network.

A `Condition` holds one part per kind of condition a run was trained on, each with one row per image:

    classes  Classes   class one-hots, multi-hot attributes or mixtures, and the rows on the learned null
    prompt   Prompt    a text run's prompts and, optionally, the negative prompts
    low      LowRes    a super-resolution run's upsampled low-resolution images and their noise levels
    scale    GuidanceScale  a distilled student's guidance scale, an input of its network (guidance.py)

Sampling, the edits, the training loss and `UNet.forward` pass it along whole; only the U-Net (and
the part's own file) looks inside. Guidance needs three things of every part, so it has one branch for
all kinds (guidance.denoiser): `against()`, the branch guidance pushes away from (the null class, the
negative or the empty prompt; a low-resolution image stays what it is), `cat`, to run both branches
as one batch, and `steers`, whether guidance changes anything. Each part also slices its rows.

A new kind of condition is a class with those four methods in its own file, a field here, and what
the U-Net does with it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol

from torch import Tensor

from .contexts import Classes
from .lowres import LowRes
from .prompt import Prompt
from .scale import GuidanceScale


class Part(Protocol):
    def rows(self, index: slice | Tensor, device=None) -> "Part": ...

    def cat(self, other: "Part") -> "Part": ...

    def against(self) -> "Part": ...

    @property
    def steers(self) -> bool: ...


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class Condition:
    classes: Classes | None = None
    prompt: Prompt | None = None
    low: LowRes | None = None
    scale: GuidanceScale | None = None

    def _parts(self) -> dict[str, Part]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def rows(self, index: slice | Tensor, device=None) -> "Condition":
        """The rows `index` (a slice or a tensor of row numbers) of every part, moved to `device`."""
        return replace(self, **{k: p.rows(index, device) for k, p in self._parts().items()})

    def cat(self, other: "Condition") -> "Condition":
        """This batch's rows, then other's (the two branches of guidance as one batch)."""
        return replace(self, **{k: p.cat(getattr(other, k)) for k, p in self._parts().items()})

    def against(self) -> "Condition":
        """The same images on the branch that guidance pushes away from."""
        return replace(self, **{k: p.against() for k, p in self._parts().items()})

    @property
    def steers(self) -> bool:
        """Whether guidance has anything to push: some row holds a class or a prompt, or a negative prompt."""
        return any(p.steers for p in self._parts().values())


def rows_of(cond: Condition | None, index: slice | Tensor, device=None) -> Condition | None:
    return None if cond is None else cond.rows(index, device)


__all__ = ["Classes", "Condition", "GuidanceScale", "LowRes", "Part", "Prompt", "rows_of"]
