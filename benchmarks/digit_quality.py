"""How recognisable and how varied a digits run's samples are, per guidance scale.

    .venv/bin/python benchmarks/digit_quality.py RUN [--per-digit 100] [--guidance 0,1,2,4]

The digit CNN shipped with undiffuse (digit_judge.py, trained by train_digit_features.py) judges:
fidelity is the fraction of the samples asked to be digit k that it classifies as k, diversity the
spread of its features within a digit relative to real digits (1.0 = as varied as the real ones). The default sampler, x0 clipping.
"""
from __future__ import annotations

import argparse
import time

import torch

from digit_judge import diversity, fidelity, judge
from report import write_section
from undiffuse.generation import DEFAULT_SAMPLER, generate, load_run
from undiffuse.samplers import DEFAULT_STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--guidance", default="0,1,2,4")
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER)
    parser.add_argument("--steps", type=int, default=None, help="default: the sampler's own")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    net, accuracy = judge()
    run = load_run(args.run)
    labels = [k for k in range(10) for _ in range(args.per_digit)]
    rows = []
    for w in [float(g) for g in args.guidance.split(",")]:
        start = time.perf_counter()
        images = generate(run, len(labels), labels=labels, sampler=args.sampler, steps=args.steps,
                          guidance=w, seed=0)
        seconds = time.perf_counter() - start
        lab = torch.tensor(labels)
        rows.append(f"| {w:g} | {fidelity(net, images, lab):.3f} | {diversity(net, images, lab):.2f} | "
                    f"{len(labels) / seconds:.1f} |")
        print(rows[-1], flush=True)
    cfg = run.config
    text = "\n".join([
        f"Command: `python benchmarks/digit_quality.py RUN --per-digit {args.per_digit}`. RUN: `{args.run}` "
        f"({cfg['model_size']} model, {cfg['plan']['steps']} steps of {cfg['train']['batch_size']} images). "
        f"Judge: a CNN with held-out accuracy {accuracy:.3f} on real digits. Sampler {args.sampler}, {args.steps or DEFAULT_STEPS[args.sampler]} steps, x0 clipping.",
        "", "| guidance | fidelity | diversity | samples/s |", "|---|---|---|---|", *rows])
    print(text)
    if not args.no_write:
        write_section("digit_quality", "Digits: fidelity and diversity per guidance scale", text)


if __name__ == "__main__":
    main()
