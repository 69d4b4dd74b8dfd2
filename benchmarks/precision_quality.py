"""Does bf16 training hold the quality of fp32? The demo recipe in each precision, at equal steps and
at equal minutes, judged the same way.

    taskset -c 0,1 .venv/bin/python benchmarks/precision_quality.py [--steps 3000] [--seeds 0,1,2]
                                                                     [--minutes 10] [--parts steps,minutes]
    .venv/bin/python benchmarks/precision_quality.py --data emoji --steps 2000 --seeds 0,1 --parts steps

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

--data emoji: the colour set's recipe (small: what the 10-minute budget picks for it; the rest, patch
stem, v, flips, guidance 3 and 25 DDIM steps, is decided from the data as in any run) at equal steps.
The two precisions of a seed train side by side, each pinned to its own core with one thread (equal
steps, so the time each takes does not matter), and each run is judged by `undiffuse eval RUN --n 1000`
sampled in bf16 for both: fidelity by the shipped emoji judge, FID / KID in its features.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from digit_judge import fidelity, judge
from report import cpu_line, write_section
from undiffuse.generation import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, generate, load_run
from undiffuse.samplers import DEFAULT_STEPS

UNDIFFUSE = [sys.executable, "-m", "undiffuse"]
PRECISIONS = ("fp32", "bf16")
SCORES = ("fidelity", "fid", "kid")


def train(out: Path, budget: list[str], precision: str, seed: int, data: str = "mnist",
          core: int | None = None) -> float:
    """Train a run (unless it is finished already); the wall seconds of the command (kept beside the
    run, so that a run judged again reports the time it took). `core`: pinned there with one thread."""
    wall = out / "wall-seconds.txt"
    if wall.exists():
        return float(wall.read_text())
    env = {k: v for k, v in os.environ.items() if k != "UNDIFFUSE_PRECISION"}
    pin = [] if core is None else ["taskset", "-c", str(core)]
    if core is not None:
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    subprocess.run([*pin, *UNDIFFUSE, "train", "--data", data, *budget, "--precision", precision, "--seed", str(seed),
                    "--out", str(out), "--overwrite", "--grids", "1", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - start
    wall.write_text(f"{seconds}\n")
    return seconds


def eval_scores(out: Path, core: int | None = None) -> dict:
    """`undiffuse eval RUN --n 1000`, sampled in bf16: the shipped judge's fidelity, FID and KID."""
    report = out / "eval-precision.json"
    if not report.exists():
        pin = [] if core is None else ["taskset", "-c", str(core)]
        env = os.environ | ({} if core is None else {"OMP_NUM_THREADS": "1"})
        subprocess.run([*pin, *UNDIFFUSE, "eval", str(out), "--n", "1000", "--precision", "bf16", "--out", str(report),
                        "--overwrite", "--quiet"], check=True, stdout=subprocess.DEVNULL, env=env)
    evaluation = json.loads(report.read_text())
    config = json.loads((out / "config.json").read_text())
    return {"fidelity": evaluation["fidelity"], "fid": evaluation["fid"], "kid": evaluation["kid"],
            "judge_accuracy": evaluation["judge_accuracy"], "model": config["model_size"],
            "steps": config["plan"]["steps"], "precision": config["precision"]["name"]}


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
    return _verdict(results)


def colour_at_equal_steps(args) -> list[str]:
    """The colour recipe at equal steps, the two precisions of a seed side by side on the two cores."""
    results = {p: [] for p in PRECISIONS}
    for seed in args.seeds:
        outs = {p: Path(args.out) / f"{args.data}-steps-{p}-seed{seed}" for p in PRECISIONS}

        def train_and_judge(core: int, precision: str) -> None:
            train(outs[precision], ["--model", "small", "--steps", str(args.steps)], precision, seed, args.data, core)
            eval_scores(outs[precision], core)

        with ThreadPoolExecutor(len(PRECISIONS)) as pool:
            list(pool.map(train_and_judge, range(len(PRECISIONS)), PRECISIONS))
        for precision in PRECISIONS:
            s = eval_scores(outs[precision])
            results[precision].append(s)
            print(precision, seed, s, flush=True)
    return _verdict(results)


def _verdict(results: dict[str, list[dict]]) -> list[str]:
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
    parser.add_argument("--data", default="mnist", choices=("mnist", "emoji"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.data == "emoji":
        return colour_main(args)
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


def colour_main(args) -> None:
    rows = colour_at_equal_steps(args)
    accuracy = eval_scores(Path(args.out) / f"{args.data}-steps-bf16-seed{args.seeds[0]}")["judge_accuracy"]
    text = "\n".join([
        f"Command: `python benchmarks/precision_quality.py --data {args.data} --steps {args.steps} --seeds "
        f"{','.join(map(str, args.seeds))} --parts steps`. Machine: {cpu_line()}; torch {torch.__version__}. "
        f"The colour recipe (emoji, small, batch 32, with what it decides from the data: patch 2, v, flips) for "
        f"{args.steps} steps, each seed in each precision; the two precisions of a seed trained side by side, one "
        "core and one thread each. Every run judged by `undiffuse eval RUN --n 1000 --precision bf16` (its own "
        f"guidance 3 and 25 DDIM steps): fidelity, the share the emoji judge (accuracy {accuracy:.3f} on held-out "
        "real emoji) reads as the category asked; FID and KID in its features. Mean (min-max) over the seeds.", "",
        *rows])
    print(text)
    if not args.no_write:
        write_section("precision_quality_emoji", "bf16 training holds the quality of fp32 on colour", text)


if __name__ == "__main__":
    main()
