"""Does bf16 training hold the quality of fp32? The demo recipe in each precision, at equal steps and
at equal minutes, judged the same way.

    taskset -c 0,1 .venv/bin/python benchmarks/precision_quality.py [--steps 3000] [--seeds 0,1,2]
                                                                     [--minutes 10] [--parts steps,minutes]

steps: `undiffuse train --data mnist --model tiny --steps N` (the demo's data, model and recipe, batch
32) in fp32 and in bf16, once per seed. The seeds change the initial weights, the batches and the
noise: the spread of a score between the seeds of one precision is the run-to-run noise, and the
difference between the precisions is read against it. minutes: the demo as a user runs it
(`undiffuse train --data mnist --minutes M`, which is what `undiffuse demo` trains) with --precision
fp32 and with --precision bf16, one after the other on the same cores with nothing else running.

Every run is judged the same way, sampled in fp32 so that only the training precision differs:
fidelity, the share of 100 samples per digit that the shipped digit judge reads as the digit asked
(default sampler and guidance), and FID / KID in the judge's features from `undiffuse eval RUN --n 1000`.
Runs already finished in --out are judged again, not retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from digit_judge import fidelity, judge
from report import cpu_line, write_section
from undiffuse.generation import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, generate, load_run
from undiffuse.samplers import DEFAULT_STEPS

UNDIFFUSE = [sys.executable, "-m", "undiffuse"]
PRECISIONS = ("fp32", "bf16")
SCORES = ("fidelity", "fid", "kid")


def train(out: Path, budget: list[str], precision: str, seed: int) -> float:
    """Train a run (unless it is finished already); the wall seconds of the command (kept beside the
    run, so that a run judged again reports the time it took)."""
    wall = out / "wall-seconds.txt"
    if wall.exists():
        return float(wall.read_text())
    start = time.perf_counter()
    subprocess.run([*UNDIFFUSE, "train", "--data", "mnist", *budget, "--precision", precision, "--seed", str(seed),
                    "--out", str(out), "--overwrite", "--grids", "1", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                               if k != "UNDIFFUSE_PRECISION"})
    seconds = time.perf_counter() - start
    wall.write_text(f"{seconds}\n")
    return seconds


def scores(out: Path, per_digit: int, judge_net) -> dict:
    run = load_run(out, precision="fp32")
    labels = [k for k in range(10) for _ in range(per_digit)]
    images = generate(run, len(labels), labels=labels, guidance=DEFAULT_GUIDANCE, seed=0)
    report = out / "eval-precision.json"
    subprocess.run([*UNDIFFUSE, "eval", str(out), "--n", "1000", "--precision", "fp32", "--out", str(report),
                    "--overwrite", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    evaluation = json.loads(report.read_text())
    config = json.loads((out / "config.json").read_text())
    return {"fidelity": fidelity(judge_net, images, torch.tensor(labels)), "fid": evaluation["fid"],
            "kid": evaluation["kid"], "model": config["model_size"], "steps": config["plan"]["steps"],
            "precision": config["precision"]["name"]}


def at_equal_steps(args, judge_net) -> list[str]:
    results = {p: [] for p in PRECISIONS}
    for seed in args.seeds:
        for precision in PRECISIONS:
            out = Path(args.out) / f"steps-{precision}-seed{seed}"
            seconds = train(out, ["--model", "tiny", "--steps", str(args.steps)], precision, seed)
            s = scores(out, args.per_digit, judge_net)
            results[precision].append(s)
            print(precision, seed, f"{seconds:.0f} s", s, flush=True)
    rows = ["| precision | seeds | fidelity | FID | KID x 1e3 |", "|---|---|---|---|---|"]
    for precision, runs in results.items():
        cells = [_spread([r[k] * (1e3 if k == "kid" else 1) for r in runs], 3 if k == "fidelity" else 2) for k in SCORES]
        rows.append(f"| {precision} | {len(runs)} | " + " | ".join(cells) + " |")
    verdicts = []
    for k, name in zip(SCORES, ("fidelity", "FID", "KID")):
        means = {p: statistics.mean(r[k] for r in results[p]) for p in PRECISIONS}
        noise = max(max(r[k] for r in results[p]) - min(r[k] for r in results[p]) for p in PRECISIONS)
        gap = means["bf16"] - means["fp32"]
        verdicts.append(f"{name}: bf16 - fp32 = {gap:+.4g} against a seed-to-seed range of {noise:.4g} "
                        f"({'within' if abs(gap) <= noise else 'OUTSIDE'} the noise)")
    return rows + ["", "; ".join(verdicts) + "."]


def _spread(values: list[float], digits: int) -> str:
    """mean (min-max) of the seeds."""
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def at_equal_minutes(args, judge_net) -> list[str]:
    rows = ["| precision | model | steps | wall minutes | fidelity | FID | KID x 1e3 |", "|---|---|---|---|---|---|---|"]
    for precision in PRECISIONS:
        out = Path(args.out) / f"minutes-{precision}"
        seconds = train(out, ["--minutes", f"{args.minutes:g}"], precision, 0)
        s = scores(out, args.per_digit, judge_net)
        print(precision, f"{seconds:.0f} s", s, flush=True)
        rows.append(f"| {precision} | {s['model']} | {s['steps']} | {seconds / 60:.2f} | {s['fidelity']:.3f} | "
                    f"{s['fid']:.2f} | {1e3 * s['kid']:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--parts", default="steps,minutes")
    parser.add_argument("--out", default="runs/precision-quality")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    judge_net, accuracy = judge()
    parts = args.parts.split(",")
    text = [f"Command: `taskset -c 0,1 python benchmarks/precision_quality.py --steps {args.steps} --seeds "
            f"{','.join(map(str, args.seeds))} --minutes {args.minutes:g}`. Machine: {cpu_line()}; "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}. Every run sampled in fp32 "
            f"({DEFAULT_SAMPLER}, {DEFAULT_STEPS[DEFAULT_SAMPLER]} steps, guidance {DEFAULT_GUIDANCE:g}); fidelity: "
            f"the share of {10 * args.per_digit} samples the shipped judge (accuracy {accuracy:.3f} on real "
            "digits) reads as the digit asked; FID and KID: `undiffuse eval RUN --n 1000` (digit features)."]
    if "steps" in parts:
        text += ["", f"Equal steps: the demo's recipe (mnist, tiny, batch 32) for {args.steps} steps, each seed "
                 "in each precision; mean (min-max) over the seeds.", "", *at_equal_steps(args, judge_net)]
    if "minutes" in parts:
        text += ["", f"Equal minutes: `undiffuse train --data mnist --minutes {args.minutes:g} --precision P`, what "
                 "`undiffuse demo` trains, one after the other on both cores.", "", *at_equal_minutes(args, judge_net)]
    print("\n".join(text))
    if not args.no_write:
        write_section("precision_quality", "bf16 training holds the quality of fp32", "\n".join(text))


if __name__ == "__main__":
    main()
