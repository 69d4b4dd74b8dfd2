"""From a run folder to images: load the (EMA) network a run describes, and sample it.

This is the library side of `undiffuse sample`: one generator per image, seeded seed + i, so that an
image depends on its seed only, not on the batch it was drawn in (NVlabs/edm's habit).

What the images are told to draw is asked in words (`generate(run, n, label=7)`, `labels=[...]`,
`context="0.6*3+0.4*8"`, `prompt="a handwritten seven"`, `prompts=[...]`, `negative_prompt=...`),
resolved by the rules the command line and the web page share (conditioning.resolve), with the run's
own guidance by default. Prompts among a text run's training captions come from its caption table
(captions.safetensors) without the encoder; others are encoded once per distinct prompt.
"""
from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .conditioning import condition_for
from .conditions import Condition, rows_of
from .conditions.lowres import LowRes
from .conditions.scale import GuidanceScale, guidance_range
from .conditions.text import CaptionTable, TextBatch, TextEncoder, canonical, load_table
from .guidance import DEFAULT_GUIDANCE, denoiser
from .errors import UsageError
from .noise import generators, randn
from .precision import FP32, MARGIN, Precision, choose as choose_precision, time_alternately
from .run import CAPTIONS, TextSpec, read_run
from .samplers import REGISTRY, Callback, sample
from .schedule import NoiseSchedule
from .unet import UNet, require_network

# Pixels of the forward pass timed in each precision (precision.py) before a run samples: 32 images
# of 32x32, fewer of larger images, so that the probe stays a fraction of a second's work.
PROBE_PIXELS = 32 * 32 * 32
DEFAULT_SAMPLER = "ddim"  # 10 steps (samplers.DEFAULT_STEPS): the best fidelity and FID per network call on
# the budget models (benchmarks/budget_samplers.py), where fresh noise (eta 1) or 20-50 steps scored worse;
# a run that recorded its own (recipe.SAMPLER: colour runs) draws with that (LoadedRun.sampler)


@dataclass
class LoadedRun:
    net: UNet  # in eval mode, on its device
    schedule: NoiseSchedule
    prediction: str
    class_names: tuple[str, ...]  # () for an unconditional model
    image_size: int
    channels: int
    config: dict  # config.json as written
    text: TextSpec | None = None  # a text run's encoder; None for class-conditional and unconditional runs
    folder: Path | None = None
    asked_precision: str = "auto"  # precision.PRECISIONS: what sampling runs in, decided on first use
    _table: CaptionTable | None = field(default=None, repr=False)
    _encoder: TextEncoder | None = field(default=None, repr=False)
    _precision: Precision | None = field(default=None, repr=False)
    _pace: float | None = field(default=None, repr=False)

    @property
    def precision(self) -> Precision:
        """What this run samples in: `asked_precision`, auto decided once by timing the network's forward
        pass in fp32 and bf16 (precision.py) whatever precision it was trained in. Where auto timed it,
        the network also takes the memory layout that runs faster (`faster_layout`)."""
        if self._precision is None:
            self._precision = sampling_precision(self.net, self.asked_precision, self.image_size)
            if self._precision.probed:
                self.net = faster_layout(self.net, self._precision, self.image_size)
        return self._precision

    @property
    def seconds_per_image_call(self) -> float:
        """Seconds one network call takes per image here, in the run's precision: a forward pass of
        probe_batch, timed once (what the web page's work bound reckons with)."""
        if self._pace is None:
            precision, inputs = self.precision, probe_batch(self.net, self.image_size)

            def forward() -> None:
                with torch.inference_mode(), precision.autocast(inputs["x"].device.type):
                    self.net(**inputs)

            self._pace = time_alternately({"call": forward})["call"] / len(inputs["x"])
        return self._pace

    @property
    def guidance(self) -> float:
        """The guidance scale its samples default to: the one its training recorded (recipe.GUIDANCE,
        or train --guidance), DEFAULT_GUIDANCE for runs recorded before that."""
        value = self.config.get("train", {}).get("guidance")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else DEFAULT_GUIDANCE

    @property
    def sampler(self) -> str:
        """The sampler its samples default to, as its training recorded it (recipe.SAMPLER, or train
        --sampler); DEFAULT_SAMPLER for runs recorded without one."""
        value = self.config.get("train", {}).get("sampler")
        return value if isinstance(value, str) and value in REGISTRY else DEFAULT_SAMPLER

    @property
    def sample_steps(self) -> int | None:
        """Its sampler's steps its samples default to, as its training recorded them (recipe.SAMPLE_STEPS,
        or train --sample-steps); None: the sampler's own default."""
        value = self.config.get("train", {}).get("sample_steps")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def student_calls(self) -> int | None:
        """A distilled student's network calls (training/distill.py); None for other runs."""
        value = self.config.get("train", {}).get("distill_calls")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def captions(self) -> CaptionTable | None:
        """A text run's training captions, encoded (read once from captions.safetensors), or None."""
        if self._table is None and self.text is not None and self.folder is not None \
                and (self.folder / CAPTIONS).is_file():
            self._table = load_table(self.folder / CAPTIONS).to(self.device)
        return self._table

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def encode(self, prompts: list[str]) -> TextBatch:
        """The text batch of `prompts` (one row each): from the caption table when all of them are
        training captions, otherwise encoded, each distinct prompt once."""
        if self.text is None:
            raise UsageError("this model is not conditioned on text: it takes no prompt")
        table = self.captions
        if table is not None:
            rows = {t: i for i, t in enumerate(table.texts)}
            keys = [canonical(str(p)) for p in prompts]
            if all(k in rows for k in keys):
                return table.batch(torch.tensor([rows[k] for k in keys], dtype=torch.int64))
        if self._encoder is None:
            self._encoder = TextEncoder.load(self.device)
        index, table = self._encoder.encode_unique([str(p) for p in prompts], max_tokens=self.text.max_tokens)
        return table.batch(index)

    @property
    def task(self) -> str:
        """generate, or upscale for a super-resolution run (runs before the option: generate)."""
        return self.config.get("train", {}).get("task") or "generate"  # a LoadedRun built by hand may hold no record

    @property
    def factor(self) -> int | None:
        """An upscale run's factor (image size / low-res size); None for other runs."""
        return self.config.get("train", {}).get("factor") if self.task == "upscale" else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_run(run: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu",
             precision: str = "auto") -> LoadedRun:
    """The network of a run folder; weights="ema" (default, better samples) or "raw"; precision: what it
    samples in (precision.PRECISIONS; auto: bf16 where this machine runs it faster, decided on first use)."""
    if weights not in ("ema", "raw"):
        raise UsageError(f"unknown weights {weights!r}; choose ema or raw")
    run = Path(run)
    record = read_run(run)  # every key checked before anything is built
    require_network(record.unet, f"the network of '{run}'")  # its weights, and the file's as they load
    net = UNet(record.unet)
    ckpt.load_weights(net, run / (ckpt.EMA if weights == "ema" else ckpt.MODEL))
    net = net.to(device).eval().requires_grad_(False)
    return LoadedRun(net, record.schedule.build(), record.prediction, record.class_names, record.image_size,
                     record.channels, record.to_json(), record.text, run, precision)


