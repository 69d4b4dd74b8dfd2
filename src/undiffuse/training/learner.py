"""The network being trained and one update of it: the U-Net, its EMA, AdamW and the loss scaler.

Every random draw of step s comes from a generator seeded by (seed, s), and the mini-batch of step s
is a pure function of (seed, s) too (data.batch_at), so a resumed run takes exactly the steps an
uninterrupted one would. Under torchrun every rank draws the same global batch and computes its own
slice of each micro-batch (see distributed.py).

Each update also keeps the per-image losses by the quarter of [0, T) their t falls in (improved-
diffusion's loss_q0..q3): `quarters` holds their sums, then their counts, summed over the ranks.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..conditions import Classes, Condition, drop_mask, one_hot, rows_of
from ..conditions.prompt import Prompt
from ..conditions.lowres import LowRes, training_condition
from ..data import batch_at, batch_indices
from ..precision import FP32, Precision
from ..unet import UNet
from . import distributed as dist
from .distill import Distiller
from .objective import draw_noise, per_image_loss
from .setup import Setup

QUARTERS = 4  # noise-level buckets of the log: t in [q T / 4, (q + 1) T / 4)


class Learner:
    """`net` is what the loss calls: the model, wrapped by `wrap` for DDP and torch.compile. `precision`
    is the autocast of its forward passes (precision.py); weights, optimizer and EMA stay fp32."""

    def __init__(self, setup: Setup, size: str, precision: Precision = FP32):
        cfg = setup.cfg
        self.setup, self.precision = setup, precision
        torch.manual_seed(cfg.optim.seed)  # the initial weights
        self.model = UNet(setup.unet_config(size)).to(setup.device)
        if cfg.runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.grad_checkpointing = cfg.runtime.grad_checkpointing
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.0, weight_decay=0.0)  # lr set per step
        self.scaler = torch.amp.GradScaler(setup.device.type, enabled=precision.name == "fp16")
        self.schedule = setup.schedule.to(setup.device)
        self.net, self.ddp = self.model, None
        self.distiller = None if not cfg.optim.distill_calls else Distiller(
            cfg.source.base, setup.schedule, cfg.optim.distill_calls, cfg.optim.batch_size, cfg.optim.seed,
            cfg.diffusion.guidance, setup.device)
        self.quarters = torch.zeros(2 * QUARTERS, dtype=torch.float64)  # the last update's, see the module doc
        self._probes = -1  # the last step probe_backward ran

    def wrap(self) -> None:
        """Wrap the network for training: DistributedDataParallel across processes, then compile."""
        setup = self.setup
        if setup.world.active:
            from torch.nn.parallel import DistributedDataParallel

            unused = bool(setup.context_dim) and setup.data.labels is None  # only the null context is trained
            ids = [setup.device.index] if setup.device.type == "cuda" else None
            self.net = self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)
        if setup.cfg.runtime.compile:
            self.net = torch.compile(self.net)

    def backward(self, step: int) -> torch.Tensor:
        """Forward and backward over this rank's part of each micro-batch of `step`. Returns this
        rank's share of the batch's mean loss: summed over ranks, the batch's mean."""
        cfg, world, device = self.setup.cfg, self.setup.world, self.setup.device
        # a student's batch: (x_t, cond, t, the clean-image target) in the places of (x0, cond, t, noise)
        x0s, cond, ts, noises = draw_batch(self.setup, step) if self.distiller is None else \
            self.distiller.batch(step, self.precision)
        micro_batches = torch.arange(cfg.optim.batch_size).tensor_split(cfg.runtime.grad_accum)
        total = torch.zeros((), device=device)
        self._quarters = torch.zeros(2 * QUARTERS, dtype=torch.float64, device=device)
        for k, micro in enumerate(micro_batches):
            index = micro[dist.shard(len(micro), world)]
            x0, t, noise = (v[index].to(device) for v in (x0s, ts, noises))
            if cfg.runtime.channels_last:
                x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
            last = k == len(micro_batches) - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with self.precision.autocast(device.type):
                    rows = rows_of(cond, index, device)
                    per_image = per_image_loss(self.net, self.schedule, x0, t, noise, rows,
                                               prediction=cfg.diffusion.prediction, min_snr=cfg.diffusion.min_snr) \
                        if self.distiller is None else self.distiller.loss(self.net, x0, t, noise, rows)
                    loss = per_image.mean() * len(index) / cfg.optim.batch_size
                self._count_quarters(per_image.detach(), t)
                # times world.size: DDP averages the ranks' gradients, and we want their sum
                self.scaler.scale(loss * world.size).backward()
            total += loss.detach()
        return total

    def probe_backward(self) -> None:
        """`backward` as the timing probes run it: on successive steps, so that what a step computes once
        (a student's fresh teacher trajectories, reused by the steps after) is timed once a step."""
        self._probes += 1
        self.backward(self._probes)

    def _count_quarters(self, per_image: torch.Tensor, t: torch.Tensor) -> None:
        quarter = torch.div(t * QUARTERS, self.setup.schedule.T, rounding_mode="floor")
        self._quarters[:QUARTERS].index_add_(0, quarter, per_image.double())
        self._quarters[QUARTERS:] += torch.bincount(quarter, minlength=QUARTERS).double()

    def update(self, step: int, lr: float, ema_decay: float) -> tuple[float, bool]:
        """One optimizer and EMA update at learning rate `lr`: (the batch's mean loss, whether the
        step was bad). A non-finite loss or gradient skips the update: weights, EMA and optimizer
        stay untouched."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.backward(step)
        summed = dist.total(torch.cat([loss.double().reshape(1), self._quarters]), self.setup.world).cpu()
        loss, self.quarters = summed[0].float().item(), summed[1:]
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.setup.cfg.optim.grad_clip).item()
        if math.isfinite(loss) and math.isfinite(norm):
            self.scaler.step(self.optimizer)
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - ema_decay)
        # fp16: an overflowing gradient is the loss scaler's business (it lowers the scale), not an error
        bad = not math.isfinite(loss) or (not math.isfinite(norm) and not self.scaler.is_enabled())
        self.scaler.update()
        return loss, bad

    def expected_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """The shapes a checkpoint of this network must hold (its weights) or may hold (the training
        state), for checkpoint.load_checkpoint to check in the headers before reading any data."""
        shapes = ckpt.shapes_of(self.model)
        state = {"elapsed": (), "scaler.scale": (), "scaler.growth_tracker": ()}
        for i, p in enumerate(self.model.parameters()):
            state.update({f"opt.{i}.step": (), f"opt.{i}.exp_avg": tuple(p.shape), f"opt.{i}.exp_avg_sq": tuple(p.shape)})
        return {ckpt.MODEL: shapes, ckpt.EMA: shapes, ckpt.STATE: state}

    def start_from(self, weights: Path) -> None:
        """Fine-tuning: the weights and the EMA both start from a base run's EMA weights (a student: its
        teacher's, the guidance scale's embedding at zero)."""
        if self.distiller is not None:
            self.distiller.initialise(self.model)
        else:
            ckpt.load_weights(self.model, weights)
        self.ema.load_state_dict(self.model.state_dict())

    def tensors(self, elapsed: float) -> dict[str, dict[str, torch.Tensor]]:
        """A checkpoint's tensors: the weights, the EMA, the optimizer, the loss scale and the clock."""
        state = ckpt.optimizer_tensors(self.optimizer)
        state["elapsed"] = torch.tensor(elapsed, dtype=torch.float64)
        if self.scaler.is_enabled():
            state["scaler.scale"] = torch.tensor(self.scaler.get_scale(), dtype=torch.float64)
            state["scaler.growth_tracker"] = torch.tensor(self.scaler.state_dict()["_growth_tracker"])
        return {ckpt.MODEL: self.model.state_dict(), ckpt.EMA: self.ema.state_dict(), ckpt.STATE: state}

    def load(self, tensors: dict, run: Path) -> float:
        """Load a checkpoint's tensors; returns the seconds the run had trained."""
        ckpt.check_fits(self.model, tensors[ckpt.MODEL], run / ckpt.MODEL)
        ckpt.check_fits(self.ema, tensors[ckpt.EMA], run / ckpt.EMA)
        self.model.load_state_dict(tensors[ckpt.MODEL])
        self.ema.load_state_dict(tensors[ckpt.EMA])
        state = tensors[ckpt.STATE]
        ckpt.load_optimizer_tensors(self.optimizer, state)
        if self.scaler.is_enabled() and "scaler.scale" in state:
            scaler = self.scaler.state_dict()
            scaler.update(scale=float(state["scaler.scale"]), _growth_tracker=int(state["scaler.growth_tracker"]))
            self.scaler.load_state_dict(scaler)
        return float(state["elapsed"])


