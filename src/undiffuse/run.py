"""A run folder's config.json: one typed record, one reader and one writer.

    RunRecord       what a run is: its network, schedule, prediction, image shape, classes, data, plan, options
    read_run(RUN)   config.json -> RunRecord; every key, type and range is checked before anything is built,
                    and a bad one is a CheckpointError that names the key and what it allows
    write_run(RUN, record)

Format 2 (written now) holds each fact once; "train" keeps the training options that are not facts
of the record (IN_RECORD names the others). Format 1 also kept those options in "train", flat beside
the rest, and runs written before unet.context_mode existed lack it (they used "scale"); runs written
before unet.block_style lack that (they used "film", the default, in either format); it is read
as it was meant, and rewritten as format 2 when its record is next written (a resume that extends
the run or changes an option, a time budget's checkpoint).

A text-conditioned run (unet.text_dim > 0) says which sentence encoder its prompts go through in
"text" (encoder, dim, max_tokens); runs without the key are not text runs. Its caption table, the
training captions encoded once, lies beside it in captions.safetensors (CAPTIONS).

A super-resolution run keeps its task ("upscale"), factor and training augmentation (cond_aug) among
its "train" options, and unet.cond_channels equal to its channels; runs without them are "generate".
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import CONFIG, atomic_write, read_json_object
from .errors import CheckpointError, UsageError
from .parameterization import PREDICTIONS, predictable
from .precision import DTYPES, FP32, Precision
from .schedule import SCHEDULES, NoiseSchedule, make_schedule
from .unet import BLOCK_STYLES, CONTEXT_MODES, PATCHES, UNetConfig

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Training options the record holds as its own facts, so "train" leaves them out: the data read
# (data_source), the base run (finetuned_from), the image shape, the schedule, the prediction and
# how the class reaches the U-Net and its blocks (unet.context_mode, unet.block_style), and its
# patch stem (unet.patch).
IN_RECORD = ("data", "base", "image_size", "channels", "schedule", "T", "zero_snr", "prediction", "context_mode",
             "block_style", "patch")
MAX_T = 100_000
MAX_STEPS = 10**9  # a plan's steps and warm-up; training refuses more, so that every run it writes reads back
LR_RANGE = (1e-12, 10.0)  # a plan's peak learning rate, likewise
CAPTIONS = "captions.safetensors"  # a text run's encoded training captions, the texts in its metadata
_MISSING = object()


@dataclass(frozen=True)
class ScheduleSpec:
    name: str  # schedule.SCHEDULES
    T: int  # diffusion steps
    zero_snr: bool = False  # rescaled to zero terminal SNR

    def build(self) -> NoiseSchedule:
        return make_schedule(self.name, self.T, self.zero_snr)


@dataclass(frozen=True)
class Plan:
    steps: int  # optimizer steps the run will take
    lr: float  # peak learning rate
    warmup: int  # linear warm-up steps
    ema_decay: float  # EMA decay after its own warm-up


@dataclass(frozen=True)
class BaseRun:
    run: str  # the resolved folder of the run a fine-tuning run started from
    step: int  # the step of the EMA weights it started from


@dataclass(frozen=True)
class TextSpec:
    """The sentence encoder a text run's prompts go through."""
    encoder: str  # conditions.text.ENCODER_NAME
    dim: int  # the width of its states: unet.text_dim
    max_tokens: int  # token states kept per prompt for cross-attention


@dataclass(frozen=True)
class RunRecord:
    unet: UNetConfig
    model_size: str  # training.recipe.MODEL_SIZES
    schedule: ScheduleSpec
    prediction: str  # parameterization.PREDICTIONS
    image_size: int
    channels: int
    class_names: tuple[str, ...]  # () for an unconditional model
    data_source: str  # the data spec the run trained on
    num_images: int
    plan: Plan
    train: dict  # the training options outside IN_RECORD, flat (training.record reads them)
    finetuned_from: BaseRun | None = None
    text: TextSpec | None = None  # None: not conditioned on text
    precision: Precision = FP32  # what it trained in, and why (train.precision is what was asked: auto)

    @property
    def task(self) -> str:
        """generate, or upscale (super-resolution); runs written before the option generate."""
        return self.train.get("task") or "generate"

    @property
    def factor(self) -> int | None:
        """An upscale run's factor: its image size over its low-res size."""
        return self.train.get("factor") if self.task == "upscale" else None

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "model_size": self.model_size, "unet": self.unet.to_dict(),
                "schedule": asdict(self.schedule), "prediction": self.prediction, "image_size": self.image_size,
                "channels": self.channels, "class_names": list(self.class_names), "data_source": self.data_source,
                "num_images": self.num_images, "plan": asdict(self.plan), "train": dict(self.train),
                "finetuned_from": asdict(self.finetuned_from) if self.finetuned_from else None,
                "text": asdict(self.text) if self.text else None, "precision": self.precision.to_json()}


def write_run(folder: str | Path, record: RunRecord) -> None:
    text = json.dumps(record.to_json(), indent=2) + "\n"
    atomic_write(Path(folder) / CONFIG, lambda p: p.write_text(text))


