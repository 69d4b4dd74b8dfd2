"""The training options: four small frozen groups, each checked when it is built.

    SourceOptions     what the model learns from
    DiffusionOptions  the network and the diffusion it learns
    OptimOptions      the optimisation and its budget
    RuntimeOptions    where and how the same steps are computed, and what is written on the way

`TrainConfig` holds one of each. Option names are unique across the groups, so the flags, the TOML
keys and config.json's "train" section stay flat: `TrainConfig.flat(data="digits", steps=20)` builds
one from flat options and `cfg.options()` gives them back.

Each field's type is checked, and its `Annotated` rules: a `Literal` of the choices, a `Range`. The
choices sit in `Annotated[str, Literal[...]]` so that a reader of plain type hints (cli/flags.py's
flag generator) sees `str`. A bad value raises UsageError naming the option and what it allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Annotated, Literal, get_args, get_origin, get_type_hints

from ..errors import UsageError
from ..limits import GUIDANCE, MAX_SEED
from ..parameterization import PREDICTIONS, predictable
from ..precision import PRECISIONS
from ..conditions.lowres import TASKS, TRAIN_AUG
from ..run import LR_RANGE, MAX_STEPS
from ..samplers import REGISTRY
from ..schedule import SCHEDULES
from ..unet import BLOCK_STYLES, CONTEXT_MODES, PATCHES
from .recipe import CONTEXT_MODE, MODEL_SIZES

DEFAULT_MINUTES = 10.0
MAX_GRIDS = 1000  # sample grids in a run (and at most one a step: a shorter run draws fewer)
MAX_MINUTES = 1_000_000  # about two years
MAX_BATCH = 10**9  # images a step: a sanity bound; training/sizing.py refuses what does not fit in memory


@dataclass(frozen=True)
class Range:
    low: float
    high: float = math.inf
    open_low: bool = False  # low itself is out
    open_high: bool = False  # high itself is out

    def allows(self, value) -> bool:
        if not _finite(value):
            return False
        above = self.low < value if self.open_low else self.low <= value
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return "be positive" if (self.low, self.open_low) == (0, True) else f"be >= {_bound(self.low)}"
        return (f"lie in {'(' if self.open_low else '['}{_bound(self.low)}, {_bound(self.high)}"
                f"{')' if self.open_high else ']'}")


def _finite(value) -> bool:
    """Not NaN nor infinite; any int is (math.isfinite would overflow on one past float's range)."""
    return isinstance(value, int) or math.isfinite(value)


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


POSITIVE, AT_LEAST_0, BELOW_1 = Range(0, open_low=True), Range(0), Range(0, 1, open_high=True)
ModelSize = Annotated[str, Literal[("auto", *MODEL_SIZES)]]
Schedule = Annotated[str, Literal[SCHEDULES]]
ContextMode = Annotated[str, Literal[CONTEXT_MODES]]
BlockStyle = Annotated[str | None, Literal[BLOCK_STYLES]]
Precision = Annotated[str, Literal[PRECISIONS]]
Task = Annotated[str, Literal[TASKS]]


def _check(name: str, value, hint) -> None:
    kind, *rules = get_args(hint) if get_origin(hint) is Annotated else (hint,)
    if not _has_type(value, kind):
        raise UsageError(f"{name} must be {_kind_name(kind)}, got {value!r}")
    for rule in rules if value is not None else ():
        if get_origin(rule) is Literal and value not in get_args(rule):
            raise UsageError(f"{name} must be one of {', '.join(map(str, get_args(rule)))}, got {value!r}")
        if isinstance(rule, Range) and not rule.allows(value):
            finite = "" if _finite(value) else " and finite"
            raise UsageError(f"{name} must {rule}{finite}, got {_show(value)}")


def _show(value) -> str:
    """A value for a one-line message: a 400-digit number is shown by its first digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _has_type(value, kind) -> bool:
    kinds = get_args(kind) or (kind,)
    if value is None or isinstance(value, bool):
        return type(value) in kinds
    return any(isinstance(value, k) for k in kinds if k is not type(None)) or (isinstance(value, int) and float in kinds)


def _kind_name(kind) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "none"}
    return " or ".join(names[k] for k in get_args(kind) or (kind,))


class _Checked:
    """Checks every field against its annotation after construction, then `check` across fields."""

    def __post_init__(self):
        for name, hint in get_type_hints(type(self), include_extras=True).items():
            _check(name, getattr(self, name), hint)
        self.check()

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class SourceOptions(_Checked):
    data: str = "mnist"  # data spec: mnist, digits, an image folder or a .npy array
    labels: str | None = None  # optional .npy of class ids for the images
    image_size: Annotated[int | None, Range(8, 1024)] = None  # side in pixels; None: inferred from the data
    channels: Annotated[int | None, Literal[1, 3]] = None  # 1 or 3; None: inferred from the data
    conditional: bool = True  # condition on the class when the data has labels
    context_names: str | None = None  # comma-separated names of the classes or context attributes
    base: str | None = None  # fine-tune: the run folder whose EMA weights this run starts from
    only_label: str | None = None  # fine-tune: train on the images of this class only (name or id)
    captions: str | None = None  # train on text prompts: metadata (a folder's metadata.jsonl/csv), templates (digits 0-9), attributes (named labels), names (emoji), a caption file, or none; None: the folder's metadata where it has one
    task: Task = "generate"  # generate images, or upscale (super-resolution, SR3) images downsampled by factor
    factor: Annotated[int | None, Range(2, 8)] = None  # upscale: full size over low-res size (default 4)
    flip: bool | None = None  # mirror each training image left-right half of the time; None: colour sets yes, one-channel sets no (recipe.py)

    def check(self) -> None:
        if self.factor is not None and self.task != "upscale":
            raise UsageError("factor applies to task upscale only")
        if self.task == "upscale":
            given = [n for n in ("labels", "captions", "context_names") if getattr(self, n) not in (None, "none")]
            if given:
                raise UsageError(f"task upscale trains a model unconditional in class: it takes no "
                                 f"{given[0].replace('_', '-')}")
        if self.captions not in (None, "attributes", "none") and self.context_names is not None:
            raise UsageError("a run is conditioned on classes or on text, not both: context_names names classes, "
                             "captions asks for text prompts (captions 'attributes' captions from those names)")


@dataclass(frozen=True)
class DiffusionOptions(_Checked):
    model: ModelSize = "auto"  # tiny, small, medium, large, or auto: the largest the budget trains well
    context_mode: ContextMode = CONTEXT_MODE  # how the class reaches the U-Net: scale (FiLM), add (to the time embedding), both
    block_style: BlockStyle = None  # U-Net blocks: adm (scale-shift norm of time + class; exports to diffusers) or film (the course's FiLM); None: the recipe's (adm; film behind a patch stem)
    patch: Annotated[int | None, Literal[PATCHES]] = None  # a patch stem: the U-Net runs on patch x patch tiles stacked as channels (1: none); None: the recipe's
    schedule: Schedule = "linear"  # noise schedule: linear, cosine or sigmoid
    zero_snr: bool = False  # rescale the schedule to zero terminal SNR (Lin et al. 2023); needs prediction v or x0
    T: Annotated[int, Range(2, 100_000)] = 1000  # diffusion steps
    prediction: Annotated[str | None, Literal[PREDICTIONS]] = None  # what the network predicts: eps, x0 or v; None: the recipe's (v behind a patch stem, else eps)
    min_snr: Annotated[float | None, AT_LEAST_0] = None  # min-SNR-gamma loss weighting (Hang et al. 2023); 0: plain MSE; None: the recipe's (1 behind a patch stem, else 5)
    # 0.2 scored FID 18.1 on Twemoji against 14.6-16.1 at 0.1 (benchmarks/colour_budget.py, 10 minutes of one busy core)
    cond_drop: Annotated[float, BELOW_1] = 0.1  # probability of training on the null context (for guidance)
    guidance: Annotated[float | None, Range(GUIDANCE.lo, GUIDANCE.hi)] = None  # the guidance scale its samples default to (grids, sample, eval, demo, serve); None: the recipe's
    cond_aug: Annotated[float, Range(0, 2)] = TRAIN_AUG  # upscale: noise std of the low-res image drawn in [0, this]

    def check(self) -> None:
        if not predictable(self.prediction, self.zero_snr):
            raise UsageError("zero_snr needs prediction v or x0: with no signal left at the last step, "
                             "the noise says nothing about the image")


@dataclass(frozen=True)
class OptimOptions(_Checked):
    steps: Annotated[int | None, POSITIVE] = None  # optimizer steps; None: as many as `minutes` affords
    minutes: Annotated[float | None, POSITIVE] = None  # wall-clock budget; used when steps is None (default 10)
    batch_size: Annotated[int | None, POSITIVE] = None  # images per optimizer step; None: 32 on a CPU, 128 on CUDA (recipe.py)
    lr: Annotated[float | None, POSITIVE] = None  # peak learning rate; None: from the recipe
    warmup: Annotated[int | None, POSITIVE] = None  # warm-up steps; None: from the recipe
    ema_decay: Annotated[float | None, BELOW_1] = None  # None: the EMA averages over about the last fifth of the run
    grad_clip: Annotated[float, POSITIVE] = 1.0  # max global gradient norm
    precision: Precision = "auto"  # auto (bf16 where the hardware has bf16 units and a probe times it faster), fp32, bf16, fp16
    seed: Annotated[int, Range(0, MAX_SEED)] = 0  # seeds the weights, the batches and the noise
    distill_calls: Annotated[int | None, Literal[1, 2, 4]] = None  # distill: the network calls the student learns to draw in; None: not a student

    def check(self) -> None:
        """Bounds a run's config.json can hold (run.py), beyond being positive."""
        for name, value, high in (("steps", self.steps, MAX_STEPS), ("warmup", self.warmup, MAX_STEPS),
                                  ("minutes", self.minutes, MAX_MINUTES), ("lr", self.lr, LR_RANGE[1]),
                                  ("batch_size", self.batch_size, MAX_BATCH)):
            if value is not None and value > high:
                raise UsageError(f"{name} must be at most {_bound(high)}, got {_show(value)}")
        if self.lr is not None and self.lr < LR_RANGE[0]:
            raise UsageError(f"lr must be at least {LR_RANGE[0]:g}, got {self.lr!r}")

    @property
    def budget_seconds(self) -> float | None:
        """A time budget's seconds; None for a run of `steps` steps."""
        return None if self.steps is not None else 60 * (self.minutes or DEFAULT_MINUTES)


@dataclass(frozen=True)
class RuntimeOptions(_Checked):
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the network (CUDA only: see setup.COMPILE_ON_CPU)
    channels_last: bool = False  # NHWC memory layout: faster convolutions on recent GPUs, 1.07-1.21x on a CPU
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    grad_accum: Annotated[int, POSITIVE] = 1  # micro-batches per step: the same update with 1/K of the activation memory
    checkpoint_minutes: Annotated[float, POSITIVE] = 2.0  # save at least this often
    keep_checkpoints: Annotated[int, POSITIVE] = 2  # checkpoints kept in RUN/checkpoints; resume falls back to an older one
    grids: Annotated[int, Range(0, MAX_GRIDS)] = 4  # sample grids written to RUN/samples (at most one a step)
    sampler: Annotated[str | None, Literal[tuple(REGISTRY)]] = None  # the sampler its samples default to (grids, sample, eval, demo, serve); None: the recipe's (ddim for one channel, dpmpp-2m for colour)
    sample_steps: Annotated[int | None, Range(1, 1000)] = None  # that sampler's steps its samples default to; None: the recipe's
    max_bad_steps: Annotated[int, POSITIVE] = 5  # non-finite losses in a row (each step skipped) before training stops


GROUPS = {"source": SourceOptions, "diffusion": DiffusionOptions, "optim": OptimOptions, "runtime": RuntimeOptions}
GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}