def sampling_precision(net: UNet, asked: str, side: int, batch: int | None = None) -> Precision:
    """The precision `net` samples in (precision.choose): auto times a forward pass (probe_batch)."""
    inputs = probe_batch(net, side, batch)
    device = inputs["x"].device

    def workload(precision: Precision) -> None:
        with torch.inference_mode(), precision.autocast(device.type):
            net(**inputs)

    return choose_precision(asked, device, workload)


def probe_batch(net: UNet, side: int, batch: int | None = None) -> dict:
    """The inputs of a timed forward pass: `batch` noisy images of side x side (default PROBE_PIXELS'
    worth, 2 to 32) at mid-schedule, every condition null, as a sampler calls the network."""
    batch = batch or max(2, min(32, PROBE_PIXELS // (side * side)))
    device = next(net.parameters()).device
    x = torch.randn(batch, net.cfg.channels, side, side, device=device)
    low = LowRes(torch.zeros_like(x), torch.zeros(batch, device=device)) if net.cfg.cond_channels else None
    scale = GuidanceScale.of(1.0, batch, device) if net.cfg.guidance_input else None
    return {"x": x, "t": torch.full((batch,), 500, device=device), "cond": Condition(low=low, scale=scale)}


def faster_layout(net: UNet, precision: Precision, side: int) -> UNet:
    """`net`, or a channels_last copy of it where that times at least MARGIN faster in `precision`
    (it does for the wider networks: 1.17x for small at 32x32x3 and 1.64x at 64x64x3 in bf16 on a CPU,
    while the tiny digit network ran slower; benchmarks/bf16_levers.py)."""
    inputs = probe_batch(net, side)
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def forward(model: UNet):
        def run() -> None:
            with torch.inference_mode(), precision.autocast(inputs["x"].device.type):
                model(**inputs)
        return run

    times = time_alternately({"nchw": forward(net), "nhwc": forward(nhwc)})
    return nhwc if times["nchw"] >= MARGIN * times["nhwc"] else net


def can_compile(run: LoadedRun) -> bool:
    """Whether torch.compile can build this run's network here: Inductor writes C++ on a CPU (it needs a
    compiler on the PATH) and Triton kernels on CUDA."""
    return run.device.type == "cuda" or any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def with_compiled_network(run: LoadedRun) -> LoadedRun:
    """The run with its network compiled (torch.compile, static shapes): the same arithmetic, fused;
    the first call of each batch shape compiles (tens of seconds), the calls after run faster."""
    return dataclasses.replace(run, net=torch.compile(run.net, dynamic=False))


def sample_images(net: UNet, schedule: NoiseSchedule, prediction: str, n: int, *, image_size: int,
                  cond: Condition | None = None, guidance: float = 1.0, sampler: str = DEFAULT_SAMPLER,
                  steps: int | None = None, seed: int = 0, clip_denoised: bool = True, batch_size: int = 250,
                  callback: Callback = None, precision: Precision = FP32, **options) -> Tensor:
    """n images in [-1, 1], (n, C, H, W), drawn by `sampler` from a network: `cond` is what they are told
    to draw (n rows; conditions/condition.py), None for nothing, `guidance` its classifier-free scale.

    clip_denoised keeps each step's estimate of the clean image inside the data range [-1, 1]; it
    removes the speckles that a briefly trained model leaves. The callback sees the steps of each
    batch in turn; `options` go to the sampler (eta, add_noise, ...). precision: the network's
    autocast (LoadedRun.precision decides one for a run).
    """
    device = next(net.parameters()).device
    gens = generators(n, seed)
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = randn((stop - start, net.cfg.channels, image_size, image_size), gens[start:stop], device)
        eps_fn = denoiser(net, schedule.to(device), prediction=prediction, cond=rows_of(cond, slice(start, stop), device),
                          guidance=guidance, precision=precision)
        with torch.inference_mode():
            x = sample(sampler, eps_fn, schedule.to(device), x, steps=steps, generator=gens[start:stop],
                       clip_denoised=clip_denoised, callback=callback, **options)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def generate(run: LoadedRun, n: int, *, cond: Condition | None = None, guidance: float | None = None,
             label=None, labels: list[int] | None = None, context: str | None = None, contexts: Tensor | None = None,
             prompt: str | None = None, prompts: list[str] | None = None, negative_prompt: str | None = None,
             **options) -> Tensor:
    """n images of a run, with its own schedule, prediction and size. What they show is asked in words
    (label, labels, context, contexts, prompt, prompts, negative_prompt: conditioning.resolve; a class
    run asked nothing draws each class in turn, as `undiffuse sample` does) or given resolved as `cond`;
    guidance defaults to the run's own. `options`: the sampler's (sampler, steps, seed, eta, ...)."""
    if run.task == "upscale":
        raise UsageError(f"this model upscales by {run.factor}: it needs a low-resolution image "
                         "(undiffuse upscale, undiffuse.edit.upscale), it does not generate from noise")
    cond, guidance = condition_for(run, n, cond, guidance, "each", label=label, labels=labels, context=context,
                                   contexts=contexts, prompt=prompt, prompts=prompts, negative_prompt=negative_prompt)
    options["sampler"] = options.get("sampler") or run.sampler
    check_student(run, options, guidance)
    options["steps"] = run_steps(run, options["sampler"], options.get("steps"))
    options.setdefault("precision", run.precision)
    return sample_images(run.net, run.schedule, run.prediction, n, image_size=run.image_size, cond=cond,
                         guidance=guidance, **options)


def run_steps(run: LoadedRun, sampler: str, steps: int | None) -> int | None:
    """The steps `sampler` takes on `run` when asked for `steps`: the run's own default for its own
    sampler (train --sample-steps, a student's calls), else (None) the sampler's."""
    if steps is None and sampler == run.sampler and run.sample_steps is not None:
        return min(run.sample_steps, run.schedule.T)
    return steps


def check_student(run: LoadedRun, options: dict, guidance: float) -> None:
    """A distilled student draws with DDIM over the K trailing steps it learnt, at a guidance scale of
    the range it learnt (conditions.scale.guidance_range); other ways of sampling it are refused."""
    calls = run.student_calls
    if calls is None:
        return
    sampler, steps = options.get("sampler") or run.sampler, options.get("steps")
    if sampler != run.sampler or steps not in (None, calls) or options.get("spacing", "trailing") != "trailing" \
            or options.get("eta"):
        raise UsageError(f"this student was distilled to draw in {calls} network call{'s' * (calls > 1)} "
                         f"({run.sampler}, --steps {calls}, trailing spacing, eta 0); sample its teacher for other samplers")
    low, high = guidance_range(run.guidance)
    if run.class_names and not low <= guidance <= high:
        raise UsageError(f"this student learnt guidance scales in [{low:g}, {high:g}], not {guidance:g}")


__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_SAMPLER", "LoadedRun", "generate", "load_run", "sample_images"]
