"""undiffuse and its peers behind one small interface, at matched model sizes, for peers.py and
quality_at_budget.py.

A Contender is one library's network together with its own training step (the loss, optimizer,
learning rate, gradient clipping and EMA of its documented recipe) and its own sampler. The peers
come from PyPI (`pip install -e '.[bench]'`, then `pip install --no-deps denoising-diffusion-pytorch`:
its torchvision requirement would replace the CPU build of torch). denoising-diffusion-pytorch imports
torchvision at the top for its Trainer's data pipeline, which we do not use; a stand-in module takes
its place (after diffusers is imported, since diffusers probes for torchvision).

Matched sizes: the same base width, channel multipliers and attention resolutions as the undiffuse
size (recipe.unet_config). diffusers' UNet2DModel matches block for block; lucidrains' Unet has its
fixed layout (two residual blocks per level and linear attention at the levels without full
attention), so it is larger at the same width: parameters and FLOPs are reported beside each rate.
"""
from __future__ import annotations

import atexit
import copy
import functools
import importlib
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

LIBRARIES = ("undiffuse", "diffusers", "lucidrains")
RECIPES = ("documented", "undiffuse")
# "default": each library as its users run it on a CPU (the peers in fp32; undiffuse with --precision
# auto, which picks bf16 only where the machine's bf16 units make it faster); "bf16": every library
# under torch.autocast to bfloat16 (the peers' own forward passes wrapped, their losses in fp32).
PRECISIONS = ("default", "bf16")


@dataclass
class Contender:
    name: str
    net: nn.Module  # the noise network alone, for parameters and FLOPs
    forward: Callable[[Tensor, Tensor], Tensor]  # net(x, t): for FLOP counting
    batch_size: int  # the documented recipe's batch (throughput runs override it)
    step: Callable[[Tensor], float]  # one optimizer step on a batch in [-1, 1]; returns the loss
    sample: Callable[[int, int, int], Tensor]  # (n, steps, seed) -> images in [-1, 1], deterministic DDIM
    recipe: str  # one line for the report


def _levels(size: str, side: int, channels: int):
    from undiffuse.training.recipe import unet_config

    cfg = unet_config(size, side, channels, 0)
    return cfg, [cfg.base * m for m in cfg.mults], [i in cfg.attention for i in range(len(cfg.mults))]


def build(library: str, size: str, side: int, channels: int, *, batch_size: int | None = None,
          planned_steps: int = 1000, recipe: str = "documented", precision: str = "default") -> Contender:
    """`planned_steps` sizes the learning-rate schedules that need a length. recipe "documented": each
    peer trains as its documentation says; "undiffuse": the peer's network, loss target and schedule,
    with undiffuse's budget recipe (batch 128, AdamW, warm-up + cosine, EMA over the last fifth, recipe.EMA_SHARE).
    precision: PRECISIONS."""
    makers = {"undiffuse": _undiffuse, "diffusers": _diffusers, "lucidrains": _lucidrains}
    if library not in makers:
        raise ValueError(f"unknown library {library!r}; choose one of {', '.join(LIBRARIES)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    torch.manual_seed(0)
    if library == "undiffuse":
        return _undiffuse(size, side, channels, batch_size, planned_steps, precision)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    return makers[library](size, side, channels, batch_size, planned_steps, recipe, autocast)


class BudgetRecipe:
    """undiffuse's recipe (recipe.py) around a peer's network: what follows its backward pass."""

    def __init__(self, module: nn.Module, planned_steps: int, batch_size: int):
        from undiffuse.training.recipe import plan

        self.module, self.plan, self.count = module, plan(planned_steps, batch_size), 0
        self.ema = copy.deepcopy(module).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=0.0, weight_decay=0.0)

    def update(self) -> None:
        from undiffuse.training.recipe import ema_decay_at, lr_at

        nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.count, self.plan)
        self.optimizer.step()
        self.optimizer.zero_grad()
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.module.parameters()),
                             1.0 - ema_decay_at(self.count, self.plan))
        self.count += 1

    def describe(self) -> str:
        return f"undiffuse's budget recipe: batch 128, AdamW peak lr {self.plan.lr:.0e}, warm-up + cosine, EMA"


# --- undiffuse: its own Trainer, so that the timed step is the one a user runs --------------------

def _undiffuse(size, side, channels, batch_size, planned_steps, precision):
    """Unconditional, like the peers, on random images (the Trainer draws its own batches from them).
    It trains and samples in the precision its users get: auto (each decided by its own probe), or bf16."""
    from undiffuse.data import ImageData
    from undiffuse.generation import faster_layout, sample_images, sampling_precision
    from undiffuse.training import TrainConfig, Trainer

    data = ImageData(torch.rand(512, channels, side, side) * 2 - 1, None, (), "random")
    folder = tempfile.mkdtemp(prefix="undiffuse-bench-")  # the Trainer's run folder, removed at exit
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    asked = "auto" if precision == "default" else precision
    # patch 1: the peers have no patch stem, and a stem would change the network's work (matched size)
    cfg = TrainConfig.flat(data="(in memory)", steps=planned_steps, batch_size=batch_size or 128, model=size,
                           grids=0, checkpoint_minutes=1e9, precision=asked, patch=1)
    trainer = Trainer.create(cfg, folder, overwrite=True, data=data)
    cfg = trainer.cfg  # with what the recipe decided from the data (block style, prediction)
    net = trainer.model
    sampling = sampling_precision(trainer.ema, asked, side)  # as LoadedRun.precision decides it
    ema = faster_layout(trainer.ema, sampling, side) if sampling.probed else trainer.ema

    def step(_batch: Tensor) -> float:
        return trainer.train_step()

    def sample(n: int, steps: int, seed: int) -> Tensor:
        return sample_images(ema, trainer.schedule, cfg.diffusion.prediction, n, image_size=side,
                             sampler="ddim", steps=steps, seed=seed, precision=sampling)

    return Contender("undiffuse", net, lambda x, t: net(x, t), cfg.optim.batch_size, step, sample,
                     f"AdamW, peak lr {trainer.plan.lr:.1e}, warm-up + cosine, EMA, min-SNR-5, {cfg.diffusion.prediction}, linear schedule; "
                     f"trains in {trainer.learner.precision.name}, samples in {sampling.name}")


