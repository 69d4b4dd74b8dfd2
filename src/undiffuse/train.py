"""The training loop: L = || target - net(x_t, t, c) ||^2 with t uniform per image (Ho et al. 2020, alg. 1).

Habits that make a short run work: AdamW with linear warm-up and a cosine decay, gradient clipping,
an EMA of the weights (what sampling uses), and a recipe whose every knob follows from the budget
(see recipe.py). Every random draw of step s comes from a generator seeded by (seed, s), and the
mini-batch of step s is a pure function of (seed, s) too, so `resume` continues exactly where the
run stopped: same batches, same noise, same weights as an uninterrupted run.

Never losing a run: checkpoints are atomic and kept K deep (checkpoint.py); SIGINT/SIGTERM save
at the next step boundary; a step whose loss or gradient is not finite is skipped (no optimizer or
EMA update) and counted, and `max_bad_steps` of them in a row stop the run with the last good
checkpoint kept. Under torchrun the same loop runs data-parallel (see distributed.py).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, get_type_hints

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed as dist
from .budget import REFIT_EVERY, Deadline
from .conditioning import PREDICTIONS, class_id, drop_mask, one_hot
from .data import DataError, ImageData, batch_at, load_data, name_contexts
from .recipe import (CONTEXT_MODE, MIN_IMAGES, MODEL_SIZES, Plan, default_batch_size, ema_decay_at, lr_at, plan,
                     unet_config)
from .schedule import SCHEDULES, make_schedule
from .unet import CONTEXT_MODES, UNet, UNetConfig

LOG = "log.csv"
LOG_COLUMNS = ["step", "loss", "lr", "images_per_s", "seconds", "skipped"]
DEFAULT_MINUTES = 10.0
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile of the training step on a CPU: 0.98x eager for the demo's tiny model, 1.21x for small at
# 32x32x3, after 40-75 s of compiling (benchmarks/cpu_levers.py): the time goes to the same oneDNN
# convolutions, and a CPU budget of minutes does not win the compile time back. Refused there.
COMPILE_ON_CPU = False


class TrainingDiverged(ArithmeticError):
    """The loss stayed non-finite for max_bad_steps steps in a row; the message is one line."""


@dataclass(frozen=True)
class TrainConfig:
    data: str = "mnist"  # data spec: mnist, digits, an image folder or a .npy array
    labels: str | None = None  # optional .npy of class ids for the images
    image_size: int | None = None  # side in pixels; None: inferred from the data
    channels: int | None = None  # 1 or 3; None: inferred from the data
    conditional: bool = True  # condition on the class when the data has labels
    context_names: str | None = None  # comma-separated names of the classes or context attributes
    base: str | None = None  # fine-tune: the run folder whose EMA weights this run starts from
    only_label: str | None = None  # fine-tune: train on the images of this class only (name or id)
    steps: int | None = None  # optimizer steps; None: as many as `minutes` affords
    minutes: float | None = None  # wall-clock budget; used when steps is None (default 10)
    batch_size: int | None = None  # images per optimizer step; None: 32 on a CPU, 128 on CUDA (recipe.py)
    model: str = "auto"  # tiny, small, medium, large, or auto: the largest the budget trains well
    lr: float | None = None  # peak learning rate; None: from the recipe
    warmup: int | None = None  # warm-up steps; None: from the recipe
    ema_decay: float | None = None  # None: the EMA averages over about the last tenth of the run
    grad_clip: float = 1.0  # max global gradient norm
    schedule: str = "linear"  # noise schedule: linear, cosine or sigmoid
    zero_snr: bool = False  # rescale the schedule to zero terminal SNR (Lin et al. 2023); needs prediction v or x0
    T: int = 1000  # diffusion steps
    prediction: str = "eps"  # what the network predicts: eps, x0 or v
    min_snr: float | None = 5.0  # min-SNR-gamma loss weighting (Hang et al. 2023); 0 or None: plain MSE
    cond_drop: float = 0.1  # probability of training on the null context (for guidance)
    context_mode: str = CONTEXT_MODE  # how the class reaches the U-Net: scale (FiLM), add (to the time embedding), both
    seed: int = 0  # seeds the weights, the batches and the noise
    checkpoint_minutes: float = 2.0  # save at least this often
    grids: int = 4  # sample grids written to RUN/samples during training
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    keep_checkpoints: int = 2  # checkpoints kept in RUN/checkpoints; resume falls back to an older one
    max_bad_steps: int = 5  # non-finite losses in a row (each step skipped) before training stops
    precision: str = "fp32"  # fp32, bf16 or fp16: autocast (fp16 adds loss scaling; slow on a CPU)
    grad_accum: int = 1  # micro-batches per step: the same update with 1/K of the activation memory
    compile: bool = False  # torch.compile the network (CUDA only: see COMPILE_ON_CPU)
    channels_last: bool = False  # NHWC memory layout: faster convolutions on recent GPUs, 1.07-1.21x on a CPU
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower

    def validate(self) -> None:
        """Reject absurd values before any work starts (ValueError with one line)."""
        positive = {"T": self.T, "keep_checkpoints": self.keep_checkpoints,
                    "max_bad_steps": self.max_bad_steps, "grad_accum": self.grad_accum}
        if self.min_snr is not None and not self.min_snr >= 0:
            raise ValueError(f"min_snr must be >= 0, got {self.min_snr}")
        for name in ("batch_size", "steps", "minutes", "lr", "warmup", "image_size", "checkpoint_minutes"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name} must be positive, got {value}")
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("prediction", self.prediction, PREDICTIONS)
        if self.zero_snr and self.prediction == "eps":
            raise ValueError("zero_snr needs prediction v or x0: with no signal left at the last step, "
                             "the noise says nothing about the image")
        _choice("model", self.model, ("auto", *MODEL_SIZES))
        _choice("precision", self.precision, PRECISIONS)
        _choice("context_mode", self.context_mode, CONTEXT_MODES)
        if self.batch_size is not None and self.grad_accum > self.batch_size:
            raise ValueError(f"grad_accum {self.grad_accum} splits a batch of {self.batch_size} into empty parts")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must lie in [0, 1), got {self.cond_drop}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.grids < 0 or self.grad_clip <= 0:
            raise ValueError("grids must be >= 0 and grad_clip > 0")
        if self.T < 2 or self.T > 100_000:
            raise ValueError(f"T must lie in [2, 100000], got {self.T}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        hints = get_type_hints(cls)
        for name, value in values.items():  # a JSON or TOML value of the wrong type fails here, not mid-run
            if not _has_type(value, hints[name]):
                raise ValueError(f"training option {name} must be {hints[name]}, got {value!r}")
        return cls(**values)


def _has_type(value, hint) -> bool:
    kinds = getattr(hint, "__args__", (hint,))
    if value is None:
        return type(None) in kinds
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return any(k is not type(None) and isinstance(value, k) for k in kinds)


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but no CUDA GPU is available")
    return device


def diffusion_loss(model: UNet, schedule, x0, context, null, generator, prediction: str,
                   min_snr: float | None = None):
    """One Monte-Carlo estimate of the loss: noise x0 to a random t and regress the target.

    min_snr = gamma weights each image so that its loss, expressed as an x0 error, counts
    min(snr, gamma): the many nearly clean steps stop dominating the gradient (Hang et al. 2023,
    eq. 7), which several times speeds up convergence. None gives Ho et al.'s plain MSE.
    """
    t, noise = draw_noise(schedule.T, x0.shape, generator)
    t, noise = t.to(x0.device), noise.to(x0.device)
    return per_image_loss(model, schedule, x0, t, noise, context, null, prediction, min_snr).mean()


def draw_noise(T: int, shape, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """t uniform in [0, T) per image and the Gaussian noise eps of shape (B, C, H, W)."""
    return torch.randint(T, (shape[0],), generator=generator), torch.randn(shape, generator=generator)


def per_image_loss(model, schedule, x0, t, noise, context, null, prediction: str, min_snr: float | None):
    """(B,) squared errors of the target, min-SNR weighted; computed in float32 under autocast."""
    x_t = schedule.q_sample(x0, t, noise)
    if prediction == "eps":
        target = noise
    elif prediction == "x0":
        target = x0
    elif prediction == "v":
        target = schedule.v_target(x0, t, noise)
    else:
        raise ValueError(f"unknown prediction {prediction!r}")
    per_image = (model(x_t, t, context, null).float() - target).pow(2).flatten(1).mean(1)
    if min_snr:
        per_image = per_image * min_snr_weight(schedule, t, min_snr, prediction)
    return per_image


def min_snr_weight(schedule, t, gamma: float, prediction: str):
    """The factor that turns the target's squared error into min(snr, gamma) times the x0 error."""
    snr = schedule.snr.to(t.device)[t].float()
    clipped = snr.clamp(max=gamma)
    # ||eps err||^2 = snr ||x0 err||^2 and ||v err||^2 = (snr + 1) ||x0 err||^2
    scale = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[prediction]
    return clipped / scale