@dataclass(frozen=True)
class TrainConfig:
    source: SourceOptions = SourceOptions()
    diffusion: DiffusionOptions = DiffusionOptions()
    optim: OptimOptions = OptimOptions()
    runtime: RuntimeOptions = RuntimeOptions()

    def __post_init__(self):
        accum, batch = self.runtime.grad_accum, self.optim.batch_size
        if self.optim.distill_calls is not None and not self.source.base:
            raise UsageError("distill_calls makes a student of a trained run: it needs base, the teacher")
        if batch is not None and accum > batch:
            raise UsageError(f"grad_accum {accum} splits a batch of {batch} into empty parts")

    @classmethod
    def flat(cls, **options) -> "TrainConfig":
        """From flat options (flags, TOML, config.json): TrainConfig.flat(data="digits", steps=20)."""
        unknown = sorted(set(options) - set(GROUP_OF))
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        parts = {group: {} for group in GROUPS}
        for name, value in options.items():
            parts[GROUP_OF[name]][name] = value
        return cls(**{group: GROUPS[group](**values) for group, values in parts.items()})

    def options(self) -> dict:
        """Every option by its flat name, in the groups' order."""
        return {f.name: getattr(getattr(self, group), f.name) for group, cls in GROUPS.items() for f in fields(cls)}

    def updated(self, **options) -> "TrainConfig":
        """A copy with some options changed, checked like a new one."""
        return self.flat(**{**self.options(), **options})

    @staticmethod
    def choices() -> dict[str, tuple]:
        """The closed choices of the options, from their Literal rules (the command line's choices)."""
        out = {}
        for cls in GROUPS.values():
            for name, hint in get_type_hints(cls, include_extras=True).items():
                rules = get_args(hint)[1:] if get_origin(hint) is Annotated else ()
                out.update({name: get_args(r) for r in rules if get_origin(r) is Literal})
        return out
