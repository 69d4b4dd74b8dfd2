"""A run's model card, RUN/README.md, in the Hugging Face Hub's layout: YAML front matter (library,
tags), then the model, its training data, its training, how to sample it and how it scores.

`write_card(RUN)` (re)writes it from the run folder alone: config.json, the EMA weights' header,
log.csv and the eval*.json files `undiffuse eval` writes. Training writes it at its end; `eval`
calls it again after writing its scores.
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..generation import DEFAULT_SAMPLER
from ..run import RunRecord, read_run
from ..unet import UNet, count_parameters
from .log import last_numbers

CARD = "README.md"


def write_card(run: str | Path, saved_step: int | None = None) -> Path:
    """Write RUN/README.md from what the run folder holds now; returns its path. A failed write is a
    CheckpointError (one line) that says the checkpoint of `saved_step` (given by training) is safe."""
    run = Path(run)
    text = card_text(run, read_run(run))
    path = run / CARD
    try:
        ckpt.atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    except OSError as e:
        kept = f"; the checkpoint of step {saved_step} is saved" if saved_step is not None else ""
        raise ckpt.CheckpointError(f"cannot write the model card {path} ({ckpt.write_failure(e)}){kept}") from None
    return path


def card_text(run: Path, record: RunRecord) -> str:
    sections = [_front_matter(record), f"# {_text(run.name)}\n\n{_summary(record)}", _model(record),
                _data(record), _training(run, record), _sampling(run, record), _evaluation(run)]
    return "\n\n".join(sections) + "\n"


def _text(value) -> str:
    """Text a UTF-8 file can hold: a path's undecodable bytes (kept by Python as surrogates) as U+FFFD."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _front_matter(record: RunRecord) -> str:
    task = "class-conditional-image-generation" if record.class_names else "unconditional-image-generation"
    return f"---\nlibrary_name: undiffuse\ntags:\n- diffusion\n- ddpm\n- {task}\npipeline_tag: {task}\n---"


def _summary(record: RunRecord) -> str:
    kind = f"class-conditional ({len(record.class_names)} classes)" if record.class_names else "unconditional"
    return (f"A {kind} denoising diffusion model (DDPM) of {record.channels}x{record.image_size}x"
            f"{record.image_size} images, trained with undiffuse.")


def _model(record: RunRecord) -> str:
    u, s = record.unet, record.schedule
    with torch.device("meta"):  # the parameter count without allocating the weights
        parameters = count_parameters(UNet(u))
    attention = ", ".join(map(str, u.attention)) or "none"
    return "\n".join([
        "## Model", "",
        f"- size: {record.model_size}, {parameters:,} parameters ({parameters / 1e6:.2f}M)",
        f"- U-Net: {u.base} base channels; channel multipliers {', '.join(map(str, u.mults))}; {u.blocks} residual "
        f"block(s) per level; self-attention at level(s) {attention} ({u.head_channels} channels a head); "
        f"GroupNorm of {u.groups} groups; dropout {u.dropout:g}"
        + (f"; the class reaches the blocks by {u.context_mode}" if u.context_dim else "")
        + (f"; {u.block_style} blocks" if hasattr(u, "block_style") else "")
        + (f"; a {u.patch}x{u.patch} patch stem" if getattr(u, "patch", 1) > 1 else ""),
        f"- noise schedule: {s.name} over T = {s.T} steps{' rescaled to zero terminal SNR' if s.zero_snr else ''}; "
        f"the network predicts {record.prediction}",
    ])


def _data(record: RunRecord) -> str:
    names = ", ".join(record.class_names[:20]) + (", ..." if len(record.class_names) > 20 else "")
    lines = ["## Training data", "", f"- data: `{_text(record.data_source)}`",
             f"- {record.num_images:,} images of {record.channels}x{record.image_size}x{record.image_size}",
             f"- classes: {len(record.class_names)} ({_text(names)})" if record.class_names else
             "- classes: none (unconditional)"]
    calls = record.train.get("distill_calls")
    if record.finetuned_from and calls:
        lines = ["## Teacher", "", f"- distilled from `{_text(record.finetuned_from.run)}` (its EMA weights of step "
                 f"{record.finetuned_from.step}) to draw in {calls} network call{'s' * (calls > 1)}, guidance an "
                 "input of the network; it learnt the teacher's guided trajectories, no data"]
    elif record.finetuned_from:
        lines.append(f"- fine-tuned from `{_text(record.finetuned_from.run)}` (its EMA weights of step "
                     f"{record.finetuned_from.step})")
    return "\n".join(lines)


