"""Students in 1, 2 and 4 network calls against their teacher: fidelity and FID per call.

    .venv/bin/python benchmarks/distill.py TEACHER [--calls 1,2,4] [--minutes 10] [--core 1] [--per-class 100]

For each K of --calls, `undiffuse distill TEACHER --out TEACHER-student-K --calls K --minutes M` runs as a
user runs it, pinned to one core (taskset, one thread) while nothing else runs (a student already
there is kept: delete it to train it again). Then every cell draws the same labels from the same
seeds at the teacher's guidance: the teacher at its default sampler and steps (the run's own,
guided: two branches a call), with the solver and steps of the trajectories its students learn, and
at K DDIM steps (what K calls give without distillation); each student at its K calls (one branch:
guidance is its input). Fidelity is the share the shipped judge of
the teacher's set (digits or emoji) reads as the class asked; FID in that judge's features against
the set's images. BENCHMARKS.md gets the table and a grid of each student, under a section named
after the set.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from report import cpu_line, write_section
from undiffuse.eval.evaluate import default_features, real_images
from undiffuse.eval.judges import fidelity, judge_for
from undiffuse.eval.metrics import feature_extractor, score_features
from undiffuse.generation import generate, load_run
from undiffuse.training.distill import TEACHER_SOLVER, teacher_steps
from undiffuse.viz import save_grid

HERE = Path(__file__).resolve().parent


def budget_tag(minutes: float) -> str:
    """What tells a budget other than the issue's 10 minutes apart, in folder and section names."""
    return "" if minutes == 10 else f"-{minutes:g}min"


def train_student(teacher: str, calls: int, minutes: float, core: int) -> Path:
    out = Path(f"{teacher.rstrip('/')}-student-{calls}{budget_tag(minutes)}")
    if not (out / "config.json").exists():
        command = ["taskset", "-c", str(core), sys.executable, "-m", "undiffuse", "distill", teacher, "--out", str(out),
                   "--calls", str(calls), "--minutes", f"{minutes:g}", "--quiet"]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def cell(run, labels, extract, real, judge, **options) -> dict:
    start = time.perf_counter()
    images = generate(run, len(labels), labels=labels, seed=0, **options)
    seconds = time.perf_counter() - start
    return {"images": images, "fidelity": fidelity(judge, images, labels),
            "fid": score_features(real, extract(images))["fid"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("--calls", default="1,2,4")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=100)
    args = parser.parse_args()
    calls = [int(k) for k in args.calls.split(",")]
    students = {k: train_student(args.teacher, k, args.minutes, args.core) for k in calls}

    teacher = load_run(args.teacher)
    source, per = teacher.config["data_source"], args.per_class
    judge = judge_for(teacher.class_names)
    extract = feature_extractor(default_features(source))
    real = extract(real_images(source, teacher.image_size, teacher.channels))
    labels = [k for k in range(teacher.num_classes) for _ in range(per)]
    rows = []

    def row(name, run_, calls_, branches, **options):
        c = cell(run_, labels, extract, real, judge, **options)
        rows.append(f"| {name} | {calls_} | {branches} | {c['fidelity']:.3f} | {c['fid']:.2f} | "
                    f"{len(labels) / c['seconds']:.0f} |")
        print(rows[-1], flush=True)
        return c

    default = teacher.sample_steps or 10  # the steps of the run's own sampler
    base = row(f"teacher, {teacher.sampler} {default} (its default)", teacher, default, 2, steps=default)
    for solved in sorted({teacher_steps(k) for k in calls}):
        row(f"teacher, {TEACHER_SOLVER} {solved} (the trajectories students learn)", teacher, solved, 2,
            sampler=TEACHER_SOLVER, steps=solved)
    for k in calls:
        row(f"teacher, ddim {k}", teacher, k, 2, sampler="ddim", steps=k)
    for k, folder in students.items():
        student = load_run(folder)
        c = row(f"student of {k} call{'s' * (k > 1)} ({student.config['plan']['steps']} steps of distillation)",
                student, k, 1)
        first = [d * per + j for d in range(teacher.num_classes) for j in range(min(8, per))]
        save_grid(c["images"][first], HERE / f"distill_{source}_{k}{budget_tag(args.minutes)}.png", nrow=min(8, per))
    minutes = f"{args.minutes:g}"
    text = "\n".join([
        f"Command: `python benchmarks/distill.py {args.teacher} --calls {args.calls} --minutes {minutes} "
        f"--core {args.core} --per-class {per}`. Machine: {cpu_line()}. Teacher: `{args.teacher}` "
        f"({teacher.config['model_size']}, {teacher.config['plan']['steps']} steps). Each student: "
        f"`undiffuse distill TEACHER --calls K --minutes {minutes}` on one core (taskset, one thread), nothing "
        f"else running. {len(labels)} samples per row, the same labels and seeds, guidance "
        f"{teacher.guidance:g}; the {judge.name} judge reads {judge.accuracy():.3f} of held-out real images right; "
        f"FID in its features against {len(real)} images of `{source}`. Branches: network passes a call (guidance runs two in the teacher, "
        "one in a student, which takes the scale as an input). Images/s: this process, two threads.",
        "", "| sampler | calls | branches | fidelity | FID | images/s |", "|---|---|---|---|---|---|", *rows, "",
        f"Teacher at its default: fidelity {base['fidelity']:.3f}, FID {base['fid']:.2f}; 1.5x its FID is "
        f"{1.5 * base['fid']:.2f}.", "",
        *[f"Student of {k} call{'s' * (k > 1)}, 8 of each class: "
          f"![](benchmarks/distill_{source}_{k}{budget_tag(args.minutes)}.png)"
          for k in calls]])
    print(text)
    tag = budget_tag(args.minutes)
    budget = f", {args.minutes:g} minutes" if tag else ""
    write_section(f"distill_{source}{tag}", f"Distilled students on {source}{budget}: fidelity and FID in 1, 2 and 4 "
                  "network calls", text)


if __name__ == "__main__":
    main()
