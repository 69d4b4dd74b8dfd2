"""The subcommands of `undiffuse`: each `add_*` declares its flags, each `run_*` calls the library."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .cli import UsageError, add_config_flags, config_values
from .recipe import MODEL_SIZES
from .schedule import SCHEDULES
from .conditioning import PREDICTIONS
from .unet import CONTEXT_MODES

TRAIN_CHOICES = {"schedule": SCHEDULES, "prediction": PREDICTIONS, "model": ("auto", *MODEL_SIZES),
                 "precision": ("fp32", "bf16", "fp16"), "context_mode": CONTEXT_MODES}
FORWARD_STEPS = "0,50,100,200,300,500,700,999"


def _say(text: str) -> None:
    print(text, flush=True)


# --- train ---------------------------------------------------------------------------------------

def add_train(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("train", help="train a model on a data set", description=(
        "Train a denoising diffusion model. DATA is mnist (5,000 bundled digits), digits (scikit-learn's "
        "8x8 digits, upscaled), a folder of images (class sub-folders become labels) or a .npy array."))
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or continue with --resume)")
    p.add_argument("--config", metavar="FILE.toml", help="training options from a TOML file; flags win")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue RUN from its last checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace the existing run folder RUN")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, TrainConfig, TRAIN_CHOICES)
    p.set_defaults(handler=run_train)


def run_train(args) -> int:
    from .train import TrainConfig, Trainer

    values = config_values(args, TrainConfig)
    if args.resume:
        if values:
            raise UsageError(f"--resume continues {args.out} with its own settings; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in values))
        trainer = Trainer.resume(args.out)
        if trainer.world.is_main:
            for problem in trainer.skipped_checkpoints:
                print(f"undiffuse: warning: {problem}; using an older checkpoint", file=sys.stderr)
            _say(f"resuming {args.out} at step {trainer.step} of {trainer.plan.steps}"
                 + ("" if trainer.saved_step >= 0 else " (it had no checkpoint yet)"))
    else:
        cfg = TrainConfig.from_dict(values)
        cfg.validate()  # before the data is read, so that a bad flag costs nothing
        trainer = Trainer(cfg, args.out, overwrite=args.overwrite)
        _describe(trainer)
    return 0 if _train_and_report(trainer, progress=not args.quiet) else 130


def _describe(trainer) -> None:
    from .unet import count_parameters

    if not trainer.world.is_main:
        return
    data, plan = trainer.data, trainer.plan
    kind = f"{data.num_classes} classes" if trainer.context_dim else "unconditional"
    skipped = f", {data.skipped} unreadable files skipped" if data.skipped else ""
    _say(f"data: {data.source}: {len(data.images)} images {data.channels}x{data.image_size}x{data.image_size}, "
         f"{kind}{skipped}")
    where = f"{trainer.world.size} processes on {trainer.device.type}" if trainer.world.active else trainer.device
    steps = f"about {plan.steps} steps (the deadline decides)" if trainer.deadline else f"{plan.steps} steps"
    _say(f"model: {trainer.size}, {count_parameters(trainer.model) / 1e6:.2f}M parameters on {where}; "
         f"{steps} of {trainer.cfg.batch_size}, lr {plan.lr:.2g}, warm-up {plan.warmup}, EMA {plan.ema_decay:.4f}")


def _train_and_report(trainer, progress: bool):
    """The training Result, or None when a signal stopped it (after saving)."""
    from . import distributed
    from .train import read_log
    from .viz import save_loss_curve

    try:
        result = trainer.train(progress=progress)
    except KeyboardInterrupt:  # the trainer saved at the last step boundary
        if trainer.world.is_main:
            print(f"undiffuse: interrupted; step {trainer.saved_step} is saved in {trainer.run}. "
                  f"Continue with: {resume_command(trainer)}", file=sys.stderr)
        return None
    finally:
        distributed.teardown(trainer.world)
    if not trainer.world.is_main:
        return result
    if result.skipped:
        _say(f"{result.skipped} steps were skipped for a non-finite loss")
    steps, losses = read_log(trainer.run)
    curve = save_loss_curve(steps, losses, trainer.run / "loss.png", title=f"training loss: {trainer.run.name}")
    _say(f"trained {result.steps} steps in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}")
    _say(f"run folder: {trainer.run}   loss curve: {curve}")
    return result


def resume_command(trainer) -> str:
    """The command that continues a run, as the user would type it."""
    command = f"undiffuse train --out {shlex.quote(str(trainer.run))} --resume"
    if trainer.world.active:
        command = f"torchrun --nproc-per-node {trainer.world.size} -m " + command
    return command


# --- finetune ------------------------------------------------------------------------------------

FINETUNE_FLAGS = ("steps", "minutes", "batch_size", "lr", "warmup", "ema_decay", "cond_drop", "seed",
                  "checkpoint_minutes", "grids", "device", "labels", "context_names", "keep_checkpoints",
                  "max_bad_steps", "precision", "grad_accum", "compile", "channels_last", "grad_checkpointing")


def add_finetune(sub) -> None:
    from .train import TrainConfig

    p = sub.add_parser("finetune", help="continue training a run on new data or one class", description=(
        "Start from RUN's EMA weights and train on DATA (the same image shape), or on one class of it "
        "with --label; the new run records where it came from. Default budget: 2 minutes."))
    p.add_argument("base", metavar="RUN", help="the trained run to start from")
    p.add_argument("--data", required=True, help="data spec, as for train")
    p.add_argument("--label", default=None, help="train on this class only (name or id)")
    p.add_argument("--out", required=True, metavar="RUN2", help="the new run folder")
    p.add_argument("--overwrite", action="store_true", help="replace the existing run folder RUN2")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    skip = {f for f in TrainConfig.__dataclass_fields__ if f not in FINETUNE_FLAGS}
    add_config_flags(p, TrainConfig, TRAIN_CHOICES, skip=skip)
    p.set_defaults(handler=run_finetune)


def run_finetune(args) -> int:
    from .train import TrainConfig, Trainer

    values = {k: v for k, v in vars(args).items() if k in FINETUNE_FLAGS}
    if "steps" not in values and "minutes" not in values:
        values["minutes"] = 2.0
    cfg = TrainConfig(data=args.data, base=args.base, only_label=args.label, **values)
    cfg.validate()
    trainer = Trainer(cfg, args.out, overwrite=args.overwrite)
    if trainer.context_dim and trainer.data.labels is None:
        _say("the data's labels do not match the base run's classes: fine-tuning on the null context")
    _say(f"fine-tuning {args.base} on {len(trainer.data.images)} images"
         + (f" of class {args.label}" if args.label is not None else ""))
    _describe(trainer)
    return 0 if _train_and_report(trainer, progress=not args.quiet) else 130


# --- sample --------------------------------------------------------------------------------------

def add_sample(sub) -> None:
    from .generate import DEFAULT_SAMPLER
    from .samplers import DEFAULT_STEPS, SAMPLERS, SPACINGS

    p = sub.add_parser("sample", help="generate images from a trained run", description=(
        "Generate images with a trained run's EMA weights. A conditional run draws a grid with one "
        "row per class unless --label picks one class."))
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    p.add_argument("--n", type=int, default=None,
                   help="images (per class with --label all; default 8 per class, or 64)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS),
                   help=f"default: {DEFAULT_SAMPLER} (see BENCHMARKS.md, quality per step)")
    defaults = ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (heun makes 2 network calls a step; ddpm always walks all T); default: {defaults}")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="where the steps fall: uniform in t (trailing, the default; leading; linspace) or karras")
    p.add_argument("--eta", type=float, default=None,
                   help="noise scale of ddim and euler-a: 0 deterministic, 1 DDPM-like (euler-a default 1)")
    p.add_argument("--no-noise", action="store_true",
                   help="ddpm without its extra noise (samples collapse to blurry averages: for teaching)")
    p.add_argument("--label", default=None, help="class name or id, or 'all' (default for conditional runs)")
    p.add_argument("--context", default=None,
                   help="a context instead of a label: a name, a mixture '0.6*3+0.4*8', or a vector '0,1,0,...'")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w (1: conditional, 0: unconditional; default 2)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clip each step's clean-image estimate to the data range")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.png|FILE.npy", help="default: RUN/samples.png")
    p.add_argument("--gif", default=None, metavar="FILE.gif", help="also animate the reverse process")
    p.add_argument("--weights", default="ema", choices=("ema", "raw"), help="default: ema")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(handler=run_sample)


def run_sample(args) -> int:
    from .conditioning import class_id
    from .generate import load_run
    from .train import pick_device

    out = Path(args.out) if args.out else Path(args.run) / "samples.png"
    if out.suffix.lower() not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got '{out}'")
    if args.gif and not args.gif.lower().endswith(".gif"):
        raise UsageError(f"--gif must end in .gif, got '{args.gif}'")
    if args.n is not None and not 1 <= args.n <= 100_000:
        raise UsageError(f"--n must lie in [1, 100000], got {args.n}")
    if args.gif and (args.n or 8) * 10 > 250:
        raise UsageError("--gif animates at most 250 images; lower --n")
    options = _sampler_options(args)
    run = load_run(args.run, weights=args.weights, device=pick_device(args.device))
    if not run.num_classes and (args.label not in (None, "all") or args.guidance is not None or args.context):
        raise UsageError(f"{args.run} is an unconditional model: it takes no --label, --context or --guidance")
    if args.context and args.label is not None:
        raise UsageError("give --label or --context, not both")
    contexts = None
    if args.context:
        from .conditioning import parse_context

        labels, nrow = None, 8
        contexts = parse_context(args.context, run.class_names).expand(args.n or 64, -1)
    elif run.num_classes and args.label not in (None, "all"):
        labels = [class_id(args.label, run.class_names)] * (args.n or 64)
        nrow = 8
    elif run.num_classes:
        per_class = args.n or 8
        labels = [k for k in range(run.num_classes) for _ in range(per_class)]
        nrow = per_class
    else:
        labels, nrow = None, 8
    n = len(labels) if labels else (args.n or 64)
    images, frames = _sample_with_frames(run, n, labels, args, dict(options, contexts=contexts))
    _write_samples(images, labels, out, nrow)
    _say(f"{n} samples: {out}")
    if args.gif:
        from .viz import save_gif

        _say(f"reverse process: {save_gif(frames, args.gif, nrow=nrow)}")
    return 0


def _sampler_options(args) -> dict:
    if args.steps is not None and not 1 <= args.steps <= 100_000:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    if args.guidance is not None and not -1e3 < args.guidance < 1e3:
        raise UsageError(f"--guidance {args.guidance} is absurd")
    from .generate import DEFAULT_GUIDANCE

    options = {"guidance": DEFAULT_GUIDANCE if args.guidance is None else args.guidance, "seed": args.seed,
               "sampler": args.sampler, "steps": args.steps, "clip_denoised": not args.no_clip}
    if args.no_noise and args.sampler != "ddpm":
        raise UsageError("--no-noise applies to ddpm only")
    if args.eta is not None and args.sampler not in ("ddim", "euler-a"):
        raise UsageError("--eta applies to ddim and euler-a only")
    if args.spacing is not None and args.sampler == "ddpm":
        raise UsageError("ddpm walks every step: --spacing does not apply")
    if args.sampler == "ddpm":
        options["add_noise"] = not args.no_noise
    if args.eta is not None:
        if not 0 <= args.eta <= 1:
            raise UsageError(f"--eta must lie in [0, 1], got {args.eta}")
        options["eta"] = args.eta
    if args.spacing is not None:
        options["spacing"] = args.spacing
    return options


def _sample_with_frames(run, n, labels, args, options):
    """Sample; when a GIF is wanted, keep ~40 intermediate frames of the predicted clean image."""
    from .generate import generate
    from .samplers import DEFAULT_STEPS
    from .viz import keep_frames

    frames = []
    sampler = options["sampler"]
    keep = keep_frames(run.schedule.T if sampler == "ddpm" else options["steps"] or DEFAULT_STEPS[sampler])

    def keep_frame(step):
        if step["i"] in keep:
            frames.append(step["x"].clamp(-1, 1).cpu())

    images = generate(run, n, labels=labels, callback=keep_frame if args.gif else None, **options)
    return images, frames


def _write_samples(images, labels, out: Path, nrow: int) -> None:
    import numpy as np

    from .checkpoint import atomic_write
    from .viz import image_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        array = ((images + 1) / 2).float().numpy().astype(np.float32)  # N x C x H x W in [0, 1]
        atomic_write(out, lambda p: np.save(open(p, "wb"), array))
        if labels is not None:
            labels_path = out.with_suffix(".labels.npy")
            atomic_write(labels_path, lambda p: np.save(open(p, "wb"), np.asarray(labels, np.int64)))
    else:
        atomic_write(out, lambda p: image_grid(images, nrow).save(p, format="PNG"))


# --- noise ---------------------------------------------------------------------------------------

def add_noise(sub) -> None:
    p = sub.add_parser("noise", help="show the forward process on an image", description=(
        "Noise an image (or the first images of a data spec such as mnist) to several steps t in one "
        "shot, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, and save the strip."))
    p.add_argument("image", metavar="IMAGE", help="an image file, or a data spec (mnist, a folder, a .npy)")
    p.add_argument("--t", default=FORWARD_STEPS, help=f"comma-separated steps (default {FORWARD_STEPS})")
    p.add_argument("--out", default="forward.png", help="default: forward.png")
    p.add_argument("--n", type=int, default=4, help="rows when IMAGE is a data set (default 4)")
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="default: linear")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps (default 1000)")
    p.add_argument("--image-size", type=int, default=None, help="resize to this side")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_noise)


def run_noise(args) -> int:
    from .checkpoint import atomic_write
    from .data import load_image, load_data
    from .schedule import make_schedule
    from .viz import forward_strip

    try:
        ts = [int(s) for s in args.t.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--t must be comma-separated integers, got '{args.t}'") from None
    if not ts or not 2 <= args.T <= 100_000 or not 1 <= args.n <= 64:
        raise UsageError("--t needs at least one step, --T must lie in [2, 100000] and --n in [1, 64]")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
        raise UsageError(f"--out must be an image file such as strip.png, got '{out}'")
    schedule = make_schedule(args.schedule, args.T)
    path = Path(args.image)
    if path.is_file() and path.suffix.lower() != ".npy":
        images = load_image(path, args.image_size)[None]
    else:
        images = load_data(args.image, image_size=args.image_size).images[:args.n]
    strip = forward_strip(images, schedule, ts, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: strip.save(p, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG")))
    _say(f"forward process at t = {', '.join(map(str, ts))}: {out}")
    return 0


# --- demo ----------------------------------------------------------------------------------------

def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train on the bundled digits, then draw", description=(
        "Train a class-conditional DDPM on the 5,000 bundled MNIST digits for a bounded time, then "
        "write a grid of samples (one row per digit), the reverse process as a GIF, the forward "
        "process as a strip and the loss curve into a fresh run folder."))
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (default 10)")
    p.add_argument("--out", default=None, metavar="RUN", help="run folder (default: the first free runs/demo[-N])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_demo)


def run_demo(args) -> int:
    from .train import TrainConfig, Trainer

    if not 0 < args.minutes <= 24 * 60:
        raise UsageError(f"--minutes must lie in (0, 1440], got {args.minutes}")
    run = Path(args.out) if args.out else _free_folder(Path("runs") / "demo")
    _say(f"undiffuse demo: {args.minutes:g} minutes of training on the bundled MNIST digits -> {run}")
    trainer = Trainer(TrainConfig(data="mnist", minutes=args.minutes, seed=args.seed), run)
    _describe(trainer)
    if _train_and_report(trainer, progress=not args.quiet) is None:
        return 130
    _demo_pictures(trainer, run)
    return 0


def _demo_pictures(trainer, run: Path) -> None:
    from .generate import DEFAULT_GUIDANCE, generate, load_run
    from .viz import forward_strip, image_grid, keep_frames, save_gif

    loaded = load_run(run, device=trainer.device)
    k = loaded.num_classes
    _say("sampling the grid and the animation ...")
    labels = [c for c in range(k) for _ in range(10)]
    grid = generate(loaded, len(labels), labels=labels, seed=0,
                    guidance=DEFAULT_GUIDANCE)
    image_grid(grid, nrow=10).save(run / "samples.png")
    _say(f"samples, one row per digit: {run / 'samples.png'}")

    frames, keep = [], keep_frames(100)
    gif_labels = list(range(k)) * 2

    def keep_frame(step):
        if step["i"] in keep:
            frames.append(step["x"].clamp(-1, 1).cpu())

    generate(loaded, len(gif_labels), labels=gif_labels, sampler="ddim", steps=100, eta=1.0, seed=1,
             guidance=DEFAULT_GUIDANCE, callback=keep_frame)
    save_gif(frames, run / "reverse.gif", nrow=k)
    _say(f"reverse process, noise to digits: {run / 'reverse.gif'}")

    real = trainer.data.images[[int((trainer.data.labels == c).nonzero()[0]) for c in range(min(4, k))]]
    ts = [int(s) for s in FORWARD_STEPS.split(",")]
    forward_strip(real, trainer.schedule, ts).save(run / "forward.png")
    _say(f"forward process on real digits: {run / 'forward.png'}")
    _say(f"loss curve: {run / 'loss.png'}")


def _free_folder(base: Path) -> Path:
    """base, or base-2, base-3, ...: the demo never overwrites an earlier demo."""
    if not base.exists():
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")


# --- eval ----------------------------------------------------------------------------------------

def add_eval(sub) -> None:
    from .metrics import FEATURES
    from .samplers import SAMPLERS

    p = sub.add_parser("eval", help="score a run's samples against real images (FID, KID, precision/recall)",
                       description=(
        "Generate --n samples with a trained run (or read --samples), and score them against the run's "
        "training data (or --against SPEC): FID, KID with its standard error, and precision/recall "
        "(k = 3). Digit runs are scored in the space of a small digit classifier shipped with undiffuse; "
        "other runs by Inception-v3 as in FID (its weights must be on the machine). Prints a table and "
        "writes RUN/eval.json (eval-2.json, ... when taken)."))
    p.add_argument("run", metavar="RUN", help="a run folder written by `undiffuse train`")
    p.add_argument("--n", type=int, default=5000, help="samples to generate (default 5000)")
    p.add_argument("--samples", default=None, metavar="FILE.npy",
                   help="score these images instead: float32 N x C x H x W in [0, 1], as `sample --out F.npy` writes")
    p.add_argument("--sampler", default=None, choices=list(SAMPLERS), help="default: the sample command's")
    p.add_argument("--steps", type=int, default=None, help="network evaluations (default: the sampler's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale w (default 2)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default 0)")
    p.add_argument("--against", default=None, metavar="SPEC", help="real images (default: the run's training data)")
    p.add_argument("--features", default=None, choices=FEATURES,
                   help="feature space (default: digits for mnist/digits runs, else inception)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="pt_inception-2015-12-05-6726825d.pth (default: torch's hub cache)")
    p.add_argument("--batch-size", type=int, default=250, help="images per batch (default 250)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="default: RUN/eval.json, or eval-N.json")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_eval, eta=None, no_noise=False, no_clip=False, spacing=None)


def run_eval(args) -> int:
    import json

    from .checkpoint import atomic_write, load_config
    from .evaluate import default_features, free_path, read_samples, real_images
    from .metrics import feature_extractor, score_features
    from .train import pick_device

    config = load_config(args.run)
    out = _eval_output(args, free_path)
    if not 1 <= args.batch_size <= 100_000:
        raise UsageError(f"--batch-size must lie in [1, 100000], got {args.batch_size}")
    sampling = [f for f, v in (("--sampler", args.sampler), ("--steps", args.steps), ("--guidance", args.guidance))
                if v is not None]
    if args.samples and sampling:
        raise UsageError(f"--samples scores a file; drop {', '.join(sampling)}")
    if not args.samples and not 10 <= args.n <= 100_000:
        raise UsageError(f"--n must lie in [10, 100000], got {args.n}")
    spec = args.against or config.get("data_source")
    if not spec:
        raise UsageError(f"{args.run} does not record its training data; give --against SPEC")
    size, channels = int(config["image_size"]), int(config["channels"])
    real = real_images(spec, size, channels)
    features = args.features or default_features(spec)
    device = pick_device(args.device)
    extract = feature_extractor(features, args.inception_weights, device, batch_size=args.batch_size)
    if args.samples:
        fake, source = read_samples(args.samples, channels, size), {"samples": str(args.samples)}
    else:
        fake, source = _eval_samples(args, device)
    result = {**score_features(extract(real), extract(fake)), "features": features, "run": str(args.run),
              "against": spec, **source}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    _print_scores(result)
    _say(f"written: {out}")
    return 0


def _print_scores(result: dict) -> None:
    _say(f"{result['n_fake']} samples of {result['run']} against {result['n_real']} images of "
         f"{result['against']}, {result['features']} features")
    _say("| metric | value |\n|---|---|\n"
         f"| FID | {result['fid']:.3f} |\n| KID | {result['kid']:.5f} ± {result['kid_std']:.5f} |\n"
         f"| precision | {result['precision']:.3f} |\n| recall | {result['recall']:.3f} |")


def _eval_output(args, free_path) -> Path:
    if args.out is None:
        return free_path(Path(args.run))
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise UsageError(f"--out must end in .json, got '{out}'")
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; choose another --out or add --overwrite")
    return out


def _eval_samples(args, device):
    """Generate --n samples; conditional runs cycle through their classes."""
    import time

    from .evaluate import generate_in_batches
    from .generate import DEFAULT_SAMPLER, load_run

    args.sampler = args.sampler or DEFAULT_SAMPLER
    options = _sampler_options(args)
    run = load_run(args.run, device=device)
    if not run.num_classes and args.guidance is not None:
        raise UsageError(f"{args.run} is an unconditional model: it takes no --guidance")
    seed = options.pop("seed")
    start = time.perf_counter()
    images = generate_in_batches(run, args.n, batch_size=args.batch_size, seed=seed, progress=not args.quiet,
                                 **options)
    source = {"sampler": options["sampler"], "steps": options["steps"],
              "guidance": options["guidance"] if run.num_classes else None, "seed": seed,
              "samples_per_second": args.n / (time.perf_counter() - start)}
    return images, source
