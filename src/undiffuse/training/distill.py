"""Distillation: a student run that draws in K network calls (1, 2 or 4) with guidance built in,
taught by a trained run, its teacher.

The student learns the teacher's own sampling trajectories. Each step the teacher solves a few fresh
ones: from pure noise, a random class (or the null class) and a random guidance scale w, its guided
probability-flow ODE with clipping, by TEACHER_SOLVER over a grid of K * m steps (at least
TEACHER_STEPS) whose every m-th point is the student's K-step grid (trailing spacing nests: the
student's grid is the teacher's every m-th point). DPM-Solver++(2M) at 10 steps scores better than DDIM
at 25 on the colour teacher (BENCHMARKS.md, "Distilled students") at 2.5x fewer calls, and the
teacher's calls are most of a step's cost.
At each point x_i of the student's grid the target is the clean image x0* that makes the student's
one DDIM step from x_i land where the teacher's m steps landed,

    x_{i+1} = a' x0* + s' (x_i - a x0*) / s   =>   x0* = (x_{i+1} - (s'/s) x_i) / (a' - a s'/s),

and, at the last point, the teacher's final image itself: Salimans & Ho's progressive distillation
target, taken over m teacher steps at once (one stage), on the teacher's trajectories rather than on
noised data, so that no data is needed and the student learns where it is asked. The student
predicts v (at one or two calls an eps prediction divides by sqrt(alpha_bar), 1/156 at the top of the
linear schedule) and takes w as an input (Meng et al. 2023): one call a step at any w of its range.
Its loss is the MSE of v, which weighs the x0 error by 1 + SNR (Salimans & Ho's "SNR+1").

Each trajectory serves REUSE consecutive steps, so a step's batch is the trajectories of the last
REUSE steps, each a pure function of (seed, step): a resumed run takes the steps an uninterrupted one
would, as every run does.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from .. import checkpoint as ckpt
from ..conditions import Classes, Condition, one_hot
from ..conditions.scale import GuidanceScale, guidance_range
from ..data import ImageData
from ..errors import UsageError
from ..grids import timesteps
from ..guidance import in_precision
from ..parameterization import to_eps_x0
from ..precision import FP32, Precision
from ..run import RunRecord, read_run
from ..samplers import SAMPLERS
from ..schedule import NoiseSchedule
from ..unet import UNet

CALLS = (1, 2, 4)
PREDICTION = "v"
REUSE = 4  # steps each teacher trajectory is learnt from
NULL_SHARE = 0.1  # trajectories drawn on the null class: a student's unconditional samples
TEACHER_SOLVER = "dpmpp-2m"
STUDENT_SAMPLER = "ddim"  # the target makes one DDIM step land where the teacher's steps did
TEACHER_STEPS = 10  # at least


def teacher_steps(calls: int) -> int:
    """The teacher's solver steps: the fewest multiple of `calls` at least TEACHER_STEPS."""
    return calls * math.ceil(TEACHER_STEPS / calls)


def student_options(teacher: RunRecord, calls: int, folder: str) -> dict:
    """What a student of `teacher` sets apart from a fine-tuning run: it predicts v, draws in `calls`
    steps (DDIM's, whatever its teacher's sampler) by default and keeps its teacher's guidance (the
    middle of its range)."""
    check_teacher(teacher, folder)
    return {"prediction": PREDICTION, "sampler": STUDENT_SAMPLER, "sample_steps": calls,
            "guidance": teacher.train.get("guidance"),
            "data": teacher.data_source}


def check_teacher(record: RunRecord, folder: str) -> None:
    """What distillation can teach from: a class-conditional or unconditional generating run."""
    if record.task != "generate":
        raise UsageError(f"'{folder}' is an upscale run: distill takes a run that generates from noise")
    if record.text is not None:
        raise UsageError(f"'{folder}' is a text run: distill takes class-conditional and unconditional runs")
    if record.train.get("distill_calls"):
        raise UsageError(f"'{folder}' is already a distilled student: distill its teacher instead")


