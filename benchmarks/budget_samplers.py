"""Which sampler draws the digit asked for, per network call, on briefly trained (budget) models.

    .venv/bin/python benchmarks/budget_samplers.py RUN [RUN ...] [--per-digit 50] [--guidance 2]
                     [--samplers ddim:10,ddim:20,ddim:50,ddim:10:1,ddim:20:1,ddim:50:1,dpmpp-2m:20,unipc:20]

Each entry is SAMPLER:STEPS[:ETA]. For every run and sampler: fidelity (the share of samples the
shipped digit judge reads as the digit asked), FID and KID against the run's training digits in
the judge's feature space, at the same seeds and labels in every cell. A run trained for minutes
makes errors that a deterministic sampler carries to the end, while fresh noise (eta > 0) lets
later steps correct them; this table says how much that matters, and the default sampler of a
budget run follows it (generation.py).
"""
from __future__ import annotations

import argparse
import time

import torch

from digit_judge import fidelity, judge
from report import write_section
from undiffuse.eval.evaluate import real_images
from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
from undiffuse.eval.metrics import feature_extractor, score_features
from undiffuse.samplers import network_calls


def parse(entry: str) -> tuple[str, int, float]:
    name, steps, *eta = entry.split(":")
    return name, int(steps), float(eta[0]) if eta else 0.0


def cell(run, extract, real_feats, judge_net, labels, name, steps, eta, guidance) -> dict:
    options = {"eta": eta} if name == "ddim" else {}
    start = time.perf_counter()
    images = generate(run, len(labels), labels=labels, sampler=name, steps=steps, guidance=guidance, seed=0,
                      **options)
    seconds = time.perf_counter() - start
    scores = score_features(real_feats, extract(images))
    return {"fidelity": fidelity(judge_net, images, torch.tensor(labels)), "fid": scores["fid"],
            "kid": scores["kid"], "calls": network_calls(name, steps), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--per-digit", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--samplers", default="ddim:10,ddim:20,ddim:50,ddim:10:1,ddim:20:1,ddim:50:1,"
                                              "dpmpp-2m:20,unipc:20")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    judge_net, accuracy = judge()
    extract = feature_extractor("digits")
    labels = [k for k in range(10) for _ in range(args.per_digit)]
    rows = []
    for path in args.runs:
        run = load_run(path)
        plan = run.config["plan"]
        real_feats = extract(real_images(run.config["data_source"], run.image_size, run.channels))
        for entry in args.samplers.split(","):
            name, steps, eta = parse(entry)
            c = cell(run, extract, real_feats, judge_net, labels, name, steps, eta, args.guidance)
            rows.append(f"| {path} ({plan['steps']} steps) | {name} | {steps} | {eta:g} | {c['calls']} | "
                        f"{c['fidelity']:.3f} | {c['fid']:.2f} | {1e3 * c['kid']:.0f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        f"Command: `python benchmarks/budget_samplers.py {' '.join(args.runs)} --per-digit {args.per_digit} "
        f"--guidance {args.guidance:g}`. {len(labels)} samples per cell (the same seeds and labels in every "
        f"cell), judge accuracy {accuracy:.3f} on real digits; FID and KID in the judge's feature space "
        "against the training digits; calls = network evaluations per image (guidance doubles the batch, not the calls).",
        "", "| run | sampler | steps | eta | calls | fidelity | FID | KID x 1e3 |", "|---|---|---|---|---|---|---|---|",
        *rows])
    print(text)
    if not args.no_write:
        write_section("budget_samplers", "Samplers on budget models: fidelity and FID per network call", text)


if __name__ == "__main__":
    main()
