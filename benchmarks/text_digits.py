"""Do text prompts work on the digits? Train on MNIST captioned by the training templates ("a
handwritten 7", "the digit seven", ...), then ask in words it never saw: the held-out templates ("a
drawing of the number seven", "the numeral 7, written by hand") and paraphrases ("a seven", "7",
"seven"). The shipped digit judge reads each sample; the score is the share read as the digit named.

    .venv/bin/python benchmarks/text_digits.py [--minutes 10] [--per-prompt 100] [--no-class]
        [--cores 0,1] [--out runs/text-digits] [--no-write]

Each run trains for --minutes on one CPU core (one thread), tiny model. With the class-conditional
run of the same budget for comparison (unless --no-class), both train at once, one per core. Samples:
DDIM, 10 steps, guidance 2, for every digit and every prompt form.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from digit_judge import judge
from report import markdown_table, write_section
from undiffuse.data.captions import DIGIT_WORDS, digit_caption, digit_templates
from undiffuse.eval.features import as_digit_input
from undiffuse.generation import DEFAULT_GUIDANCE, generate, load_run


def train(runs: dict[str, list[str]], minutes: float, out: Path, cores: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for i, (name, flags) in enumerate(runs.items()):
        command = ["taskset", "-c", cores[i % len(cores)], sys.executable, "-m", "undiffuse",
                   "train", "--data", "mnist", "--model", "tiny", *flags, "--minutes", str(minutes),
                   "--out", str(out / name), "--overwrite", "--quiet", "--grids", "0"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training run failed: {' '.join(map(str, p.args))}")


@torch.no_grad()
def read_as(judge_net, images: torch.Tensor) -> torch.Tensor:
    return judge_net(as_digit_input(images)).argmax(1)


def share(judge_net, run, n: int, digit: int, **conditioning) -> float:
    images = generate(run, n, sampler="ddim", steps=10, guidance=DEFAULT_GUIDANCE, seed=digit * 10_000,
                      **conditioning)
    return (read_as(judge_net, images) == digit).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--per-prompt", type=int, default=100, help="samples per prompt (and per digit)")
    parser.add_argument("--no-class", action="store_true", help="skip the class-conditional comparison")
    parser.add_argument("--cores", default="0,1", help="the cores the runs train on, one run each, in turn")
    parser.add_argument("--out", default="runs/text-digits")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    runs = {"text": ["--captions", "templates"]}
    if not args.no_class:
        runs["class"] = []
    train(runs, args.minutes, out, args.cores.split(","))
    judge_net, accuracy = judge()
    templates = digit_templates()
    forms = [("training template", t) for t in templates.train[:2]] + \
        [("held-out template", t) for t in templates.held_out] + [("paraphrase", t) for t in templates.paraphrases]
    text_run = load_run(out / "text")
    rows = []
    for kind, template in forms:
        scores = [share(judge_net, text_run, args.per_prompt, d, prompt=digit_caption(template, d)) for d in range(10)]
        rows.append({"prompt": f"`{template}`", "kind": kind, "read as the digit named": f"{sum(scores) / 10:.3f}",
                     "worst digit": f"{min(scores):.2f} ({DIGIT_WORDS[scores.index(min(scores))]})"})
        print(rows[-1], flush=True)
    if not args.no_class:
        class_run = load_run(out / "class")
        scores = [share(judge_net, class_run, args.per_prompt, d, labels=[d] * args.per_prompt) for d in range(10)]
        rows.append({"prompt": "(class label)", "kind": "class-conditional, same budget",
                     "read as the digit named": f"{sum(scores) / 10:.3f}",
                     "worst digit": f"{min(scores):.2f} ({DIGIT_WORDS[scores.index(min(scores))]})"})
        print(rows[-1], flush=True)
    steps = {name: load_run(out / name).config["plan"]["steps"] for name in runs}
    text = "\n".join([
        f"Command: `python benchmarks/text_digits.py --minutes {args.minutes:g} --per-prompt {args.per_prompt}`. "
        f"Tiny model on MNIST, {args.minutes:g} minutes on one core each ({', '.join(f'{k} run {v} steps' for k, v in steps.items())}); "
        f"the text run captioned by the {len(templates.train)} training templates only. Each row: {args.per_prompt} "
        f"samples per digit (DDIM 10 steps, guidance {DEFAULT_GUIDANCE:g}), the share the shipped digit judge "
        f"(accuracy {accuracy:.3f} on real digits) reads as the digit the prompt names.",
        "", *markdown_table(["prompt", "kind", "read as the digit named", "worst digit"], rows)])
    print(text)
    if not args.no_write:
        write_section("text_digits", "Text prompts on the digits: held-out templates and paraphrases", text)


if __name__ == "__main__":
    main()
