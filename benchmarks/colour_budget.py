"""Ten minutes of one busy core on colour images: what `undiffuse train --data emoji --minutes 10` draws.

    .venv/bin/python benchmarks/colour_budget.py [--data emoji] [--minutes 10] [--mode one-busy]
                                                 [--flags "--model small"] [--name default] [--out runs/colour]

The run trains as a user would start it (a fresh `undiffuse train` process; one-busy: pinned to core
1 with one thread while a matmul loop keeps core 0 busy, the way demo_cores.py runs the digit demo;
two-quiet: both cores, nothing else; beside-core0 / beside-core1: pinned to that core with one
thread and no loop of its own, for two runs side by side, each the other's busy neighbour). Then it
is judged against the real set split in two halves, A the reference and B the stand-in for samples:
- fidelity: the share of samples that the shipped emoji judge reads as the category asked, beside the
  judge's accuracy on real images it never saw (the ceiling);
- FID, KID, precision and recall in the judge's features, of one sample per image of half B (its
  category asked, so the categories come in the set's proportions) against half A; the floor (half B
  itself) and half B blurred to half resolution (area down, bicubic up) are scored the same way;
- near copies: the share of samples whose nearest training image is closer than the training images'
  own nearest neighbours are to each other by COPY_RATIO (eval/memorisation.py), in the judge's features;
- a grid of 10 samples per category, written beside this script as colour_<name>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from report import cpu_line, markdown_table, write_section
from undiffuse.data import load_data
from undiffuse.eval.judges import JUDGES, fidelity, judge_for
from undiffuse.eval.memorisation import memorisation, summary
from undiffuse.eval.metrics import feature_extractor, score_features
from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run
from undiffuse.viz import save_grid

HERE = Path(__file__).resolve().parent
COMPETITOR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
MODES = {"one-busy": ("1", "0"), "two-quiet": ("0,1", None),  # training cores, competitor core
         "beside-core0": ("0", None), "beside-core1": ("1", None)}
WHERE = {"one-busy": "pinned to core 1 with one thread while a matmul loop kept core 0 busy",
         "two-quiet": "on both cores, nothing else running",
         "beside-core0": "pinned to core 0 with one thread beside another training on core 1",
         "beside-core1": "pinned to core 1 with one thread beside another training on core 0"}


def train(data: str, minutes: float, flags: list[str], mode: str, out: Path) -> float:
    cores, busy = MODES[mode]
    env = {k: v for k, v in os.environ.items() if k != "UNDIFFUSE_PRECISION"}
    if "," not in cores:
        env["OMP_NUM_THREADS"] = "1"
    competitor = subprocess.Popen(["taskset", "-c", busy, sys.executable, "-c", COMPETITOR]) if busy else None
    try:
        start = time.perf_counter()
        subprocess.run(["taskset", "-c", cores, sys.executable, "-m", "undiffuse", "train", "--data", data, "--minutes",
                        f"{minutes:g}", *flags, "--out", str(out), "--overwrite", "--quiet"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def halves(data, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(seed))
    return order[: len(order) // 2], order[len(order) // 2:]


def half_resolution(images: torch.Tensor) -> torch.Tensor:
    small = F.avg_pool2d(images, 2)
    return F.interpolate(small, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)


def half_mirrored(images: torch.Tensor) -> torch.Tensor:
    """Every other image mirrored left-right: what a model trained with flips draws at best."""
    out = images.clone()
    out[::2] = out[::2].flip(-1)
    return out


def references(data, extract) -> dict[str, dict]:
    a, b = halves(data)
    real_a = extract(data.images[a])
    return {"real half B (the floor)": score_features(real_a, extract(data.images[b])),
            "real half B, every other image mirrored": score_features(real_a, extract(half_mirrored(data.images[b]))),
            "real half B at half resolution": score_features(real_a, extract(half_resolution(data.images[b])))}


def judge_run(run_folder: Path, data, extract, name: str, judge_name: str | None = None,
              guidance: float = DEFAULT_GUIDANCE, grid: bool = True, ceiling: float | None = None,
              more_features: dict | None = None, **sampling) -> dict:
    """`ceiling`: the judge's accuracy to report beside its fidelity (default: its held-out accuracy
    for the shipped set, its accuracy on every real image of another set); `more_features`: name ->
    extractor, the samples scored in each as well (result["in " + name])."""
    run = load_run(run_folder)
    a, b = halves(data)
    labels = data.labels[b].tolist()
    samples = generate(run, len(labels), labels=labels, guidance=guidance, seed=0, **sampling)
    scores = score_features(extract(data.images[a]), extract(samples))
    judge = judge_for(run.class_names) if judge_name is None else next(j for j in JUDGES if j.name == judge_name)
    # The shipped set's judge reports its held-out accuracy; on another set it is read on all of its
    # real images, which it never saw either.
    if ceiling is None:
        ceiling = judge.accuracy() if judge_name is None else fidelity(judge, data.images, data.labels.tolist())
    train_f, sample_f = extract(data.images), extract(samples)
    copies = summary(memorisation(samples, data.images, sample_f, train_f))
    if grid:
        per_class = [k for k in range(len(data.class_names)) for _ in range(10)]
        save_grid(generate(run, len(per_class), labels=per_class, guidance=guidance, seed=1, **sampling),
                  HERE / f"colour_{name}.png", nrow=10)
    config = json.loads((run_folder / "config.json").read_text())
    more = {f"in {key}": score_features(other(data.images[a]), other(samples))
            for key, other in (more_features or {}).items()}
    return {**scores, "fidelity": fidelity(judge, samples, labels), "judge_accuracy": ceiling,
            "near_copies": copies["features"]["near_copies"], "model": config["model_size"],
            "steps": config["plan"]["steps"], "arithmetic": config["precision"]["name"],
            "flip": config["train"].get("flip"), "guidance": guidance, **more}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mode", default="one-busy", choices=MODES)
    parser.add_argument("--flags", default="", help="more training flags, as one string")
    parser.add_argument("--name", default="default", help="the row's name, and its grid's")
    parser.add_argument("--out", default="runs/colour")
    parser.add_argument("--judge", default=None, help="a shipped judge for a folder of its classes "
                        "(emoji: a folder of the 9 emoji categories, in the same order)")
    parser.add_argument("--guidance", default=None,
                        help="guidance scales to sample at, comma-separated (the grid: the first); default: the run's")
    parser.add_argument("--sampler", default=None, help="default: the run's own (config.json train.sampler)")
    parser.add_argument("--sample-steps", type=int, default=None, help="default: the run's own for its sampler, else the sampler's")
    parser.add_argument("--section", default=None, help="the name of its BENCHMARKS.md section and grid "
                        "(default: --name), to judge one run in more ways than one")
    parser.add_argument("--no-train", action="store_true", help="judge the run already in --out/NAME")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    folder, section = Path(args.out) / args.name, args.section or args.name
    wall = float("nan") if args.no_train else train(args.data, args.minutes, args.flags.split(), args.mode, folder)
    data = load_data(args.data, image_size=json.loads((folder / "config.json").read_text())["image_size"])
    extract = feature_extractor("emoji")
    rows = [{"set": name, **s} for name, s in references(data, extract).items()]
    scales = ([float(g) for g in args.guidance.split(",")] if args.guidance else [load_run(folder).guidance])
    for i, scale in enumerate(scales):
        sampling = {k: v for k, v in (("sampler", args.sampler), ("steps", args.sample_steps)) if v is not None}
        result = judge_run(folder, data, extract, section, args.judge, scale, grid=i == 0, **sampling)
        rows.append({"set": f"{args.name}: {result['model']}, {result['steps']} steps, {result['arithmetic']}"
                     + (", flips" if result["flip"] else "") + f", guidance {scale:g}"
                     + "".join(f", {k} {v}" for k, v in sampling.items()), **result})
        print(json.dumps(result, indent=1), flush=True)
    table = markdown_table(["set", "FID", "KID x 1e3", "precision", "recall", "fidelity", "near copies"],
                           [{"set": r["set"], "FID": f"{r['fid']:.2f}", "KID x 1e3": f"{1e3 * r['kid']:.1f}",
                             "precision": f"{r['precision']:.3f}", "recall": f"{r['recall']:.3f}",
                             "fidelity": f"{r['fidelity']:.3f}" if "fidelity" in r else "",
                             "near copies": f"{100 * r['near_copies']:.1f}%" if "near_copies" in r else ""}
                            for r in rows])
    text = "\n".join([
        f"Command: `python benchmarks/colour_budget.py --data {args.data} --minutes {args.minutes:g} --mode {args.mode}"
        + (f" --flags \"{args.flags}\"" if args.flags else "") + f" --name {args.name}" + "".join(
            f" --{flag} {value}" for flag, value in (("judge", args.judge), ("guidance", args.guidance), ("sampler", args.sampler),
                                                    ("sample-steps", args.sample_steps), ("section", args.section))
            if value) + (" --no-train" if args.no_train else "") + "`. "
        f"Machine: {cpu_line()}. "
        + ("The run was judged again, not trained again. " if args.no_train else
           f"The training command took {wall / 60:.2f} minutes of wall clock, {WHERE[args.mode]}. ") + "Fidelity: the share of samples the emoji "
        f"judge reads as the category asked (the judge reads {result['judge_accuracy']:.3f} of "
        + ("held-out real emoji" if args.judge is None else "this set's real images, which it never saw,")
        + " right); the scores are in the judge's features, against half A of the real set.", "", *table, "",
        f"![samples, one row per category, guidance {scales[0]:g}](benchmarks/colour_{section}.png)"])
    print(text)
    if not args.no_write:
        write_section(f"colour_{section}", f"Colour emoji in {args.minutes:g} minutes ({args.mode}): {section}", text)


if __name__ == "__main__":
    main()