def _training(run: Path, record: RunRecord) -> str:
    p, train = record.plan, record.train
    step, last = _trained_step(run), last_numbers(run)
    minutes = last.get("seconds", math.nan) / 60
    done = f"{step}" + ("" if step >= p.steps else f" of {p.steps} planned so far (`undiffuse train --out "
                        f"{_quote(run)} --resume` continues it)")
    lines = ["## Training", "", f"- steps: {done}",
             f"- time: {minutes:.1f} minutes" if math.isfinite(minutes) else "- time: not logged",
             f"- batch: {train.get('batch_size')} images a step, peak learning rate {p.lr:.3g} (AdamW, "
             f"{p.warmup} warm-up steps, a cosine down to a tenth), EMA decay {p.ema_decay:.4f}"
             + ("; each image mirrored half of the time" if train.get("flip") else ""),
             f"- schedule {record.schedule.name}, prediction {record.prediction}, "
             + (f"min-SNR-{train['min_snr']:g} weighting" if train.get("min_snr") else "plain MSE"),
             f"- precision {record.precision.name} ({record.precision.reason}), seed {train.get('seed', 0)}"]
    guided = train.get("guidance") is not None and (record.class_names or record.text is not None)
    sampler, steps = train.get("sampler"), train.get("sample_steps")
    if guided or sampler or steps:
        how = [f"classifier-free guidance {train['guidance']:g}"] if guided else []
        if sampler or steps:
            how.append(f"{steps} {sampler or DEFAULT_SAMPLER} steps" if steps else f"the {sampler} sampler")
        lines.append(f"- its samples default to {' and '.join(how)} (the recipe's for {record.channels}-channel "
                     "images, or train --guidance / --sampler / --sample-steps)")
    loss = last.get("loss", math.nan)
    if math.isfinite(loss):
        lines.append(f"- last logged loss: {loss:.4f} (log.csv, loss.png)")
    return "\n".join(lines)


def _trained_step(run: Path) -> int:
    try:
        return max(0, ckpt.saved_step(run / ckpt.EMA))
    except ckpt.CheckpointError:
        return 0


def _quote(run: Path) -> str:
    return shlex.quote(_text(run))


def _sampling(run: Path, record: RunRecord) -> str:
    folder = _quote(run)
    commands = [f"undiffuse sample {folder} --n 16 --out samples.png"]
    if record.class_names:
        commands = [f"undiffuse sample {folder} --per-class 8 --out samples.png",
                    f"undiffuse sample {folder} --label {shlex.quote(_text(record.class_names[0]))} --n 8 "
                    "--out one-class.png"]
    labels = ", label=0" if record.class_names else ""
    python = ["from undiffuse.generation import generate, load_run", "",
              f"run = load_run({_text(run)!r})",
              f"images = generate(run, 16{labels}, seed=0)  # (16, C, H, W) in [-1, 1]"]
    return "\n".join(["## How to sample it", "", "```bash", *commands, "```", "", "```python", *python, "```"])


def _evaluation(run: Path) -> str:
    rows = [_score_row(path) for path in sorted(run.glob("eval*.json"))]
    if not rows:
        return ("## Evaluation\n\nNot evaluated yet: `undiffuse eval " + _quote(run) + "` scores its samples "
                "(FID, KID, precision and recall, near copies of the training images) and adds them here.")
    head = ("| file | features | samples | FID | KID | precision | recall | near copies |\n"
            "|---|---|---|---|---|---|---|---|")
    return "## Evaluation\n\n" + head + "\n" + "\n".join(rows)


def _score_row(path: Path) -> str:
    try:
        s = json.loads(path.read_text())
        copies = s.get("memorisation", {}).get("features") or s.get("memorisation", {}).get("pixels")
        near = f"{100 * copies['near_copies']:.1f}%" if copies else "-"
        return (f"| {_text(path.name)} | {s['features']} | {s['n_fake']} | {s['fid']:.2f} | "
                f"{s['kid']:.4f} ± {s['kid_std']:.4f} | {s['precision']:.3f} | {s['recall']:.3f} | {near} |")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"| {_text(path.name)} | unreadable | | | | | | |"
