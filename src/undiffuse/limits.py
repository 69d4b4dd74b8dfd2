"""The one table of what a user may ask for when drawing: the command line, the web page and the library
check against these, so that a value one accepts the others accept too. The page draws on a shared
worker, so it has tighter caps on counts and steps (its own rows below) and a cap on the work of one
request; everything else is the same. (No torch here: the command line's --help reads this.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

# The largest seed a user may give (the training and sampling flags, config.json): 32 bits, as numpy
# and most tools take. What is derived from it stays far inside what torch.Generator.manual_seed takes
# (below 2**64): image i of a batch is seeded seed + i, training step s's draws seed * 1_000_003 + s + 1.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Limit:
    name: str  # as the user knows it: the flag without its dashes, the page's field
    lo: float
    hi: float
    whole: bool = True  # an integer

    def check(self, value, name: str | None = None):
        """value, if it is a (whole) number in [lo, hi]; else UsageError naming it, the range and the value."""
        name = name or self.name
        number = not isinstance(value, bool) and (isinstance(value, int) or
                                                  (isinstance(value, float) and math.isfinite(value)))
        if not number or (self.whole and value != int(value)):
            raise UsageError(f"{name} must be a {'whole ' if self.whole else ''}number in {self.range}, "
                             f"got {_shown(value)}")
        if not self.lo <= value <= self.hi:
            raise UsageError(f"{name} must lie in {self.range}, got {_number(value)}")
        return int(value) if self.whole else float(value)

    @property
    def range(self) -> str:
        return f"[{_number(self.lo)}, {_number(self.hi)}]"


def _number(value) -> str:
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    return str(int(value)) if value.is_integer() and abs(value) < 1e18 else f"{value:g}"


def _shown(value, limit: int = 40) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _number(value)
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# Guidance w: 0 unconditional, 1 conditional; past 20 every model tried drew saturated noise.
GUIDANCE = Limit("guidance", 0.0, 20.0, whole=False)
SEED = Limit("seed", 0, MAX_SEED)
STEPS = Limit("steps", 1, 100_000)  # sampling steps; a run's own T caps them further
IMAGES = Limit("n", 1, 100_000)  # images of one `sample`
EVAL_IMAGES = Limit("n", 10, 100_000)  # images `eval` draws: FID needs a few
EDITS = Limit("n", 1, 64)  # results of one edit (inpaint, img2img, interpolate, upscale)
# One request of the web page, which holds its single worker while it runs:
PAGE_IMAGES = Limit("n", 1, 64)
PAGE_STEPS = Limit("steps", 1, 1000)
# Network evaluations of one page request, summed over its images and both branches of guidance: 64
# unguided images of DDPM's 1,000 steps (32 guided ones), about a minute for the demo model on a laptop core.
PAGE_WORK = 64_000
# ... and the longest one request may hold it, at the pace the run's network was timed at on this machine
# (LoadedRun.seconds_per_image_call): a 64x64 colour model's call costs many times a 28x28 digit model's.
PAGE_SECONDS = 300