@dataclass
class Result:
    run: Path
    steps: int  # steps taken in total
    seconds: float  # training wall-clock time in total
    final_loss: float  # mean loss over the last few percent of steps
    skipped: int = 0  # steps of this session skipped for a non-finite loss or gradient


class Trainer:
    """Trains one run folder. `Trainer(cfg, run).train()`; `Trainer.resume(run).train()` continues it.

    Under torchrun every process builds its own Trainer on the same data; rank 0 alone writes to the
    run folder, and rank 0's decisions (model size, step count) are broadcast to the others.
    """

    def __init__(self, cfg: TrainConfig, run: str | Path, *, overwrite: bool = False, data: ImageData | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        cfg.validate()
        self.cfg, self.run = cfg, Path(run)
        self._start_clock(clock, 0.0)  # a time budget counts from here: reading the data, timing the sizes
        _check_run_folder(self.run, overwrite)
        self._setup_device()
        if cfg.batch_size is None:
            cfg = self.cfg = replace(cfg, batch_size=default_batch_size(self.device.type))
        base = ckpt.load_config(cfg.base) if cfg.base else None
        if base is not None:  # the base fixes the model, the image shape and the contexts
            cfg = self.cfg = _finetune_config(cfg, base)
        self.data = data if data is not None else _load(cfg, cfg.image_size, cfg.channels)
        self.context_dim = self.data.num_classes if cfg.conditional and self.data.labels is not None else 0
        if base is not None:
            self.data, self.context_dim = _fit_to_base(self.data, base), base["unet"]["context_dim"]
        self.class_names = tuple(base["class_names"]) if base else self.data.class_names if self.context_dim else ()
        self.finetuned_from = _base_record(cfg.base)
        self.schedule = make_schedule(cfg.schedule, cfg.T, cfg.zero_snr)
        self.step, self.bad_steps, self.saved_step = 0, 0, -1
        choice = self._choose_model_and_plan() if self.world.is_main else None
        self.size, self.plan = dist.broadcast(choice, self.world)
        self._build(self.size)
        if base is not None:
            ckpt.load_weights(self.model, Path(cfg.base) / ckpt.EMA)
            self.ema.load_state_dict(self.model.state_dict())
        dist.barrier(self.world)  # every rank has checked the folder before rank 0 replaces it
        if self.world.is_main:
            _clear_run_folder(self.run)  # only now: bad data or flags leave no folder behind
            ckpt.save_config(self.run, self.describe())
        self.save()
        self._prepare()

    @classmethod
    def resume(cls, run: str | Path, data: ImageData | None = None,
               clock: Callable[[], float] = time.perf_counter) -> "Trainer":
        """Continue a run from its newest readable checkpoint: weights, EMA, optimizer, step, clock.

        A run killed before its first checkpoint starts again from step 0 (the seed fixes it);
        `skipped_checkpoints` lists the newer checkpoints that were damaged and passed over.
        """
        run = Path(run)
        config = ckpt.load_config(run)
        try:
            # runs written before context_mode existed used "scale"
            cfg = TrainConfig.from_dict({"context_mode": config["unet"].get("context_mode", "scale"),
                                         **config["train"]})
            cfg.validate()
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{run / ckpt.CONFIG} has a bad 'train' section ({e})") from None
        self = cls.__new__(cls)
        self.cfg, self.run = cfg, run
        self._start_clock(clock, 0.0)
        self._setup_device()
        self.data = data if data is not None else _load(cfg, config["image_size"], config["channels"])
        self.context_dim = config["unet"]["context_dim"]
        self.class_names, self.finetuned_from = tuple(config["class_names"]), config.get("finetuned_from")
        if self.finetuned_from:
            self.data = _fit_to_base(self.data, config)
        self.schedule = make_schedule(cfg.schedule, cfg.T, cfg.zero_snr)
        self.size, self.plan = config["model_size"], Plan(**config["plan"])
        self._build(self.size)
        if not _same_unet(self.model.cfg, config["unet"]):
            raise ckpt.CheckpointError(f"{run / ckpt.CONFIG}: its 'unet' does not match a {self.size} model for "
                                       "this data; the folder was edited or written by another version")
        self.step, self.bad_steps, self.saved_step = 0, 0, -1
        self.skipped_checkpoints = []
        found = ckpt.latest_checkpoint(run)
        if found is not None:
            tensors, self.step, self.skipped_checkpoints = found
            self._load_state(tensors, run)
            self.saved_step = self.step
        if self.world.is_main:
            _truncate_log(run / LOG, self.step)
        self._prepare()
        return self

    # --- set-up -------------------------------------------------------------------------------
    def _start_clock(self, clock: Callable[[], float], elapsed: float) -> None:
        """`elapsed` seconds of training lie behind us as of now; a time budget becomes a Deadline."""
        self.clock, self._elapsed_before, self._since = clock, elapsed, clock()
        self.deadline = Deadline(60 * (self.cfg.minutes or DEFAULT_MINUTES)) if self.cfg.steps is None else None

    @property
    def elapsed(self) -> float:
        """Seconds this run has trained, over all its sessions: steps, grids, checkpoints, set-up."""
        return self._elapsed_before + self.clock() - self._since

    def done(self) -> float:
        """The share of the run behind us: of the time budget, or of the steps."""
        return self.deadline.done(self.elapsed) if self.deadline else min(1.0, self.step / self.plan.steps)

    def _setup_device(self) -> None:
        device = pick_device(self.cfg.device)
        if self.cfg.compile and device.type == "cpu" and not COMPILE_ON_CPU:
            raise ValueError("--compile is for CUDA: on a CPU it trained 0.98-1.21x as fast as eager after 40-75 s "
                             "of compiling (benchmarks/cpu_levers.py), too little for the runs a CPU affords")
        self.world = dist.setup(device)
        self.device = dist.local_device(device, self.world)

    def _build(self, size: str) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the initial weights
        unet = unet_config(size, self.data.image_size, self.data.channels, self.context_dim, cfg.context_mode)
        self.model = UNet(unet).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.grad_checkpointing = cfg.grad_checkpointing
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.0, weight_decay=0.0)  # lr set per step
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.schedule_dev = self.schedule.to(self.device)
        self.net, self.ddp = self.model, None  # what the loss calls; wrapped by _prepare

    def _prepare(self) -> None:
        """Wrap the network for training: DistributedDataParallel across processes, then compile."""
        cfg, world = self.cfg, self.world
        if world.size * cfg.grad_accum > cfg.batch_size:
            raise ValueError(f"a batch of {cfg.batch_size} cannot be split into {cfg.grad_accum} micro-batches "
                             f"on each of {world.size} processes")
        net = self.model
        if world.active:
            from torch.nn.parallel import DistributedDataParallel

            unused = bool(self.context_dim) and self.data.labels is None  # only the null context is trained
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = self.ddp = DistributedDataParallel(net, device_ids=ids, find_unused_parameters=unused)
        self.net = torch.compile(net) if cfg.compile else net

    def _load_state(self, tensors: dict, run: Path) -> None:
        ckpt.check_fits(self.model, tensors[ckpt.MODEL], run / ckpt.MODEL)
        ckpt.check_fits(self.ema, tensors[ckpt.EMA], run / ckpt.EMA)
        self.model.load_state_dict(tensors[ckpt.MODEL])
        self.ema.load_state_dict(tensors[ckpt.EMA])
        state = tensors[ckpt.STATE]
        ckpt.load_optimizer_tensors(self.optimizer, state)
        self._start_clock(self.clock, float(state["elapsed"]))
        if self.scaler.is_enabled() and "scaler.scale" in state:
            scaler = self.scaler.state_dict()
            scaler.update(scale=float(state["scaler.scale"]), _growth_tracker=int(state["scaler.growth_tracker"]))
            self.scaler.load_state_dict(scaler)

    def _choose_model_and_plan(self) -> tuple[str, Plan]:
        """With a step budget: the size asked for (auto: small). With a time budget: time a step of
        each size, smallest first, and keep the largest that still sees MIN_IMAGES images."""
        cfg = self.cfg
        if cfg.steps is not None:
            size = "small" if cfg.model == "auto" else cfg.model
            return size, plan(cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup, cfg.ema_decay)
        chosen = None
        for size in list(MODEL_SIZES) if cfg.model == "auto" else [cfg.model]:
            self._build(size)
            budget = 0.95 * (self.deadline.seconds - self.elapsed)  # a first estimate: the deadline decides
            steps = max(1, int(budget / self._seconds_per_step()))
            if chosen is not None and steps * cfg.batch_size < MIN_IMAGES:
                break  # larger sizes are slower still
            chosen = size, steps
        size, steps = chosen
        return size, plan(steps, cfg.batch_size, cfg.lr, cfg.warmup, cfg.ema_decay)

    def _seconds_per_step(self, repeats: int = 3) -> float:
        """Time forward + backward on real batches without touching the weights."""
        times = []
        for i in range(repeats + 1):
            start = self.clock()
            self._backward(i)
            self.model.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(self.clock() - start)
        return sorted(times[1:])[len(times[1:]) // 2] * 1.05  # the optimizer step and EMA cost ~5%

    def describe(self) -> dict:
        """What config.json holds: everything `sample` and `resume` need."""
        return {
            "train": asdict(self.cfg),
            "unet": self.model.cfg.to_dict(),
            "model_size": self.size,
            "plan": asdict(self.plan),
            "schedule": {"name": self.cfg.schedule, "T": self.cfg.T, "zero_snr": self.cfg.zero_snr},
            "prediction": self.cfg.prediction,
            "image_size": self.data.image_size,
            "channels": self.data.channels,
            "class_names": list(self.class_names),
            "data_source": self.data.source,
            "finetuned_from": self.finetuned_from,
            "num_images": len(self.data.images),
        }

    # --- the loop -----------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple:
        """The global batch of a step with all its random draws, identical on every rank:
        (x0, context, null, t, noise), context and null None for an unconditional model."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + 1)
        images, labels = batch_at(self.data, cfg.batch_size, step, cfg.seed)
        context = null = None
        if self.context_dim and labels is None:  # unlabelled data for a conditional model: the null context
            null = torch.ones(len(images), dtype=torch.bool)
            context = torch.zeros(len(images), self.context_dim)
        elif self.context_dim:
            context = labels.float() if labels.ndim == 2 else one_hot(labels, self.context_dim)
            null = drop_mask(len(labels), cfg.cond_drop, generator, "cpu")
        t, noise = draw_noise(self.schedule.T, images.shape, generator)
        return images, context, null, t, noise

    def _backward(self, step: int) -> torch.Tensor:
        """Forward and backward over this rank's part of each micro-batch of `step`. Returns this
        rank's summed loss divided by the global batch size: summed over ranks, the batch's mean."""
        cfg, world = self.cfg, self.world
        batch = self._batch(step)
        micro_batches = torch.arange(cfg.batch_size).tensor_split(cfg.grad_accum)
        total = torch.zeros((), device=self.device)
        for k, micro in enumerate(micro_batches):
            index = micro[dist.shard(len(micro), world)]
            x0, context, null, t, noise = (None if v is None else v[index].to(self.device) for v in batch)
            if cfg.channels_last:
                x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
            last = k == len(micro_batches) - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with torch.autocast(self.device.type, dtype=PRECISIONS[cfg.precision],
                                    enabled=cfg.precision != "fp32"):
                    loss = per_image_loss(self.net, self.schedule_dev, x0, t, noise, context, null,
                                          cfg.prediction, cfg.min_snr).sum() / cfg.batch_size
                # times world.size: DDP averages the ranks' gradients, and we want their sum
                self.scaler.scale(loss * world.size).backward()
            total += loss.detach()
        return total

    def train_step(self, done: float | None = None) -> float:
        """One optimizer step; returns the batch's mean loss. A non-finite loss or gradient skips the
        update (weights, EMA and optimizer untouched) and counts in `bad_steps`. done: the share of
        the run behind us, which drives the learning rate (default: this process's `done()`)."""
        lr = self.lr = lr_at(self.step, self.plan, self.done() if done is None else done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = dist.total(self._backward(self.step), self.world).item()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip).item()
        if math.isfinite(loss) and math.isfinite(norm):
            self.scaler.step(self.optimizer)
            decay = ema_decay_at(self.step, self.plan)
            ema, raw = list(self.ema.parameters()), list(self.model.parameters())
            torch._foreach_lerp_(ema, raw, 1.0 - decay)
        # fp16: an overflowing gradient is the loss scaler's business (it lowers the scale), not an error
        bad = not math.isfinite(loss) or (not math.isfinite(norm) and not self.scaler.is_enabled())
        self.scaler.update()
        self.bad_steps = self.bad_steps + 1 if bad else 0
        self.step += 1
        return loss

    def train(self, *, until: int | None = None, progress: bool = True,
              on_grid: Callable[[Path], None] | None = None) -> Result:
        """Run to the planned step or the deadline (or `until`), with a progress bar, log, grids and
        checkpoints. Under torchrun rank 0's clock decides for all: its elapsed time sets every rank's
        learning rate, and its deadline stops them all at the same step."""
        main, cfg = self.world.is_main, self.cfg
        log_every = max(1, self.plan.steps // 500)
        losses, recent, skipped, self.grids_drawn = [], [], 0, math.floor(self.done() * cfg.grids + 1e-9)
        bar = tqdm(total=self.plan.steps, initial=self.step, disable=not (progress and main), unit="step",
                   dynamic_ncols=True, desc=self.run.name)
        last_save = self.clock()
        with _StopOnSignal() as stop, _open_log(self.run / LOG, main) as log_file:
            log = csv.writer(log_file) if log_file else None
            start, start_step = self.clock(), self.step
            while self._more_steps(until):
                out_of_time = main and self.deadline is not None and self.step > 0 \
                    and not self.deadline.room_for_step(self.elapsed)  # a run takes one step at least
                stopping, done = dist.agree(stop.requested or out_of_time, self.done(), self.world, self.device)
                if stopping:
                    break
                t0 = self.clock()
                loss = self.train_step(done)
                if self.deadline:
                    self.deadline.record_step(self.clock() - t0)
                if self.bad_steps:
                    skipped += 1
                    self._check_diverged(loss, bar)
                else:
                    losses.append(loss)
                    recent.append(loss)
                if self.deadline and self.step % REFIT_EVERY == 0:
                    self._refit()
                    bar.total = self.plan.steps
                if log is not None and (self.step % log_every == 0 or self.step == self.plan.steps):
                    self._log_row(log, log_file, bar, recent, skipped, self.step - start_step, start)
                    recent = []
                bar.update(1)
                self._draw_due_grids(on_grid)
                if self.clock() - last_save > 60 * cfg.checkpoint_minutes:
                    self.save()
                    last_save = self.clock()
            if self.deadline and not stop.requested and until is None and self.step > start_step:
                # the deadline ended the run: its last grid, and the step count it really took
                self.plan = replace(self.plan, steps=self.step)
                if log is not None and recent:  # the last steps, when they did not end on a logged one
                    self._log_row(log, log_file, bar, recent, skipped, self.step - start_step, start)
                self._draw_due_grids(on_grid, finished=True)
        bar.close()
        self.save()
        if dist.any_rank(stop.requested, self.world, self.device):  # after the save: no step is lost
            raise KeyboardInterrupt(f"stopped by signal at step {self.step}")
        tail = losses[-max(1, len(losses) // 20):] or [float("nan")]
        return Result(self.run, self.step, self.elapsed, sum(tail) / len(tail), skipped)

    def _log_row(self, log, log_file, bar, recent: list[float], skipped: int, steps: int, start: float) -> None:
        rate = self.cfg.batch_size * steps / max(1e-9, self.clock() - start)
        mean = sum(recent) / len(recent) if recent else float("nan")
        log.writerow([self.step, f"{mean:.6f}", f"{self.lr:.3e}", f"{rate:.1f}", f"{self.elapsed:.2f}", skipped])
        log_file.flush()  # for `tail -f`, and so that a kill loses no row before the checkpoint
        bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.0f}")

    def _more_steps(self, until: int | None) -> bool:
        """A step budget ends at its step; a time budget at its deadline (checked in the loop)."""
        if until is not None and self.step >= until:
            return False
        return self.deadline is not None or self.step < self.plan.steps

    def _draw_due_grids(self, on_grid, finished: bool = False) -> None:
        """Grids are drawn evenly through the run (by its `done` share), the last one at its end."""
        cfg = self.cfg
        while self.grids_drawn < cfg.grids and (finished or self.done() >= (self.grids_drawn + 1) / cfg.grids):
            self.grids_drawn += 1
            if self.world.is_main:
                start = self.clock()
                path = self.write_grid()
                if self.deadline:
                    self.deadline.record_end_cost("grid", self.clock() - start)
                if on_grid is not None:
                    on_grid(path)
            if not finished:
                break  # at most one a step

    def _check_diverged(self, loss: float, bar) -> None:
        """Tell about a skipped step; stop when too many came in a row, without saving this state."""
        if self.bad_steps < self.cfg.max_bad_steps:
            if self.world.is_main and not bar.disable:
                bar.write(f"step {self.step}: loss {loss}, update skipped ({self.bad_steps} in a row)")
            return
        bar.close()
        kept = f"the last good checkpoint (step {self.saved_step}) is kept" if self.saved_step >= 0 else \
            "no checkpoint was written"
        raise TrainingDiverged(f"the loss was not finite for {self.bad_steps} steps in a row (up to step "
                               f"{self.step}); stopped and {kept}; check the data or lower --lr")

    def _refit(self) -> None:
        """Re-estimate a time budget's step count from the recent step times (rank 0's, sent to all).
        The warm-up stays as first planned; the EMA horizon follows the estimate."""
        cfg = self.cfg
        steps = self.step + 1 + self.deadline.steps_left(self.elapsed) if self.world.is_main else None
        steps = dist.broadcast(steps, self.world)
        self.plan = plan(steps, cfg.batch_size, cfg.lr, self.plan.warmup, cfg.ema_decay)

    # --- outputs ------------------------------------------------------------------------------
    def save(self) -> None:
        """Write a checkpoint of the current step (rank 0 only; the others hold the same state)."""
        if not self.world.is_main:
            return
        start = self.clock()
        state = ckpt.optimizer_tensors(self.optimizer)
        state["elapsed"] = torch.tensor(self.elapsed, dtype=torch.float64)
        if self.scaler.is_enabled():
            state["scaler.scale"] = torch.tensor(self.scaler.get_scale(), dtype=torch.float64)
            state["scaler.growth_tracker"] = torch.tensor(self.scaler.state_dict()["_growth_tracker"])
        tensors = {ckpt.MODEL: self.model.state_dict(), ckpt.EMA: self.ema.state_dict(), ckpt.STATE: state}
        ckpt.save_checkpoint(self.run, self.step, tensors, self.cfg.keep_checkpoints)
        if self.deadline:  # the plan (a time budget's step estimate) goes with the checkpoint
            ckpt.save_config(self.run, self.describe())
            self.deadline.record_end_cost("checkpoint", self.clock() - start)
        self.saved_step = self.step

    def write_grid(self) -> Path:
        """A small grid from the EMA weights (one image per class, or 8 unconditional)."""
        from .generate import DEFAULT_GUIDANCE, sample_images
        from .viz import save_grid

        labels = list(range(self.context_dim)) if self.context_dim else None
        n = len(labels) if labels else 8
        images = sample_images(self.ema, self.schedule, self.cfg.prediction, n, labels=labels,
                               image_size=self.data.image_size, seed=0,
                               guidance=DEFAULT_GUIDANCE if labels else 1.0)
        path = self.run / "samples" / f"step{self.step:07d}.png"
        path.parent.mkdir(exist_ok=True)
        save_grid(images, path, nrow=n)
        return path


def _load(cfg: TrainConfig, image_size: int | None, channels: int | None) -> ImageData:
    data = load_data(cfg.data, labels=cfg.labels, image_size=image_size, channels=channels)
    if cfg.context_names:
        data = name_contexts(data, cfg.context_names)
    if cfg.only_label is not None:
        data = only_class(data, cfg.only_label)
    return data


def only_class(data: ImageData, label: str) -> ImageData:
    """The images of one class (by name or id), keeping their labels."""
    if data.labels is None or data.labels.ndim != 1:
        raise DataError(f"--label {label} picks a class, but {data.source} has no class labels")
    keep = data.labels == class_id(str(label), data.class_names)
    return ImageData(data.images[keep], data.labels[keep], data.class_names, data.source, data.skipped)


def _base_record(base: str | None) -> dict | None:
    if base is None:
        return None
    return {"run": str(Path(base).resolve()), "step": ckpt.saved_step(Path(base) / ckpt.EMA)}


def _finetune_config(cfg: TrainConfig, base: dict) -> TrainConfig:
    """The settings a fine-tuning run inherits from its base: model, shape, schedule, prediction; a
    quarter of the base's peak learning rate unless given, so the model adapts without forgetting."""
    b = base["train"]
    return replace(cfg, model=base["model_size"], image_size=base["image_size"], channels=base["channels"],
                   schedule=b["schedule"], T=b["T"], zero_snr=b.get("zero_snr", False),
                   prediction=b["prediction"], context_mode=base["unet"].get("context_mode", "scale"),
                   lr=cfg.lr if cfg.lr is not None else base["plan"]["lr"] / 4)


def _fit_to_base(data: ImageData, base: dict) -> ImageData:
    """Keep the labels when they name the base's classes; otherwise train on the null context."""
    names = tuple(base.get("class_names", []))
    if data.labels is not None and data.class_names == names:
        return data
    return ImageData(data.images, None, (), data.source, data.skipped)


class _StopOnSignal:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary, never inside an update."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _check_run_folder(run: Path, overwrite: bool) -> None:
    """Never overwrite a run by accident; with overwrite, only replace something that is a run."""
    if run.exists() and not run.is_dir():
        raise ckpt.CheckpointError(f"'{run}' exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not overwrite:
            raise ckpt.CheckpointError(f"run folder '{run}' already exists; pass --resume to continue it "
                                       "or --overwrite to replace it")
        if not (run / ckpt.CONFIG).is_file():
            raise ckpt.CheckpointError(f"refusing to overwrite '{run}': it is not an undiffuse run folder")


def _clear_run_folder(run: Path) -> None:
    """Create the run folder, or empty the files of the run it replaces (checked by _check_run_folder)."""
    for name in (ckpt.MODEL, ckpt.EMA, ckpt.STATE, LOG, "loss.png", "samples.png"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / ckpt.CHECKPOINTS, ignore_errors=True)
    for old in (run / "samples").glob("step*.png") if (run / "samples").is_dir() else ():
        old.unlink()
    run.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _open_log(path: Path, write: bool):
    """The run's log opened for appending (with its header), or None on the ranks that do not write."""
    if not write:
        yield None
        return
    with path.open("a", newline="") as f:
        if f.tell() == 0:
            csv.writer(f).writerow(LOG_COLUMNS)
        yield f


def _same_unet(cfg: UNetConfig, described) -> bool:
    try:
        return UNetConfig(**described) == cfg
    except (TypeError, ValueError):
        return False


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from, so the log has no duplicates, and
    the half-written row a kill can leave at the end."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    kept = rows[:1] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= step]
    if kept != rows:
        ckpt.atomic_write(path, lambda p: p.write_text("".join(",".join(r) + "\r\n" for r in kept)))


def read_log(run: str | Path) -> tuple[list[int], list[float]]:
    """(steps, losses) from a run's log.csv."""
    steps, losses = [], []
    with (Path(run) / LOG).open() as f:
        for row in csv.DictReader(f):
            if math.isfinite(float(row["loss"] or "nan")):  # a window of only skipped steps logs nan
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
    return steps, losses


def train(cfg: TrainConfig, run: str | Path, **options) -> Result:
    """Train a new run folder from `cfg`; options go to Trainer (overwrite) and train (progress)."""
    overwrite = options.pop("overwrite", False)
    return Trainer(cfg, run, overwrite=overwrite).train(**options)


__all__ = ["TrainConfig", "Trainer", "Result", "TrainingDiverged", "train", "read_log", "diffusion_loss",
           "pick_device"]