def stand_in_data(record: RunRecord) -> ImageData:
    """What a student's setup reads in place of data, which it never draws: the teacher's shape,
    classes and size, as zeros that take no memory (one image, expanded)."""
    n, shape = max(1, record.num_images), (record.channels, record.image_size, record.image_size)
    labels = torch.zeros(1, dtype=torch.int64).expand(n) if record.class_names else None
    return ImageData(torch.zeros(1, *shape).expand(n, *shape), labels, record.class_names, record.data_source)


class Distiller:
    """The teacher and its trajectories: `batch(step)` gives a step's (x_t, cond, t, x0 target), `loss`
    the student's per-image loss on it."""

    def __init__(self, teacher_folder: str | Path, schedule: NoiseSchedule, calls: int, batch_size: int,
                 seed: int, guidance: float, device: torch.device):
        record, self.folder = read_run(teacher_folder), teacher_folder
        check_teacher(record, str(teacher_folder))
        self.teacher = UNet(record.unet)
        ckpt.load_weights(self.teacher, Path(teacher_folder) / ckpt.EMA)
        self.teacher = self.teacher.to(device).eval().requires_grad_(False)
        self.teacher_prediction, self.schedule, self.device = record.prediction, schedule.to(device), device
        self.calls, self.seed, self.precision = calls, seed, FP32
        self.classes, self.side = len(record.class_names), record.image_size
        self.low, self.high = guidance_range(guidance) if self.classes else (1.0, 1.0)
        steps = teacher_steps(calls)
        self.grid = timesteps(schedule.T, steps, "trailing", schedule)
        self.every = steps // calls  # teacher steps per student step
        self.per_step = math.ceil(batch_size / (calls * REUSE))  # trajectories solved each step
        self.batch_size = batch_size
        self._solved: dict[int, tuple[Tensor, Condition, Tensor]] = {}

    def describe(self) -> str:
        """The first line `distill` prints: what the student learns from."""
        scales = f", guidance {self.low:g} to {self.high:g} as an input" if self.classes else ""
        return (f"teacher: {self.folder}: guided {TEACHER_SOLVER} of {len(self.grid)} steps ({self.every} a student step), "
                f"{self.per_step} fresh trajector{'ies' if self.per_step > 1 else 'y'} a step{scales}; no data read")

    def initialise(self, student: UNet) -> None:
        """The student starts as its teacher: every weight but the guidance scale's embedding (zero)."""
        missing, unexpected = student.load_state_dict(self.teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("scale_mlp.") for k in missing):
            raise RuntimeError(f"a student's network differs from its teacher's beyond the scale input: {missing}")

    @property
    def student_grid(self) -> list[int]:
        return self.grid[::self.every]

    def batch(self, step: int, precision: Precision) -> tuple[Tensor, Condition, Tensor, Tensor]:
        """The student's batch of `step`: every grid point of the trajectories of the last REUSE steps,
        (x_t, cond, t, x0 target), batch_size rows; the teacher runs in `precision`, the student's."""
        self.precision = precision
        for old in [s for s in self._solved if s <= step - REUSE]:
            del self._solved[old]
        parts = [self._trajectories(s) for s in range(step - REUSE + 1, step + 1)]
        x_t, targets, ts, conds = [], [], [], []
        for states, cond, _ in parts:
            for i, t in enumerate(self.student_grid):
                x_t.append(states[i])
                targets.append(self._target(states[i], states[i + 1], t, self._next(i)))
                ts.append(torch.full((len(states[i]),), t, dtype=torch.long))
                conds.append(cond)
        keep = slice(0, self.batch_size)
        cond = _cat(conds).rows(keep)
        return torch.cat(x_t)[keep], cond, torch.cat(ts)[keep], torch.cat(targets)[keep]

    def loss(self, net, x_t: Tensor, t: Tensor, target: Tensor, cond: Condition) -> Tensor:
        """Each image's squared error of v, (B,): the x0 error weighted by 1 + SNR."""
        ab = self.schedule.alpha_bar[t].to(x_t)[:, None, None, None]
        v = (ab.sqrt() * x_t - target) / (1 - ab).sqrt()
        return (net(x_t, t, cond).float() - v).pow(2).flatten(1).mean(1)

    def _next(self, i: int) -> int:
        grid = self.student_grid
        return grid[i + 1] if i + 1 < len(grid) else -1

    def _target(self, x: Tensor, x_next: Tensor, t: int, t_next: int) -> Tensor:
        """x0* of the module docstring; the teacher's final image at the last point."""
        if t_next < 0:
            return x_next
        a, s = (self.schedule.alpha_bar[t].item() ** 0.5, (1 - self.schedule.alpha_bar[t].item()) ** 0.5)
        ab_next = self.schedule.alpha_bar[t_next].item()
        a_next, s_next = ab_next ** 0.5, (1 - ab_next) ** 0.5
        return (x_next - (s_next / s) * x) / (a_next - a * s_next / s)

    @torch.no_grad()
    def _trajectories(self, step: int) -> tuple[Tensor, Condition, Tensor]:
        """The teacher's solves of `step` (memoised): the states at the student's grid points and the
        final image, (K + 1, G, C, H, W); the student's condition; the scales."""
        if step not in self._solved:
            self._solved[step] = self._solve(step)
        return self._solved[step]

    def _solve(self, step: int) -> tuple[Tensor, Condition, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 700_000_000_000)
        n, cfg = self.per_step, self.teacher.cfg
        x = torch.randn(n, cfg.channels, self.side, self.side, generator=g)
        w = self.low + (self.high - self.low) * torch.rand(n, generator=g)
        classes = None
        if self.classes:
            labels = torch.randint(self.classes, (n,), generator=g)
            null = torch.rand(n, generator=g) < NULL_SHARE
            classes = Classes(one_hot(labels, self.classes), null)
        states = [x]
        keep = {k * self.every - 1 for k in range(1, self.calls + 1)}  # after these steps x is on the student's grid

        def record(seen: dict) -> None:
            if seen["i"] in keep:
                states.append(seen["x"].cpu())

        denoise = self._teacher_denoiser(Condition(classes).rows(slice(None), self.device), w.to(self.device))
        SAMPLERS[TEACHER_SOLVER](denoise, self.schedule, x.to(self.device), self.grid, clip_denoised=True,
                                 callback=record)
        return torch.stack(states), Condition(classes, scale=GuidanceScale(w)), w

    def _teacher_denoiser(self, cond: Condition, w: Tensor):
        """The teacher guided with one scale per image: eps = eps_null + w (eps_ctx - eps_null)."""
        model, schedule, prediction = in_precision(self.teacher, self.precision), self.schedule, self.teacher_prediction
        steered = cond.classes is not None
        pair = cond.cat(cond.against()) if steered else cond
        scale = w[:, None, None, None]

        def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            if not steered:
                return to_eps_x0(model(x_t, t, cond), x_t, t, schedule, prediction)
            b = x_t.shape[0]
            xx, tt = torch.cat([x_t, x_t]), torch.cat([t, t])
            eps, x0 = to_eps_x0(model(xx, tt, pair), xx, tt, schedule, prediction)
            return (eps[b:] + scale * (eps[:b] - eps[b:]), x0[b:] + scale * (x0[:b] - x0[b:]))

        return denoise


def _cat(conds: list[Condition]) -> Condition:
    out = conds[0]
    for cond in conds[1:]:
        out = out.cat(cond)
    return out


def student_unet(record: RunRecord):
    """The teacher's network with the guidance scale as an input where it has classes to guide."""
    return dataclasses.replace(record.unet, guidance_input=bool(record.class_names))
