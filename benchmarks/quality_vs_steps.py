"""Quality per network call: every sampler at 5, 10, 20, 50 steps against 1000-step DDPM.

    .venv/bin/python benchmarks/quality_vs_steps.py RUN [--n 500] [--steps 5,10,20,50] [--reference 250]

Each configuration draws the same n images (the same labels, a balanced set of classes, and the same
starting noise), which are scored against the run's training images in the feature space of
`undiffuse eval` (the offline digit features for digits runs): FID and KID. A second table gives each
deterministic sampler's error as an ODE solver: the RMS pixel distance of its images to those of
dpmpp-2m at --reference steps from the same noise, the guided probability-flow ODE's solution to a
good approximation. Samples are cached in RUN/bench-samples/, so a rerun only scores. Writes the
tables and a plot into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from report import write_section
from undiffuse.data import load_data
from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
from undiffuse.samplers import network_calls

SAMPLERS = ("ddim", "euler-a", "heun", "dpmpp-2m", "dpmpp-3m", "unipc", "ipndm", "ipndm-v")  # euler is ddim in other coordinates
STOCHASTIC = ("euler-a",)  # no ODE solution to converge to: left out of the solver-error table
PLOT = Path(__file__).resolve().parent / "quality_vs_steps.png"


def samples(run, run_dir: Path, name: str, steps: int | None, n: int, guidance: float, spacing: str | None):
    """(images in [-1, 1], seconds) from the cache or freshly drawn."""
    tag = f"{name}-{steps or 'all'}-{spacing or 'default'}-w{guidance:g}-n{n}"
    path = run_dir / "bench-samples" / f"{tag}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path, allow_pickle=False)), None
    k = run.num_classes
    labels = [i % k for i in range(n)] if k else None
    start = time.perf_counter()
    options = {"spacing": spacing} if spacing else {}
    images = generate(run, n, labels=labels, sampler=name, steps=steps, guidance=guidance if k else 1.0,
                      seed=10_000, **options)
    seconds = time.perf_counter() - start
    path.parent.mkdir(exist_ok=True)
    np.save(path, images.numpy())
    return images, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", default="5,10,20,50")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--reference", type=int, default=250, help="dpmpp-2m steps of the ODE reference")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--sample-only", action="store_true", help="fill the cache, score nothing")
    args = parser.parse_args()
    run_dir = Path(args.run)
    run = load_run(run_dir)
    cfg = run.config
    step_list = [int(s) for s in args.steps.split(",")]
    configs = [(name, None) for name in args.samplers.split(",")] + [("dpmpp-2m", "karras")]
    if args.sample_only:
        for name, spacing, steps in [("ddpm", None, None)] + [(n, sp, s) for n, sp in configs for s in step_list]:
            steps = steps and (max(1, (steps + 1) // 2) if name == "heun" else steps)
            print(name, spacing, steps, samples(run, run_dir, name, steps, args.n, args.guidance, spacing)[1], flush=True)
        return
    from undiffuse.eval.metrics import feature_extractor, frechet_distance, kid

    real = load_data(cfg["data_source"], image_size=run.image_size, channels=run.channels).images
    features = feature_extractor("digits" if run.image_size == 28 and run.channels == 1 else "inception")
    real_f = features(real)

    def score(images):
        f = features(images)
        return frechet_distance(real_f, f), kid(real_f, f)[0]

    ddpm_images, ddpm_seconds = samples(run, run_dir, "ddpm", None, args.n, args.guidance, None)
    ddpm_fid, ddpm_kid = score(ddpm_images)
    print(f"ddpm-1000: FID {ddpm_fid:.2f} KID {ddpm_kid * 1e3:.2f}e-3", flush=True)
    table = {}
    for name, spacing in configs:
        for steps in step_list:
            calls_steps = max(1, (steps + 1) // 2) if name == "heun" else steps  # heun: same network calls
            images, seconds = samples(run, run_dir, name, calls_steps, args.n, args.guidance, spacing)
            fid, kd = score(images)
            calls = network_calls(name, calls_steps)
            table[(name, spacing, steps)] = (fid, kd, calls, images)
            print(f"{name:9s} {spacing or '':7s} {calls:3d} calls: FID {fid:.2f} KID {kd * 1e3:.2f}e-3", flush=True)

    header = "| sampler | " + " | ".join(f"{s} calls" for s in step_list) + " |"
    rows = [header, "|---|" + "---|" * len(step_list)]
    for name, spacing in configs:
        label = f"{name} ({spacing})" if spacing else name
        cells = []
        for s in step_list:
            fid, kd, calls, _ = table[(name, spacing, s)]
            cells.append(f"{fid:.2f} / {kd * 1e3:.2f}" + (f" ({calls})" if calls != s else ""))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append(f"| ddpm, 1000 calls | {ddpm_fid:.2f} / {ddpm_kid * 1e3:.2f} (reference) |" + " |" * (len(step_list) - 1))
    best = min(((v[0], k) for k, v in table.items() if k[2] == 20), default=None)
    reference, _ = samples(run, run_dir, "dpmpp-2m", args.reference, args.n, args.guidance, None)
    errors = [header, rows[1]]
    for name, spacing in configs:
        if name not in STOCHASTIC:
            cells = [f"{(table[(name, spacing, s)][3] - reference).pow(2).mean().sqrt().item():.4f}" for s in step_list]
            errors.append(f"| {f'{name} ({spacing})' if spacing else name} | " + " | ".join(cells) + " |")
    plot(table, configs, step_list, ddpm_fid)
    text = "\n".join([
        f"Command: `python benchmarks/quality_vs_steps.py RUN --n {args.n}`. RUN: `{args.run}` "
        f"({cfg['model_size']} model, {cfg['plan']['steps']} steps of {cfg['train']['batch_size']}), "
        f"guidance {args.guidance:g}, x0 clipping, {args.n} samples per cell (balanced labels, the same "
        f"starting noise in every cell) against the {len(real)} training images, in the offline digit "
        "feature space of `undiffuse eval`. Cells: FID / KID x 1e3 (lower is better); heun's cells make "
        "the network calls shown in brackets. FID over a few hundred samples is biased upward by an amount "
        "that depends on n only, so compare within the table; KID is unbiased.", "", *rows, "",
        (f"Best at 20 calls: {best[1][0]}{' (' + best[1][1] + ')' if best[1][1] else ''}, FID {best[0]:.2f} "
         f"vs DDPM-1000's {ddpm_fid:.2f} ({best[0] / ddpm_fid:.2f}x)." if best else ""),
        "", f"![FID per network call](benchmarks/{PLOT.name})", "",
        "At guidance 2, FID against the training images is not the solvers' accuracy: guidance sharpens the "
        "model's distribution away from the data, and a coarse solve undoes part of that, so FID rises as "
        "the solvers converge. Their accuracy as ODE solvers, RMS distance (pixels in [-1, 1]) of each "
        f"image to dpmpp-2m at {args.reference} steps from the same noise (lower is better):", "", *errors])
    print(text)
    if not args.no_write:
        write_section("quality_vs_steps", "Quality per network call: samplers vs 1000-step DDPM", text)


def plot(table, configs, step_list, ddpm_fid) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, spacing in configs:
        pts = sorted((table[(name, spacing, s)][2], table[(name, spacing, s)][0]) for s in step_list)
        ax.plot(*zip(*pts), marker="o", label=f"{name} ({spacing})" if spacing else name)
    ax.axhline(ddpm_fid, color="k", ls="--", lw=1, label="ddpm, 1000 calls")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network calls per image")
    ax.set_ylabel("FID (digit features)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(PLOT)
    plt.close(fig)


if __name__ == "__main__":
    main()