# --- Hugging Face diffusers: the "Train a diffusion model" tutorial's loop -------------------------

def _diffusers(size, side, channels, batch_size, planned_steps, recipe, autocast):
    import diffusers
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup

    diffusers.utils.logging.disable_progress_bar()
    cfg, widths, attend = _levels(size, side, channels)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend)
    net = UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
                      layers_per_block=cfg.blocks, down_block_types=down,
                      up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                      norm_num_groups=cfg.groups, attention_head_dim=cfg.head_channels)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    if recipe == "undiffuse":
        budget = BudgetRecipe(net, planned_steps, batch_size or 128)
        update, sampling_net, described = budget.update, budget.ema, budget.describe()
    else:
        # tutorial: AdamW lr 1e-4, 500 warm-up steps then a cosine over the run, gradient norm clipped at 1
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(500, planned_steps // 10), planned_steps)

        def update() -> None:
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()

        sampling_net, described = net, "AdamW lr 1e-4, 500 warm-up steps + cosine, no EMA (tutorial)"
    gen = torch.Generator().manual_seed(0)

    def step(x0: Tensor) -> float:
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
        with autocast():
            prediction = net(scheduler.add_noise(x0, noise, t), t).sample
        loss = nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()
        update()
        return loss.item()

    def sample(n: int, steps: int, seed: int) -> Tensor:
        sampling_net.eval()
        pipe = DDIMPipeline(sampling_net, DDIMScheduler.from_config(scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        with autocast():
            out = pipe(batch_size=n, num_inference_steps=steps, output_type="np", eta=0.0,
                       generator=torch.Generator().manual_seed(seed)).images
        sampling_net.train()
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() * 2 - 1

    batch = batch_size or (128 if recipe == "undiffuse" else 16)
    return Contender("diffusers", net, lambda x, t: net(x, t).sample, batch, step, sample,
                     described + ", eps, linear schedule")


# --- lucidrains' denoising-diffusion-pytorch: its README's settings and its Trainer's step ---------

def _import_lucidrains():
    importlib.import_module("diffusers")  # it must see the real absence of torchvision, not the stand-in

    if "torchvision" not in sys.modules:
        try:
            importlib.import_module("torchvision")
        except Exception:
            stand_in = types.ModuleType("torchvision")
            stand_in.transforms, stand_in.utils = types.SimpleNamespace(), types.SimpleNamespace()
            sys.modules["torchvision"] = stand_in
    import denoising_diffusion_pytorch

    return denoising_diffusion_pytorch


def _lucidrains(size, side, channels, batch_size, planned_steps, recipe, autocast):
    ddp = _import_lucidrains()
    from ema_pytorch import EMA

    cfg, widths, attend = _levels(size, side, channels)
    net = ddp.Unet(dim=cfg.base, dim_mults=cfg.mults, channels=channels, full_attn=tuple(attend),
                   attn_dim_head=cfg.head_channels)
    diffusion = ddp.GaussianDiffusion(net, image_size=side, timesteps=1000)  # pred_v, sigmoid schedule
    if recipe == "undiffuse":
        budget = BudgetRecipe(diffusion, planned_steps, batch_size or 128)
        update, sampling_model, described = budget.update, budget.ema, budget.describe()
    else:
        # README: Adam lr 8e-5, batch 32; Trainer: betas (0.9, 0.99), EMA 0.995 every 10 steps, clip 1
        optimizer = torch.optim.Adam(diffusion.parameters(), lr=8e-5, betas=(0.9, 0.99))
        ema = EMA(diffusion, beta=0.995, update_every=10)

        def update() -> None:
            nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            ema.update()

        sampling_model = ema.ema_model
        described = "Adam lr 8e-5 (constant), EMA 0.995 every 10 steps, clip 1 (README)"

    def step(x0: Tensor) -> float:
        with autocast():
            loss = diffusion((x0 + 1) / 2).float()  # it normalises [0, 1] to [-1, 1] itself
        loss.backward()
        update()
        return loss.item()

    def sample(n: int, steps: int, seed: int) -> Tensor:
        model = sampling_model.eval()
        model.sampling_timesteps, model.is_ddim_sampling, model.ddim_sampling_eta = steps, steps < 1000, 0.0
        torch.manual_seed(seed)
        with torch.inference_mode(), autocast():
            images = model.sample(batch_size=n)
        return images.float() * 2 - 1

    batch = batch_size or (128 if recipe == "undiffuse" else 32)
    return Contender("lucidrains", net, lambda x, t: net(x, t), batch, step, sample,
                     described + ", pred_v, sigmoid schedule")


def forward_flops(contender: Contender, side: int, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(1, channels, side, side), torch.tensor([500])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        contender.forward(x, t)
    return counter.get_total_flops()


def parameters(contender: Contender) -> int:
    return sum(p.numel() for p in contender.net.parameters())


def epoch_batches(images: Tensor, batch_size: int, seed: int = 0, flip: bool = False):
    """Endless shuffled batches without replacement within an epoch; `flip`: each image mirrored left
    to right with probability 1/2 (both peers' documented colour recipes do)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=g)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = images[order[start:start + batch_size]]
            if flip:
                mirrored = torch.rand(len(batch), generator=g) < 0.5
                batch = torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)
            yield batch

