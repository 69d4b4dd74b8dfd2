"""Which distillation objective `undiffuse distill` uses, chosen by measurement: the one-stage
progressive-distillation target on the teacher's trajectories (training/distill.py, what ships)
against multistep consistency distillation (Song et al. 2023; Heek et al. 2024), the same budget,
teacher, student network, guidance input, loss weighting and sampler.

    .venv/bin/python benchmarks/distill_methods.py TEACHER [--calls 2] [--minutes 10] [--core 1] [--per-class 100]

Consistency distillation, as its papers do it: a data image x0 noised to a random point t_n of the
teacher's grid (the same K*m-step grid the shipped objective solves on), one guided DDIM step of the
teacher to t_{n+1}, and the student's own prediction there (stop-gradient, the online weights: Song &
Dhariwal's "improved" choice of no target EMA) carried by DDIM to the end of the student's segment;
the student learns the clean image whose one DDIM step from x_n lands on that point (at a segment's
last teacher step the teacher's point itself: the boundary condition). Per step it costs one teacher
step on both branches and one student forward more than a plain step; the shipped objective costs
a few whole teacher trajectories, reused over REUSE steps: about the same, which `--minutes` equalises.

The consistency student trains as a user's student does (`undiffuse distill`, one core, one thread,
nothing else running) with `training.learner.Distiller` replaced by the class below in that process;
the shipped student is the one benchmarks/distill.py trained (TEACHER-student-K, trained again if
absent). Both draw the same labels from the same seeds; BENCHMARKS.md gets the table.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from distill import cell, train_student
from report import cpu_line, write_section
from undiffuse.conditions import Classes, Condition, one_hot
from undiffuse.conditions.scale import GuidanceScale
from undiffuse.data import batch_at, load_data
from undiffuse.eval.evaluate import default_features, real_images
from undiffuse.eval.judges import judge_for
from undiffuse.eval.metrics import feature_extractor
from undiffuse.generation import load_run
from undiffuse.run import read_run
from undiffuse.training import distill

HERE = Path(__file__).resolve().parent


class ConsistencyDistiller(distill.Distiller):
    """Multistep consistency distillation on data, in the shipped Distiller's interface: `batch` gives
    (x_n, cond, t_n, unused) and keeps what `loss` needs to build the target with the student."""

    def __init__(self, teacher_folder, *args, **kwargs):
        super().__init__(teacher_folder, *args, **kwargs)
        record = read_run(teacher_folder)
        self.data = load_data(record.data_source, image_size=record.image_size, channels=record.channels)
        # alpha_bar of every grid point, then of the clean end (index len(grid): alpha_bar 1)
        ab = self.schedule.alpha_bar.cpu()
        self.grid_ab = torch.cat([ab[torch.tensor(self.grid)], torch.ones(1, dtype=ab.dtype)]).double()
        self._pending: tuple | None = None

    def describe(self) -> str:
        return (f"consistency distillation: data images noised to points of a {len(self.grid)}-step grid, one guided "
                f"DDIM step of the teacher each, guidance {self.low:g} to {self.high:g} as an input")

    @torch.no_grad()
    def batch(self, step: int, precision) -> tuple[Tensor, Condition, Tensor, Tensor]:
        self.precision = precision
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 900_000_000_000)
        x0, labels = batch_at(self.data, self.batch_size, step, self.seed)
        b, n_grid = len(x0), len(self.grid)
        n = torch.randint(n_grid, (b,), generator=g)  # the point x_n; x_{n+1} is the teacher's next
        end = (n // self.every + 1) * self.every  # the segment's end: a student grid point or the clean end
        w = self.low + (self.high - self.low) * torch.rand(b, generator=g)
        classes = None
        if self.classes:
            null = torch.rand(b, generator=g) < distill.NULL_SHARE
            classes = Classes(one_hot(labels, self.classes), null)
        a, s = self._coefficients(n)
        x_n = (a * x0 + s * torch.randn(x0.shape, generator=g)).float()
        t_n = torch.tensor(self.grid)[n]
        cond = Condition(classes).rows(slice(None), self.device)
        eps, x0_hat = self._teacher_denoiser(cond, w.to(self.device))(x_n.to(self.device), t_n.to(self.device))
        x0_hat = x0_hat.float().clamp(-1, 1).cpu()
        eps = (x_n - a * x0_hat) / s
        a1, s1 = self._coefficients(n + 1)
        x_next = (a1 * x0_hat + s1 * eps).float()
        self._pending = (x_next, n + 1, end)
        return x_n, Condition(classes, scale=GuidanceScale(w)), t_n, torch.zeros_like(x_n)

    def loss(self, net, x_t: Tensor, t: Tensor, target: Tensor, cond: Condition) -> Tensor:
        x_next, n_next, end = self._pending
        assert len(x_next) == len(x_t), "one micro-batch on one process: the benchmark's setting"
        device = x_t.device
        x_next = x_next.to(device)
        inner = n_next < end  # x_{n+1} inside the segment: the student carries it on to the end
        with torch.no_grad():
            t_next = torch.tensor(self.grid + [0])[n_next].to(device)
            a1, s1 = (c.to(device) for c in self._coefficients(n_next))
            v = net(x_next, t_next, cond).float()
            x0_next = (a1 * x_next - s1 * v).clamp(-1, 1)
            ae, se = (c.to(device) for c in self._coefficients(end))
            carried = ae * x0_next + se * (x_next - a1 * x0_next) / s1.clamp_min(1e-12)
            point = torch.where(inner.to(device)[:, None, None, None], carried, x_next)
            a, s = (c.to(device) for c in self._coefficients(n_next - 1))
            x0_target = ((point - (se / s) * x_t) / (ae - a * se / s)).float()
        return super().loss(net, x_t, t, x0_target, cond)

    def _coefficients(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(alpha_bar), sqrt(1 - alpha_bar) of grid points `index` (len(grid): the clean end), (B,1,1,1)."""
        ab = self.grid_ab[index]
        return ab.sqrt().float()[:, None, None, None], (1 - ab).sqrt().float()[:, None, None, None]


