"""What a small CPU budget should spend its minutes on: batch size, learning rate, how the class
reaches the network, model size. Each variant trains on ONE core while another variant trains on the
other (each is the other's competing process, as on a laptop doing something else), then the shipped
digit judge scores it.

    .venv/bin/python benchmarks/budget_recipe.py [--minutes 4] [--per-digit 30]
        [--variants "batch 128=--batch-size 128;batch 32=--batch-size 32"] [--out runs/budget-recipe]

A variant is NAME=TRAIN FLAGS; variants run two at a time (cores 0 and 1, one thread each), all on
the bundled MNIST digits with `--model tiny` unless its flags say otherwise. Scores: fidelity (the
share of samples the judge reads as the digit asked, guidance 2) and FID in the judge's feature
space, with the default sampler (DDIM, 10 steps) and with DDIM at 20 steps, eta 1.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from digit_judge import fidelity, judge
from report import write_section
from undiffuse.eval.evaluate import real_images
from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
from undiffuse.eval.metrics import feature_extractor, score_features

DEFAULT_VARIANTS = ";".join([
    "before: batch 128, class by scale=--batch-size 128 --lr 2e-3 --context-mode scale",
    "default: batch 32, lr 2e-3, class by scale and add=",
    "batch 32, lr 1e-3=--batch-size 32 --lr 1e-3",
    "batch 32, class by scale only=--batch-size 32 --context-mode scale",
    "small model, batch 32=--model small --batch-size 32",
    "batch 16, lr 2e-3=--batch-size 16 --lr 2e-3",
])


CELLS = ((10, 0.0), (20, 1.0))  # DDIM steps and eta: the default sampler, and a stochastic one


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def train_pair(pair: list[tuple[str, str]], minutes: float, out: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for core, (name, flags) in enumerate(pair):
        folder = out / folder_name(name)
        model = [] if "--model" in flags else ["--model", "tiny"]
        command = ["taskset", "-c", str(core), sys.executable, "-m", "undiffuse", "train", "--data", "mnist",
                   *model, *shlex.split(flags), "--minutes", str(minutes), "--out", str(folder),
                   "--overwrite", "--quiet"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training run failed: {p.args}")


def scores(folder: Path, labels: list[int], judge_net, extract, real_feats) -> list[str]:
    run = load_run(folder)
    cells = []
    for steps, eta in CELLS:
        images = generate(run, len(labels), labels=labels, sampler="ddim", steps=steps, eta=eta,
                          guidance=DEFAULT_GUIDANCE, seed=0)
        fid = score_features(real_feats, extract(images))["fid"]
        cells.append(f"{fidelity(judge_net, images, torch.tensor(labels)):.3f} / {fid:.2f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--per-digit", type=int, default=30)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--out", default="runs/budget-recipe")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    variants = [tuple(v.split("=", 1)) for v in args.variants.split(";")]
    out = Path(args.out)
    for i in range(0, len(variants), 2):
        train_pair(variants[i:i + 2], args.minutes, out)
    judge_net, accuracy = judge()
    extract = feature_extractor("digits")
    real_feats = extract(real_images("mnist", 28, 1))
    labels = [k for k in range(10) for _ in range(args.per_digit)]
    rows = []
    for name, flags in variants:
        folder = out / folder_name(name)
        steps = load_run(folder).config["plan"]["steps"]
        rows.append(f"| {name} | `{flags or '(none)'}` | {steps} | " + " | ".join(scores(folder, labels, judge_net, extract,
                                                                            real_feats)) + " |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Command: `python benchmarks/budget_recipe.py --minutes {args.minutes:g} --per-digit {args.per_digit}`. "
        f"Each run: {args.minutes:g} minutes on one core (one thread) while another run trains on the other core; "
        f"tiny model, bundled MNIST. Cells: fidelity / FID of {len(labels)} samples at guidance "
        f"{DEFAULT_GUIDANCE:g} (judge accuracy {accuracy:.3f} on real digits; FID in its feature space).",
        "", "| variant | flags | steps | DDIM-10 (the default) | DDIM-20 eta 1 |", "|---|---|---|---|---|", *rows])
    print(text)
    if not args.no_write:
        write_section("budget_recipe", "What a small CPU budget should spend its minutes on", text)


if __name__ == "__main__":
    main()