def read_run(folder: str | Path) -> RunRecord:
    folder = Path(folder)
    values = _load_json(folder)
    path = folder / CONFIG
    version = values.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} was written by an incompatible version of undiffuse (format_version "
                              f"{version!r}; this version reads {' and '.join(map(str, READABLE_VERSIONS))})")
    return _record(_Section(_from_format_1(values) if version == 1 else values, path))


def _load_json(folder: Path) -> dict:
    if not folder.is_dir():
        raise CheckpointError(f"run folder '{folder}' does not exist")
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"'{folder}' is not an undiffuse run folder (no {CONFIG})")
    return read_json_object(path)


def _from_format_1(values: dict) -> dict:
    """Format 1's "train" held every option, IN_RECORD ones too; its "unet" may predate context_mode."""
    values = dict(values)
    if isinstance(values.get("train"), dict):
        values["train"] = {k: v for k, v in values["train"].items() if k not in IN_RECORD}
    if isinstance(values.get("unet"), dict):
        values["unet"] = {"context_mode": "scale", **values["unet"]}
    return values


# --- reading, key by key ---------------------------------------------------------------------------

class _Section:
    """One JSON object of config.json. Each getter returns a key's value once it has the type and
    range it must have, and otherwise raises a CheckpointError naming the key and what it allows."""

    def __init__(self, values, path: Path, where: str = ""):
        self.values, self.path, self.where = values, path, where

    def fail(self, key: str, allowed: str, value=_MISSING):
        got = "it is missing" if value is _MISSING else f"got {value!r}"
        raise CheckpointError(f"{self.path}: {self.where}{key} must be {allowed}; {got}")

    def get(self, key: str, allowed: str, ok, default=_MISSING):
        if key not in self.values:
            if default is _MISSING:
                self.fail(key, allowed)
            return default
        value = self.values[key]
        if not ok(value):
            self.fail(key, allowed, value)
        return value

    def integer(self, key: str, low: int, high: int, default=_MISSING) -> int:
        return self.get(key, f"an integer in [{low}, {high}]", lambda v: _is_int(v) and low <= v <= high, default)

    def number(self, key: str, low: float, high: float, *, below_high: bool = False) -> float:
        allowed = f"a number in [{low}, {high}{')' if below_high else ']'}"
        return self.get(key, allowed, lambda v: _is_number(v) and low <= v <= high and not (below_high and v == high))

    def choice(self, key: str, options: tuple, default=_MISSING):
        allowed = "one of " + ", ".join(map(str, options))
        return self.get(key, allowed, lambda v: type(v) in (str, int) and v in options, default)

    def text(self, key: str) -> str:
        return self.get(key, "a non-empty string", lambda v: isinstance(v, str) and v != "")

    def integers(self, key: str, low: int, high: int, most: int, fewest: int = 0) -> list[int]:
        allowed = f"a list of {fewest} to {most} integers in [{low}, {high}]"
        return self.get(key, allowed, lambda v: isinstance(v, list) and fewest <= len(v) <= most
                        and all(_is_int(i) and low <= i <= high for i in v))

    def section(self, key: str) -> "_Section":
        return _Section(self.get(key, "a JSON object", lambda v: isinstance(v, dict)), self.path, f"{self.where}{key}.")

    def only(self, known) -> None:
        unknown = sorted(set(self.values) - set(known))
        if unknown:
            raise CheckpointError(f"{self.path}: unknown key {self.where}{unknown[0]}; known: {', '.join(known)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record(top: _Section) -> RunRecord:
    unet, schedule = _unet(top.section("unet")), _schedule(top.section("schedule"))
    values = dict(unet=unet, model_size=top.text("model_size"), schedule=schedule,
                  prediction=top.choice("prediction", PREDICTIONS), image_size=top.integer("image_size", 8, 1024),
                  channels=top.choice("channels", (1, 3)), class_names=_names(top), data_source=top.text("data_source"),
                  num_images=top.integer("num_images", 1, 10**9), plan=_plan(top.section("plan")),
                  train=_options(top), finetuned_from=_base(top), text=_text(top))
    values["precision"] = _precision(top, values["train"])
    top.only(["format_version", *values])
    if not predictable(values["prediction"], schedule.zero_snr):
        top.fail("prediction", "v or x0 for a zero-SNR schedule", "eps")
    if unet.channels != values["channels"]:
        top.fail("unet.channels", f"the image channels, {values['channels']}", unet.channels)
    if unet.context_dim != len(values["class_names"]):
        top.fail("unet.context_dim", f"the number of class names, {len(values['class_names'])}", unet.context_dim)
    text_dim = values["text"].dim if values["text"] else 0
    if unet.text_dim != text_dim:
        top.fail("unet.text_dim", f"text.dim, {text_dim}" if text_dim else "0 without a text encoder", unet.text_dim)
    if unet.guidance_input and not unet.context_dim:
        top.fail("unet.guidance_input", "false for a network without classes to guide", True)
    _check_task(top, values)
    return RunRecord(**values)


def _check_task(top: _Section, values: dict) -> None:
    """An upscale run: a factor in [2, 8] dividing its size, and the low-res image's channels in its U-Net."""
    task, factor = values["train"].get("task", "generate"), values["train"].get("factor")
    if task not in ("generate", "upscale"):
        top.fail("train.task", "generate or upscale", task)
    upscale = task == "upscale"
    if upscale and not (_is_int(factor) and 2 <= factor <= 8 and values["image_size"] % factor == 0):
        top.fail("train.factor", f"an integer in [2, 8] dividing the image size {values['image_size']}", factor)
    want = values["channels"] if upscale else 0
    if values["unet"].cond_channels != want:
        top.fail("unet.cond_channels", f"{want} for task {task}", values["unet"].cond_channels)


def _unet(s: _Section) -> UNetConfig:
    mults = s.integers("mults", 1, 64, 10, fewest=1)
    values = dict(channels=s.choice("channels", (1, 3)), base=s.integer("base", 1, 4096), mults=mults,
                  blocks=s.integer("blocks", 1, 64), attention=s.integers("attention", 0, len(mults) - 1, len(mults)),
                  head_channels=s.integer("head_channels", 1, 4096), context_dim=s.integer("context_dim", 0, 100_000),
                  groups=s.integer("groups", 1, 4096), dropout=s.number("dropout", 0, 1, below_high=True),
                  context_mode=s.choice("context_mode", CONTEXT_MODES),
                  block_style=s.choice("block_style", BLOCK_STYLES, default="film"),
                  text_dim=s.integer("text_dim", 0, 100_000, default=0),
                  cond_channels=s.choice("cond_channels", (0, 1, 3), default=0),
                  patch=s.choice("patch", PATCHES, default=1),
                  guidance_input=s.get("guidance_input", "true or false", lambda v: isinstance(v, bool), default=False))
    s.only(values)
    try:
        return UNetConfig(**values)
    except UsageError as e:  # channels that do not divide by the groups
        raise CheckpointError(f"{s.path}: {e}") from None


def _schedule(s: _Section) -> ScheduleSpec:
    values = dict(name=s.choice("name", SCHEDULES), T=s.integer("T", 2, MAX_T),
                  zero_snr=s.get("zero_snr", "true or false", lambda v: isinstance(v, bool), default=False))
    s.only(values)
    return ScheduleSpec(**values)


def _plan(s: _Section) -> Plan:
    # warmup may exceed steps: a deadline that ends a run early records the steps it really took
    values = dict(steps=s.integer("steps", 1, MAX_STEPS), lr=s.number("lr", *LR_RANGE), warmup=s.integer("warmup", 0, MAX_STEPS),
                  ema_decay=s.number("ema_decay", 0, 1, below_high=True))
    s.only(values)
    return Plan(**values)


def _names(top: _Section) -> tuple[str, ...]:
    names = top.get("class_names", "a list of strings",
                    lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v))
    return tuple(names)