def train_consistency(teacher: str, calls: int, minutes: float, core: int) -> Path:
    out = Path(f"{teacher.rstrip('/')}-consistency-{calls}")
    if not (out / "config.json").exists():
        command = ["taskset", "-c", str(core), sys.executable, __file__, "--train", teacher, str(out), str(calls),
                   f"{minutes:g}"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def main() -> None:
    if sys.argv[1:2] == ["--train"]:  # the child: `undiffuse distill` with the consistency objective
        teacher, out, calls, minutes = sys.argv[2:6]
        from undiffuse.cli import main as cli
        from undiffuse.training import learner

        learner.Distiller = ConsistencyDistiller
        raise SystemExit(cli(["distill", teacher, "--out", out, "--calls", calls, "--minutes", minutes, "--quiet"]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    k = args.calls
    students = {"trajectory target (ships)": train_student(args.teacher, k, args.minutes, args.core),
                "consistency distillation": train_consistency(args.teacher, k, args.minutes, args.core)}

    teacher = load_run(args.teacher)
    source = teacher.config["data_source"]
    judge = judge_for(teacher.class_names)
    extract = feature_extractor(default_features(source))
    real = extract(real_images(source, teacher.image_size, teacher.channels))
    labels = [c for c in range(teacher.num_classes) for _ in range(args.per_class)]
    rows, fids = [], {}
    for name, folder in students.items():
        student = load_run(folder)
        c = cell(student, labels, extract, real, judge)
        fids[name] = c["fid"]
        rows.append(f"| {name} | {student.config['plan']['steps']} | {c['fidelity']:.3f} | {c['fid']:.2f} |")
        print(rows[-1], flush=True)
    best = min(fids, key=fids.get)
    text = "\n".join([
        f"Command: `python benchmarks/distill_methods.py {args.teacher} --calls {k} --minutes {args.minutes:g} "
        f"--core {args.core} --per-class {args.per_class}`. Machine: {cpu_line()}. Teacher: `{args.teacher}`; "
        f"students of {k} call{'s' * (k > 1)}, {args.minutes:g} minutes of one core each (taskset, one thread), "
        f"nothing else running; {len(labels)} samples each, the same labels and seeds, guidance {teacher.guidance:g}; "
        f"fidelity by the {judge.name} judge, FID in its features against {len(real)} images of `{source}`.",
        "", "| objective | steps in the budget | fidelity | FID |", "|---|---|---|---|", *rows, "",
        f"Lower FID in this budget: {best}." + (
            "" if best.startswith("trajectory") else " The shipped objective should change to it.") +
        " How the two differ: the teacher's whole trajectory is known, so each segment's target is where the "
        "teacher really lands, while consistency distillation learns the same map by bootstrapping from the "
        "student's own, still wrong, prediction one teacher step later, and spends most of its rows on points "
        "the K-call sampler never visits; its advantage, one teacher step a row instead of whole solves, is "
        "small at a 10-step teacher (the steps each made in the budget are in the table), and it learns from "
        "the data's images where the other learns from the teacher's alone. Progressive distillation in stages (16 -> 8 -> 4 -> 2 teacher steps, "
        "the budget split over the stages) and consistency tuning (no teacher, data only) were not built: the "
        "trajectory target is staged distillation's one-stage limit, with no stage's error passed on."])
    print(text)
    write_section(f"distill_methods_{source}", f"Distillation objective on {source}: trajectory target against "
                  "consistency distillation", text)


if __name__ == "__main__":
    main()
