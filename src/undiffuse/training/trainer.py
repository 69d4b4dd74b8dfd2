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
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from ..conditions import drop_mask, one_hot
from ..data import ImageData, batch_at, load_data, name_contexts
from ..device import pick_device
from ..errors import CheckpointError, TrainingDiverged, UsageError
from ..schedule import make_schedule
from ..unet import UNet, UNetConfig
from . import distributed as dist
from .budget import REFIT_EVERY, Deadline
from .config import DEFAULT_MINUTES, PRECISIONS, TrainConfig
from .finetune import _base_record, _finetune_config, _fit_to_base, only_class
from .folder import _check_run_folder, _clear_run_folder
from .log import LOG, _open_log, _truncate_log
from .objective import draw_noise, per_image_loss
from .recipe import MIN_IMAGES, MODEL_SIZES, Plan, default_batch_size, ema_decay_at, lr_at, plan, unet_config
from .signals import _StopOnSignal

# convolutions, and a CPU budget of minutes does not win the compile time back. Refused there.
COMPILE_ON_CPU = False


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
            raise CheckpointError(f"{run / ckpt.CONFIG} has a bad 'train' section ({e})") from None
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
            raise CheckpointError(f"{run / ckpt.CONFIG}: its 'unet' does not match a {self.size} model for "
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
            raise UsageError("--compile is for CUDA: on a CPU it trained 0.98-1.21x as fast as eager after 40-75 s "
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
            raise UsageError(f"a batch of {cfg.batch_size} cannot be split into {cfg.grad_accum} micro-batches "
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
        from ..generate import DEFAULT_GUIDANCE, sample_images
        from ..viz import save_grid

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


def _same_unet(cfg: UNetConfig, described) -> bool:
    try:
        return UNetConfig(**described) == cfg
    except (TypeError, ValueError):
        return False