def _options(top: _Section) -> dict:
    """The flat training options: JSON scalars here; their meaning is checked by training.record."""
    train = top.get("train", "an object of options with scalar values",
                    lambda v: isinstance(v, dict) and all(isinstance(o, (type(None), bool, int, float, str))
                                                          for o in v.values()))
    kept = sorted(set(train) & set(IN_RECORD))
    if kept:
        raise CheckpointError(f"{top.path}: train.{kept[0]} is held by the record itself; remove it from 'train'")
    return train


def _text(top: _Section) -> TextSpec | None:
    spec = top.get("text", "null or an object", lambda v: v is None or isinstance(v, dict), default=None)
    if spec is None:
        return None
    s = _Section(spec, top.path, "text.")
    values = dict(encoder=s.text("encoder"), dim=s.integer("dim", 1, 100_000),
                  max_tokens=s.integer("max_tokens", 1, 4096))
    s.only(values)
    return TextSpec(**values)


def _precision(top: _Section, train: dict) -> Precision:
    """The precision a run trained in; runs written before it was recorded trained in their option's."""
    value = top.get("precision", "an object", lambda v: isinstance(v, dict), default=None)
    if value is None:
        name = train.get("precision", "fp32")
        if name not in DTYPES:
            top.fail("train.precision", f"one of {', '.join(DTYPES)} in a run that records no 'precision'", name)
        return Precision(name, "asked for")
    s = _Section(value, top.path, "precision.")
    values = dict(name=s.choice("name", tuple(DTYPES)), reason=s.text("reason"))
    s.only(values)
    return Precision(**values)


def _base(top: _Section) -> BaseRun | None:
    base = top.get("finetuned_from", "null or an object", lambda v: v is None or isinstance(v, dict), default=None)
    if base is None:
        return None
    s = _Section(base, top.path, "finetuned_from.")
    values = dict(run=s.text("run"), step=s.integer("step", -1, 10**12))
    s.only(values)
    return BaseRun(**values)
