"""64x64 colour, the size of the Cars tutorial: what 30 minutes of one core draw, today's design against a lever.

    .venv/bin/python benchmarks/colour_64.py --data /tmp/emoji/noto64 [--minutes 30]
        [--variant "default:" --variant "patch4:--patch 4"]

The data: the shipped emoji drawn at 64x64 (`python tools/build_emoji_set.py PACKAGE --sizes 64 --folder
DIR`; the 64x64 sheet is not shipped, it would add 4.3 MB). Two variants train side by side, each a
fresh `undiffuse train --data DIR --minutes M --captions none` pinned to its own core with one thread,
so each has one core while the other core is busy (the condition of colour_budget.py's one-busy mode,
with the other training as the load). Each is judged as colour_budget.py judges a run (fidelity and FID
in the emoji judge's features, which read 32x32, recall, near copies), and also in EfficientNet-Lite0's
ImageNet features (the `colour` extra), which see the full 64x64. A grid of 10 samples per category is
written beside this script as colour_64_<name>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from colour_budget import half_resolution, halves, judge_run
from report import cpu_line, markdown_table, write_section
from undiffuse.data import load_data
from undiffuse.eval.metrics import feature_extractor, score_features
from undiffuse.eval.judges import JUDGES
from undiffuse.generation import load_run
from undiffuse.training.recipe import SAMPLE_STEPS, SAMPLER

HERE = Path(__file__).resolve().parent


def train_side_by_side(data: str, minutes: float, variants: dict[str, list[str]], out: Path) -> None:
    """Start every variant at once, each on its own core; the wall clock each command took is kept
    beside its run (wall-seconds.txt)."""
    env = {k: v for k, v in os.environ.items() if k != "UNDIFFUSE_PRECISION"} | {"OMP_NUM_THREADS": "1"}
    started = {}
    for core, (name, flags) in enumerate(variants.items()):
        command = ["taskset", "-c", str(core), sys.executable, "-m", "undiffuse", "train", "--data", data,
                   "--minutes", f"{minutes:g}", "--captions", "none", *flags, "--out", str(out / name),
                   "--overwrite", "--quiet"]
        started[name] = (time.perf_counter(), subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    for name, (start, process) in started.items():
        if process.wait() != 0:
            raise SystemExit(f"{name}: training failed")
        (out / name / "wall-seconds.txt").write_text(f"{time.perf_counter() - start}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of the emoji categories at 64x64")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME:FLAGS, at most two (one core each); default: default: and patch4:--patch 4")
    parser.add_argument("--out", default="runs/colour64")
    parser.add_argument("--no-train", action="store_true", help="judge the runs already in --out")
    args = parser.parse_args()
    variants = dict(v.split(":", 1) for v in (args.variant or ["default:", "patch4:--patch 4"]))
    variants = {name: flags.split() for name, flags in variants.items()}
    if len(variants) > 2:
        raise SystemExit("at most two variants: one core each")
    out = Path(args.out)
    if not args.no_train:
        train_side_by_side(args.data, args.minutes, variants, out)
    data = load_data(args.data, image_size=64)
    judge_features, effnet = feature_extractor("emoji"), feature_extractor("effnet-lite0")
    a, b = halves(data)
    real_a = {"emoji": judge_features(data.images[a]), "effnet": effnet(data.images[a])}
    rows = []
    for name, images in (("real half B (the floor)", data.images[b]),
                         ("real half B at half resolution", half_resolution(data.images[b]))):
        rows.append({"set": name, "emoji": score_features(real_a["emoji"], judge_features(images)),
                     "effnet": score_features(real_a["effnet"], effnet(images))})
    ceiling = next(j for j in JUDGES if j.name == "emoji").accuracy()  # held out: the same emoji, drawn larger
    for name in variants:
        # today's recipe samples colour with 15 steps of DPM-Solver++(2M) (recipe.SAMPLER), whatever the
        # run recorded when it trained
        result = judge_run(out / name, data, judge_features, f"64_{name}", "emoji", load_run(out / name).guidance,
                           ceiling=ceiling, more_features={"effnet": effnet}, sampler=SAMPLER[3],
                           steps=SAMPLE_STEPS[3])
        config = json.loads((out / name / "config.json").read_text())
        wall = out / name / "wall-seconds.txt"
        rows.append({"set": f"{name}: {result['model']}, patch {config['unet'].get('patch', 1)}, "
                            f"{result['steps']} steps, {result['arithmetic']}"
                            + (f", {float(wall.read_text()) / 60:.2f} min" if wall.exists() else ""),
                     "emoji": result, "effnet": result["in effnet"]})
        print(json.dumps(result, indent=1), flush=True)
    table = markdown_table(
        ["set", "fidelity", "FID (judge)", "recall (judge)", "near copies", "FID (effnet-lite0)", "recall (effnet-lite0)"],
        [{"set": r["set"], "fidelity": f"{r['emoji']['fidelity']:.3f}" if "fidelity" in r["emoji"] else "",
          "FID (judge)": f"{r['emoji']['fid']:.2f}", "recall (judge)": f"{r['emoji']['recall']:.3f}",
          "near copies": f"{100 * r['emoji']['near_copies']:.1f}%" if "near_copies" in r["emoji"] else "",
          "FID (effnet-lite0)": f"{r['effnet']['fid']:.2f}", "recall (effnet-lite0)": f"{r['effnet']['recall']:.3f}"}
         for r in rows])
    command = (f"python benchmarks/colour_64.py --data {args.data} --minutes {args.minutes:g}"
               + "".join(f" --variant \"{n}:{' '.join(f)}\"" for n, f in variants.items())
               + (" --no-train" if args.no_train else ""))
    text = "\n".join([
        f"Command: `{command}`. Machine: {cpu_line()}. The two trainings ran side by side, each pinned to one core "
        "with one thread (so each had one core while the other was busy)" + (
            "; the runs were judged again, not trained again" if args.no_train else "") + ". Fidelity: the share of samples the emoji "
        f"judge reads as the category asked (it reads {ceiling:.3f} of held-out real emoji right; it resizes "
        "to its 32x32). Judge scores see 32x32; EfficientNet-Lite0's ImageNet "
        "features see the full 64x64 (resized to its 224; 953 images in 1,280 features leave the covariances "
        "rank-deficient, so compare its rows with each other, not with other tables). Samples at each run's own guidance, with the colour recipe's 15 steps of DPM-Solver++(2M).", "",
        *table, "", *[f"![{name}: one row per category](benchmarks/colour_64_{name}.png)" for name in variants]])
    print(text)
    write_section("colour_64", f"Colour at 64x64: {args.minutes:g} minutes of one core", text)


if __name__ == "__main__":
    main()