def draw_batch(setup: Setup, step: int) -> tuple:
    """The global batch of a step with all its random draws, identical on every rank:
    (x0, cond, t, noise). cond (conditions/condition.py) is None for an unconditional model; its rows
    take the null class or the empty prompt where guidance dropout struck; an upscale run's holds each
    image's own downsampled, noised self."""
    cfg, k = setup.cfg, setup.context_dim
    generator = torch.Generator().manual_seed(cfg.optim.seed * 1_000_003 + step + 1)
    images, labels = batch_at(setup.data, cfg.optim.batch_size, step, cfg.optim.seed)
    cond = None
    if setup.captions is not None:  # each image's caption row, row 0 (the empty prompt) where dropped
        rows = setup.caption_index[batch_indices(len(setup.data.images), cfg.optim.batch_size, step, cfg.optim.seed)]
        drop = drop_mask(len(rows), cfg.diffusion.cond_drop, generator, "cpu")
        cond = Condition(prompt=Prompt(setup.captions.batch(torch.where(drop, torch.zeros_like(rows), rows))))
    elif k and labels is None:  # unlabelled data for a conditional model: the null context
        cond = Condition(Classes(torch.zeros(len(images), k), torch.ones(len(images), dtype=torch.bool)))
    elif k:
        vectors = labels.float() if labels.ndim == 2 else one_hot(labels, k)
        cond = Condition(Classes(vectors, drop_mask(len(labels), cfg.diffusion.cond_drop, generator, "cpu")))
    t, noise = draw_noise(setup.schedule.T, images.shape, generator)
    if cfg.source.flip:  # drawn last, so that runs without flips keep the draws they always had
        mirror = torch.rand(len(images), generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    low = low_batch(setup, step, images)
    if low is not None:
        cond = Condition(low=low) if cond is None else dataclasses.replace(cond, low=low)
    return images, cond, t, noise


def low_batch(setup: Setup, step: int, images: torch.Tensor) -> LowRes | None:
    """An upscale run's conditions for the global batch of a step (its own generator); None otherwise."""
    cfg = setup.cfg
    if cfg.source.task != "upscale":
        return None
    generator = torch.Generator().manual_seed(cfg.optim.seed * 1_000_003 + step + 1 + 500_000_000_000)
    return training_condition(images, cfg.source.factor, generator, cfg.diffusion.cond_aug)
