"""Fine-tune a digits run on one digit, then count how many unconditional samples are that digit.

    .venv/bin/python benchmarks/finetune_digit.py RUN [--digit 3] [--minutes 2] [--n 100]

Before fine-tuning, unconditional samples (guidance 0) are any digit (about 10% each); after it they
should be mostly the chosen one. Writes a section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from digit_judge import judge
from report import write_section
from undiffuse.generation import generate, load_run
from undiffuse.training import TrainConfig, Trainer


@torch.no_grad()
def fraction_of(net, images, digit: int) -> float:
    return (net(images).argmax(1) == digit).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    net, accuracy = judge()
    before = generate(load_run(args.run), args.n, labels=[0] * args.n, guidance=0.0, steps=50, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "finetuned"
        cfg = TrainConfig.flat(data="mnist", base=args.run, only_label=str(args.digit), minutes=args.minutes, grids=0)
        trainer = Trainer.create(cfg, out)
        trainer.train(progress=False)
        after = generate(load_run(out), args.n, labels=[0] * args.n, guidance=0.0, steps=50, seed=0)
        steps = trainer.plan.steps
    row = (f"| {args.digit} | {args.minutes:g} min ({steps} steps) | {fraction_of(net, before, args.digit):.2f} | "
           f"{fraction_of(net, after, args.digit):.2f} |")
    text = "\n".join([
        f"Command: `python benchmarks/finetune_digit.py RUN --digit {args.digit} --minutes {args.minutes:g} "
        f"--n {args.n}`; RUN: `{args.run}`. Unconditional samples (guidance 0, DDIM 50), judged by the CNN of "
        f"digit_judge.py (held-out accuracy {accuracy:.3f}).",
        "", "| digit | fine-tuning | share of that digit before | after |", "|---|---|---|---|", row])
    print(text)
    if not args.no_write:
        write_section("finetune", "Fine-tuning on one digit", text)


if __name__ == "__main__":
    main()
